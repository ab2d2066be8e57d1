"""The users of the platform: the list, new local accounts, and a user's page where platform admins change
organisation roles and offboard (deactivate) or reactivate the account. Every change is audited by
``accounts.services`` with the user's state before and after."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models import Count, Prefetch
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_variables
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from portfolio import buttons, listing
from portfolio.accounts import gate, services
from portfolio.accounts.choices import GrantSource, OrgRole
from portfolio.accounts.context import actor_of
from portfolio.accounts.forms import OrgRolesForm, UserCreateForm
from portfolio.accounts.models import OrgRoleGrant, PersonalToken
from portfolio.accounts.sso import config as sso_config
from portfolio.formviews import submit

User = get_user_model()


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
    query = request.GET.get("q", "").strip()[:150]
    if query:
        users = users.filter(username__icontains=query)
    return render(
        request,
        "accounts/user_list.html",
        {
            "page": listing.paginate(request, users),
            "search": query,
            "query": listing.query_without(request, "page"),
            "can_create": gate.can(actor, "user.manage"),
        },
    )


# The password also sits in `result` and in the helpers' frames below this one: mask every frame's locals.
@sensitive_variables()
@never_cache
@require_http_methods(["GET", "POST"])
def user_create(request):
    """Permission: ``user.manage`` (platform admin). The initial password is shown once, in this response."""
    actor = actor_of(request)
    gate.require(actor, "user.manage")
    form = UserCreateForm(request.POST if request.method == "POST" else None)
    created = submit(
        request,
        form,
        lambda: services.create_user(actor=actor, **form.cleaned_data),
        # Rendered straight into this response: never the session, messages or logs.
        then=lambda result: render(
            request, "accounts/user_created.html", {"created_user": result[0], "password": result[1]}
        ),
    )
    if created is not None:
        return created
    return render(request, "accounts/user_create.html", {"form": form})


def _user(pk: int):
    return get_object_or_404(User.objects.prefetch_related("org_roles"), pk=pk)


def _sso_roles(person) -> list[str]:
    """The organisation roles single sign-on gives the person: shown, not offered for editing."""
    return sorted(grant.role for grant in person.org_roles.all() if grant.source == GrantSource.SSO)


@require_GET
def user_detail(request, pk: int):
    """Permission: ``user.view`` (auditor or platform admin); the forms that change the account need
    ``user.manage`` (platform admin)."""
    actor = actor_of(request)
    gate.require(actor, "user.view")
    person = _user(pk)
    roles = sorted(grant.role for grant in person.org_roles.all())
    sso_roles = _sso_roles(person)
    return render(
        request,
        "accounts/user_detail.html",
        {
            "person": person,
            "roles": roles,
            "role_form": OrgRolesForm(initial={"roles": roles}, fixed=sso_roles),
            "sso_roles": sso_roles,
            "sso_label": sso_config.source_label(),
            "memberships": person.memberships.select_related("team", "team__department").order_by(
                "team__name"
            ),
            "active_tokens": PersonalToken.objects.active().filter(user=person).count(),
            "can_manage": gate.can(actor, "user.manage"),
            "is_self": actor.user is not None and actor.user.pk == person.pk,
            "role_labels": dict(OrgRole.choices),
        },
    )


@require_POST
def user_roles(request, pk: int):
    """Permission: ``user.manage`` (platform admin). Makes the user's organisation roles those ticked."""
    actor = actor_of(request)
    gate.require(actor, "user.manage")
    person = _user(pk)
    back = reverse("user-detail", args=[person.pk])
    sso_roles = _sso_roles(person)
    form = OrgRolesForm(request.POST, fixed=sso_roles)
    if not form.is_valid():
        return buttons.refuse(request, "Choose organisation roles from the list.", back)
    # The roles single sign-on gives are not on the form: they stay as they are.
    roles = [*form.cleaned_data["roles"], *sso_roles]
    return buttons.press(
        request,
        lambda: services.set_org_roles(actor=actor, user=person, roles=roles),
        success=f"Organisation roles of {person.username} saved.",
        back=back,
    )


def _ownerless(user) -> str:
    teams = services.teams_without_active_owner(user)
    if not teams:
        return ""
    names = ", ".join(team.name for team in teams)
    return (
        f" {names} now {'has' if len(teams) == 1 else 'have'} no active owner: name one on the team's page."
    )


@require_POST
def user_deactivate(request, pk: int):
    """Permission: ``user.manage`` (platform admin). Offboarding: sign-in refused, sessions ended and
    personal tokens revoked at once; memberships kept for the record."""
    actor = actor_of(request)
    gate.require(actor, "user.manage")
    person = _user(pk)
    return buttons.press(
        request,
        lambda: services.deactivate_user(actor=actor, user=person),
        success=lambda user: (
            f"{person.username} is deactivated: signed out everywhere, personal tokens revoked."
            + _ownerless(user)
        ),
        back=reverse("user-detail", args=[person.pk]),
    )


@require_POST
def user_reactivate(request, pk: int):
    """Permission: ``user.manage`` (platform admin). The account may sign in again; old tokens stay revoked."""
    actor = actor_of(request)
    gate.require(actor, "user.manage")
    person = _user(pk)
    return buttons.press(
        request,
        lambda: services.reactivate_user(actor=actor, user=person),
        success=f"{person.username} may sign in again.",
        back=reverse("user-detail", args=[person.pk]),
    )
