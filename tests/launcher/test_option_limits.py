"""Web workers and Celery concurrency have a ceiling: a typo (`--workers 400`) is a one-line refusal, not a
machine forking hundreds of processes; the same ceiling holds for the environment's defaults."""

import pytest
from django.core.exceptions import ImproperlyConfigured

from portfolio import cli


@pytest.mark.parametrize(
    "argv",
    [
        ["web", "--workers", "65"],
        ["worker", "--concurrency", "257"],
        ["node-agent", "--concurrency", "2000"],
    ],
)
def test_too_many_workers_or_too_much_concurrency_is_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.build_parser().parse_args(argv)
    assert exit.value.code == 2
    assert "is out of range: from 1 to" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command, variable, value",
    [
        ("web", "PORTFOLIO_WEB_WORKERS", "400"),
        ("worker", "PORTFOLIO_WORKER_CONCURRENCY", "1000"),
        ("node-agent", "PORTFOLIO_AGENT_CONCURRENCY", "1000"),
    ],
)
def test_too_many_in_the_environment_is_refused_too(monkeypatch, command, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ImproperlyConfigured):
        cli.parse_args([command])


def test_the_ceilings_themselves_are_accepted():
    assert cli.parse_args(["web", "--workers", "64"]).workers == 64
    assert cli.parse_args(["worker", "--concurrency", "256"]).concurrency == 256
