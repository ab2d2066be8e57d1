from __future__ import annotations

from decimal import Decimal

from django.db import models
from django.utils import timezone


class EndpointPrice(models.Model):
    """The price book entry of an endpoint: money per million input and output tokens."""

    endpoint = models.OneToOneField("serving.Endpoint", on_delete=models.CASCADE, related_name="price")
    input_per_million = models.DecimalField(max_digits=12, decimal_places=4, default=Decimal("0"))
    output_per_million = models.DecimalField(max_digits=12, decimal_places=4, default=Decimal("0"))
    currency = models.CharField(max_length=3, default="EUR")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["endpoint__name"]

    def __str__(self) -> str:
        return (
            f"{self.endpoint.name}: {self.input_per_million}/{self.output_per_million} {self.currency} per 1M"
        )

    def cost(self, input_tokens: int, output_tokens: int) -> Decimal:
        return (self.input_per_million * input_tokens + self.output_per_million * output_tokens) / Decimal(
            1_000_000
        )
