"""The audit log page and its signed exports, for auditors and platform admins."""

from __future__ import annotations

import json

from django import forms
from django.http import FileResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from portfolio import htmx, listing
from portfolio.accounts import gate
from portfolio.accounts.context import actor_of
from portfolio.accounts.models import Department, Team
from portfolio.audit.choices import grouped_choices
from portfolio.audit.exports import FORMATS, build_export, signing_keys
from portfolio.audit.filters import AuditFilter
from portfolio.audit.models import AuditEvent
from portfolio.errors import DomainError

DATETIME_LOCAL = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"]


class DateTimeLocalInput(forms.DateTimeInput):
    input_type = "datetime-local"

    def __init__(self, attrs=None):
        super().__init__(attrs, format="%Y-%m-%dT%H:%M")


class AuditFilterForm(forms.Form):
    """The page's filters; they map one to one onto ``AuditFilter``."""

    since = forms.DateTimeField(
        label="From (UTC)", required=False, input_formats=DATETIME_LOCAL, widget=DateTimeLocalInput()
    )
    until = forms.DateTimeField(
        label="Until (UTC)", required=False, input_formats=DATETIME_LOCAL, widget=DateTimeLocalInput()
    )
    actor = forms.CharField(
        label="Actor",
        required=False,
        max_length=150,
        widget=forms.TextInput(attrs={"placeholder": "user name", "autocapitalize": "none"}),
    )
    # A select of the AuditAction vocabulary, but still any text: a link may name an action the code no
    # longer records (older rows keep it), or a prefix ending in a dot (``team.``: every team action).
    action = forms.CharField(
        label="Action",
        required=False,
        max_length=64,
        help_text="One action, or every action on one kind of object.",
        widget=forms.Select(),
    )
    department = forms.ModelChoiceField(
        queryset=Department.objects.none(), required=False, empty_label="Any department"
    )
    team = forms.ModelChoiceField(queryset=Team.objects.none(), required=False, empty_label="Any team")
    object_type = forms.CharField(
        label="Object type",
        required=False,
        max_length=64,
        widget=forms.TextInput(attrs={"placeholder": "accounts.team"}),
    )
    object_id = forms.CharField(label="Object id", required=False, max_length=64)

    def __init__(self, *args, actor, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["department"].queryset = gate.visible(actor, Department).order_by("name")
        self.fields["team"].queryset = gate.visible(actor, Team).order_by("name")
        choices: list = [("", "Any action"), *grouped_choices()]
        chosen = (self.data.get("action") or "").strip() if self.is_bound else ""
        if chosen and not any(chosen == value for _, group in choices[1:] for value, _ in group):
            choices.append((chosen, f"{chosen} (not in today's vocabulary)"))
        self.fields["action"].widget.choices = choices

    def clean(self):
        cleaned = super().clean() or {}
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and since >= until:
            self.add_error("until", "Must be after the start.")
        return cleaned

    def selection(self) -> AuditFilter:
        data = self.cleaned_data
        return AuditFilter(
            since=data["since"],
            until=data["until"],
            actor=data["actor"].strip(),
            action=data["action"].strip(),
            department_id=data["department"].pk if data["department"] else None,
            team_id=data["team"].pk if data["team"] else None,
            object_type=data["object_type"].strip(),
            object_id=data["object_id"].strip(),
        )


def _pretty(value) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) if value is not None else ""


def _changed_keys(before, after) -> list[str]:
    if not isinstance(before, dict) or not isinstance(after, dict):
        return []
    return sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))


def _decorate(events: list[AuditEvent]) -> None:
    """Names for the ids on one page, and the before/after JSON ready to read."""
    team_names: dict[int | None, str] = dict(
        Team.objects.filter(pk__in={e.team_id for e in events if e.team_id}).values_list("pk", "name")
    )
    department_names: dict[int | None, str] = dict(
        Department.objects.filter(pk__in={e.department_id for e in events if e.department_id}).values_list(
            "pk", "name"
        )
    )
    for event in events:
        event.team_name = team_names.get(event.team_id, "")
        event.department_name = department_names.get(event.department_id, "")
        event.before_json, event.after_json = _pretty(event.before), _pretty(event.after)
        event.changed = _changed_keys(event.before, event.after)


@require_GET
def audit_log(request):
    """Permission: ``audit.view`` (auditor or platform admin). htmx gets the results fragment."""
    actor = actor_of(request)
    gate.require(actor, "audit.view")
    form = AuditFilterForm(request.GET, actor=actor)
    page = None
    if form.is_valid():
        events = form.selection().apply(gate.visible(actor, AuditEvent)).order_by("-sequence")
        page = listing.paginate(request, events)
        page.object_list = list(page.object_list)
        _decorate(page.object_list)
    context = {
        "form": form,
        "page": page,
        "query": listing.query_without(request, "page"),
        # The export form carries the filters as hidden inputs: it is a POST, never a link to follow.
        "export_filters": [
            (name, value) for name in form.fields for value in request.GET.getlist(name) if value
        ],
        "can_export": gate.can(actor, "audit.export"),
        "formats": FORMATS,
        "signing_keys": signing_keys(),
        "filtered": listing.is_filtered(request),
    }
    return htmx.page_or_fragment(request, "audit/log.html", "audit/partials/results.html", context)


@require_POST
def audit_export(request):
    """Permission: ``audit.export`` (auditor or platform admin). A signed zip of the filtered events.

    POST with the CSRF token, never GET: an export writes an audit row in the caller's name and builds a
    zip, and a top-level cross-site navigation carries the (SameSite=Lax) session cookie, so a GET could
    be run by any site the auditor visits."""
    actor = actor_of(request)
    gate.require(actor, "audit.export")
    form = AuditFilterForm(request.POST, actor=actor)
    fmt = request.POST.get("format", "jsonl")
    error = ""
    if not form.is_valid():
        error = "The filters are not valid; correct them on the audit log page and export again."
    else:
        try:
            export = build_export(actor=actor, selection=form.selection(), fmt=fmt)
        except DomainError as exc:
            error = exc.message
        else:
            response = FileResponse(open(export.path, "rb"), as_attachment=True, filename=export.filename)  # noqa: SIM115
            export.path.unlink()  # the open handle keeps the data readable until the response is sent
            return response
    return render(request, "audit/export_error.html", {"error": error, "form": form}, status=400)
