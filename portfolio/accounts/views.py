"""Web pages of the organisation: sign-in, dashboard, departments, teams and members, users, tokens.

Every view decides access explicitly with the gate (``gate.require`` / ``gate.get_visible`` /
``gate.visible`` / ``gate.can``); the docstrings say which capability each page needs. Changes go
through ``accounts.services``; a ``DomainError`` becomes a form error, while ``NotFound`` and
``Forbidden`` propagate to Django's 404 and 403 pages.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import authenticate, get_user_model, update_session_auth_hash
from django.contrib.auth import login as auth_login
from django.contrib.auth import logout as auth_logout
from django.contrib.auth.decorators import login_not_required
from django.core.paginator import Paginator
from django.db.models import Count, Prefetch
from django.shortcuts import redirect, render
from django.urls import NoReverseMatch, reverse
from django.utils.cache import patch_vary_headers
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from portfolio.accounts import gate, lockout, services
from portfolio.accounts.actor import Actor
from portfolio.accounts.capabilities import (
    ADMIN,
    AUDITOR,
    DEVELOPER,
    ENGINEER,
    ORG_ACTIONS,
    OWNER,
    VIEWER,
    matrix_rows,
)
from portfolio.accounts.choices import OrgRole, TeamRole
from portfolio.accounts.context import actor_of, wants_fragment
from portfolio.accounts.forms import (
    AddMemberForm,
    DepartmentForm,
    LoginForm,
    MemberRoleForm,
    PasswordChangeForm,
    TeamCreateForm,
    TeamEditForm,
    TokenCreateForm,
    UserCreateForm,
    apply_domain_error,
)
from portfolio.accounts.models import Department, Membership, OrgRoleGrant, PersonalToken, Team
from portfolio.audit import services as audit
from portfolio.audit.models import AuditEvent
from portfolio.errors import Conflict, DomainError, Invalid, NotFound
from portfolio.requestcontext import client_ip

User = get_user_model()
PAGE_SIZE = 50
GET_POST = require_http_methods(["GET", "POST"])


def _page(request, queryset, per_page: int = PAGE_SIZE):
    return Paginator(queryset, per_page).get_page(request.GET.get("page"))


# --- Sign-in ---------------------------------------------------------------------------------------
def _safe_next(request) -> str:
    candidate = request.POST.get("next") or request.GET.get("next") or ""
    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return reverse(settings.LOGIN_REDIRECT_URL)


def _audit_attempt(request, action: str, username: str) -> None:
    """A failed or refused sign-in, audited under the name typed (never the password)."""
    anonymous = Actor(
        ip=client_ip(request),
        user_agent=request.headers.get("User-Agent", "")[:300],
        request_id=getattr(request, "request_id", None),
    )
    audit.record_standalone(
        anonymous, action, object_type="auth.user", object_id=username[:64], object_repr=username[:200]
    )


@login_not_required
@sensitive_post_parameters("password")
@csrf_protect
@never_cache
@GET_POST
def login_view(request):
    """Permission: none, this is the sign-in page. Throttled by ``accounts.lockout``."""
    next_url = _safe_next(request)
    if request.user.is_authenticated:
        return redirect(next_url)
    form = LoginForm(request.POST if request.method == "POST" else None)
    status = 200
    if form.is_valid():
        username, password = form.cleaned_data["username"], form.cleaned_data["password"]
        ip = client_ip(request)
        if lockout.is_locked(username, ip):
            # Refused before the password is looked at, so a locked account cannot be probed.
            _audit_attempt(request, "user.login_locked", username)
            form.add_error(None, "Too many failed attempts, try again later.")
            status = 429
        else:
            user = authenticate(request, username=username, password=password)
            if user is None:
                lockout.register_failure(username, ip)
                _audit_attempt(request, "user.login_failed", username)
                form.add_error(None, "Wrong user name or password.")
            else:
                lockout.clear(username)
                auth_login(request, user)
                audit.record_standalone(
                    actor_of(request), "user.login", user, object_repr=user.get_username()
                )
                return redirect(next_url)
    return render(request, "registration/login.html", {"form": form, "next": next_url}, status=status)


@require_POST
def logout_view(request):
    """Permission: any signed-in user, for their own session."""
    actor = actor_of(request)
    audit.record_standalone(actor, "user.logout", request.user, object_repr=request.user.get_username())
    auth_logout(request)
    messages.info(request, "You are signed out.")
    return redirect(settings.LOGOUT_REDIRECT_URL)


@sensitive_post_parameters()
@never_cache
@GET_POST
def password_change(request):
    """Permission: any signed-in user, for their own account."""
    actor = actor_of(request)
    form = PasswordChangeForm(request.user, request.POST if request.method == "POST" else None)
    if form.is_valid():
        try:
            services.change_password(
                actor=actor, user=request.user, new_password=form.cleaned_data["new_password1"]
            )
        except DomainError as exc:
            apply_domain_error(form, exc, {"new_password": "new_password1"})
        else:
            update_session_auth_hash(request, request.user)
            messages.success(request, "Your password was changed.")
            return redirect("dashboard")
    return render(request, "registration/password_change.html", {"form": form})


# --- Dashboard and roles ---------------------------------------------------------------------------
# What the platform does, with the pages of each part: a page not built yet is shown as "coming soon".
CAPABILITIES = [
    (
        "Model registry",
        "Register base models and keep every version with lineage and checksums.",
        [("Models", "model-list")],
    ),
    (
        "Fine-tuning and distillation",
        "LoRA, full and distillation runs on GPU or CPU pools.",
        [("Training", "training-list")],
    ),
    (
        "Deployments and endpoints",
        "vLLM replicas on on-prem pools behind an OpenAI-compatible gateway.",
        [("Deployments", "deployment-list"), ("Endpoints", "endpoint-list")],
    ),
    (
        "API keys, usage and billing",
        "Per-team keys with limits and budgets; chargeback per department.",
        [("API keys", "apikey-list"), ("Usage", "usage"), ("Billing", "billing")],
    ),
]


def _capabilities() -> list[dict]:
    def url(name: str) -> str | None:
        try:
            return reverse(name)
        except NoReverseMatch:
            return None

    rows = []
    for name, description, pages in CAPABILITIES:
        links = [{"label": label, "url": url(url_name)} for label, url_name in pages]
        rows.append(
            {
                "name": name,
                "description": description,
                "links": links,
                "available": any(link["url"] for link in links),
            }
        )
    return rows


@require_GET
def dashboard(request):
    """Permission: any signed-in user; every figure counts only what ``gate.visible`` lets them see."""
    actor = actor_of(request)
    memberships = (
        gate.visible(actor, Membership)
        .filter(user=request.user)
        .select_related("team__department")
        .order_by("team__name")
    )
    counts = [
        ("Departments", gate.visible(actor, Department).count(), "department-list"),
        ("Teams", gate.visible(actor, Team).count(), "team-list"),
        ("Active personal tokens", gate.visible(actor, PersonalToken).active().count(), "token-list"),
    ]
    if gate.can(actor, "user.view"):
        counts.append(("Active users", User.objects.filter(is_active=True).count(), "user-list"))
    recent_events = None
    if gate.can(actor, "audit.view"):
        recent_events = list(gate.visible(actor, AuditEvent).order_by("-sequence")[:10])
    return render(
        request,
        "dashboard.html",
        {
            "memberships": memberships,
            "counts": counts,
            "recent_events": recent_events,
            "org_roles": [OrgRole(role).label for role in sorted(actor.org_roles)],
            "capabilities": _capabilities(),
        },
    )


ROLE_COLUMNS = [
    (ADMIN, "Platform admin"),
    (AUDITOR, "Auditor"),
    (OWNER, "Owner"),
    (ENGINEER, "Engineer"),
    (DEVELOPER, "Developer"),
    (VIEWER, "Viewer"),
]


@require_GET
def roles(request):
    """Permission: any signed-in user. The matrix documents who may do what; it grants nothing."""
    actor = actor_of(request)
    groups: dict[str, list] = {}
    for action, allowed in matrix_rows():
        cells = [(label, allowed[role]) for role, label in ROLE_COLUMNS]
        scope = "Organisation" if action in ORG_ACTIONS else "Team"
        groups.setdefault(action.split(".")[0], []).append({"action": action, "scope": scope, "cells": cells})
    my_roles = [OrgRole(role).label for role in sorted(actor.org_roles)]
    return render(
        request,
        "roles.html",
        {"groups": groups, "columns": [label for _, label in ROLE_COLUMNS], "my_org_roles": my_roles},
    )


# --- Departments -----------------------------------------------------------------------------------
@require_GET
def department_list(request):
    """Permission: ``gate.visible`` (org-wide roles see all; members the departments of their teams)."""
    actor = actor_of(request)
    departments = gate.visible(actor, Department).order_by("name", "id")
    team_counts = dict(
        gate.visible(actor, Team)
        .values("department_id")
        .annotate(n=Count("id"))
        .values_list("department_id", "n")
    )
    page = _page(request, departments)
    for department in page:
        department.team_count = team_counts.get(department.pk, 0)
    return render(
        request,
        "accounts/department_list.html",
        {"page": page, "can_create": gate.can(actor, "department.create")},
    )


@GET_POST
def department_create(request):
    """Permission: ``department.create`` (platform admin)."""
    actor = actor_of(request)
    gate.require(actor, "department.create")
    form = DepartmentForm(request.POST if request.method == "POST" else None)
    if form.is_valid():
        try:
            department = services.create_department(actor=actor, **form.cleaned_data)
        except DomainError as exc:
            apply_domain_error(form, exc)
        else:
            messages.success(request, f"Department {department.name} created.")
            return redirect("department-detail", pk=department.pk)
    return render(request, "accounts/department_form.html", {"form": form, "department": None})


@require_GET
def department_detail(request, pk: int):
    """Permission: the department is visible (``gate.get_visible``), else 404."""
    actor = actor_of(request)
    department = gate.get_visible(actor, Department, pk=pk)
    teams = (
        gate.visible(actor, Team)
        .filter(department=department)
        .annotate(member_count=Count("memberships"))
        .order_by("name", "id")
    )
    return render(
        request,
        "accounts/department_detail.html",
        {
            "department": department,
            "teams": teams,
            "can_change": gate.can(actor, "department.change", department),
            "can_create_team": gate.can(actor, "team.create"),
        },
    )


@GET_POST
def department_edit(request, pk: int):
    """Permission: visible (else 404) and ``department.change`` (platform admin, else 403)."""
    actor = actor_of(request)
    department = gate.get_visible(actor, Department, pk=pk)
    gate.require(actor, "department.change", department)
    initial = {"name": department.name, "cost_center": department.cost_center}
    form = DepartmentForm(request.POST if request.method == "POST" else None, initial=initial)
    if form.is_valid():
        try:
            services.update_department(actor=actor, department=department, **form.cleaned_data)
        except DomainError as exc:
            apply_domain_error(form, exc)
            department.refresh_from_db()
        else:
            messages.success(request, f"Department {department.name} saved.")
            return redirect("department-detail", pk=department.pk)
    return render(request, "accounts/department_form.html", {"form": form, "department": department})


# --- Teams -----------------------------------------------------------------------------------------
@require_GET
def team_list(request):
    """Permission: ``gate.visible`` (org-wide roles see every team; members their own)."""
    actor = actor_of(request)
    teams = (
        gate.visible(actor, Team)
        .select_related("department")
        .annotate(member_count=Count("memberships"))
        .order_by("name", "id")
    )
    page = _page(request, teams)
    for team in page:
        team.my_role = actor.team_roles.get(team.pk)
    return render(
        request, "accounts/team_list.html", {"page": page, "can_create": gate.can(actor, "team.create")}
    )


@GET_POST
def team_create(request):
    """Permission: ``team.create`` (platform admin)."""
    actor = actor_of(request)
    gate.require(actor, "team.create")
    if request.method == "POST":
        form = TeamCreateForm(request.POST)
    else:
        form = TeamCreateForm(initial={"department": request.GET.get("department")})
    if form.is_valid():
        try:
            team = services.create_team(actor=actor, **form.cleaned_data)
        except DomainError as exc:
            apply_domain_error(form, exc)
        else:
            messages.success(request, f"Team {team.name} created. Add its first owner below.")
            return redirect("team-detail", slug=team.slug)
    return render(request, "accounts/team_create.html", {"form": form})


def _team_response(request, actor: Actor, team: Team, *, add_form=None, notice="", error=""):
    """The team page, or only its members table for an htmx call."""
    can_manage = gate.can(actor, "member.manage", team)
    context = {
        "team": team,
        "members": team.memberships.select_related("user").order_by("user__username", "id"),
        "can_manage": can_manage,
        "add_form": add_form or (AddMemberForm() if can_manage else None),
        "role_choices": TeamRole.choices,
        "notice": notice,
        "error": error,
    }
    if wants_fragment(request):
        response = render(request, "accounts/partials/members.html", context)
    else:
        context["can_change"] = gate.can(actor, "team.change", team)
        response = render(request, "accounts/team_detail.html", context)
    patch_vary_headers(response, ["HX-Request"])
    return response


def _done(request, team: Team, notice: str):
    """After a member change: the actor's own roles may have changed with it, so read them again."""
    request._portfolio_actor = None
    actor = actor_of(request)
    if not gate.visible(actor, Team).filter(pk=team.pk).exists():
        # The actor removed themselves: the team page is no longer theirs to see.
        messages.success(request, notice)
        if wants_fragment(request):
            return HttpResponseClientRedirect(reverse("team-list"))
        return redirect("team-list")
    if wants_fragment(request):
        return _team_response(request, actor, team, notice=notice)
    messages.success(request, notice)
    return redirect("team-detail", slug=team.slug)


