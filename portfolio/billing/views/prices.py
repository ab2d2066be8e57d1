"""The price book: the prices in force per endpoint, pool and store with their version history, and the
admins' form for a new version (``portfolio.billing.services.set_price``)."""

from __future__ import annotations

from datetime import UTC
from decimal import Decimal

from django import forms
from django.conf import settings
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from portfolio.accounts import gate
from portfolio.billing import services, subjects
from portfolio.billing.choices import PriceKind
from portfolio.billing.models import Price
from portfolio.billing.views import billing_reader
from portfolio.formviews import submit

RATE_LABELS = {
    "input_per_million": "Input, per million tokens",
    "output_per_million": "Output, per million tokens",
    "audio_second": "Per second of audio",
    "gpu_hour": "Per GPU-hour",
    "cpu_core_hour": "Per CPU-core-hour",
    "memory_gib_hour": "Per GiB-hour of memory",
    "gib_month": "Per GiB-month stored",
}
HISTORY_SHOWN = 20  # versions per subject on the page (the audit log keeps every one)


def _next_hour():
    return services.next_hour(timezone.now())


class PriceForm(forms.Form):
    """A new version of one subject's prices; rates left empty keep the version in force then."""

    kind = forms.ChoiceField(choices=PriceKind.choices)
    subject = forms.ChoiceField(help_text="What is priced: an endpoint, a pool or an artifact store.")
    input_per_million = forms.DecimalField(required=False, min_value=0, max_digits=16, decimal_places=6)
    output_per_million = forms.DecimalField(required=False, min_value=0, max_digits=16, decimal_places=6)
    audio_second = forms.DecimalField(required=False, min_value=0, max_digits=16, decimal_places=6)
    gpu_hour = forms.DecimalField(required=False, min_value=0, max_digits=16, decimal_places=6)
    cpu_core_hour = forms.DecimalField(required=False, min_value=0, max_digits=16, decimal_places=6)
    memory_gib_hour = forms.DecimalField(required=False, min_value=0, max_digits=16, decimal_places=6)
    gib_month = forms.DecimalField(required=False, min_value=0, max_digits=16, decimal_places=6)
    effective_from = forms.DateTimeField(
        help_text="UTC, on the hour; from the start of the next hour by default.",
        widget=forms.DateTimeInput(attrs={"type": "datetime-local", "step": 3600}, format="%Y-%m-%dT%H:%M"),
    )
    note = forms.CharField(required=False, max_length=200)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        listed = {kind: subjects.priceable(kind) for kind in PriceKind.values}  # not a composite endpoint
        self.subjects = {
            f"{kind}:{subject.id}": subject for kind, found in listed.items() for subject in found
        }
        self.fields["subject"].choices = [
            (label, [(f"{kind}:{s.id}", s.name) for s in listed[kind]]) for kind, label in PriceKind.choices
        ]
        self.fields["effective_from"].initial = _next_hour()
        for name, text in RATE_LABELS.items():
            self.fields[name].label = text

    def clean_effective_from(self):
        value = self.cleaned_data["effective_from"]
        # A datetime-local input has no zone: the page says UTC, so it is read as UTC.
        return value.replace(tzinfo=UTC) if timezone.is_naive(value) else value.astimezone(UTC)

    def clean(self):
        data = super().clean() or {}
        if self.has_error("subject", "invalid_choice"):
            self._say_why_not_offered(self.data.get("subject", ""))
        kind, key = data.get("kind"), data.get("subject")
        if kind and key:
            if not key.startswith(f"{kind}:"):
                self.add_error("subject", f"Choose a subject of the kind {PriceKind(kind).label.lower()}.")
            else:
                allowed = Price.RATE_FIELDS[PriceKind(kind)]
                for name in RATE_LABELS:
                    if name not in allowed and data.get(name) is not None:
                        self.add_error(name, f"A {PriceKind(kind).label.lower()} price has no such rate.")
                if all(data.get(name) is None for name in allowed):
                    self.add_error(None, "Give at least one rate of this kind.")
        return data

    def _say_why_not_offered(self, key: str) -> None:
        """A subject the form does not offer (a composite endpoint, posted from a page loaded before it
        became one) is refused in the words of ``subjects.refusal``, not as an unknown choice."""
        kind, _, subject_id = key.partition(":")
        if kind not in PriceKind.values:
            return
        subject = next((s for s in subjects.listing(kind) if s.id == subject_id), None)
        if subject is not None and (refused := subjects.refusal(subject)):
            self.errors["subject"] = self.error_class([refused])

    def rates(self) -> dict[str, Decimal]:
        allowed = Price.RATE_FIELDS[PriceKind(self.cleaned_data["kind"])]
        return {name: self.cleaned_data[name] for name in allowed if self.cleaned_data.get(name) is not None}


def _book() -> list[dict]:
    """Each priced subject with its version in force now and its history, newest first."""
    now = timezone.now()
    subjects_seen: dict[tuple[str, str], dict] = {}
    prices = Price.objects.select_related("created_by").order_by(
        "kind", "subject_name", "subject_id", "-effective_from"
    )
    for price in prices:
        entry = subjects_seen.setdefault(
            (price.kind, price.subject_id),
            {
                "kind": price.kind,
                "kind_label": price.get_kind_display(),
                "name": price.subject_name,
                "current": None,
                "future": [],
                "history": [],
            },
        )
        if price.effective_from > now:
            entry["future"].append(price)
        elif entry["current"] is None:
            entry["current"] = price
        if len(entry["history"]) < HISTORY_SHOWN:
            entry["history"].append(price)
    rows = list(subjects_seen.values())
    for row in rows:
        shown = row["current"] or (row["future"][-1] if row["future"] else None)
        row["rates"] = [(RATE_LABELS[name], value) for name, value in shown.rates().items()] if shown else []
    return rows


def _page(request, actor, form=None, status=200):
    can_set = gate.can(actor, "price.manage")
    return render(
        request,
        "billing/price_book.html",
        {
            "book": _book(),
            "can_set": can_set,
            "form": form or (PriceForm() if can_set else None),
            "currency": settings.BILLING_CURRENCY,
            "rate_kinds": {kind: list(fields) for kind, fields in Price.RATE_FIELDS.items()},
        },
        status=status,
    )


@require_GET
def price_book(request):
    """Permission: ``billing.view`` somewhere (else 403); every reader sees the whole price book (prices
    are the organisation's list, not a team's data); the form is shown to ``price.manage`` (admins)."""
    actor, _reader = billing_reader(request)
    return _page(request, actor)


@require_POST
def price_set(request):
    """Permission: ``price.manage`` (admins, else 403). A new version of one subject's prices; audited."""
    actor, _reader = billing_reader(request)
    gate.require(actor, "price.manage")
    form = PriceForm(request.POST)
    done = submit(
        request,
        form,
        lambda: services.set_price(
            actor=actor,
            subject=form.subjects[form.cleaned_data["subject"]],
            effective_from=form.cleaned_data["effective_from"],
            note=form.cleaned_data["note"],
            **form.rates(),
        ),
        success=lambda price: (
            f"New price of {price.subject_name} from {price.effective_from:%Y-%m-%d %H:%M} UTC."
        ),
        then=lambda _price: redirect("billing-prices"),
    )
    if done is not None:
        return done
    return _page(request, actor, form=form, status=400)
