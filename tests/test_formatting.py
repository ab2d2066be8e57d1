"""Figures read the same on every page: the formatting filters, as templates and Python call them."""

from __future__ import annotations

from decimal import Decimal

from django.template import Context, Template

from portfolio import charts
from portfolio.templatetags.formatting import (
    age_label,
    audio_seconds,
    compute_hours,
    duration_label,
    gib,
    human_count,
    short_number,
)


def test_parameter_counts_read_as_people_quote_them():
    assert human_count(134_515_008) == "134.5M" and human_count(1_711_376_384) == "1.7B"
    assert human_count(999_960) == "1.0M" and human_count(999_400) == "999.4K"
    assert human_count(512) == "512" and human_count(None) == "—" and human_count(0) == "—"


def test_short_numbers_drop_a_trailing_zero_and_keep_small_fractions():
    assert [short_number(v) for v in (0, 12, 0.5, 1234, 1000, 5_600_000, 2e9, 3e12)] == [
        "0",
        "12",
        "0.5",
        "1.2k",
        "1k",
        "5.6M",
        "2B",
        "3T",
    ]
    assert short_number(None) == "0"


def test_sizes_in_gib_have_one_decimal_and_no_unit():
    assert gib(1_610_612_736) == "1.5" and gib(0) == "0.0"


def test_spans_and_ages_read_at_a_glance():
    assert (
        duration_label(45) == "45 s"
        and duration_label(192) == "3 min 12 s"
        and duration_label(7500) == "2 h 5 min"
    )
    assert duration_label(None) == "" and duration_label(-3) == "0 s"
    assert age_label(4) == "4 s ago" and age_label(200) == "3 min ago" and age_label(5 * 86400) == "5 d ago"
    assert age_label(None) == "never"


def test_compute_hours_show_a_short_job():
    assert compute_hours(43.2) == "0.012" and compute_hours(5400) == "1.50" and compute_hours(0) == "0.00"


def test_templates_load_the_same_filters():
    template = Template("{% load formatting %}{{ n|human_count }} {{ t|short_number }} {{ b|gib }} GiB")
    assert (
        template.render(Context({"n": 134_515_008, "t": 5_600_000, "b": 2 * 1024**3}))
        == "134.5M 5.6M 2.0 GiB"
    )


def test_chart_steps_are_round():
    assert [charts.nice_step(v) for v in (0, 0.03, 7, 10, 11, 240)] == [1.0, 0.05, 10, 10, 20, 500]
    assert [charts.whole_step(n, 4) for n in (1, 3, 7, 41, 999)] == [1, 1, 2, 20, 500]
    assert (
        charts.coordinate(12.5) == "12.5"
        and charts.coordinate(40.0) == "40"
        and charts.coordinate(3.04) == "3"
    )


def test_audio_reads_in_seconds_to_a_tenth():
    assert [audio_seconds(v) for v in (Decimal("7.5"), 3600, None, Decimal("0.0005"))] == [
        "7.5 s",
        "3,600.0 s",
        "0.0 s",
        "0.0 s",
    ]
