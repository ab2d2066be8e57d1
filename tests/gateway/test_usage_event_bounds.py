"""Usage events that must not poison the flusher, and hourly rollups that keep each team's playground
calls to itself."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from serving.gateway import keystate, payloads, usage
from serving.gateway import services as key_services
from serving.gateway.models import UsageEvent, UsageHourly
from tests.conftest import actor_for
from tests.gateway.test_usage import _stream_event

pytestmark = pytest.mark.django_db


def test_the_worst_case_billed_for_a_timed_out_request_fits_the_event_columns():
    """2,048 prompts of 8 completions each on a 262k context: more output tokens than an integer holds."""
    shape = payloads.Shape(prompts=(1,) * 2048, choices=8, per_choice=None)
    prompt, completion = payloads.worst_usage(shape, 262_144)
    assert completion == 2**31 - 1, "what UsageEvent.output_tokens holds at most"
    assert prompt <= 2**31 - 1


def test_an_event_past_its_columns_range_is_set_aside_and_the_rest_of_the_batch_is_stored(org, team):
    key, _ = key_services.create_key(actor=actor_for(org["owner"]), team=team, name="k")
    at = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
    _stream_event(key, team, "too-many-tokens", at, out=2**31)
    _stream_event(key, team, "fine", at)
    assert usage.flush() == 2
    assert usage.flush() == 0, "nothing is left pending to be claimed again"
    assert list(UsageEvent.objects.values_list("event_id", flat=True)) == ["fine"]
    ((_, fields),) = keystate.client().xrange(usage.DEAD_LETTERS)
    assert b"too-many-tokens" in fields[b"e"] and b"output_tokens" in fields[b"unreadable"]


def test_playground_calls_of_two_teams_in_one_hour_roll_up_into_a_row_each(team, other_team):
    hour = datetime(2026, 11, 23, 9, tzinfo=UTC)
    for i, (caller, tokens) in enumerate([(team, 10), (other_team, 7)]):
        UsageEvent.objects.create(
            event_id=f"p{i}",
            at=hour.replace(minute=i),
            api_key=None,  # the prompt box calls without a key
            team_id=caller.pk,
            department_id=caller.department_id,
            endpoint="(playground)",
            kind="chat",
            input_tokens=tokens,
            output_tokens=1,
            latency_ms=10,
            status=200,
        )
    usage.rollup(since=hour)
    rows = {row.team_id: row for row in UsageHourly.objects.all()}
    assert sorted(rows) == sorted([team.pk, other_team.pk])
    assert (rows[team.pk].requests, rows[team.pk].input_tokens) == (1, 10)
    assert (rows[other_team.pk].requests, rows[other_team.pk].input_tokens) == (1, 7)
    assert rows[other_team.pk].department_id == other_team.department_id
