"""REST endpoints for departments, teams, members, users, personal tokens and (under ``/sso``) the single
sign-on mapping rules."""

from datetime import datetime

from django.contrib.auth import get_user_model
from django.http import HttpResponse
from django.utils.cache import add_never_cache_headers
from ninja import Router, Schema, Status
from ninja.pagination import PageNumberPagination, paginate
from pydantic import Field

from portfolio.accounts import gate, personal_tokens, services
from portfolio.accounts.choices import DepartmentRoleName, GrantSource, OrgRole, TeamRole
from portfolio.accounts.models import Department, DepartmentRole, Membership, PersonalToken, Team
from portfolio.accounts.sso.api import router as sso_router
from portfolio.errors import Invalid, NotFound

router = Router(tags=["organisation"])
router.add_router("/sso", sso_router)
User = get_user_model()


class DepartmentOut(Schema):
    id: int
    name: str
    cost_center: str
    created_at: datetime


class DepartmentIn(Schema):
    name: str = Field(min_length=1, max_length=100)
    cost_center: str = Field(min_length=2, max_length=32)


class TeamOut(Schema):
    id: int
    name: str
    slug: str
    description: str
    department_id: int
    created_at: datetime


class TeamIn(Schema):
    department_id: int
    name: str = Field(min_length=1, max_length=100)
    slug: str = Field(default="", max_length=60)
    description: str = Field(default="", max_length=2000)


class TeamPatch(Schema):
    name: str = Field(min_length=1, max_length=100)
    description: str = Field(default="", max_length=2000)


class MemberOut(Schema):
    id: int
    team_id: int
    username: str = Field(alias="user.username")
    role: TeamRole
    source: GrantSource = Field(
        description="sso: given by the single sign-on mapping rules, which alone change it."
    )
    created_at: datetime


class MemberIn(Schema):
    username: str = Field(min_length=1, max_length=150)  # as User.username
    role: TeamRole


class RoleIn(Schema):
    role: TeamRole


class UserOut(Schema):
    id: int
    username: str
    email: str
    is_active: bool
    is_superuser: bool = Field(
        description="A bootstrap superuser is a platform admin whatever its org roles."
    )
    org_roles: list[OrgRole]
    last_login: datetime | None

    @staticmethod
    def resolve_org_roles(user) -> list[str]:
        return sorted(grant.role for grant in user.org_roles.all())


class UserMembershipOut(Schema):
    team_id: int
    team: str = Field(alias="team.slug")
    role: TeamRole
    source: GrantSource


class UserDetailOut(UserOut):
    """A user with their team memberships (kept, for the record, when the account is deactivated)."""

    memberships: list[UserMembershipOut]

    @staticmethod
    def resolve_memberships(user) -> list:
        return list(user.memberships.select_related("team").order_by("team__name", "id"))


class OrgRolesIn(Schema):
    roles: list[OrgRole] = Field(
        max_length=len(OrgRole.values), description="The user's organisation roles, all of them."
    )


class UserIn(Schema):
    username: str = Field(min_length=1, max_length=150)
    email: str = Field(default="", max_length=254)
    org_role: OrgRole | None = None


class UserCreated(UserOut):
    initial_password: str = Field(description="Shown once; hand it over and have it changed.")


class DepartmentRoleOut(Schema):
    user_id: int
    username: str = Field(alias="user.username")
    department_id: int
    role: DepartmentRoleName
    source: GrantSource
    created_at: datetime


class DepartmentRoleIn(Schema):
    username: str = Field(min_length=1, max_length=150)
    role: DepartmentRoleName = DepartmentRoleName.MANAGER


class MeOut(Schema):
    username: str
    org_roles: list[str]
    teams: dict[int, str]


class TokenOut(Schema):
    id: int
    name: str
    prefix: str = Field(alias="display_prefix")
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


class TokenIn(Schema):
    name: str = Field(min_length=1, max_length=100)
    expires_in_days: int = 90


class TokenCreated(TokenOut):
    token: str = Field(description="Shown once; store it now.")


@router.get("/me", response=MeOut)
def me(request):
    actor = request.auth
    return {"username": actor.label, "org_roles": sorted(actor.org_roles), "teams": actor.team_roles}


