"""The organisation pages: dashboard and navigation, departments, teams with members managed with htmx,
users, personal tokens (secrets shown once). Signing in is tests/accounts/test_views_sign_in.py."""

import re

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from portfolio.accounts import personal_tokens, services
from portfolio.accounts.choices import TeamRole
from portfolio.accounts.models import Department, Membership, PersonalToken, Team
from portfolio.audit.models import AuditEvent
from tests.accounts.pages import HTMX, _text
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db


# --- Dashboard and navigation ----------------------------------------------------------------------
def test_dashboard_shows_my_teams_with_my_role_and_the_billing_link(signed_in, org):
    response = signed_in(org["owner"]).get("/")
    text = _text(response)
    assert response.status_code == 200
    assert "Support AI" in text and "badge--owner" in text
    assert "Recent audit events" not in text
    # Billing is built: a live link for an owner (billing.view), no longer greyed "soon".
    assert 'href="/billing/"' in text and "nav-item--soon" not in text


def test_dashboard_shows_recent_audit_events_to_an_auditor(signed_in, org, department):
    services.create_team(actor=actor_for(org["admin"]), department=department, name="Search")
    text = _text(signed_in(org["auditor"]).get("/"))
    assert "Recent audit events" in text and "team.create" in text


def test_navigation_shows_only_what_the_actor_may_open(signed_in, org):
    viewer = _text(signed_in(org["viewer"]).get("/"))
    assert 'href="/audit/"' not in viewer and 'href="/users/"' not in viewer
    auditor = _text(signed_in(org["auditor"]).get("/"))
    assert 'href="/audit/"' in auditor and 'href="/users/"' in auditor


def test_roles_page_renders_the_capability_matrix(signed_in, org):
    response = signed_in(org["viewer"]).get(reverse("roles"))
    assert response.status_code == 200
    assert "member.manage" in _text(response) and "audit.export" in _text(response)


# --- Departments -----------------------------------------------------------------------------------
def test_only_a_platform_admin_may_create_departments(signed_in, org):
    owner = signed_in(org["owner"])
    assert reverse("department-create") not in _text(owner.get(reverse("department-list")))
    assert owner.get(reverse("department-create")).status_code == 403
    assert owner.post(reverse("department-create"), {"name": "X", "cost_center": "CC-9"}).status_code == 403

    admin = signed_in(org["admin"])
    assert reverse("department-create") in _text(admin.get(reverse("department-list")))
    response = admin.post(reverse("department-create"), {"name": "Finance", "cost_center": "cc-300"})
    department = Department.objects.get(name="Finance")
    assert response["Location"] == reverse("department-detail", args=[department.pk])
    assert department.cost_center == "CC-300"
    assert AuditEvent.objects.filter(action="department.create", actor_label="admin").exists()


def test_a_duplicate_department_is_shown_as_a_form_error(signed_in, org, department):
    response = signed_in(org["admin"]).post(
        reverse("department-create"), {"name": department.name, "cost_center": "CC-999"}
    )
    assert response.status_code == 200
    assert "already exists" in _text(response)


def test_department_pages_are_404_for_outsiders_and_403_to_edit_for_members(signed_in, org, department):
    assert (
        signed_in(org["outsider"]).get(reverse("department-detail", args=[department.pk])).status_code == 404
    )
    member = signed_in(org["owner"])
    assert member.get(reverse("department-detail", args=[department.pk])).status_code == 200
    assert member.get(reverse("department-edit", args=[department.pk])).status_code == 403


def test_admin_edits_a_department(signed_in, org, department):
    response = signed_in(org["admin"]).post(
        reverse("department-edit", args=[department.pk]), {"name": "Customer Ops", "cost_center": "CC-100"}
    )
    assert response.status_code == 302
    department.refresh_from_db()
    assert department.name == "Customer Ops"


# --- Teams and members -----------------------------------------------------------------------------
def test_team_list_shows_only_my_teams(signed_in, org):
    text = _text(signed_in(org["owner"]).get(reverse("team-list")))
    assert "Support AI" in text and "Contracts" not in text


