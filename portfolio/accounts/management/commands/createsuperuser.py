"""Django's ``createsuperuser``, refused: it makes a platform admin with no audit row. Found by review. The
first admin comes from ``bootstrap_admin`` (audited, its password printed once); later ones are made admin by
an admin, in the UI or the API (audited). This app is listed before ``django.contrib.auth`` so that this
command is the one found."""

from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Refused: make the first platform admin with bootstrap_admin, later ones in the UI or the API."

    def add_arguments(self, parser):
        # Whatever Django's command took, so that a script calling it gets this refusal, not a usage error.
        parser.add_argument("args", nargs="*")
        parser.add_argument("--username")
        parser.add_argument("--email")
        parser.add_argument("--database")
        parser.add_argument("--noinput", "--no-input", action="store_true")

    def handle(self, *args, **options):
        raise CommandError(
            "createsuperuser would make a platform admin that no audit row records. Make the first admin with "
            "`portfolio manage bootstrap_admin`; an admin makes others in the UI (People) or the API."
        )
