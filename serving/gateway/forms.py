"""Forms of the API-key pages and the usage filters. They only parse input: changes go through
serving.gateway.services."""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta

from django import forms
from django.db.models import Q
from django.utils import timezone

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from serving.forms.base import managed_teams
from serving.gateway.models import ApiKey, KeyPolicy
from serving.gateway.services import LIMIT_BOUNDS, LIMIT_FIELDS, MAX_KEY_LIFETIME
from serving.models import Endpoint, EndpointShare

PERIODS = [(7, "Last 7 days"), (30, "Last 30 days"), (90, "Last 90 days")]
DEFAULT_PERIOD = 30


class DateInput(forms.DateInput):
    input_type = "date"

    def __init__(self, attrs=None):
        super().__init__(attrs, format="%Y-%m-%d")


def _ip_list(value: str) -> list[str]:
    """ "10.0.0.0/8, 192.168.1.7" -> ["10.0.0.0/8", "192.168.1.7"]; the service checks each one."""
    return [part for part in re.split(r"[\s,]+", value.strip()) if part]


def callable_endpoints(teams) -> list[tuple[Team, list[Endpoint]]]:
    """For each of ``teams``, the endpoints its keys may call: its own and those shared with it, its
    department or the organisation (``Endpoint.objects.callable_by``, for many teams in two queries)."""
    teams = list(teams)
    by_team: dict[int, dict[int, Endpoint]] = {team.pk: {} for team in teams}
    for endpoint in Endpoint.objects.filter(owner_team__in=teams).select_related("owner_team"):
        by_team[endpoint.owner_team_id][endpoint.pk] = endpoint
    shares = EndpointShare.objects.filter(
        Q(team__in=teams) | Q(department__in={team.department_id for team in teams}) | Q(organisation=True)
    ).select_related("endpoint__owner_team")
    for share in shares:
        for team in teams:
            if share.organisation or share.team_id == team.pk or share.department_id == team.department_id:
                by_team[team.pk].setdefault(share.endpoint_id, share.endpoint)
    return [(team, sorted(by_team[team.pk].values(), key=lambda e: e.name)) for team in teams]