# --- Departments -----------------------------------------------------------------------------------
@router.get("/departments", response=list[DepartmentOut])
@paginate(PageNumberPagination, page_size=50)
def list_departments(request):
    return gate.visible(request.auth, Department).order_by("name", "id")


@router.post("/departments", response={201: DepartmentOut})
def create_department(request, payload: DepartmentIn):
    return Status(201, services.create_department(actor=request.auth, **payload.dict()))


@router.get("/departments/{department_id}", response=DepartmentOut)
def get_department(request, department_id: int):
    return gate.get_visible(request.auth, Department, pk=department_id)


@router.put("/departments/{department_id}", response=DepartmentOut)
def update_department(request, department_id: int, payload: DepartmentIn):
    department = gate.get_visible(request.auth, Department, pk=department_id)
    return services.update_department(actor=request.auth, department=department, **payload.dict())


# --- Department roles (managers read the department's billing and set its teams' budgets) ---------
@router.get("/departments/{department_id}/roles", response=list[DepartmentRoleOut])
@paginate(PageNumberPagination, page_size=100)
def list_department_roles(request, department_id: int):
    department = gate.get_visible(request.auth, Department, pk=department_id)
    return (
        DepartmentRole.objects.filter(department=department)
        .select_related("user")
        .order_by("role", "user__username", "id")
    )


@router.post("/departments/{department_id}/roles", response={201: DepartmentRoleOut})
def grant_department_role(request, department_id: int, payload: DepartmentRoleIn):
    """Platform admins only; audited as ``department_role.grant``."""
    department = gate.get_visible(request.auth, Department, pk=department_id)
    gate.require(request.auth, "department.change", department)
    user = User.objects.filter(username=payload.username, is_active=True).first()
    if user is None:
        raise Invalid("username: No active user with that name.", fields={"username": ["Unknown user."]})
    grant = services.grant_department_role(
        actor=request.auth, user=user, department=department, role=payload.role
    )
    return Status(201, grant)


@router.delete("/departments/{department_id}/roles/{user_id}", response={204: None})
def revoke_department_role(
    request, department_id: int, user_id: int, role: DepartmentRoleName = DepartmentRoleName.MANAGER
):
    """Platform admins only; audited as ``department_role.revoke``. 404 when the user holds no such role."""
    department = gate.get_visible(request.auth, Department, pk=department_id)
    gate.require(request.auth, "department.change", department)
    grant = (
        DepartmentRole.objects.filter(department=department, user_id=user_id, role=role)
        .select_related("user")
        .first()
    )
    if grant is None:
        raise NotFound("The user holds no such role in this department.")
    services.revoke_department_role(actor=request.auth, user=grant.user, department=department, role=role)
    return Status(204, None)


# --- Teams -----------------------------------------------------------------------------------------
@router.get("/teams", response=list[TeamOut])
@paginate(PageNumberPagination, page_size=50)
def list_teams(request, department_id: int | None = None):
    teams = gate.visible(request.auth, Team)
    if department_id is not None:
        teams = teams.filter(department_id=department_id)
    return teams.order_by("name", "id")


@router.post("/teams", response={201: TeamOut})
def create_team(request, payload: TeamIn):
    actor = request.auth
    gate.require(actor, "team.create")
    department = Department.objects.filter(pk=payload.department_id).first()
    if department is None:
        raise Invalid("department_id: No such department.", fields={"department_id": ["No such department."]})
    data = payload.dict(exclude={"department_id"})
    return Status(201, services.create_team(actor=actor, department=department, **data))


@router.get("/teams/{team_id}", response=TeamOut)
def get_team(request, team_id: int):
    return gate.get_visible(request.auth, Team, pk=team_id)


@router.patch("/teams/{team_id}", response=TeamOut)
def update_team(request, team_id: int, payload: TeamPatch):
    team = gate.get_visible(request.auth, Team, pk=team_id)
    return services.update_team(actor=request.auth, team=team, **payload.dict())


# --- Members ---------------------------------------------------------------------------------------
@router.get("/teams/{team_id}/members", response=list[MemberOut])
@paginate(PageNumberPagination, page_size=100)
def list_members(request, team_id: int):
    team = gate.get_visible(request.auth, Team, pk=team_id)
    return team.memberships.select_related("user").order_by("user__username", "id")


