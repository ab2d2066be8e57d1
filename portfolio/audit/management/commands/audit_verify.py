from django.core.management.base import BaseCommand, CommandError

from portfolio.audit.verification import verify_database


class Command(BaseCommand):
    help = "Walk the audit hash chain; exit non-zero naming the first broken sequence number."

    def handle(self, *args, **options):
        verdict = verify_database()
        if not verdict.ok:
            raise CommandError(
                f"Audit chain broken at sequence {verdict.broken_sequence}: {verdict.reason} "
                f"({verdict.checked} events verified before it)."
            )
        self.stdout.write(self.style.SUCCESS(f"Audit chain intact: {verdict.checked} events verified."))
