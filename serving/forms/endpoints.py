"""Forms of the endpoints pages: a new endpoint, its weighted routes and its fallback, and who it is shared
with. They only parse input: every change goes through serving.services."""

from __future__ import annotations

import json

from django import forms
from django.core.validators import MaxLengthValidator
from django.forms.fields import InvalidJSONInput

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Department, Team
from portfolio.formfields import optional_choice
from serving.choices import EndpointKind, StickyBy
from serving.forms.base import NAME_ATTRS, NAME_HELP, clean_name, managed_teams
from serving.models import Deployment, Endpoint


class AdapterSelect(forms.Select):
    """Adapters grouped by deployment; each option says its deployment so the page can offer only the
    adapters of the deployment chosen in the same row."""

    def optgroups(self, name, value, attrs=None):
        groups = super().optgroups(name, value, attrs)
        for group_name, options, _index in groups:
            for option in options:
                if group_name:
                    option["attrs"]["data-deployment"] = group_name
        return groups


class RouteForm(forms.Form):
    deployment = forms.ChoiceField(required=False)
    adapter = forms.ChoiceField(required=False, widget=AdapterSelect)
    weight = forms.IntegerField(min_value=0, max_value=10_000, initial=100, required=False)

    def __init__(self, *args, deployments: list[tuple[str, str]], adapters: dict[str, list[str]], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["deployment"].choices = [("", "—"), *deployments]
        grouped = [
            (deployment, [(name, name) for name in names]) for deployment, names in adapters.items() if names
        ]
        self.fields["adapter"].choices = [("", "Base model"), *grouped]

    def clean(self):
        cleaned = super().clean() or {}
        if cleaned.get("deployment") and cleaned.get("weight") is None:
            self.add_error("weight", "Give a weight (0-10000).")
        return cleaned


class BaseRouteFormSet(forms.BaseFormSet):
    def clean(self):
        if any(self.errors):
            return
        routes = self.routes()
        if not routes:
            raise forms.ValidationError("Add at least one route: choose a deployment and give it a weight.")
        targets = [(route["deployment"], route["adapter"]) for route in routes]
        twice = sorted({f"{d}/{a}" if a else d for d, a in targets if targets.count((d, a)) > 1})
        if twice:  # as services refuse it: rollouts key routes by target
            raise forms.ValidationError(
                f"{', '.join(twice)} {'are' if len(twice) > 1 else 'is'} listed more than once: list each "
                "target once, with its weights added up."
            )

    def routes(self) -> list[dict]:
        """The rows that name a deployment and are not removed, as ``services`` takes them."""
        routes = []
        for form in self.forms:
            data = getattr(form, "cleaned_data", None) or {}
            if not data.get("deployment") or data.get("DELETE"):
                continue
            routes.append(
                {
                    "deployment": data["deployment"],
                    "adapter": data.get("adapter") or None,
                    "weight": data["weight"],
                }
            )
        return routes


RouteFormSet = forms.formset_factory(
    RouteForm, formset=BaseRouteFormSet, extra=1, can_delete=True, max_num=32, validate_max=True
)


def route_formset(data=None, *, deployments: list[Deployment], initial: list[dict] | None = None):
    """The route rows of an endpoint; ``deployments`` come with their adapters prefetched."""
    several_teams = len({d.owner_team_id for d in deployments}) > 1
    choices = [(d.name, f"{d.name} ({d.owner_team.name})" if several_teams else d.name) for d in deployments]
    adapters = {d.name: [a.name for a in d.adapters.all()] for d in deployments}
    return RouteFormSet(
        data, initial=initial, prefix="routes", form_kwargs={"deployments": choices, "adapters": adapters}
    )


class FallbackField(forms.ModelChoiceField):
    with_team = False

    def label_from_instance(self, obj: Endpoint) -> str:
        return f"{obj.name} ({obj.owner_team.name})" if self.with_team else obj.name


class MaxNField(forms.IntegerField):
    def __init__(self, **kwargs):
        super().__init__(
            min_value=1,
            max_value=128,
            initial=8,
            required=False,
            label="Completions per prompt, at most",
            help_text="The most completions (n) one request may ask for: each is reserved against "
            "the caller's budget and billed.",
            **kwargs,
        )


class EndpointForm(forms.Form):
    name = forms.CharField(
        max_length=63,
        help_text=f"{NAME_HELP} What clients pass as “model”; it cannot change later.",
        widget=forms.TextInput(NAME_ATTRS),
    )
    team = forms.ModelChoiceField(queryset=Team.objects.none(), empty_label="Choose a team")
    description = forms.CharField(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}))
    fallback = optional_choice(
        Endpoint,
        field=FallbackField,
        empty_label="No fallback",
        help_text="Called instead when no replica behind this endpoint is ready.",
    )
    max_n = MaxNField()

    def __init__(self, *args, actor: Actor, **kwargs):
        super().__init__(*args, **kwargs)
        teams = managed_teams(actor)
        self.fields["team"].queryset = teams
        if len(teams) == 1:
            self.fields["team"].initial = teams[0].pk
        # A fallback is an endpoint of the same team (services refuse another team's): only the endpoints of
        # the teams offered above, named with their team when there are several.
        self.fields["fallback"].queryset = (
            gate.visible(actor, Endpoint)
            .filter(owner_team__in=teams)
            .select_related("owner_team")
            .order_by("name")
        )
        self.fields["fallback"].with_team = len(teams) > 1

    def clean_name(self):
        return clean_name(self.cleaned_data["name"])


