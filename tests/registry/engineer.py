"""Imports as the team's engineer makes them, run here as a worker would (tests/registry/test_imports*.py)."""

from __future__ import annotations

from portfolio.registry.models import ModelVersion
from tests.conftest import actor_for
from tests.registry.conftest import import_here


def _import(org, model, source, ref, **options) -> ModelVersion:
    return import_here(actor_for(org["engineer"]), model, source, ref, **options)
