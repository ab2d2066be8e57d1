from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.db import models
from django.utils import timezone

from portfolio.billing.choices import PriceKind


def rate(help_text: str) -> models.DecimalField:
    return models.DecimalField(max_digits=16, decimal_places=6, default=Decimal("0"), help_text=help_text)


class Price(models.Model):
    """One version of a subject's prices, in force from ``effective_from`` until the next version.

    Versions are only added, never edited: a change is a new version from a later time, so a closed
    month is always priced as it was. Versions start on the hour (the token ledger is hourly).
    """

    kind = models.CharField(max_length=10, choices=PriceKind.choices)
    # The priced object as a plain value (billing sits below serving): an endpoint's or pool's id, or a
    # store's name.
    subject_id = models.CharField(max_length=63)
    subject_name = models.CharField(max_length=100, help_text="Its name when the version was set")
    effective_from = models.DateTimeField()
    input_per_million = rate("Per million input tokens")
    output_per_million = rate("Per million output tokens")
    audio_second = rate("Per second of audio (speech models: transcription, translation)")
    gpu_hour = rate("Per GPU-hour held")
    cpu_core_hour = rate("Per CPU-core-hour held")
    memory_gib_hour = rate("Per GiB-hour of memory held")
    gib_month = rate("Per GiB-month stored")
    note = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["kind", "subject_name", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "subject_id", "effective_from"], name="one_price_version_per_time"
            )
        ]
        indexes = [
            # The price in force for a subject at a time: its latest version not after it.
            models.Index(fields=["kind", "subject_id", "effective_from"], name="price_in_force"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.subject_name} from {self.effective_from:%Y-%m-%d %H:%M}"

    RATE_FIELDS = {
        PriceKind.ENDPOINT: ("input_per_million", "output_per_million", "audio_second"),
        PriceKind.POOL: ("gpu_hour", "cpu_core_hour", "memory_gib_hour"),
        PriceKind.STORE: ("gib_month",),
    }

    def rates(self) -> dict[str, Decimal]:
        return {name: getattr(self, name) for name in self.RATE_FIELDS[PriceKind(self.kind)]}

    def snapshot(self) -> dict:
        return {
            "kind": self.kind,
            "subject": self.subject_name,
            "subject_id": self.subject_id,
            "effective_from": self.effective_from.isoformat(),
            **{name: str(value) for name, value in self.rates().items()},
            "note": self.note,
        }
