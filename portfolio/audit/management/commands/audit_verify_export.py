from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from portfolio.audit import offline, signing
from portfolio.audit.anchors import from_options
from portfolio.audit.exports import signing_keys


class Command(BaseCommand):
    help = (
        "Verify an audit export offline: the manifest's Ed25519 signature, the events file's sha256 and every "
        "event's hash (and the links between them for a time-range export); for another signed export (a "
        "billing statement's bundle), each file's sha256. With anchors (chain heads logged by the "
        "audit.anchor_head task or stated in earlier manifests), also that the export's event at each anchored "
        "sequence carries the anchored hash. Needs no database and no private key; without --public-key-file "
        "it uses the public keys this server publishes."
    )
    requires_system_checks: list = []

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path, help="The export .zip")
        parser.add_argument(
            "--public-key-file",
            type=Path,
            action="append",
            help="The signer's public key (PEM, ssh-ed25519 or base64 raw), as the audit page and "
            "GET /api/v1/audit/signing-keys publish it; repeat for several",
        )
        # The HMAC scheme's shared secret: refused by name, so old scripts fail with a reason, not a usage error.
        parser.add_argument("--key-file", type=Path, help="Retired: exports are signed with Ed25519 now")
        offline.add_anchor_arguments(parser)

    def handle(self, *args, **options):
        if options["key_file"]:
            raise CommandError(
                "--key-file was the shared HMAC secret of the retired signing scheme, which let anyone who "
                "could verify also forge. Exports are now signed with Ed25519: pass the signer's public key "
                "with --public-key-file (published on the audit page and at GET /api/v1/audit/signing-keys)."
            )
        if options["public_key_file"]:
            try:
                keys = offline.read_public_keys(options["public_key_file"])
            except (OSError, signing.UnreadableKey) as exc:
                raise CommandError(f"Cannot read the public key: {exc}") from exc
        else:
            keys = [published.public_key for published in signing_keys()]
        try:
            anchors = from_options(options["anchor"], options["anchors_from"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        verdict = offline.verify_export(options["file"], keys, anchors)
        if not verdict.ok:
            raise CommandError(offline.report(verdict))
        self.stdout.write(self.style.SUCCESS(offline.report(verdict)))
