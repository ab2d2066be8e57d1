"""The organisation: departments (cost centres) and their teams (a team's own page is in ``members``)."""

from __future__ import annotations

from django.contrib import messages
from django.db.models import Count
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from portfolio import htmx, listing
from portfolio.accounts import gate, services
from portfolio.accounts.context import actor_of, wants_fragment
from portfolio.accounts.forms import DepartmentForm, DepartmentManagerForm, TeamCreateForm, TeamEditForm
from portfolio.accounts.models import Department, DepartmentRole, Team
from portfolio.accounts.sso import config as sso_config
from portfolio.errors import Conflict, NotFound
from portfolio.formviews import submit


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
    page = listing.paginate(request, departments)
    for department in page:
        department.team_count = team_counts.get(department.pk, 0)
    return render(
        request,
        "accounts/department_list.html",
        {"page": page, "can_create": gate.can(actor, "department.create")},
    )


@require_http_methods(["GET", "POST"])
def department_create(request):
    """Permission: ``department.create`` (platform admin)."""
    actor = actor_of(request)
    gate.require(actor, "department.create")
    form = DepartmentForm(request.POST if request.method == "POST" else None)
    created = submit(
        request,
        form,
        lambda: services.create_department(actor=actor, **form.cleaned_data),
        success=lambda department: f"Department {department.name} created.",
        then=lambda department: redirect("department-detail", pk=department.pk),
    )
    if created is not None:
        return created
    return render(request, "accounts/department_form.html", {"form": form, "department": None})


def _managers_context(actor, department: Department, *, form=None, notice="", error="") -> dict:
    can_manage = gate.can(actor, "department.change", department)
    return {
        "department": department,
        "managers": DepartmentRole.objects.filter(department=department)
        .select_related("user")
        .order_by("user__username", "id"),
        "can_manage_managers": can_manage,
        "sso_label": sso_config.source_label(),
        "manager_form": form or (DepartmentManagerForm() if can_manage else None),
        "notice": notice,
        "error": error,
    }


@require_GET
def department_detail(request, pk: int):
    """Permission: the department is visible (``gate.get_visible``), else 404."""
    actor = actor_of(request)
    department = gate.get_visible(actor, Department, pk=pk)
    return _department_page(request, actor, department, _managers_context(actor, department))


def _department_page(request, actor, department: Department, managers: dict):
    """The department page, or only its managers card for an htmx call."""
    if wants_fragment(request):
        return htmx.render(request, "accounts/partials/department_managers.html", managers)
    teams = (
        gate.visible(actor, Team)
        .filter(department=department)
        .annotate(member_count=Count("memberships"))
        .order_by("name", "id")
    )
    context = {
        **managers,
        "teams": teams,
        "can_change": gate.can(actor, "department.change", department),
        "can_create_team": gate.can(actor, "team.create"),
    }
    return htmx.render(request, "accounts/department_detail.html", context)


def _department_for_managers(request, pk: int):
    actor = actor_of(request)
    department = gate.get_visible(actor, Department, pk=pk)
    gate.require(actor, "department.change", department)
    return actor, department


def _managers_changed(request, actor, department: Department, notice: str):
    if wants_fragment(request):
        return _department_page(
            request, actor, department, _managers_context(actor, department, notice=notice)
        )
    messages.success(request, notice)
    return redirect("department-detail", pk=department.pk)


@require_POST
def department_manager_add(request, pk: int):
    """Permission: department visible (else 404) and ``department.change`` (platform admin, else 403)."""
    actor, department = _department_for_managers(request, pk)
    form = DepartmentManagerForm(request.POST)
    done = submit(
        request,
        form,
        lambda: services.grant_department_role(
            actor=actor, user=form.cleaned_data["user"], department=department
        ),
        then=lambda grant: _managers_changed(
            request, actor, department, f"{grant.user.get_username()} now manages {department.name}."
        ),
    )
    if done is not None:
        return done
    if not wants_fragment(request):
        messages.error(request, "; ".join(e for errors in form.errors.values() for e in errors))
        return redirect("department-detail", pk=department.pk)
    return _department_page(request, actor, department, _managers_context(actor, department, form=form))


@require_POST
def department_manager_remove(request, pk: int, user_id: int):
    """Permission: department visible (else 404) and ``department.change`` (platform admin, else 403)."""
    actor, department = _department_for_managers(request, pk)
    grant = (
        DepartmentRole.objects.filter(department=department, user_id=user_id).select_related("user").first()
    )
    if grant is None:
        raise NotFound("The user does not manage this department.")
    try:
        services.revoke_department_role(actor=actor, user=grant.user, department=department, role=grant.role)
    except Conflict as exc:  # a role given by single sign-on
        if wants_fragment(request):
            return _department_page(
                request, actor, department, _managers_context(actor, department, error=exc.message)
            )
        messages.error(request, exc.message)
        return redirect("department-detail", pk=department.pk)
    return _managers_changed(
        request, actor, department, f"{grant.user.get_username()} no longer manages {department.name}."
    )


@require_http_methods(["GET", "POST"])
def department_edit(request, pk: int):
    """Permission: visible (else 404) and ``department.change`` (platform admin, else 403)."""
    actor = actor_of(request)
    department = gate.get_visible(actor, Department, pk=pk)
    gate.require(actor, "department.change", department)
    initial = {"name": department.name, "cost_center": department.cost_center}
    form = DepartmentForm(request.POST if request.method == "POST" else None, initial=initial)
    saved = submit(
        request,
        form,
        lambda: services.update_department(actor=actor, department=department, **form.cleaned_data),
        success=lambda _: f"Department {department.name} saved.",
        then=lambda _: redirect("department-detail", pk=department.pk),
        reload=department,
    )
    if saved is not None:
        return saved
    return render(request, "accounts/department_form.html", {"form": form, "department": department})


# --- Teams (a team's own page, with its members, is in ``members``) --------------------------------
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
    page = listing.paginate(request, teams)
    for team in page:
        team.my_role = actor.team_roles.get(team.pk)
    return render(
        request, "accounts/team_list.html", {"page": page, "can_create": gate.can(actor, "team.create")}
    )


@require_http_methods(["GET", "POST"])
def team_create(request):
    """Permission: ``team.create`` (platform admin)."""
    actor = actor_of(request)
    gate.require(actor, "team.create")
    if request.method == "POST":
        form = TeamCreateForm(request.POST)
    else:
        form = TeamCreateForm(initial={"department": request.GET.get("department")})
    created = submit(
        request,
        form,
        lambda: services.create_team(actor=actor, **form.cleaned_data),
        success=lambda team: f"Team {team.name} created. Add its first owner below.",
        then=lambda team: redirect("team-detail", slug=team.slug),
    )
    if created is not None:
        return created
    return render(request, "accounts/team_create.html", {"form": form})


@require_http_methods(["GET", "POST"])
def team_edit(request, slug: str):
    """Permission: visible (else 404) and ``team.change`` (team owner or platform admin, else 403)."""
    actor = actor_of(request)
    team = gate.get_visible(actor, Team, slug=slug)
    gate.require(actor, "team.change", team)
    initial = {"name": team.name, "description": team.description}
    form = TeamEditForm(request.POST if request.method == "POST" else None, initial=initial)
    saved = submit(
        request,
        form,
        lambda: services.update_team(actor=actor, team=team, **form.cleaned_data),
        success=lambda _: f"Team {team.name} saved.",
        then=lambda _: redirect("team-detail", slug=team.slug),
        reload=team,
    )
    if saved is not None:
        return saved
    return render(request, "accounts/team_edit.html", {"form": form, "team": team})
