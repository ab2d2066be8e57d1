"""Long control tasks have their own queue and worker: none of them holds up the periodic work."""

import pytest
from django.conf import settings

from portfolio import cli, commands
from portfolio.celery import app

LONG = "control.long"


def queue_of(name: str) -> str:
    return app.amqp.router.route({}, name)["queue"].name


@pytest.fixture(scope="module")
def registered() -> set[str]:
    app.loader.import_default_modules()
    return set(app.tasks)


@pytest.mark.parametrize(
    "name",
    [
        "training.run_endpoint_eval",
        "training.merge_adapter",
        "training.ingest_dataset",
        "registry.import_version",
        "registry.verify_artifact",
        "accounts.sync_directory",
    ],
)
def test_a_long_control_task_goes_to_the_long_queue(registered, name):
    assert name in registered
    assert queue_of(name) == LONG


def test_every_periodic_task_but_the_directory_sync_goes_to_the_control_queue(registered):
    """Reapers, the usage flush, budget checks and rollout steps: a few eval runs or merges running for hours
    took both control workers, and these waited behind them (the reapers did not reap, the flush did not
    flush, a canary's errors were not judged)."""
    for entry in settings.CELERY_BEAT_SCHEDULE.values():
        assert entry["task"] in registered
        expected = LONG if entry["task"] == "accounts.sync_directory" else "control"
        assert queue_of(entry["task"]) == expected, entry["task"]


def test_every_task_named_long_exists(registered):
    assert set(settings.LONG_CONTROL_TASKS) <= registered


def test_portfolio_worker_long_consumes_only_the_long_queue(monkeypatch):
    ran: list[list[str]] = []
    monkeypatch.setattr(cli, "_exec", ran.append)
    monkeypatch.setattr(commands, "node_name", lambda: "here")
    cli.main(["worker", "--long"])
    cli.main(["worker"])
    long, control = ran
    assert long[long.index("--queues") + 1] == LONG and long[long.index("--hostname") + 1] == "long@here"
    assert control[control.index("--queues") + 1] == "control"
