"""Audio seconds from the gateway's usage events reach billing's ledger and are charged at the price book's
``audio_second``: to the calling team, credited to the owning team, own calls at 0, in statements, spend
and the daily chart alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest

from portfolio.billing import daily, money, spend
from portfolio.billing.charges import charges_of
from portfolio.billing.choices import LineKind, PriceKind
from portfolio.billing.models import Price, TokenDay, TokenUsage
from serving.gateway import keystate, usage
from serving.gateway import services as key_services
from serving.gateway.events import USAGE_STREAM
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db

ENDPOINT_ID = 43


def _send(key, caller, owner, event_id: str, at: datetime, audio_ms: int) -> None:
    event = {
        "id": event_id,
        "at": at.timestamp(),
        "key": key.pk,
        "team": caller.pk,
        "department": caller.department_id,
        "endpoint": "whisper",
        "endpoint_id": ENDPOINT_ID,
        "owner_team": owner.pk,
        "owner_department": owner.department_id,
        "deployment": "whisper-dep",
        "adapter": "",
        "version": None,
        "replica": None,
        "kind": "transcription",
        "stream": 0,
        "in": 0,
        "out": 0,
        "audio_ms": audio_ms,
        "latency_ms": 40,
        "ttft_ms": None,
        "status": 200,
        "error": "",
        "cost_micros": audio_ms * 10,
    }
    keystate.client().xadd(USAGE_STREAM, {"e": orjson.dumps(event)})


@pytest.fixture
def transcribed(org, team, other_team):
    """Two calls of 1.5 s from another team and one of 4 s from the owning team, this month."""
    Price.objects.create(
        kind=PriceKind.ENDPOINT,
        subject_id=str(ENDPOINT_ID),
        subject_name="whisper",
        effective_from=datetime(2000, 1, 1, tzinfo=UTC),
        audio_second=Decimal("0.01"),
    )
    owner_key, _ = key_services.create_key(actor=actor_for(org["owner"]), team=team, name="own")
    caller_key, _ = key_services.create_key(actor=actor_for(org["outsider"]), team=other_team, name="call")
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    at = max(hour - timedelta(hours=1), hour.replace(day=1, hour=0))
    _send(caller_key, other_team, team, "call-1", at, 1500)
    _send(caller_key, other_team, team, "call-2", at + timedelta(minutes=1), 1500)
    _send(owner_key, team, team, "own-1", at + timedelta(minutes=2), 4000)
    usage.flush()
    usage.rollup(since=at)
    return at


def test_audio_milliseconds_land_in_the_hour_and_day_ledgers(transcribed, team, other_team):
    hours = {row.team_id: row.audio_ms for row in TokenUsage.objects.filter(endpoint="whisper")}
    assert hours == {other_team.pk: 3000, team.pk: 4000}
    assert sum(TokenDay.objects.filter(endpoint="whisper").values_list("audio_ms", flat=True)) == 7000


def test_the_caller_pays_for_its_audio_seconds_and_the_owner_is_credited(transcribed, team, other_team):
    lines = charges_of(None, money.month_start(transcribed), datetime.now(UTC))
    audio = {(line.team_id, line.kind): line for line in lines if line.unit == "seconds"}
    caller = audio[(other_team.pk, LineKind.TOKENS)]
    assert (caller.quantity, caller.unit_price, caller.amount) == (
        Decimal("3"),
        Decimal("0.01"),
        Decimal("0.03"),
    )
    assert audio[(team.pk, LineKind.CREDIT)].amount == Decimal("-0.03")
    assert audio[(team.pk, LineKind.TOKENS)].amount == 0, "own calls: the compute is charged instead"
    month = spend.month_to_date(datetime.now(UTC))
    assert month.of_team(other_team.pk) == Decimal("0.03")
    assert month.team_tokens[other_team.pk] == Decimal("0.03"), "what the gateway's counters held"


def test_the_daily_chart_counts_the_audio_charge(transcribed, other_team):
    days = daily.series(money.month_start(transcribed), datetime.now(UTC), [other_team.department_id])
    charged, _ = days.total([(other_team.department_id, other_team.pk)])
    assert sum(charged) == Decimal("0.03")


def test_the_spend_api_shows_a_speech_teams_days_in_seconds_of_audio_not_zero_tokens(
    transcribed, client, org, team, other_team
):
    client.force_login(org["admin"])
    response = client.get("/api/v1/billing/spend")
    assert response.status_code == 200, response.content[:500]
    spend = response.json()

    def seconds(row) -> Decimal:
        return sum((Decimal(value) for value in row["audio_seconds"]), Decimal(0))

    teams = {row["id"]: row for row in spend["teams"]}
    assert (seconds(teams[other_team.pk]), sum(teams[other_team.pk]["tokens"])) == (Decimal(3), 0)
    assert seconds(teams[team.pk]) == Decimal(4), "own calls: used, though not charged"
    departments = {row["id"]: seconds(row) for row in spend["departments"]}
    assert departments == {team.department_id: Decimal(4), other_team.department_id: Decimal(3)}
    assert sum(Decimal(value) for value in spend["day_audio_seconds"]) == Decimal(7)
