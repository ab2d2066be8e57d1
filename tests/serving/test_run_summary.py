"""What `portfolio run` prints once it is ready (`manage.py run_summary`): where to sign in, the endpoints, the
API docs, and a call to copy with a fresh demo key that lives in a file only the user can read, never on the
terminal; the previous start's demo key is revoked. Both are audited as keys made on the Keys page are."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from portfolio.accounts import secrets_hashing
from portfolio.accounts.models import Team
from portfolio.audit.models import AuditEvent
from serving.gateway.models import ApiKey
from serving.gateway.services import KEY_PREFIX
from serving.models import Endpoint

pytestmark = pytest.mark.django_db
URL = "http://127.0.0.1:8000/"


@pytest.fixture
def demo(department, make_user, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    (tmp_path / "admin-password").write_text("not shown\n")
    make_user("admin", superuser=True)
    team = Team.objects.create(department=department, name="Demo", slug="demo")
    for name in ("smollm2", "ticket-router"):
        Endpoint.objects.create(name=name, owner_team=team)
    return tmp_path


def summary(*args: str) -> str:
    out = StringIO()
    call_command("run_summary", "--url", URL, *args, stdout=out)
    return out.getvalue()


def test_the_summary_says_where_to_sign_in_what_is_served_and_where_the_api_docs_and_billing_are(demo):
    printed = summary()
    assert f"as admin (initial password in {demo / 'admin-password'})" in printed
    assert "endpoints: smollm2, ticket-router (OpenAI API at http://127.0.0.1:8000/v1)" in printed
    assert "API docs:  http://127.0.0.1:8000/api/docs" in printed
    assert "billing:   http://127.0.0.1:8000/billing/" in printed
    assert "not shown" not in printed and "curl" not in printed and not ApiKey.objects.exists()


def test_the_demo_key_is_written_to_a_file_only_the_user_can_read_and_the_calls_read_it_from_there(demo):
    key_file = demo / "demo-api-key"
    printed = summary("--demo-key-file", str(key_file))
    secret = key_file.read_text().strip()
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    key = ApiKey.objects.get(key_id=secrets_hashing.parse(KEY_PREFIX, secret))
    assert secrets_hashing.matches(secret, key.secret_hash) and key.team.slug == "demo"
    assert secret not in printed
    assert (
        f'curl -s http://127.0.0.1:8000/v1/chat/completions -H "Authorization: Bearer $(cat {key_file})"'
        in printed
    )
    assert '"model": "smollm2"' in printed
    assert f"OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=$(cat {key_file})" in printed
    assert AuditEvent.objects.filter(action="apikey.create").count() == 1


def test_each_start_makes_a_new_demo_key_and_revokes_the_last_one(demo):
    key_file = demo / "demo-api-key"
    summary("--demo-key-file", str(key_file))
    first = key_file.read_text()
    key_file.chmod(0o644)
    summary("--demo-key-file", str(key_file))
    assert key_file.read_text() != first and oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert ApiKey.objects.filter(revoked_at__isnull=True).count() == 1
    assert AuditEvent.objects.filter(action="apikey.revoke").count() == 1


def test_no_demo_key_without_the_demo_endpoint(demo):
    Endpoint.objects.filter(name="smollm2").delete()
    with pytest.raises(CommandError, match="No endpoint 'smollm2'"):
        summary("--demo-key-file", str(demo / "demo-api-key"))
    assert not (demo / "demo-api-key").exists()
