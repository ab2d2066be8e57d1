"""The directory sync's beat entry expires as every other periodic task's does."""

import json

from tests.test_settings import _production_env, _settings_in


def test_a_directory_sync_queued_behind_long_tasks_expires_when_its_next_is_due(tmp_path):
    """Found by review: the loop giving each beat entry its expiry ran before the sync's entry was added, so
    a sync queued on the long control workers behind a merge piled up one message per interval, run back to
    back when the workers came free."""
    env = _production_env(
        tmp_path,
        PORTFOLIO_OIDC_SERVER_URL="https://keycloak.example.com",
        PORTFOLIO_OIDC_REALM="acme",
        PORTFOLIO_OIDC_CLIENT_ID="portfolio",
        PORTFOLIO_OIDC_CLIENT_SECRET="oidc-s3cret-that-is-long-enough",
        PORTFOLIO_OIDC_SYNC_CLIENT_ID="portfolio-sync",
        PORTFOLIO_OIDC_SYNC_CLIENT_SECRET="sync-s3cret",
        PORTFOLIO_OIDC_SYNC_SECONDS="120",
    )
    result = _settings_in(env, "CELERY_BEAT_SCHEDULE")
    assert result.returncode == 0, result.stderr
    entry = json.loads(result.stdout)["CELERY_BEAT_SCHEDULE"]["accounts-sync-directory"]
    assert entry == {"task": "accounts.sync_directory", "schedule": 120.0, "options": {"expires": 120.0}}