def test_team_list_query_count_does_not_grow_with_teams(
    signed_in, org, department, django_assert_max_num_queries
):
    client = signed_in(org["admin"])
    with django_assert_max_num_queries(12):
        client.get(reverse("team-list"))
    for n in range(10):
        Team.objects.create(department=department, name=f"Team {n}", slug=f"team-{n}")
    with django_assert_max_num_queries(12):
        assert client.get(reverse("team-list")).status_code == 200


def test_admin_creates_a_team(signed_in, org, department):
    response = signed_in(org["admin"]).post(
        reverse("team-create"),
        {"department": department.pk, "name": "Search Quality", "slug": "", "description": ""},
    )
    assert response.status_code == 302 and response["Location"] == "/teams/search-quality/"
    assert AuditEvent.objects.filter(action="team.create").exists()
    assert signed_in(org["owner"]).get(reverse("team-create")).status_code == 403


def test_outsider_gets_404_on_another_teams_page(signed_in, org, team):
    client = signed_in(org["outsider"])
    assert client.get("/teams/support-ai/").status_code == 404
    assert client.get(reverse("team-edit", args=[team.slug])).status_code == 404
    assert client.post(reverse("member-add", args=[team.slug]), {"username": "outsider"}).status_code == 404


def test_team_page_lists_members_and_offers_management_only_to_owners(signed_in, org, team):
    owner_view = _text(signed_in(org["owner"]).get("/teams/support-ai/"))
    assert "Add a member" in owner_view and "viewer" in owner_view
    viewer_view = _text(signed_in(org["viewer"]).get("/teams/support-ai/"))
    assert "Add a member" not in viewer_view and "developer" in viewer_view


def test_team_page_answers_htmx_with_the_members_table_only(signed_in, org, team):
    response = signed_in(org["viewer"]).get("/teams/support-ai/", **HTMX)
    assert response.status_code == 200
    text = _text(response)
    assert text.lstrip().startswith('<section id="members"') and "<html" not in text
    assert "HX-Request" in response["Vary"]


def test_owner_adds_a_member_with_htmx_and_it_is_audited(signed_in, org, team, make_user):
    newcomer = make_user("newcomer")
    response = signed_in(org["owner"]).post(
        reverse("member-add", args=[team.slug]), {"username": "newcomer", "role": "engineer"}, **HTMX
    )
    assert response.status_code == 200
    text = _text(response)
    assert "<html" not in text and "newcomer added as engineer" in text
    assert Membership.objects.get(team=team, user=newcomer).role == TeamRole.ENGINEER
    event = AuditEvent.objects.get(action="membership.create")
    assert event.team_id == team.pk and event.actor_label == "owner"
    assert event.after == {"user": "newcomer", "role": "engineer", "team": "support-ai"}


def test_adding_a_member_without_htmx_redirects_back_to_the_team(signed_in, org, team, make_user):
    make_user("newcomer")
    response = signed_in(org["owner"]).post(
        reverse("member-add", args=[team.slug]), {"username": "newcomer", "role": "viewer"}
    )
    assert response.status_code == 302 and response["Location"] == "/teams/support-ai/"


def test_adding_an_unknown_user_shows_the_error_next_to_the_field(signed_in, org, team):
    response = signed_in(org["owner"]).post(
        reverse("member-add", args=[team.slug]), {"username": "nobody", "role": "viewer"}, **HTMX
    )
    assert response.status_code == 200
    assert "No active user with that name." in _text(response)
    assert 'aria-invalid="true"' in _text(response)


def test_adding_an_existing_member_is_refused_with_a_message(signed_in, org, team):
    response = signed_in(org["owner"]).post(
        reverse("member-add", args=[team.slug]), {"username": "viewer", "role": "viewer"}, **HTMX
    )
    assert "already a member" in _text(response)


