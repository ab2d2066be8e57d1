import os
import shlex
import sys
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from serving.gateway import services as keys
from serving.gateway.models import ApiKey
from serving.management.commands.deploy_demo import DEMO_ENDPOINT
from serving.models import Endpoint

DEMO_KEY_NAME = "portfolio run demo key"


class Command(BaseCommand):
    help = (
        "What `portfolio run` prints once it is ready: where to sign in, the endpoints served, the API docs, "
        "billing and, with --demo-key-file, a call to copy with a fresh API key of the demo team. The key is written "
        "to that file (readable by this user only), never printed; the previous run's demo key is revoked."
    )

    def add_arguments(self, parser):
        parser.add_argument("--url", required=True, help="the platform's URL, such as http://127.0.0.1:8000/")
        parser.add_argument("--demo-key-file", type=Path, help="create a demo API key and write it here")

    def handle(self, *args, url: str, demo_key_file: Path | None, **options):
        url = url.rstrip("/")
        lines = []
        admin = get_user_model().objects.filter(is_superuser=True, is_active=True).order_by("pk").first()
        if admin is not None:
            password_file = Path(settings.DATA_DIR) / "admin-password"
            where = f" (initial password in {password_file})" if password_file.exists() else ""
            lines.append(f"sign in:   {url}/ as {admin.username}{where}")
        endpoints = list(Endpoint.objects.order_by("name").values_list("name", flat=True))
        lines.append(f"endpoints: {', '.join(endpoints) or 'none yet'} (OpenAI API at {url}/v1)")
        lines.append(f"API docs:  {url}/api/docs")
        lines.append(f"billing:   {url}/billing/ (spend, statements, price book)")
        if demo_key_file is not None:
            if DEMO_ENDPOINT not in endpoints:
                raise CommandError(f"No endpoint {DEMO_ENDPOINT!r}: run deploy_demo first.")
            write_demo_key(demo_key_file)
            key = shlex.quote(str(demo_key_file))
            body = (
                f'{{"model": "{DEMO_ENDPOINT}", "messages": [{{"role": "user", "content": "Hello!"}}], '
                '"max_tokens": 32}'
            )
            python = shlex.quote(sys.executable)
            lines += [
                f"demo key:  {demo_key_file} (readable by you only; a new one each start)",
                "try it:",
                f'  curl -s {url}/v1/chat/completions -H "Authorization: Bearer $(cat {key})" '
                f"-H 'Content-Type: application/json' -d '{body}'",
                f"  OPENAI_BASE_URL={url}/v1 OPENAI_API_KEY=$(cat {key}) {python} -c 'from openai import OpenAI; "
                f'print(OpenAI().chat.completions.create(model="{DEMO_ENDPOINT}", '
                'messages=[{"role": "user", "content": "Hello!"}]).choices[0].message.content)\'',
            ]
        for line in lines:
            self.stdout.write(f"  {line}")


def write_demo_key(path: Path) -> None:
    """A fresh key of the demo team, in a file only this user can read; the last one made here is revoked.
    Both are audited (apikey.revoke, apikey.create) as keys made on the Keys page are."""
    team = Team.objects.filter(slug="demo").first()
    if team is None:
        raise CommandError("No demo team: run seed_demo first.")
    actor = Actor.for_system("demo")
    with transaction.atomic():
        for old in ApiKey.objects.filter(team=team, name=DEMO_KEY_NAME, revoked_at__isnull=True):
            keys.revoke_key(actor=actor, key=old)
        _, secret = keys.create_key(actor=actor, team=team, name=DEMO_KEY_NAME)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # created anew, so that it is never readable by others, even for a moment
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