def _refused(request, actor: Actor, team: Team, message: str):
    if wants_fragment(request):
        return _team_response(request, actor, team, error=message)
    messages.error(request, message)
    return redirect("team-detail", slug=team.slug)


def _team_for_members(request, slug: str) -> tuple[Actor, Team]:
    actor = actor_of(request)
    team = gate.get_visible(actor, Team, slug=slug)
    gate.require(actor, "member.manage", team)
    return actor, team


def _membership(team: Team, pk: int) -> Membership:
    membership = team.memberships.select_related("user", "team").filter(pk=pk).first()
    if membership is None:
        raise NotFound("Membership not found.")
    return membership


@require_GET
def team_detail(request, slug: str):
    """Permission: the team is visible (``gate.get_visible``), else 404. htmx gets the members table."""
    actor = actor_of(request)
    team = gate.get_visible(actor, Team, slug=slug)
    return _team_response(request, actor, team)


@GET_POST
def team_edit(request, slug: str):
    """Permission: visible (else 404) and ``team.change`` (team owner or platform admin, else 403)."""
    actor = actor_of(request)
    team = gate.get_visible(actor, Team, slug=slug)
    gate.require(actor, "team.change", team)
    initial = {"name": team.name, "description": team.description}
    form = TeamEditForm(request.POST if request.method == "POST" else None, initial=initial)
    if form.is_valid():
        try:
            services.update_team(actor=actor, team=team, **form.cleaned_data)
        except DomainError as exc:
            apply_domain_error(form, exc)
            team.refresh_from_db()
        else:
            messages.success(request, f"Team {team.name} saved.")
            return redirect("team-detail", slug=team.slug)
    return render(request, "accounts/team_edit.html", {"form": form, "team": team})