class KeyLimitsForm(forms.Form):
    """What a key may call and how much: scopes, addresses, rate limits and monthly budgets."""

    limits_locked = False

    scopes = forms.MultipleChoiceField(
        label="Endpoints",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Leave all unticked to allow every endpoint the team may call, including ones added or shared later.",
    )
    allowed_ips = forms.CharField(
        label="Allowed IP ranges",
        required=False,
        max_length=2000,
        help_text="Comma-separated addresses or CIDR ranges, e.g. 10.0.0.0/8, 192.168.1.7. Empty allows any address.",
        widget=forms.TextInput(
            attrs={"autocomplete": "off", "spellcheck": "false", "placeholder": "any address"}
        ),
    )
    rpm_limit = forms.IntegerField(
        label="Requests per minute",
        required=False,
        min_value=LIMIT_BOUNDS["rpm_limit"][0],
        max_value=LIMIT_BOUNDS["rpm_limit"][1],
        help_text="Empty: no limit.",
    )
    tpm_limit = forms.IntegerField(
        label="Tokens per minute",
        required=False,
        min_value=LIMIT_BOUNDS["tpm_limit"][0],
        max_value=LIMIT_BOUNDS["tpm_limit"][1],
        help_text="Input and output tokens together. Empty: no limit.",
    )
    monthly_token_budget = forms.IntegerField(
        label="Token budget per month",
        required=False,
        min_value=LIMIT_BOUNDS["monthly_token_budget"][0],
        max_value=LIMIT_BOUNDS["monthly_token_budget"][1],
        help_text="Calls are refused once the calendar month's tokens reach it.",
    )
    monthly_budget = forms.DecimalField(
        label="Money budget per month",
        required=False,
        min_value=LIMIT_BOUNDS["monthly_budget"][0],
        max_value=LIMIT_BOUNDS["monthly_budget"][1],
        max_digits=12,
        decimal_places=2,
        help_text="In the price book's currency; calls are refused once the month's cost reaches it.",
    )

    def set_endpoints(self, callable_by: list[tuple[Team, list[Endpoint]]]) -> None:
        """The endpoints offered as scopes, per team the key may be of (``callable_endpoints``), so that the
        page shows the chosen team's: its own and those shared with it."""
        self.callable_by = callable_by
        names = sorted({endpoint.name for _, endpoints in callable_by for endpoint in endpoints})
        self.fields["scopes"].choices = [(name, name) for name in names]

    def callable_names(self, team: Team) -> set[str]:
        return {e.name for t, endpoints in self.callable_by if t.pk == team.pk for e in endpoints}

    def scope_groups(self) -> list[dict]:
        """The scope checkboxes grouped by the key's team, for the template."""
        chosen = set(self["scopes"].value() or [])
        return [
            {
                "team_id": team.pk,
                "team": team.name,
                "options": [
                    {
                        "value": endpoint.name,
                        "id": f"id_scopes_{team.pk}_{endpoint.pk}",
                        "checked": endpoint.name in chosen,
                        "description": endpoint.description,
                        "shared_by": endpoint.owner_team.name if endpoint.owner_team_id != team.pk else "",
                    }
                    for endpoint in endpoints
                ],
            }
            for team, endpoints in self.callable_by
            if endpoints
        ]

    def clean_allowed_ips(self) -> list[str]:
        return _ip_list(self.cleaned_data["allowed_ips"])

    def lock_limits(self) -> None:
        """For an actor who may not change limits (a developer editing a key): shown, not editable, and
        never passed on, whatever a hand-made POST carries."""
        for name in LIMIT_FIELDS:
            self.fields[name].disabled = True
        self.limits_locked = True

    def limits(self, *, omit_empty: bool = False) -> dict:
        """The cleaned values, named as ``services.create_key`` and ``update_key`` take them. With
        ``omit_empty`` an empty limit is left out (the team policy's ceiling) rather than "no limit"."""
        data = self.cleaned_data
        values = {"scopes": list(data["scopes"]), "allowed_ips": data["allowed_ips"]}
        for name in LIMIT_FIELDS:
            if self.fields[name].disabled or (omit_empty and data[name] is None):
                continue
            values[name] = data[name]
        return values


class KeyCreateForm(KeyLimitsForm):
    name = forms.CharField(
        max_length=100,
        help_text="What the key is for, e.g. “ticket router in production”.",
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )
    team = forms.ModelChoiceField(queryset=Team.objects.none(), empty_label="Choose a team")
    expires_on = forms.DateField(
        label="Expires on",
        required=False,
        widget=DateInput(),
        help_text="The key stops working at the end of this day (UTC). Empty: it does not expire.",
    )

    field_order = ["name", "team", "expires_on", "scopes", "allowed_ips"]

    def __init__(self, *args, actor: Actor, **kwargs):
        super().__init__(*args, **kwargs)
        teams = managed_teams(actor, "apikey.manage")
        self.fields["team"].queryset = teams
        if len(teams) == 1:
            self.fields["team"].initial = teams[0].pk
        # The teams whose key policy binds this actor, with their ceilings (shown next to the limits).
        bound = [team for team in teams if not gate.can(actor, "apikey.limits", team)]
        policies = {p.team_id: p for p in KeyPolicy.objects.filter(team__in=bound)}
        self.policies = [
            {"team": team, "ceilings": (policies.get(team.pk) or KeyPolicy(team=team)).ceilings()}
            for team in bound
        ]
        self.set_endpoints(callable_endpoints(teams))

    def clean_expires_on(self):
        day = self.cleaned_data["expires_on"]
        if day is not None and day < timezone.now().date():
            raise forms.ValidationError("Choose today or a later day.")
        if day is not None and day - timezone.now().date() >= MAX_KEY_LIFETIME:
            raise forms.ValidationError(
                "Choose a day within ten years, or none for a key that does not expire."
            )
        return day

    def clean(self):
        cleaned = super().clean() or {}
        team, scopes = cleaned.get("team"), cleaned.get("scopes") or []
        if team is not None:
            callable_names = self.callable_names(team)
            foreign = [name for name in scopes if name not in callable_names]
            if foreign:
                self.add_error("scopes", f"{foreign[0]} is not an endpoint of {team.name} or shared with it.")
        return cleaned

    def expires_at(self) -> datetime | None:
        day = self.cleaned_data["expires_on"]
        return datetime.combine(day + timedelta(days=1), time.min, tzinfo=UTC) if day else None


