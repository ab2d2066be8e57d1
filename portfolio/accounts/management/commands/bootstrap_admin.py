import os
import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit


class Command(BaseCommand):
    help = (
        "Create the first platform admin if there is none. The password is printed once and written to "
        "<data dir>/admin-password, readable by this user only."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default=os.environ.get("PORTFOLIO_ADMIN_USERNAME", "admin"))

    def handle(self, *args, username: str, **options):
        User = get_user_model()
        password_file = Path(settings.DATA_DIR) / "admin-password"
        if User.objects.filter(is_superuser=True).exists():
            where = f" (initial password in {password_file})" if password_file.exists() else ""
            self.stdout.write(f"Admin account exists{where}.")
            return
        password = secrets.token_urlsafe(18)
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
        fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password + "\n")
        self.stdout.write(self.style.SUCCESS(f"Created admin account '{username}'."))
        self.stdout.write(f"  password: {password}")
        self.stdout.write(
            f"  (shown once; also in {password_file}, readable only by you — change it after login)"
        )