@router.post("/teams/{team_id}/members", response={201: MemberOut})
def add_member(request, team_id: int, payload: MemberIn):
    team = gate.get_visible(request.auth, Team, pk=team_id)
    gate.require(request.auth, "member.manage", team)
    user = User.objects.filter(username=payload.username, is_active=True).first()
    if user is None:
        raise Invalid("username: No active user with that name.", fields={"username": ["Unknown user."]})
    return Status(201, services.add_member(actor=request.auth, team=team, user=user, role=payload.role))


def _membership(request, membership_id: int) -> Membership:
    return gate.get_visible(request.auth, Membership, pk=membership_id)


@router.patch("/memberships/{membership_id}", response=MemberOut)
def change_member_role(request, membership_id: int, payload: RoleIn):
    membership = _membership(request, membership_id)
    return services.change_member_role(actor=request.auth, membership=membership, role=payload.role)


@router.delete("/memberships/{membership_id}", response={204: None})
def remove_member(request, membership_id: int):
    membership = _membership(request, membership_id)
    services.remove_member(actor=request.auth, membership=membership)
    return Status(204, None)


# --- Users -----------------------------------------------------------------------------------------
@router.get("/users", response=list[UserOut])
@paginate(PageNumberPagination, page_size=100)
def list_users(request):
    gate.require(request.auth, "user.view")
    return User.objects.prefetch_related("org_roles").order_by("username", "id")


@router.post("/users", response={201: UserCreated})
def create_user(request, payload: UserIn, response: HttpResponse):
    add_never_cache_headers(response)  # the answer holds the initial password: no cache may keep it
    user, password = services.create_user(
        actor=request.auth, username=payload.username, email=payload.email, org_role=payload.org_role or ""
    )
    user.initial_password = password
    return Status(201, user)


def _user(request, user_id: int, action: str):
    gate.require(request.auth, action)
    user = User.objects.filter(pk=user_id).prefetch_related("org_roles").first()
    if user is None:
        raise NotFound("User not found.")
    return user


@router.get("/users/{user_id}", response=UserDetailOut)
def get_user(request, user_id: int):
    return _user(request, user_id, "user.view")


@router.post("/users/{user_id}/deactivate", response=UserDetailOut)
def deactivate_user(request, user_id: int):
    """Offboarding: sign-in refused, sessions ended and personal tokens revoked at once; memberships kept."""
    user = services.deactivate_user(actor=request.auth, user=_user(request, user_id, "user.manage"))
    return _user(request, user.pk, "user.manage")


@router.post("/users/{user_id}/reactivate", response=UserDetailOut)
def reactivate_user(request, user_id: int):
    """The account may sign in again; personal tokens revoked at deactivation stay revoked."""
    user = services.reactivate_user(actor=request.auth, user=_user(request, user_id, "user.manage"))
    return _user(request, user.pk, "user.manage")


@router.put("/users/{user_id}/org-roles", response=UserDetailOut)
def set_org_roles(request, user_id: int, payload: OrgRolesIn):
    """Replace the user's organisation roles (admin, auditor); each grant and revocation is audited."""
    user = services.set_org_roles(
        actor=request.auth, user=_user(request, user_id, "user.manage"), roles=payload.roles
    )
    return _user(request, user.pk, "user.manage")


# --- Personal access tokens ------------------------------------------------------------------------
@router.get("/tokens", response=list[TokenOut], tags=["tokens"])
@paginate(PageNumberPagination, page_size=50)
def list_tokens(request):
    return gate.visible(request.auth, PersonalToken).order_by("-created_at", "-id")


@router.post("/tokens", response={201: TokenCreated}, tags=["tokens"])
def create_token(request, payload: TokenIn, response: HttpResponse):
    add_never_cache_headers(response)  # the answer holds the token: no cache may keep it
    token, plaintext = personal_tokens.create_personal_token(
        actor=request.auth, name=payload.name, expires_in_days=payload.expires_in_days
    )
    token.token = plaintext
    return Status(201, token)


@router.delete("/tokens/{token_id}", response=TokenOut, tags=["tokens"])
def revoke_token(request, token_id: int):
    token = PersonalToken.objects.visible_to(request.auth).filter(pk=token_id).first()
    if token is None:
        raise NotFound("Token not found.")
    return personal_tokens.revoke_personal_token(actor=request.auth, token=token)
