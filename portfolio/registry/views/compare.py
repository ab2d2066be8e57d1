"""Two versions of a model side by side: their facts and their metrics, differences marked, numeric
metrics with B minus A."""

from __future__ import annotations

import json

from django.shortcuts import render
from django.views.decorators.http import require_GET

from portfolio.accounts import gate
from portfolio.accounts.context import actor_of
from portfolio.registry.choices import VersionStatus
from portfolio.registry.forms import CompareForm
from portfolio.registry.models import Model
from portfolio.registry.views.versions import visible_or_none, visible_version
from portfolio.templatetags.formatting import human_count


def _base(version) -> str:
    """The base's label only if the viewer may see it (``seen_base``, set by the view), as on the version's
    page: an adapter shared org-wide must not name a base kept to its own team."""
    if not version.base_version_id:
        return "—"
    return version.seen_base.label if version.seen_base else "a version you cannot see"


COMPARED_FIELDS = [
    ("Kind", lambda v: v.get_kind_display()),
    ("Status", lambda v: v.get_status_display()),
    ("Source", lambda v: v.get_source_display()),
    ("Reference", lambda v: v.source_ref or "—"),
    ("Base version", _base),
    ("Format", lambda v: v.format or "—"),
    ("Architecture", lambda v: v.architecture or "—"),
    ("Parameters", lambda v: _params(v.parameter_count)),
    ("Context length", lambda v: f"{v.context_length:,}" if v.context_length else "—"),
    ("Data type", lambda v: v.dtype or "—"),
    ("Quantization", lambda v: v.quantization or "none"),
    ("Chat template", lambda v: "yes" if v.has_chat_template else "no"),
    ("Artifact", lambda v: v.artifact_id or "—"),
    ("Size", lambda v: v.artifact.size_bytes if v.artifact_id else None),
    ("Files", lambda v: str(v.artifact.file_count) if v.artifact_id else "—"),
    ("Health", lambda v: v.artifact.get_health_display() if v.artifact_id else "—"),
    ("Created", lambda v: v.created_at.strftime("%Y-%m-%d %H:%M")),
]


def _params(count: int | None) -> str:
    if not count:
        return "—"
    return f"{human_count(count)} ({count:,})" if count >= 1000 else str(count)


def _delta(left, right) -> str:
    """B minus A for two numeric metrics ("+0.032"), else nothing."""
    numbers = [v for v in (left, right) if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(numbers) != 2 or left == right:
        return ""
    return f"{right - left:+.4g}"


def _display(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return str(value)


@require_GET
def model_compare(request, name: str):
    """Permission: the model is visible (``gate.get_visible``), else 404."""
    actor = actor_of(request)
    model = gate.get_visible(actor, Model, name=name)
    if "a" in request.GET or "b" in request.GET:
        form = CompareForm(request.GET, model=model)
    else:
        # Nothing chosen yet: the two newest ready versions (else the two newest), "what changed?".
        newest = model.versions.order_by("-number").values_list("number", flat=True)
        numbers = list(newest.filter(status=VersionStatus.READY)[:2])
        numbers = numbers if len(numbers) == 2 else list(newest[:2])
        form = CompareForm({"a": numbers[-1], "b": numbers[0]} if numbers else None, model=model)
    rows, metric_rows, pair = [], [], None
    if form.is_bound and form.is_valid():
        pair = (
            visible_version(actor, name, form.cleaned_data["a"]),
            visible_version(actor, name, form.cleaned_data["b"]),
        )
        for version in pair:
            version.seen_base = visible_or_none(actor, version.base_version)
        for label, read in COMPARED_FIELDS:
            left, right = read(pair[0]), read(pair[1])
            rows.append(
                {"label": label, "a": left, "b": right, "differs": left != right, "size": label == "Size"}
            )
        keys = sorted(set(pair[0].metrics or {}) | set(pair[1].metrics or {}))
        for key in keys:
            left, right = (pair[0].metrics or {}).get(key), (pair[1].metrics or {}).get(key)
            metric_rows.append(
                {
                    "label": key,
                    "a": _display(left),
                    "b": _display(right),
                    "differs": left != right,
                    "delta": _delta(left, right),
                }
            )
    return render(
        request,
        "registry/compare.html",
        {
            "model": model,
            "form": form,
            "pair": pair,
            "rows": rows,
            "metric_rows": metric_rows,
            "differences": sum(row["differs"] for row in rows + metric_rows),
        },
    )
