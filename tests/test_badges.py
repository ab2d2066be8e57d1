"""One status badge: its tone comes from the status's choices, for every status the pages show."""

from __future__ import annotations

import pytest
from django.db import models
from django.template import Context, Template

from portfolio import badges
from portfolio.registry.choices import Health, VersionStatus
from serving.choices import DeploymentStatus, NodeState, ReplicaState
from training.choices import EvalStatus, JobStatus


def render(source: str, **context) -> str:
    return Template("{% load badges %}" + source).render(Context(context))


def test_each_status_carries_the_tones_of_its_badges():
    assert JobStatus.tones == {
        "succeeded": "ok",
        "running": "info",
        "queued": "warn",
        "failed": "danger",
        "errored": "danger",
    }
    assert DeploymentStatus.tones["running"] == "ok" and VersionStatus.tones["importing"] == "warn"
    assert NodeState.tones["lost"] == "danger" and ReplicaState.tones["backoff"] == "warn"
    assert EvalStatus.tones["failed"] == "danger" and Health.tones["corrupt"] == "danger"


def test_the_same_word_takes_the_tone_of_its_own_status():
    assert badges.badge("job").tone("running") == "info"
    assert badges.badge("deployment").tone("running") == "ok"


def test_a_status_the_mapping_leaves_out_is_muted():
    assert badges.badge("job").tone(JobStatus.CANCELLED) == "muted"
    assert badges.badge("deployment").tone("stopped") == "muted"


def test_the_badge_tag_draws_the_tone_the_words_and_the_hover_text():
    assert (
        render('{% status_badge "job" status %}', status="queued")
        == '<span class="badge badge--warn">queued</span>'
    )
    assert (
        render(
            '{% status_badge "deployment" status title=detail %}', status="degraded", detail="1 of 2 <ready>"
        )
        == '<span class="badge badge--danger" title="1 of 2 &lt;ready&gt;">degraded</span>'
    )
    assert (
        render('{% status_badge "replica" state label=label %}', state="pending", label="Scheduled")
        == '<span class="badge badge--warn">Scheduled</span>'
    )


def test_a_badge_may_say_its_status_in_words_of_its_own():
    assert render('{{ h|tone:"health" }} {{ h|badge_label:"health" }}', h="unknown") == "muted unverified"
    assert render('{% status_badge "health" "ok" %}') == '<span class="badge badge--ok">verified</span>'


def test_an_unknown_badge_is_a_programming_error():
    with pytest.raises(KeyError, match="No status badge"):
        badges.badge("nope")


def test_a_tone_for_a_value_the_choices_lack_or_a_colour_that_is_no_tone_is_refused():
    class Light(models.TextChoices):
        ON = "on", "On"
        OFF = "off", "Off"

    with pytest.raises(ValueError, match="no value"):
        badges.toned("test-light", dim="ok")(Light)
    with pytest.raises(ValueError, match="not badge tones"):
        badges.toned("test-light", on="green")(Light)
    assert "test-light" not in badges.BADGES


def test_a_badge_name_belongs_to_one_status():
    class Other(models.TextChoices):
        RUNNING = "running", "Running"

    with pytest.raises(ValueError, match="already"):
        badges.toned("job", running="ok")(Other)
    assert badges.badge("job").choices is JobStatus
