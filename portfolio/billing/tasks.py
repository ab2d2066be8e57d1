"""Billing's periodic work, on the control queue."""

from __future__ import annotations

from celery import shared_task

from portfolio.billing import statements


@shared_task(name="billing.close_statements")
def close_statements() -> int:
    """Close every finished month of every department (each statement in its own transaction)."""
    return len(statements.close_finished())


@shared_task(name="billing.check_budgets")
def check_budgets() -> int:
    """Store each budget's spend so far this month (the gateway's hard limits read it) and alert the
    thresholds newly crossed, each once a month."""
    from portfolio.billing import alerts

    return len(alerts.check())
