import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from portfolio import atomicwrites
from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit
from portfolio.envparse import Env


class Command(BaseCommand):
    help = (
        "Create the first platform admin if there is none. The password is printed once and written to "
        "<data dir>/admin-password, readable by this user only."
    )

    def add_arguments(self, parser):
        # Empty is unset, as for every other variable.
        parser.add_argument("--username", default=Env().text("PORTFOLIO_ADMIN_USERNAME") or "admin")

    def handle(self, *args, username: str, **options):
        User = get_user_model()
        password_file = Path(settings.DATA_DIR) / "admin-password"
        if User.objects.filter(is_superuser=True).exists():
            where = f" (initial password in {password_file})" if password_file.exists() else ""
            self.stdout.write(f"Admin account exists{where}.")
            return
        username = _usable(User, username)
        password = secrets.token_urlsafe(18)
        # The password file is put in place before the superuser commits: if it cannot be written, no admin
        # is left behind with a password nobody saw, and a rerun starts over.
        try:
            with transaction.atomic():
                user = User.objects.create_superuser(username=username, email="", password=password)
                audit.record(
                    Actor.for_system("bootstrap"),
                    "user.create",
                    user,
                    object_repr=user.username,
                    after={"username": user.username, "org_role": "admin"},
                )
                password_file.parent.mkdir(parents=True, exist_ok=True)
                atomicwrites.replace(password_file, (password + "\n").encode(), private=True)
        except OSError as exc:
            raise CommandError(
                f"Cannot write the admin password to {password_file}: {exc.strerror or exc}. No admin was created."
            ) from exc
        self.stdout.write(self.style.SUCCESS(f"Created admin account '{username}'."))
        self.stdout.write(f"  password: {password}")
        self.stdout.write(
            f"  (shown once; also in {password_file}, readable only by you — change it after login)"
        )


def _usable(User, username: str) -> str:
    """The name as the sign-in form reads it (stripped), checked as a sign-up's is: found by review, ``"admin "``
    (a trailing space in a .env file) made the only admin, who could never sign in, and a name too long or taken
    ended in a database traceback."""
    username = username.strip()
    field = User._meta.get_field(User.USERNAME_FIELD)
    try:
        field.clean(username, None)
    except ValidationError as exc:
        raise CommandError(f"--username {username!r}: {' '.join(exc.messages)}") from exc
    if User.objects.filter(**{f"{User.USERNAME_FIELD}__iexact": username}).exists():
        raise CommandError(
            f"--username {username!r}: an account of that name exists (not an admin); choose another."
        )
    return username