@require_POST
def member_add(request, slug: str):
    """Permission: team visible (else 404) and ``member.manage`` (owner or platform admin, else 403)."""
    actor, team = _team_for_members(request, slug)
    form = AddMemberForm(request.POST)
    if form.is_valid():
        user, role = form.cleaned_data["user"], form.cleaned_data["role"]
        try:
            services.add_member(actor=actor, team=team, user=user, role=role)
        except DomainError as exc:
            apply_domain_error(form, exc)
        else:
            return _done(request, team, f"{user.get_username()} added as {TeamRole(role).label.lower()}.")
    return _team_response(request, actor, team, add_form=form)


@require_POST
def member_role(request, slug: str, pk: int):
    """Permission: team visible (else 404) and ``member.manage`` (owner or platform admin, else 403)."""
    actor, team = _team_for_members(request, slug)
    membership = _membership(team, pk)
    form = MemberRoleForm(request.POST)
    if not form.is_valid():
        return _refused(request, actor, team, "Choose one of the team roles.")
    try:
        membership = services.change_member_role(
            actor=actor, membership=membership, role=form.cleaned_data["role"]
        )
    except (Invalid, Conflict) as exc:
        return _refused(request, actor, team, exc.message)
    label = TeamRole(membership.role).label.lower()
    return _done(request, team, f"{membership.user.get_username()} is now {label}.")


