"""The Celery app: queue "control" for control-plane work, "node.<name>" for each machine's agent.

Logging in worker and beat processes is ours, not Celery's: by default Celery's start-up replaces the root
handlers that settings.LOGGING installed with its own, losing the secret-redacting filter. A receiver of
``setup_logging`` makes Celery skip its own configuration, so ``configure_logging`` applies LOGGING again.
Celery then also skips ``worker_redirect_stdouts``: a stray ``print`` goes to the process's stdout as it is,
rather than through a logger (redirecting here would make the handlers of forked pool children, which
inherit the proxied ``sys.stderr``, write into their own logger).
"""

from __future__ import annotations

import logging
import logging.config
import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portfolio.settings")

app = Celery("portfolio")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.setup_logging.connect
def configure_logging(loglevel: int | None = None, **kwargs: object) -> None:
    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)
    if loglevel:
        # The command line's --loglevel still decides, as it did when Celery configured logging itself.
        logging.getLogger().setLevel(loglevel)
