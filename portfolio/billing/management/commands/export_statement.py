from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Department
from portfolio.billing import exports
from portfolio.errors import DomainError


class Command(BaseCommand):
    help = (
        "Write a department's statement for a month (the revision in force, a given revision, or the open "
        "month's draft) as a signed bundle: statement.csv, statement.pdf and a manifest signed with the audit "
        "key. Verify it offline with `manage.py audit_verify_export FILE --public-key-file KEY`."
    )

    def add_arguments(self, parser):
        parser.add_argument("--department", required=True, metavar="COST_CENTER", help="e.g. CC-100")
        parser.add_argument("--month", required=True, metavar="YYYY-MM")
        parser.add_argument("--revision", type=int, help="A closed revision (default: the one in force)")
        parser.add_argument(
            "--out", type=Path, required=True, metavar="DIR", help="Folder to write the zip to"
        )

    def handle(self, *args, **options):
        department = Department.objects.filter(cost_center=options["department"]).first()
        if department is None:
            raise CommandError(f"No department with cost center {options['department']!r}.")
        try:
            export = exports.export(
                actor=Actor.for_system("billing"),
                department_id=department.pk,
                month=options["month"],
                fmt="zip",
                revision=options["revision"],
            )
        except DomainError as exc:
            raise CommandError(exc.message) from exc
        options["out"].mkdir(parents=True, exist_ok=True)
        path = options["out"] / export.filename
        path.write_bytes(export.data)
        kind = "draft" if export.sheet.draft else f"revision {export.sheet.revision}"
        self.stdout.write(
            self.style.SUCCESS(f"Wrote {path} ({kind}, total {export.sheet.total} {export.sheet.currency}).")
        )
