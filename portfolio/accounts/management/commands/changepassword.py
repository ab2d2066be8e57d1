"""Django's ``changepassword``, through the accounts service: the change is validated and audited
(``user.password_change``, by the system actor ``manage.changepassword``). Django's own wrote no audit row:
anyone with a shell on the server could reset a password unseen. Found by review."""

from getpass import getpass

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from portfolio.accounts import services
from portfolio.accounts.actor import Actor
from portfolio.errors import Invalid

ATTEMPTS = 3


class Command(BaseCommand):
    help = "Change a user's password (validated and audited)."
    requires_migrations_checks = True

    def add_arguments(self, parser):
        parser.add_argument("username", help="The user whose password changes.")
        parser.add_argument("--database", help="Ignored: the platform has one database.")

    def handle(self, *args, username: str, **options):
        user = get_user_model()._default_manager.filter(username=username).first()
        if user is None:
            raise CommandError(f"No user named {username!r}.")
        actor = Actor.for_system("manage.changepassword")
        for _ in range(ATTEMPTS):
            password = getpass(f"New password for {username}: ")
            if password != getpass("Again: "):
                self.stderr.write("The passwords differ; try again.")
                continue
            try:
                services.change_password(actor=actor, user=user, new_password=password)
            except Invalid as exc:
                self.stderr.write(str(exc))
                continue
            self.stdout.write(f"Password of {username} changed (audited).")
            return
        raise CommandError(f"Password of {username} not changed after {ATTEMPTS} attempts.")