def test_viewer_cannot_add_members(signed_in, org, team, make_user):
    make_user("newcomer")
    response = signed_in(org["viewer"]).post(
        reverse("member-add", args=[team.slug]), {"username": "newcomer", "role": "owner"}, **HTMX
    )
    assert response.status_code == 403
    assert not Membership.objects.filter(team=team, user__username="newcomer").exists()


def test_owner_changes_a_role_and_removes_a_member(signed_in, org, team):
    client = signed_in(org["owner"])
    viewer = Membership.objects.get(team=team, user=org["viewer"])
    response = client.post(reverse("member-role", args=[team.slug, viewer.pk]), {"role": "developer"}, **HTMX)
    assert response.status_code == 200 and "viewer is now developer" in _text(response)
    viewer.refresh_from_db()
    assert viewer.role == TeamRole.DEVELOPER

    response = client.post(reverse("member-remove", args=[team.slug, viewer.pk]), **HTMX)
    assert response.status_code == 200 and "viewer removed" in _text(response)
    assert not Membership.objects.filter(pk=viewer.pk).exists()
    assert AuditEvent.objects.filter(action__in=["membership.update", "membership.delete"]).count() == 2


def test_the_last_owner_cannot_step_down(signed_in, org, team):
    owner = Membership.objects.get(team=team, user=org["owner"])
    response = signed_in(org["owner"]).post(
        reverse("member-role", args=[team.slug, owner.pk]), {"role": "viewer"}, **HTMX
    )
    assert response.status_code == 200 and "at least one owner" in _text(response)
    owner.refresh_from_db()
    assert owner.role == TeamRole.OWNER


def test_a_membership_of_another_team_is_404_through_this_team(signed_in, org, team, other_team):
    foreign = Membership.objects.get(team=other_team)
    response = signed_in(org["admin"]).post(reverse("member-remove", args=[team.slug, foreign.pk]))
    assert response.status_code == 404
    assert Membership.objects.filter(pk=foreign.pk).exists()


def test_an_owner_who_removes_themselves_is_sent_to_the_team_list(signed_in, org, team, make_user):
    Membership.objects.create(team=team, user=make_user("co-owner"), role=TeamRole.OWNER)
    me = Membership.objects.get(team=team, user=org["owner"])
    response = signed_in(org["owner"]).post(reverse("member-remove", args=[team.slug, me.pk]), **HTMX)
    assert response.status_code == 200 and response["HX-Redirect"] == reverse("team-list")


def test_htmx_posts_pass_csrf_with_the_token_the_page_carries(org, team, make_user):
    from django.test import Client

    make_user("newcomer")
    client = Client(enforce_csrf_checks=True)
    client.force_login(org["owner"])
    page = _text(client.get("/teams/support-ai/"))
    token = re.search(r'hx-headers=\'\{"X-CSRFToken": "([^"]+)"\}\'', page).group(1)
    url = reverse("member-add", args=[team.slug])
    assert client.post(url, {"username": "newcomer", "role": "viewer"}, **HTMX).status_code == 403
    response = client.post(url, {"username": "newcomer", "role": "viewer"}, HTTP_X_CSRFTOKEN=token, **HTMX)
    assert response.status_code == 200 and "newcomer added" in _text(response)


def test_team_address_new_is_reserved(signed_in, org, department):
    response = signed_in(org["admin"]).post(
        reverse("team-create"), {"department": department.pk, "name": "New", "slug": "", "description": ""}
    )
    assert response.status_code == 200 and "reserved" in _text(response)
    assert not Team.objects.filter(slug="new").exists()


def test_team_owner_edits_the_team_and_an_engineer_may_not(signed_in, org, team):
    assert signed_in(org["engineer"]).get(reverse("team-edit", args=[team.slug])).status_code == 403
    response = signed_in(org["owner"]).post(
        reverse("team-edit", args=[team.slug]), {"name": "Support Automation", "description": "Tickets."}
    )
    assert response.status_code == 302
    team.refresh_from_db()
    assert (team.name, team.description) == ("Support Automation", "Tickets.")


