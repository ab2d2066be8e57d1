from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from portfolio.accounts import personal_tokens
from portfolio.accounts.actor import Actor
from portfolio.errors import DomainError

SOURCE = "portfolio manage create_token"


class Command(BaseCommand):
    help = (
        "Create a personal access token for a user, for scripts and first-time setup without a browser. "
        "The token is printed once, alone on standard output (never logged); its audit row is the one a "
        "token made in the web UI gets, marked as made from the command line."
    )

    def add_arguments(self, parser):
        parser.add_argument("--user", required=True, help="the user name the token acts as")
        parser.add_argument("--name", required=True, help="a label, such as the script that will use it")
        parser.add_argument(
            "--expires-days",
            type=int,
            default=90,
            help=f"days until it expires (1-{settings.PERSONAL_TOKEN_MAX_DAYS}, default 90)",
        )

    def handle(self, *args, user: str, name: str, expires_days: int, **options):
        owner = get_user_model().objects.filter(username=user, is_active=True).first()
        if owner is None:
            raise CommandError(f"No active user {user!r}.")
        actor = Actor(user=owner, user_agent=SOURCE)
        try:
            token, plaintext = personal_tokens.create_personal_token(
                actor=actor, name=name, expires_in_days=expires_days
            )
        except DomainError as exc:
            raise CommandError(exc.message) from None
        self.stderr.write(
            f"Token {token.name!r} for {owner.username}, expires {token.expires_at:%Y-%m-%d}; "
            "shown once (revoke it on the Tokens page):"
        )
        self.stdout.write(plaintext)
