"""A name ends where its pattern says: `$` also matches before a final newline, so "prod-chat\n" passed as a
name of its own beside "prod-chat", shown the same on every page (the web forms strip; the API did not)."""

from __future__ import annotations

import pytest

from portfolio.billing import money
from portfolio.errors import Invalid
from serving import services
from serving.choices import PoolKind
from tests.conftest import actor_for

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("name", ["gpu-pool\n", "gpu-pool\n\n"])
def test_a_name_with_a_final_newline_is_refused(org, name):
    with pytest.raises(Invalid, match="lower-case"):
        services.create_pool(actor=actor_for(org["admin"]), name=name, kind=PoolKind.CPU)


def test_every_name_and_identifier_pattern_ends_at_the_end_of_the_text():
    from portfolio.accounts.models import cost_center_validator
    from portfolio.billing.api import COST_CENTER
    from portfolio.registry.models import alias_validator, model_name_validator
    from serving.models import name_validator
    from training.models import dataset_name_validator

    for validator in (cost_center_validator, alias_validator, model_name_validator, name_validator,
                      dataset_name_validator):  # fmt: skip
        assert validator.regex.search("AB-1\n" if validator is cost_center_validator else "ab-1\n") is None
    assert COST_CENTER.match("CC-100\n") is None and money.MONTH.match("2026-10\n") is None
