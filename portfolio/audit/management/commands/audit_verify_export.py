from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from portfolio.audit.exports import verify_export


class Command(BaseCommand):
    help = (
        "Verify an audit export offline: the manifest's HMAC signature, the events file's sha256 and every "
        "event's hash (and the links between them for a time-range export). Needs no database."
    )
    requires_system_checks: list = []

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path, help="The export .zip")
        parser.add_argument(
            "--key-file",
            type=Path,
            help="File holding the audit signing key (PORTFOLIO_AUDIT_SIGNING_KEY); defaults to this server's key",
        )

    def handle(self, *args, **options):
        key = options["key_file"].read_bytes().strip() if options["key_file"] else settings.AUDIT_SIGNING_KEY
        verdict = verify_export(options["file"], key)
        if not verdict.ok:
            raise CommandError("Export does NOT verify:\n  - " + "\n  - ".join(verdict.problems))
        self.stdout.write(self.style.SUCCESS(f"Export verified: {verdict.count} events, signature valid."))
