"""Months, days and hours that the platform adds to or takes from today's date have a ceiling. They had only a
minimum (and the 2**31-1 every integer has): `PORTFOLIO_USAGE_RETENTION_MONTHS=99999` ("keep forever") passed
start-up, then `portfolio migrate` ended in a traceback and the periodic rollup that feeds billing stopped
(`year -6307 is out of range`); a huge close delay failed every statement close, and a huge token lifetime
let `create_token` fail with an OverflowError (found by review). Past its ceiling a setting stops start-up;
at it, the work that uses it runs."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import pytest

from portfolio.accounts.models import Department
from portfolio.accounts.personal_tokens import create_personal_token
from portfolio.billing import statements
from serving.gateway import partitions, usage
from tests.conftest import actor_for
from tests.test_settings import _production_env, _settings_in

CEILINGS = {
    "PORTFOLIO_USAGE_RETENTION_MONTHS": ("USAGE_RETENTION_MONTHS", 1200),
    "PORTFOLIO_BILLING_ADJUSTMENT_MONTHS": ("BILLING_ADJUSTMENT_MONTHS", 120),
    "PORTFOLIO_BILLING_CLOSE_AFTER_HOURS": ("BILLING_CLOSE_AFTER_HOURS", 24 * 92),
    "PORTFOLIO_PERSONAL_TOKEN_MAX_DAYS": ("PERSONAL_TOKEN_MAX_DAYS", 36500),
}


@pytest.mark.parametrize(
    "name, value",
    [(name, str(ceiling + 1)) for name, (_, ceiling) in CEILINGS.items()]
    + [("PORTFOLIO_USAGE_RETENTION_MONTHS", "99999"), ("PORTFOLIO_PERSONAL_TOKEN_MAX_DAYS", "3000000")],
)
def test_a_date_setting_past_its_ceiling_stops_start_up_naming_it(tmp_path, name, value):
    result = _settings_in(_production_env(tmp_path, **{name: value}), CEILINGS[name][0])
    assert result.returncode != 0, result.stdout
    assert f"{name}={value} is out of range" in result.stderr


def test_each_date_setting_may_be_set_to_its_ceiling(tmp_path):
    env = _production_env(tmp_path, **{name: str(ceiling) for name, (_, ceiling) in CEILINGS.items()})
    result = _settings_in(env, *(setting for setting, _ in CEILINGS.values()))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {setting: ceiling for setting, ceiling in CEILINGS.values()}


@pytest.mark.django_db
def test_at_the_longest_retention_partitions_and_the_rollup_still_work(settings):
    settings.USAGE_RETENTION_MONTHS = CEILINGS["PORTFOLIO_USAGE_RETENTION_MONTHS"][1]
    now = datetime.now(UTC)
    assert partitions.kept_from(now) == date(now.year - 100, now.month, 1)
    assert partitions.drop_expired() == []
    assert usage.rollup() >= 0


@pytest.mark.django_db
def test_at_the_longest_close_delay_and_adjustment_months_statements_still_close(settings, team):
    settings.BILLING_CLOSE_AFTER_HOURS = CEILINGS["PORTFOLIO_BILLING_CLOSE_AFTER_HOURS"][1]
    settings.BILLING_ADJUSTMENT_MONTHS = CEILINGS["PORTFOLIO_BILLING_ADJUSTMENT_MONTHS"][1]
    Department.objects.filter(pk=team.department_id).update(created_at=datetime(2026, 1, 3, tzinfo=UTC))
    # 92 days after May ended: January to May close (a later month would wait, an earlier year is past).
    closed = statements.close_finished(datetime(2026, 9, 1, tzinfo=UTC))
    assert [s.month for s in closed if s.department_id == team.department_id] == [
        date(2026, month, 1) for month in range(1, 6)
    ]
    assert statements.close_finished(datetime(2026, 9, 1, tzinfo=UTC)) == []


@pytest.mark.django_db
def test_at_the_longest_token_lifetime_a_token_is_made(settings, org):
    settings.PERSONAL_TOKEN_MAX_DAYS = CEILINGS["PORTFOLIO_PERSONAL_TOKEN_MAX_DAYS"][1]
    token, _plain = create_personal_token(
        actor=actor_for(org["owner"]), name="century", expires_in_days=settings.PERSONAL_TOKEN_MAX_DAYS
    )
    assert token.expires_at is not None and token.expires_at.year >= datetime.now(UTC).year + 99