class KeyPolicyForm(forms.Form):
    """A team's ceilings for the keys its developers create; empty: no ceiling."""

    rpm_limit = KeyLimitsForm.base_fields["rpm_limit"]
    tpm_limit = KeyLimitsForm.base_fields["tpm_limit"]
    monthly_token_budget = KeyLimitsForm.base_fields["monthly_token_budget"]
    monthly_budget = KeyLimitsForm.base_fields["monthly_budget"]

    def __init__(self, *args, policy: KeyPolicy, **kwargs):
        if not args and "initial" not in kwargs:
            kwargs["initial"] = policy.ceilings()
        super().__init__(*args, **kwargs)
        for name, field in self.fields.items():
            field.help_text = {
                "rpm_limit": "The most requests per minute a developer's key may have. Empty: no ceiling.",
                "tpm_limit": "The most tokens per minute a developer's key may have. Empty: no ceiling.",
                "monthly_token_budget": "The most tokens per month a developer's key may have. Empty: no ceiling.",
                "monthly_budget": "The most money per month a developer's key may have. Empty: no ceiling.",
            }[name]


class KeyEditForm(KeyLimitsForm):
    def __init__(self, *args, key: ApiKey, **kwargs):
        if not args and "initial" not in kwargs:
            kwargs["initial"] = {
                "scopes": list(key.scopes),
                "allowed_ips": ", ".join(key.allowed_ips),
                "rpm_limit": key.rpm_limit,
                "tpm_limit": key.tpm_limit,
                "monthly_token_budget": key.monthly_token_budget,
                "monthly_budget": key.monthly_budget,
            }
        super().__init__(*args, **kwargs)
        self.set_endpoints(callable_endpoints([key.team]))
        # Scopes naming an endpoint unshared or deleted since have no box: sent as none, they made a key
        # that could call one endpoint a key that can call every one. Kept as they are, and said.
        offered = self.callable_names(key.team)
        self.stale_scopes = [name for name in key.scopes if name not in offered]

    def limits(self, *, omit_empty: bool = False) -> dict:
        values = super().limits(omit_empty=omit_empty)
        values["scopes"] = [*values["scopes"], *self.stale_scopes]
        return values


# --- Usage -----------------------------------------------------------------------------------------
class KeyChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: ApiKey) -> str:
        return f"{obj.name} ({obj.display_prefix}) · {obj.team.name}"


class UsageFilterForm(forms.Form):
    """The usage dashboard's filters; every choice is limited to what the actor may see."""

    days = forms.TypedChoiceField(label="Period", choices=PERIODS, coerce=int, required=False)
    team = forms.ModelChoiceField(queryset=Team.objects.none(), required=False, empty_label="All teams")
    endpoint = forms.ChoiceField(required=False)
    key = KeyChoiceField(
        label="API key", queryset=ApiKey.objects.none(), required=False, empty_label="All keys"
    )

    def __init__(self, *args, actor: Actor, endpoints: list[str], keys: list[int], **kwargs):
        """``endpoints`` and ``keys``: those with usage lately (the view's window); a key asked for by a
        link stays a valid choice while the actor may see it."""
        super().__init__(*args, **kwargs)
        self.fields["team"].queryset = gate.visible(actor, Team).order_by("name")
        self.fields["endpoint"].choices = [("", "All endpoints"), *((name, name) for name in endpoints)]
        asked = str(self.data.get("key") or "")
        shown = Q(pk__in=keys) | (Q(pk=int(asked)) if asked.isdecimal() and len(asked) < 19 else Q(pk__in=[]))
        self.fields["key"].queryset = (
            gate.visible(actor, ApiKey)
            .filter(shown)
            .select_related("team")
            .order_by("team__name", "name", "id")
        )

    def clean_days(self) -> int:
        return self.cleaned_data["days"] or DEFAULT_PERIOD
