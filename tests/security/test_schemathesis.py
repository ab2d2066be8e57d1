"""Schemathesis over the OpenAPI document of /api/v1: no 5xx, no response that violates the schema, no
status code the schema does not declare.

Every operation is fuzzed twice, with a platform admin's personal token and with a team owner's, through
Django's WSGI application in this process. Each generated request runs in a savepoint that is rolled back
after it, so examples cannot change what later ones see (a fuzzed ``DELETE /tokens/{id}`` cannot revoke
the token the run uses) and no task is enqueued. The examples are derandomised: CI fuzzes the same cases
on every run, and a failure names the request to replay. The number of generated cases is printed at the
end of the module (``schemathesis: N generated cases``).
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections, transaction
from django.utils import timezone
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation.meta import CoveragePhaseData
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from portfolio.accounts import personal_tokens, secrets_hashing
from portfolio.accounts.choices import TeamRole
from portfolio.accounts.models import Membership, PersonalToken
from serving.choices import PoolKind
from serving.gateway import services as key_services
from serving.gateway.models import ApiKey
from serving.models import ComputePool

# Sized for CI: with the coverage phase's cases (about 20 per operation) this is about 1,900 requests, and
# about a minute of one core (59 s of CPU measured on a shared 2-core machine, 2026-12-01).
ADMIN_EXAMPLES = 2
OWNER_EXAMPLES = 4
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _schema(*, coverage: bool):
    """The served document, fuzzed with a few random examples per operation, after the coverage phase
    (every boundary and every kind of wrong value the schema implies) where ``coverage``. Methods a path
    does not declare are not tried: ninja answers them 405 before any of our code runs."""
    config = schemathesis.Config.from_dict(
        {"phases": {"coverage": {"enabled": coverage, "unexpected-methods": []}}}
    )
    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", get_wsgi_application(), config=config)


# The admin token reaches every operation's code: every boundary and wrong value the schema implies (the
# coverage phase) and a few random examples. A team owner's run adds the team-scoped answers (403/404 and
# the owner's own objects) with random examples only.
admin_schema = _schema(coverage=True)
owner_schema = _schema(coverage=False)


@admin_schema.hook
def filter_case(context, case) -> bool:
    """The coverage phase's wrong request bodies (each missing field, each wrong type, ...) all end in the
    same 422 of the body's validation, at a request each; the random examples keep trying wrong bodies.
    Its wrong query and path values stay: that is where the 500s were (a page past 2**63)."""
    meta = case.meta
    return not (
        meta is not None
        and isinstance(meta.phase.data, CoveragePhaseData)
        and meta.is_negative_at(ParameterLocation.BODY)
    )


generated: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_generated_cases(request):
    yield
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if reporter is not None and capture is not None and generated:
        by_token = ", ".join(f"{n} with the {who} token" for who, n in sorted(generated.items()))
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"schemathesis: {sum(generated.values())} generated cases ({by_token})")


@pytest.fixture
def wsgi_in_test_transaction():
    """Django's test client keeps the test's connection open across requests; calling the WSGI app
    directly must do the same, or the first request would close the test's transaction."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def tokens(make_user, team, other_team, wsgi_in_test_transaction):
    """A platform admin's and a team owner's personal tokens, and a little of everything to list. Built
    with the ORM (no audit rows, few queries): it is made again for each of the ~150 operation tests."""
    admin, owner = make_user("admin", superuser=True), make_user("owner")
    Membership.objects.create(user=owner, team=team, role=TeamRole.OWNER)
    Membership.objects.create(user=make_user("outsider"), team=other_team, role=TeamRole.OWNER)
    pool = ComputePool.objects.create(name="cpu-pool", kind=PoolKind.CPU)
    pool.allowed_teams.add(team)
    issued = secrets_hashing.issue(key_services.KEY_PREFIX)
    ApiKey.objects.create(
        team=team, name="fuzz key", key_id=issued.key_id, secret_hash=issued.hash, rpm_limit=60
    )
    plaintexts = {}
    for offset, (who, user) in enumerate((("admin", admin), ("owner", owner))):
        issued = secrets_hashing.issue(personal_tokens.TOKEN_PREFIX)
        # Far from the small ids fuzzing tries first, so that no generated path names the token itself;
        # used just now, so that authenticating does not write its last use on every request.
        PersonalToken.objects.create(
            id=10**12 + offset,
            user=user,
            name="schemathesis",
            key_id=issued.key_id,
            secret_hash=issued.hash,
            expires_at=timezone.now() + timedelta(days=1),
            last_used_at=timezone.now(),
        )
        plaintexts[who] = issued.plaintext
    return plaintexts


def _fuzz(case, token: str, who: str) -> None:
    with transaction.atomic():
        response = case.call(headers={"Authorization": f"Bearer {token}"})
        transaction.set_rollback(True)
    generated[who] += 1
    case.validate_response(response, checks=CHECKS)


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
        ],
    )


@pytest.mark.django_db
@admin_schema.parametrize()
@fuzz(ADMIN_EXAMPLES)
def test_the_api_keeps_its_schema_for_a_platform_admin(case, tokens):
    _fuzz(case, tokens["admin"], "admin")


@pytest.mark.django_db
@owner_schema.parametrize()
@fuzz(OWNER_EXAMPLES)
def test_the_api_keeps_its_schema_for_a_team_owner(case, tokens):
    _fuzz(case, tokens["owner"], "owner")