class FallbackForm(forms.Form):
    fallback = optional_choice(
        Endpoint,
        field=FallbackField,
        empty_label="No fallback",
        help_text="Called instead when no replica behind this endpoint is ready.",
    )
    max_n = MaxNField()
    sticky_by = forms.ChoiceField(
        choices=StickyBy.choices,
        required=False,
        label="A/B assignment",
        help_text="Sticky: one API key, or one value of a request header, keeps seeing one route.",
    )
    sticky_header = forms.CharField(
        required=False,
        max_length=64,
        label="Sticky header",
        help_text="With assignment by header: its name, e.g. X-User-Id (a request without it: random).",
    )

    def __init__(self, *args, actor: Actor, endpoint: Endpoint, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["fallback"].queryset = (
            gate.visible(actor, Endpoint)
            .filter(owner_team_id=endpoint.owner_team_id)
            .exclude(pk=endpoint.pk)
            .order_by("name")
        )
        self.fields["fallback"].initial = endpoint.fallback_id
        self.fields["max_n"].initial = endpoint.max_n
        self.fields["sticky_by"].initial = endpoint.sticky_by
        self.fields["sticky_header"].initial = endpoint.sticky_header


class ShareForm(forms.Form):
    """Whom to share an endpoint with: one team, one department, or the organisation. Teams and departments
    are the organisation's: all are offered, less the owning team and what the endpoint is shared with."""

    target = forms.ChoiceField(
        label="Share with",
        help_text="Their keys may call it from the gateway's next refresh (a second); each call is charged to "
        "the caller's team and department.",
    )

    def __init__(self, *args, endpoint: Endpoint, **kwargs):
        super().__init__(*args, **kwargs)
        shares = list(endpoint.shares.all())
        teams = (
            Team.objects.exclude(pk=endpoint.owner_team_id)
            .exclude(pk__in=[s.team_id for s in shares if s.team_id])
            .select_related("department")
            .order_by("name")
        )
        departments = Department.objects.exclude(
            pk__in=[s.department_id for s in shares if s.department_id]
        ).order_by("name")
        choices: list = [("", "Choose a team, a department or the organisation")]
        if not any(s.organisation for s in shares):
            choices.append(("organisation", "The whole organisation"))
        choices.append(("Departments", [(f"department:{d.pk}", str(d)) for d in departments]))
        choices.append(("Teams", [(f"team:{t.pk}", f"{t.name} ({t.department.name})") for t in teams]))
        self.fields["target"].choices = choices

    def targets(self) -> dict:
        """The chosen target as ``services.share_endpoint`` takes it."""
        kind, _, pk = self.cleaned_data["target"].partition(":")
        if kind == "team":
            return {"team": Team.objects.get(pk=pk)}
        if kind == "department":
            return {"department": Department.objects.get(pk=pk)}
        return {"organisation": True}


class BoundedJSONField(forms.JSONField):
    """Django's ``JSONField`` parses first and checks ``max_length`` after, and turns only a syntax error
    into a form error: a megabyte is parsed in full, 5,000 ``[`` overflow the parser into a
    ``RecursionError`` and a 5,000-digit number is a ``ValueError`` (500s). This one measures before it
    parses, and both are form errors. Its inherited ``MaxLengthValidator`` is dropped: it measured the parsed
    value, and ``len()`` of a JSON number or boolean raised (a 500; found by review)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.validators = [v for v in self.validators if not isinstance(v, MaxLengthValidator)]

    def to_python(self, value):
        if isinstance(value, str) and self.max_length is not None and len(value) > self.max_length:
            raise forms.ValidationError(
                f"At most {self.max_length:,} characters (this has {len(value):,}).", code="max_length"
            )
        try:
            parsed = super().to_python(value)
        except RecursionError:
            raise forms.ValidationError("The JSON is nested too deeply.", code="invalid") from None
        except ValueError:  # an integer over 4,300 digits, which int() refuses
            raise forms.ValidationError("The JSON holds a number too long to read.", code="invalid") from None
        try:
            # A lone surrogate ("\ud800") is valid JSON but no UTF-8 text: PostgreSQL refused it at save and the
            # page redisplaying it could not be encoded (500s; found by review).
            json.dumps(parsed, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise forms.ValidationError(
                "The JSON holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is no text.", code="invalid"
            ) from None
        return parsed

    def bound_data(self, data, initial):
        # Redisplaying the refused input parses it again.
        if isinstance(data, str) and self.max_length is not None and len(data) > self.max_length:
            return InvalidJSONInput(data)
        try:
            parsed = super().bound_data(data, initial)
            json.dumps(parsed, ensure_ascii=False).encode("utf-8")  # a lone surrogate: shown as typed
        except (RecursionError, ValueError):  # (UnicodeEncodeError is one)
            return InvalidJSONInput(data)
        return parsed


class CompositeForm(forms.Form):
    """An endpoint's kind and, for a router, cascade or vote, its settings as JSON; made plain, the routes it
    should have, as JSON too (all validated by the service)."""

    kind = forms.ChoiceField(choices=EndpointKind.choices)
    config = BoundedJSONField(
        required=False,
        max_length=20_000,
        widget=forms.Textarea(attrs={"rows": 8, "spellcheck": "false", "class": "mono"}),
        help_text=(
            'Router: {"classifier": "…", "routes": {"label": "endpoint"}, "default": "…", "system": "…", '
            '"max_tokens": 4}. Cascade: {"small": "…", "large": "…", "threshold": -1.0} (mean token '
            'log-probability), or {"small": "…", "large": "…", "confidence": "verifier", "verifier": "…"} '
            '(its yes or no). Vote: {"endpoint": "…", "n": 5, "method": "majority", "best_of_n" or '
            '"verifier" (with "verifier": "…")}; a verifier may have "verifier_prompt". '
            "Each names a plain endpoint of this team."
        ),
    )

    routes = BoundedJSONField(
        required=False,
        max_length=20_000,
        label="Routes, when made plain",
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "class": "mono"}),
        help_text=(
            'Plain: its weighted routes, e.g. [{"deployment": "…", "weight": 100}] (with "adapter": "…" for an '
            "adapter), in place of any it has; empty: the routes it kept from before it was made composite."
        ),
    )

    def __init__(self, *args, endpoint: Endpoint, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["kind"].initial = endpoint.kind
        self.fields["config"].initial = endpoint.config or {}

    def clean_routes(self) -> list[dict] | None:
        """None (keep the routes it has), or a list of route objects as ``services`` takes them."""
        routes = self.cleaned_data.get("routes")
        if routes in (None, "", []):
            return None
        if not isinstance(routes, list) or not all(isinstance(route, dict) for route in routes):
            raise forms.ValidationError('A list of routes, e.g. [{"deployment": "…", "weight": 100}].')
        return routes
