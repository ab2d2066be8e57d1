from django.core.management.base import BaseCommand

from portfolio.registry.reinspection import read_missing_architectures


class Command(BaseCommand):
    help = (
        "Read the architecture family (dense, MoE, state-space, hybrid, vision-language, speech) of ready "
        "versions imported before imports read it, from their stored config and safetensors headers (never "
        "the weights). Idempotent; audited per version."
    )

    def handle(self, *args, **options):
        count = read_missing_architectures(log=self.stdout.write)
        self.stdout.write(f"{count} version(s) given their architecture.")
