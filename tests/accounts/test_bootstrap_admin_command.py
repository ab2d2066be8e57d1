"""`portfolio manage bootstrap_admin`: the first admin and its password file come into being together, the
file readable by its owner only; a password file that cannot be written leaves no admin behind."""

import stat

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from portfolio.audit.models import AuditEvent

pytestmark = pytest.mark.django_db


@pytest.fixture
def data_dir(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    return tmp_path


def _superusers():
    return get_user_model().objects.filter(is_superuser=True)


def test_the_admin_is_created_with_its_password_in_an_owner_only_file(data_dir, capsys):
    call_command("bootstrap_admin", "--username", "root")
    password = (data_dir / "admin-password").read_text().strip()
    assert f"password: {password}" in capsys.readouterr().out
    assert _superusers().get().check_password(password)
    assert stat.S_IMODE((data_dir / "admin-password").stat().st_mode) == 0o600
    assert [path.name for path in data_dir.iterdir()] == ["admin-password"]


def test_a_readable_old_password_file_becomes_owner_only(data_dir):
    old = data_dir / "admin-password"
    old.write_text("an old password\n")
    old.chmod(0o644)
    call_command("bootstrap_admin")
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    assert _superusers().get().check_password(old.read_text().strip())


def test_a_password_file_that_cannot_be_written_leaves_no_admin(data_dir):
    (data_dir / "admin-password").mkdir()
    with pytest.raises(CommandError, match="No admin was created"):
        call_command("bootstrap_admin")
    assert not _superusers().exists()
    assert not AuditEvent.objects.filter(action="user.create").exists()
    assert [path.name for path in data_dir.iterdir()] == ["admin-password"]


def test_an_empty_username_is_refused_plainly(data_dir):
    with pytest.raises(CommandError, match="--username"):
        call_command("bootstrap_admin", "--username", "")
    assert not _superusers().exists() and not (data_dir / "admin-password").exists()


def test_a_rerun_leaves_the_existing_admin_alone(data_dir, capsys):
    call_command("bootstrap_admin")
    password = (data_dir / "admin-password").read_text()
    call_command("bootstrap_admin")
    assert "Admin account exists" in capsys.readouterr().out
    assert (data_dir / "admin-password").read_text() == password and _superusers().count() == 1


def test_a_name_with_spaces_around_it_is_created_as_the_sign_in_form_reads_it(data_dir, client):
    """Found by review: ``"admin "`` (a .env file's trailing space) was created as is, and never signed in."""
    call_command("bootstrap_admin", "--username", "admin ")
    assert _superusers().get().username == "admin"
    password = (data_dir / "admin-password").read_text().strip()
    assert client.post("/login/", {"username": "admin", "password": password}).status_code == 302


@pytest.mark.parametrize(
    "username, why",
    [("x" * 151, "at most 150 characters"), ("no/slashes", "Enter a valid username"), ("taken", "exists")],
)
def test_a_name_that_cannot_be_an_account_is_refused_plainly(data_dir, username, why):
    get_user_model().objects.create_user(username="taken")
    with pytest.raises(CommandError, match=why):
        call_command("bootstrap_admin", "--username", username)
    assert not _superusers().exists() and not (data_dir / "admin-password").exists()