@require_POST
def member_remove(request, slug: str, pk: int):
    """Permission: team visible (else 404) and ``member.manage`` (owner or platform admin, else 403)."""
    actor, team = _team_for_members(request, slug)
    membership = _membership(team, pk)
    try:
        services.remove_member(actor=actor, membership=membership)
    except (Invalid, Conflict) as exc:
        return _refused(request, actor, team, exc.message)
    return _done(request, team, f"{membership.user.get_username()} removed from {team.name}.")


# --- Users -----------------------------------------------------------------------------------------
@require_GET
def user_list(request):
    """Permission: ``user.view`` (auditor or platform admin)."""
    actor = actor_of(request)
    gate.require(actor, "user.view")
    users = (
        User.objects.order_by("username", "id")
        .annotate(team_count=Count("memberships"))
        .prefetch_related(Prefetch("org_roles", queryset=OrgRoleGrant.objects.order_by("role")))
    )
    query = request.GET.get("q", "").strip()
    if query:
        users = users.filter(username__icontains=query)
    return render(
        request,
        "accounts/user_list.html",
        {"page": _page(request, users), "query": query, "can_create": gate.can(actor, "user.manage")},
    )


@sensitive_variables("password")
@never_cache
@GET_POST
def user_create(request):
    """Permission: ``user.manage`` (platform admin). The initial password is shown once, in this response."""
    actor = actor_of(request)
    gate.require(actor, "user.manage")
    form = UserCreateForm(request.POST if request.method == "POST" else None)
    if form.is_valid():
        try:
            user, password = services.create_user(actor=actor, **form.cleaned_data)
        except DomainError as exc:
            apply_domain_error(form, exc)
        else:
            # Rendered straight into this response: never the session, messages or logs.
            return render(request, "accounts/user_created.html", {"created_user": user, "password": password})
    return render(request, "accounts/user_create.html", {"form": form})


