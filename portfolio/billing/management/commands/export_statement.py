from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from portfolio import atomicwrites
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
        out: Path = options["out"]
        try:
            out.mkdir(parents=True, exist_ok=True)  # a regular file there, or no write permission: OSError
        except OSError as exc:
            raise CommandError(f"Cannot use {out} as the output folder: {exc.strerror or exc}.") from exc
        # The export's audit row (naming the file's sha256) commits only once the file is in place: the
        # signature is computed from settings' key, nothing outside the database to undo if the write fails.
        try:
            with transaction.atomic():
                export = exports.export(
                    actor=Actor.for_system("billing"),
                    department_id=department.pk,
                    month=options["month"],
                    fmt="zip",
                    revision=options["revision"],
                )
                path = out / export.filename
                replaced = path.exists()
                atomicwrites.replace(path, export.data)
        except DomainError as exc:
            raise CommandError(exc.message) from exc
        except OSError as exc:
            raise CommandError(f"Cannot write the statement into {out}: {exc.strerror or exc}.") from exc
        kind = "draft" if export.sheet.draft else f"revision {export.sheet.revision}"
        verb = "Replaced" if replaced else "Wrote"
        self.stdout.write(
            self.style.SUCCESS(f"{verb} {path} ({kind}, total {export.sheet.total} {export.sheet.currency}).")
        )