# --- Users -----------------------------------------------------------------------------------------
def test_admin_creates_a_user_and_sees_the_initial_password_once(signed_in, org):
    client = signed_in(org["admin"])
    response = client.post(reverse("user-create"), {"username": "newhire", "email": "", "org_role": ""})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    text = _text(response)
    assert "Copy it now, it will not be shown again" in text
    password = re.search(r'id="secret-value"[^>]*value="([^"]+)"', text).group(1)
    assert get_user_model().objects.get(username="newhire").check_password(password)
    assert password not in str(dict(client.session.items()))
    assert password not in _text(client.get(reverse("user-list")))
    for row in AuditEvent.objects.values():
        assert password not in str(row)


def test_auditor_views_users_but_cannot_create_them(signed_in, org):
    client = signed_in(org["auditor"])
    assert client.get(reverse("user-list")).status_code == 200
    assert client.get(reverse("user-create")).status_code == 403
    assert signed_in(org["owner"]).get(reverse("user-list")).status_code == 403


# --- Personal access tokens ------------------------------------------------------------------------
def test_token_is_shown_once_and_only_its_hash_is_stored(signed_in, org, client):
    signed_in(org["developer"])
    response = client.post(reverse("token-create"), {"name": "nightly eval", "expires_in_days": 30})
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    plaintext = re.search(r"pat_[a-z0-9]{12}_[A-Za-z0-9_\-]+", _text(response)).group(0)
    token = PersonalToken.objects.get(name="nightly eval")
    assert token.secret_hash != plaintext and plaintext not in str(
        PersonalToken.objects.filter(pk=token.pk).values()[0]
    )

    listing = _text(client.get(reverse("token-list")))
    assert plaintext not in listing and token.display_prefix in listing
    assert plaintext not in str(dict(client.session.items()))
    # The token works for the API.
    assert client.get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {plaintext}").status_code == 200


def test_token_expiry_beyond_the_limit_is_a_form_error(signed_in, org):
    response = signed_in(org["developer"]).post(
        reverse("token-create"), {"name": "x", "expires_in_days": 100000}
    )
    assert response.status_code == 200
    assert "less than or equal to" in _text(response)
    assert not PersonalToken.objects.exists()


def test_revoking_a_token_asks_first_and_is_audited(signed_in, org):
    token, _ = personal_tokens.create_personal_token(
        actor=actor_for(org["developer"]), name="ci", expires_in_days=7
    )
    client = signed_in(org["developer"])
    confirm = client.get(reverse("token-revoke", args=[token.pk]))
    assert confirm.status_code == 200 and "Revoke token" in _text(confirm)
    token.refresh_from_db()
    assert token.revoked_at is None
    assert client.post(reverse("token-revoke", args=[token.pk])).status_code == 302
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert AuditEvent.objects.filter(action="token.revoke").exists()
    assert "revoked" in _text(client.get(reverse("token-list")))


def test_someone_elses_token_is_404(signed_in, org):
    token, _ = personal_tokens.create_personal_token(
        actor=actor_for(org["developer"]), name="ci", expires_in_days=7
    )
    assert signed_in(org["admin"]).post(reverse("token-revoke", args=[token.pk])).status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None


# --- Every route -----------------------------------------------------------------------------------
ROUTES = [
    ("dashboard", []),
    ("password-change", []),
    ("roles", []),
    ("department-list", []),
    ("department-create", []),
    ("team-list", []),
    ("team-create", []),
    ("user-list", []),
    ("user-create", []),
    ("token-list", []),
    ("token-create", []),
    ("audit-log", []),
    ("audit-export", []),
]


@pytest.mark.parametrize(("name", "args"), ROUTES)
def test_every_page_sends_anonymous_visitors_to_login(client, name, args):
    response = client.get(reverse(name, args=args))
    assert response.status_code == 302 and response["Location"].startswith("/login/?next=")