# --- Personal access tokens ------------------------------------------------------------------------
def _token_list_response(request, actor: Actor, form: TokenCreateForm):
    tokens = gate.visible(actor, PersonalToken).order_by("-created_at", "-id")
    return render(
        request,
        "accounts/token_list.html",
        {"page": _page(request, tokens), "form": form, "max_days": settings.PERSONAL_TOKEN_MAX_DAYS},
    )


@require_GET
def token_list(request):
    """Permission: any signed-in user; ``gate.visible`` shows only their own tokens."""
    return _token_list_response(request, actor_of(request), TokenCreateForm())


@sensitive_variables("plaintext")
@never_cache
@GET_POST
def token_create(request):
    """Permission: any signed-in user, for themselves. The token is shown once, in this response."""
    actor = actor_of(request)
    if request.method == "GET":
        return _token_list_response(request, actor, TokenCreateForm())
    form = TokenCreateForm(request.POST)
    if form.is_valid():
        try:
            token, plaintext = services.create_personal_token(actor=actor, **form.cleaned_data)
        except DomainError as exc:
            apply_domain_error(form, exc)
        else:
            # Rendered straight into this response: never the session, messages or logs.
            return render(request, "accounts/token_created.html", {"token": token, "plaintext": plaintext})
    return _token_list_response(request, actor, form)


@GET_POST
def token_revoke(request, pk: int):
    """Permission: the token is the actor's own (``gate.get_visible``), else 404. GET asks to confirm."""
    actor = actor_of(request)
    token = gate.get_visible(actor, PersonalToken, pk=pk)
    if request.method == "POST":
        try:
            services.revoke_personal_token(actor=actor, token=token)
        except (Invalid, Conflict) as exc:
            messages.error(request, exc.message)
        else:
            messages.success(
                request, f"Token “{token.name}” revoked; scripts using it are refused from now on."
            )
        return redirect("token-list")
    return render(request, "accounts/token_revoke.html", {"token": token})
