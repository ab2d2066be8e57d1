"""A directory sync whose worker died mid-run: its row is marked interrupted by the next sync, not left
"running" until a hundred newer runs pruned it; a sync still running is never taken for a dead one."""

from __future__ import annotations

import pytest
from django.template.loader import render_to_string

from portfolio.accounts.models import DirectorySync
from portfolio.accounts.sso import client, directory, sync
from portfolio.accounts.sso.config import OidcConfig
from tests.interleave import Pause, interleave

CONFIG = OidcConfig(server_url="http://127.0.0.1:1/", realm="portfolio", client_id="portfolio")
SYNC = {"client_id": "portfolio-sync", "client_secret": "sync-secret", "interval": 300}
ISSUER = "http://127.0.0.1:1/realms/portfolio"


class Killed(BaseException):
    """Stands for SIGKILL or the OOM killer: no except clause of the run sees it."""


def _reads_nobody(monkeypatch) -> None:
    monkeypatch.setattr(client, "discovery", lambda config: {"issuer": ISSUER})
    monkeypatch.setattr(directory, "read", lambda config, **kwargs: directory.Directory(enabled={}))


@pytest.mark.django_db
def test_a_sync_killed_mid_run_is_marked_interrupted_by_the_next_and_shown_so(monkeypatch):
    def killed(config):
        raise Killed()

    monkeypatch.setattr(client, "discovery", killed)
    with pytest.raises(Killed):
        sync.run_once(CONFIG, SYNC)
    dead = DirectorySync.objects.get()
    assert dead.finished_at is None  # as a worker killed mid-run leaves it
    _reads_nobody(monkeypatch)

    run = sync.run_once(CONFIG, SYNC)  # the redelivered message, or the next interval's

    dead.refresh_from_db()
    assert run.ok and run.pk != dead.pk
    assert dead.finished_at is not None and not dead.ok and dead.error == sync.INTERRUPTED
    page = render_to_string(
        "accounts/partials/directory_sync.html",
        {"sync_on": True, "sync_interval": 300, "last_ok": run, "runs": sync.last_runs()[1]},
    )
    assert ">running<" not in page and "Interrupted: its worker stopped" in page
    assert "The last sync changed nothing" not in page  # the newest run is the one that went well


@pytest.mark.django_db(transaction=True)
def test_a_sync_while_another_runs_does_nothing_and_leaves_the_running_one_be(monkeypatch):
    _reads_nobody(monkeypatch)
    pause = Pause()  # the first sync stops after its discovery, its row unfinished
    monkeypatch.setattr(client, "discovery", pause.hook(client.discovery))

    first, second = interleave(
        pause, lambda: sync.run_once(CONFIG, SYNC), lambda: sync.run_once(CONFIG, SYNC)
    )

    assert (first.error, second.error) == (None, None)
    assert second.result.pk is None and not second.result.ok and second.result.error == sync.BUSY
    assert first.result.ok and first.result.error == ""
    assert list(DirectorySync.objects.values_list("pk", flat=True)) == [first.result.pk]
