"""Whether a key's creator still acts for its team. A key belongs to its team and outlives its creator's
leaving (removed from the team, or deactivated): the keys pages mark such a creator "left", for an owner to
decide whether the key should go."""

from __future__ import annotations

from django.db.models import BooleanField, Exists, ExpressionWrapper, OuterRef, Q, QuerySet

from portfolio.accounts.choices import OrgRole
from portfolio.accounts.models import Membership, OrgRoleGrant
from serving.gateway.models import ApiKey


def with_creator(keys: QuerySet[ApiKey]) -> QuerySet[ApiKey]:
    """The keys with their creator and ``creator_on_team``: a member of the key's team, or a platform admin
    (who makes keys for any team without being on it), in the same query."""
    member = Exists(Membership.objects.filter(team=OuterRef("team"), user=OuterRef("created_by")))
    admin = Exists(OrgRoleGrant.objects.filter(user=OuterRef("created_by"), role=OrgRole.ADMIN))
    acting = Q(member) | Q(admin) | Q(created_by__is_superuser=True)
    return keys.select_related("team", "created_by").annotate(
        creator_on_team=ExpressionWrapper(acting, output_field=BooleanField())
    )
