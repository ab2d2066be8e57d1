"""A team's page and its members table: adding members, changing their role, removing them. Each change
answers htmx with the table again, and a browser without it with the page."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import HttpResponseClientRedirect

from portfolio import htmx
from portfolio.accounts import gate, services
from portfolio.accounts.actor import Actor
from portfolio.accounts.choices import TeamRole
from portfolio.accounts.context import actor_of, wants_fragment
from portfolio.accounts.forms import AddMemberForm, MemberRoleForm
from portfolio.accounts.models import Membership, Team
from portfolio.accounts.sso import config as sso_config
from portfolio.errors import Conflict, Invalid, NotFound
from portfolio.formviews import submit


def _team_response(request, actor: Actor, team: Team, *, add_form=None, notice="", error=""):
    """The team page, or only its members table for an htmx call."""
    can_manage = gate.can(actor, "member.manage", team)
    context = {
        "team": team,
        "members": team.memberships.select_related("user").order_by("user__username", "id"),
        "can_manage": can_manage,
        "add_form": add_form or (AddMemberForm() if can_manage else None),
        "role_choices": TeamRole.choices,
        "sso_label": sso_config.source_label(),
        "notice": notice,
        "error": error,
    }
    if not wants_fragment(request):
        context["can_change"] = gate.can(actor, "team.change", team)
    return htmx.page_or_fragment(
        request, "accounts/team_detail.html", "accounts/partials/members.html", context
    )


def _changed(request, team: Team, notice: str):
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


@require_POST
def member_add(request, slug: str):
    """Permission: team visible (else 404) and ``member.manage`` (owner or platform admin, else 403)."""
    actor, team = _team_for_members(request, slug)
    form = AddMemberForm(request.POST)

    def added(_membership):
        user, role = form.cleaned_data["user"], form.cleaned_data["role"]
        return _changed(request, team, f"{user.get_username()} added as {TeamRole(role).label.lower()}.")

    done = submit(
        request,
        form,
        lambda: services.add_member(
            actor=actor, team=team, user=form.cleaned_data["user"], role=form.cleaned_data["role"]
        ),
        then=added,
    )
    if done is not None:
        return done
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
    return _changed(request, team, f"{membership.user.get_username()} is now {label}.")


@require_POST
def member_remove(request, slug: str, pk: int):
    """Permission: team visible (else 404) and ``member.manage`` (owner or platform admin, else 403)."""
    actor, team = _team_for_members(request, slug)
    membership = _membership(team, pk)
    try:
        live_keys = services.remove_member(actor=actor, membership=membership)
    except (Invalid, Conflict) as exc:
        return _refused(request, actor, team, exc.message)
    notice = f"{membership.user.get_username()} removed from {team.name}."
    if live_keys:
        # Their keys are the team's and keep working: the owner should know which, to revoke what must go.
        notice += (
            f" API keys they created are still live: {', '.join(live_keys)}; "
            "they keep working (billed to the team) until an owner revokes them on the API keys page."
        )
    return _changed(request, team, notice)
