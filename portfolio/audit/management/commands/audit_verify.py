from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from portfolio.audit.anchors import from_options
from portfolio.audit.verification import anchor_problems, verify_database


class Command(BaseCommand):
    help = (
        "Walk the audit hash chain; exit non-zero naming the first broken sequence number. With anchors "
        "(chain heads logged by the audit.anchor_head task or stated in export manifests), also prove the "
        "history up to each anchor was not rewritten since."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--anchor",
            action="append",
            default=[],
            metavar="SEQUENCE:HASH",
            help="A chain head recorded earlier (an export manifest's head_sequence:head_hash); repeatable",
        )
        parser.add_argument(
            "--anchors-from",
            type=Path,
            metavar="LOGFILE",
            help="A log file holding 'audit-anchor sequence=N hash=H' lines; every one is checked",
        )

    def handle(self, *args, **options):
        try:
            anchors = from_options(options["anchor"], options["anchors_from"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        verdict = verify_database()
        if not verdict.ok:
            raise CommandError(
                f"Audit chain broken at sequence {verdict.broken_sequence}: {verdict.reason} "
                f"({verdict.checked} events verified before it)."
            )
        problems = anchor_problems(anchors)
        if problems:
            raise CommandError("Audit chain does not match its anchors:\n  - " + "\n  - ".join(problems))
        suffix = f", {len(anchors)} anchors match" if anchors else ""
        self.stdout.write(
            self.style.SUCCESS(f"Audit chain intact: {verdict.checked} events verified{suffix}.")
        )
