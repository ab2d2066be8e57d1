from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from portfolio.accounts.actor import Actor
from portfolio.accounts.sso import client, relink
from portfolio.accounts.sso import config as sso_config
from portfolio.errors import DomainError


class Command(BaseCommand):
    help = (
        "Relink an account to its person's new identity at the single sign-on realm (deleted and created again "
        "there, or the realm moved to another address): the account keeps its memberships and roles. Audited "
        "as user.sso_relink. The subject is the user's id at the realm (Keycloak: Users, the user, ID)."
    )

    def add_arguments(self, parser):
        parser.add_argument("username", help="the account here")
        parser.add_argument("--subject", required=True, help="the person's new `sub` at the realm")
        parser.add_argument(
            "--issuer", help="the realm's issuer (default: the configured realm's, read from its discovery)"
        )

    def handle(self, *args, username: str, subject: str, issuer: str | None, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"No account {username!r}.")
        try:
            if issuer is None:
                config = sso_config.current()
                if config is None:
                    raise CommandError("Single sign-on is not set up here: give --issuer.")
                issuer = str(client.discovery(config)["issuer"])
            relink.relink(
                actor=Actor.for_system("manage.py sso_relink"), user=user, issuer=issuer, subject=subject
            )
        except (DomainError, client.Refused) as exc:
            raise CommandError(exc.message) from None
        state = (
            "" if user.is_active else " It is deactivated: reactivate it on the Users page to let them in."
        )
        self.stdout.write(f"{username} is now {subject} at {issuer}.{state}")
