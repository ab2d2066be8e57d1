from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from portfolio.accounts import services
from portfolio.accounts.actor import Actor
from portfolio.accounts.choices import TeamRole
from portfolio.accounts.models import Department, Membership, Team


class Command(BaseCommand):
    help = "Seed the demo organisation (idempotent): a department and a team owned by the first admin."

    def handle(self, *args, **options):
        actor = Actor.for_system("demo")
        # Found through the demo team first: an admin may have changed its department's cost centre (or name),
        # and a second "Demo Department" would be refused (names are unique) on every later `make run`.
        team = Team.objects.select_related("department").filter(slug="demo").first()
        department = (
            (team.department if team else None)
            or Department.objects.filter(cost_center="CC-DEMO").first()
            or Department.objects.filter(name="Demo Department").first()
            or services.create_department(actor=actor, name="Demo Department", cost_center="CC-DEMO")
        )
        team = team or services.create_team(
            actor=actor,
            department=department,
            name="Demo team",
            slug="demo",
            description="Owns the demo portfolio created by `make run`.",
        )
        admin = get_user_model().objects.filter(is_superuser=True).order_by("id").first()
        if admin and not Membership.objects.filter(team=team, user=admin).exists():
            services.add_member(actor=actor, team=team, user=admin, role=TeamRole.OWNER)
        self.stdout.write(f"Demo organisation ready: {department} / {team}.")
