"""Hard-limited budgets where the money is spent: the gateway's admission script refuses a call that
could pass its team's or department's monthly limit (429 ``budget_exceeded``), atomically with the key's
own limits, reserving and settling like them; a lost counter starts again from the ledger's spend; and a
deployment cannot scale up (nor a job start) once a hard limit is used up.

The admission tests run the script on the real Redis the gateway uses; end to end, a key calls only its
own team's endpoints here, which statements do not charge, so a hard limit never refuses those."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest
from django.conf import settings
from django.utils import timezone

from portfolio.billing import budgets
from portfolio.billing.models import Budget
from portfolio.errors import Conflict
from serving.gateway import admission, errors, limits, redis_pipe
from serving.gateway.keycache import KeyRecord
from serving.gateway.limits import Limiter, SpendCaps
from serving.gateway.routing import EndpointInfo, Route, Snapshot, build_snapshot
from serving.services import deployments
from tests.conftest import actor_for
from tests.gateway.conftest import wait_for_model
from tests.gateway.key_records import key_record


def record(team_id: int, department_id: int) -> KeyRecord:
    return key_record(team_id=team_id, team=f"team-{team_id}", department_id=department_id)


def ids() -> tuple[int, int]:
    """A team and a department id no other test's counters use (the counters live in the shared Redis)."""
    base = uuid.uuid4().int % 10**9 + 10**9
    return base, base + 1


def run(coroutine):
    return asyncio.run(coroutine)


async def admit_many(caps_of, keys, reserve: int, actual: int, rounds: int = 1):
    """Every key admits ``reserve`` at once, ``rounds`` times; the admitted settle to ``actual``."""
    pipe = redis_pipe.connect(settings.REDIS_URL)
    limiter = Limiter(pipe)
    revoked = f"test:revoked:{uuid.uuid4().hex}"
    try:
        admitted, refused = 0, []
        for _ in range(rounds):
            verdicts = await asyncio.gather(
                *[
                    limiter.admit(
                        key, tokens=10, money_micros=reserve, revoked_set=revoked, caps=caps_of(key)
                    )
                    for key in keys
                ]
            )
            settles = []
            for verdict in verdicts:
                if verdict.ok:
                    admitted += 1
                    settles += limiter.settle(
                        verdict.reservation,
                        tokens=10,
                        money_micros=actual,
                        team_micros=actual,
                        department_micros=actual,
                    )
                else:
                    refused.append(verdict)
            if settles:
                await settle(pipe, settles)
        return admitted, refused
    finally:
        await pipe.close()


async def settle(pipe, commands: list[tuple]) -> None:
    """Send settlements as the gateway does: whole scripts where Redis has not got them yet."""
    replies = await pipe.execute(*commands)
    for command, reply in zip(commands, replies, strict=True):
        if limits.unknown_script(reply):
            (reply,) = await pipe.execute(limits.as_eval(command))
        assert not isinstance(reply, Exception), reply


def counter(name: str) -> int:
    import redis

    month = timezone.now().strftime("%Y%m")
    value = redis.Redis.from_url(settings.REDIS_URL).get(f"{name}:{month}")
    return int(value or 0)


def test_concurrent_calls_never_overspend_a_team_hard_limit():
    team_id, department_id = ids()
    limit, reserve = 1_000_000, 70_000  # room for 14 reservations, not 15
    keys = [record(team_id, department_id) for _ in range(40)]
    admitted, refused = run(
        admit_many(
            lambda k: SpendCaps(team_id, department_id, team=(limit, 0), team_reserve=reserve),
            keys,
            reserve,
            reserve,
        )
    )
    assert admitted == limit // reserve == 14
    assert {v.reason for v in refused} == {"team_budget"}
    assert counter(f"gw:tm:{team_id}") == admitted * reserve <= limit


def test_settling_below_the_reservation_gives_the_rest_back():
    team_id, department_id = ids()
    limit, reserve, actual = 1_000_000, 100_000, 25_000
    keys = [record(team_id, department_id) for _ in range(10)]
    admitted, _ = run(
        admit_many(
            lambda k: SpendCaps(team_id, department_id, team=(limit, 0), team_reserve=reserve),
            keys,
            reserve,
            actual,
            rounds=15,
        )
    )
    spent = counter(f"gw:tm:{team_id}")
    assert spent == admitted * actual
    assert spent <= limit and limit - spent < reserve, "stops only when one more reservation would pass"


def test_a_department_limit_holds_across_its_teams():
    _, department_id = ids()
    limit, reserve = 500_000, 60_000
    keys = [record(department_id + 10 + i % 4, department_id) for i in range(40)]  # four teams
    admitted, refused = run(
        admit_many(
            lambda k: SpendCaps(k.team_id, department_id, department=(limit, 0), department_reserve=reserve),
            keys,
            reserve,
            reserve,
        )
    )
    assert admitted == limit // reserve
    assert {v.reason for v in refused} == {"department_budget"}
    assert counter(f"gw:dm:{department_id}") <= limit


def test_a_lost_counter_starts_from_the_ledgers_token_spend():
    team_id, department_id = ids()
    limit, seed, reserve = 1_000_000, 900_000, 60_000
    keys = [record(team_id, department_id) for _ in range(5)]
    admitted, refused = run(
        admit_many(
            lambda k: SpendCaps(team_id, department_id, team=(limit, seed), team_reserve=reserve),
            keys,
            reserve,
            reserve,
        )
    )
    assert admitted == 1 and len(refused) == 4
    assert refused[0].remaining == limit - seed - reserve
    assert counter(f"gw:tm:{team_id}") == seed + reserve


def test_a_counter_made_before_the_ledgers_spend_was_known_is_raised_to_it():
    """A hard limit set mid-month: the first call made the counter from a seed of 0; once the ledger's
    spend reaches the gateway, the counter is never below it (raised to it, not added to)."""
    team_id, department_id = ids()
    limit, reserve = 1_000_000, 60_000
    key = record(team_id, department_id)

    def admit(seed: int):
        caps = SpendCaps(team_id, department_id, team=(limit, seed), team_reserve=reserve)
        return run(admit_many(lambda k: caps, [key], reserve, reserve))

    assert admit(0)[0] == 1 and counter(f"gw:tm:{team_id}") == reserve
    admitted, refused = admit(950_000)
    assert admitted == 0 and refused[0].reason == "team_budget"
    assert refused[0].remaining == limit - 950_000 and counter(f"gw:tm:{team_id}") == 950_000
    # A seed below the counter changes nothing: what the counter holds is on the ledger too.
    assert admit(10_000)[1][0].remaining == limit - 950_000


def test_a_seed_measured_for_last_month_does_not_start_this_months_counter():
    """Just after midnight on the 1st the routing table still holds last month's spend as the seed until its
    next rebuild: a call then must not start the new month's counter from it (it would hold for the month)."""
    team_id, department_id = ids()
    limit, reserve = 1_000_000, 60_000
    key = record(team_id, department_id)
    this_month = datetime.now(UTC).strftime("%Y%m")
    last_month = (datetime.now(UTC).replace(day=1) - timedelta(days=1)).strftime("%Y%m")

    def admit(month: str):
        caps = SpendCaps(team_id, department_id, team=(limit, 950_000), team_reserve=reserve, month=month)
        return run(admit_many(lambda k: caps, [key], reserve, reserve))

    assert admit(last_month)[0] == 1 and counter(f"gw:tm:{team_id}") == reserve
    # Once the table is rebuilt for this month, its seed applies.
    admitted, refused = admit(this_month)
    assert admitted == 0 and refused[0].reason == "team_budget"


def test_calls_to_the_teams_own_endpoints_are_never_refused_by_its_hard_limit():
    team_id, department_id = ids()
    keys = [record(team_id, department_id) for _ in range(5)]
    admitted, _ = run(
        admit_many(
            lambda k: SpendCaps(team_id, department_id, team=(0, 0), team_reserve=0), keys, 50_000, 50_000
        )
    )
    assert admitted == 5 and counter(f"gw:tm:{team_id}") == 0


def test_the_refusal_is_openai_shaped_429_budget_exceeded():
    team_id, department_id = ids()
    key = record(team_id, department_id)
    _, refused = run(
        admit_many(
            lambda k: SpendCaps(team_id, department_id, team=(10, 0), team_reserve=500), [key], 500, 500
        )
    )
    error = admission.refusal(key, refused[0], 20, 500, playground=False)
    assert error.status == 429 and error.code == "budget_exceeded"
    body = orjson.loads(errors.body(error.status, error.message, error.code, error.param))["error"]
    assert (body["code"], body["type"]) == ("budget_exceeded", "rate_limit_error")
    assert f"team team-{team_id}" in body["message"] and "hard limit" in body["message"]


def test_only_hops_to_other_teams_reserve_on_the_hard_limits():
    from serving.gateway import payloads

    own = EndpointInfo("own", 1, (Route(1, "d", "d", "", 1),), None, 1.0, 1.0, 100)
    shared = EndpointInfo("shared", 2, (Route(1, "e", "e", "", 2),), None, 2.0, 2.0, 100)
    snapshot = Snapshot(caps={("team", 1): (5_000_000, 0)})
    shape = payloads.Shape(prompts=(10,), choices=1, per_choice=10)
    key = record(1, 7)
    assert admission.spend_caps(Snapshot(), key, shape, [own, shared]) is None, "no hard limit: nothing"
    assert admission.spend_caps(snapshot, key, shape, [own]).team_reserve == 0
    caps = admission.spend_caps(snapshot, key, shape, [own, shared])
    assert caps.team_reserve > 0 and caps.team == (5_000_000, 0) and caps.department is None
    assert admission.charged(key, own, 1234) == (0, 0) and admission.charged(key, shared, 1234)[0] == 1234


def test_a_spent_hard_limit_refuses_calls_to_another_teams_unpriced_endpoint():
    """Such a call is charged at cost on the statements (its share of the compute) but costs 0 at admission:
    reserving nothing, it skipped the team's counter, so a team past its hard limit called on unchecked."""
    from serving.gateway import payloads

    team_id, department_id = ids()
    unpriced = EndpointInfo("free", team_id + 7, (Route(1, "f", "f", "", 2),), None, 0.0, 0.0, 100)
    snapshot = Snapshot(caps={("team", team_id): (1_000_000, 1_000_000)})  # the month's spend: all of it
    shape = payloads.Shape(prompts=(10,), choices=1, per_choice=10)
    key = record(team_id, department_id)
    caps = admission.spend_caps(snapshot, key, shape, [unpriced])
    assert caps.team_reserve > 0, "reserves something, so that the spent counter is looked at"
    from serving.gateway import composite

    assert composite.spend_caps(snapshot, key, [[(unpriced, 0)]]).team_reserve > 0, "and a composite's hop"

    async def admit_one(caps: SpendCaps):
        pipe = redis_pipe.connect(settings.REDIS_URL)
        try:
            revoked = f"test:revoked:{uuid.uuid4().hex}"
            return await Limiter(pipe).admit(key, tokens=10, money_micros=0, revoked_set=revoked, caps=caps)
        finally:
            await pipe.close()

    refused = run(admit_one(caps))
    assert (refused.ok, refused.reason) == (False, "team_budget")
    room = SpendCaps(team_id + 2, department_id, team=(1_000_000, 0), team_reserve=caps.team_reserve)
    admitted = run(admit_one(room))
    assert admitted.ok
    run(settle_all(limiter_settle(admitted, team_micros=0)))
    assert counter(f"gw:tm:{team_id + 2}") == 0, "settled at 0: what was reserved is given back"


def limiter_settle(verdict, *, team_micros: int) -> list[tuple]:
    return Limiter(None).settle(verdict.reservation, tokens=10, money_micros=0, team_micros=team_micros)


async def settle_all(commands: list[tuple]) -> None:
    pipe = redis_pipe.connect(settings.REDIS_URL)
    try:
        await settle(pipe, commands)
    finally:
        await pipe.close()


def test_a_routers_shared_specialist_reserves_on_the_hard_limit_even_when_its_own_is_dearer():
    """A router's second step may reach its team's own endpoint (dearer, and free to the team) or another
    team's shared one: the cap must hold the shared one's worst case, not the step's costliest hop's."""
    from serving.gateway import composite, payloads
    from serving.gateway.routing import Composite

    classifier = EndpointInfo("labeller", 1, (Route(1, "c", "c", "", 1),), None, 0.0, 0.0, 100)
    own = EndpointInfo("own", 1, (Route(1, "d", "d", "", 1),), None, 20.0, 20.0, 100)
    shared = EndpointInfo("shared", 2, (Route(1, "e", "e", "", 2),), None, 15.0, 15.0, 100)
    router = Composite("router", classifier="labeller", table={"a": "own", "b": "shared"}, default="own")
    found = {"labeller": classifier, "own": own, "shared": shared}
    shape = payloads.Shape(prompts=(10,), choices=1, per_choice=10)
    snapshot = Snapshot(caps={("team", 1): (5_000_000, 0)})
    _, money, steps = composite.reservation(router, found, shape, "hello")
    caps = composite.spend_caps(snapshot, record(1, 7), steps)
    shared_worst = payloads.worst_case(shape, 100, 15.0, 15.0)[1]
    assert caps.team_reserve == shared_worst > 0
    assert money >= payloads.worst_case(shape, 100, 20.0, 20.0)[1], "the key's own budget: the dearest"


async def call(snapshot: Snapshot, key: KeyRecord, hop: EndpointInfo, shape, tokens: tuple[int, int]):
    """What the gateway does for one call answered by ``hop``: admit with its caps, then settle to the
    cost of ``tokens`` (input, output) as charged to the team and to the department."""
    from serving.gateway.routing import price_micros

    pipe = redis_pipe.connect(settings.REDIS_URL)
    limiter = Limiter(pipe)
    try:
        bound_tokens, bound_money = admission.reservation(shape, [hop])
        verdict = await limiter.admit(
            key,
            tokens=bound_tokens,
            money_micros=bound_money,
            revoked_set=f"test:revoked:{uuid.uuid4().hex}",
            caps=admission.spend_caps(snapshot, key, shape, [hop]),
        )
        if verdict.ok:
            cost = price_micros(hop, *tokens)
            team_micros, department_micros = admission.charged(key, hop, cost)
            await settle(
                pipe,
                limiter.settle(
                    verdict.reservation,
                    tokens=sum(tokens),
                    money_micros=cost,
                    team_micros=team_micros,
                    department_micros=department_micros,
                ),
            )
        return verdict
    finally:
        await pipe.close()


def priced_endpoint(name: str, team_id: int, department_id: int) -> EndpointInfo:
    """An endpoint of that team and department at a micro-unit per token, in and out."""
    return EndpointInfo(
        name, team_id, (Route(1, name, name, "", 1),), None, 1.0, 1.0, 100, department_id=department_id
    )


def test_a_call_to_another_team_of_the_same_department_does_not_count_against_the_department_limit():
    """Statements charge the caller and credit the owner the same amount: the department pays nothing."""
    from serving.gateway import payloads

    team_id, department_id = ids()
    sibling = priced_endpoint("sibling", team_id + 2, department_id)  # another team, the same department
    shape = payloads.Shape(prompts=(10,), choices=1, per_choice=10)
    key = record(team_id, department_id)
    # The department may not spend a micro-unit more; the team has room for the call.
    snapshot = Snapshot(caps={("team", team_id): (1_000_000, 0), ("department", department_id): (0, 0)})
    verdict = run(call(snapshot, key, sibling, shape, (10, 5)))
    assert verdict.ok, verdict
    assert counter(f"gw:tm:{team_id}") == 15, "the team pays the other team's price"
    assert counter(f"gw:dm:{department_id}") == 0, "the department pays nothing"

    # The team's own limit still counts the call.
    tight = Snapshot(caps={("team", team_id): (10, 0), ("department", department_id): (1_000_000, 0)})
    refused = run(call(tight, key, sibling, shape, (10, 5)))
    assert not refused.ok and refused.reason == "team_budget"


def test_a_call_to_another_departments_endpoint_counts_against_the_team_and_the_department():
    from serving.gateway import payloads

    team_id, department_id = ids()
    foreign = priced_endpoint("foreign", team_id + 2, department_id + 2)
    shape = payloads.Shape(prompts=(10,), choices=1, per_choice=10)
    key = record(team_id, department_id)
    roomy = Snapshot(caps={("team", team_id): (1_000_000, 0), ("department", department_id): (1_000_000, 0)})
    assert run(call(roomy, key, foreign, shape, (10, 5))).ok
    assert counter(f"gw:tm:{team_id}") == counter(f"gw:dm:{department_id}") == 15, "settled to the cost"

    tight = Snapshot(caps={("team", team_id): (1_000_000, 0), ("department", department_id): (20, 0)})
    refused = run(call(tight, key, foreign, shape, (10, 5)))
    assert not refused.ok and refused.reason == "department_budget"
    assert counter(f"gw:dm:{department_id}") == 15, "a refused call reserves nothing"


def test_a_fallback_chain_reserves_on_each_counter_its_own_worst_case_and_a_lost_request_gives_both_back():
    """The team's counter holds the costliest hop to another team, the department's the costliest to
    another department; the in-flight ledger gives each back what it took (inflight.REAP)."""
    import redis

    from serving.gateway import inflight, payloads

    team_id, department_id = ids()
    sibling = EndpointInfo(  # another team of the department, at twice the price
        "sibling",
        team_id + 2,
        (Route(1, "s", "s", "", 1),),
        "foreign",
        2.0,
        2.0,
        100,
        department_id=department_id,
    )
    foreign = priced_endpoint("foreign", team_id + 3, department_id + 2)
    shape = payloads.Shape(prompts=(10,), choices=1, per_choice=10)  # at most 20 tokens
    key = record(team_id, department_id)
    snapshot = Snapshot(
        caps={("team", team_id): (1_000_000, 0), ("department", department_id): (1_000_000, 0)}
    )
    unique = uuid.uuid4().hex
    ledger, stream, processes = f"test:inflight:{unique}", f"test:usage:{unique}", f"test:processes:{unique}"

    async def admit():
        pipe = redis_pipe.connect(settings.REDIS_URL)
        try:
            return await Limiter(pipe).admit(
                key,
                tokens=20,
                money_micros=40,
                revoked_set=f"test:revoked:{unique}",
                ledger=ledger,
                lost_event={"id": unique},
                caps=admission.spend_caps(snapshot, key, shape, [sibling, foreign]),
            )
        finally:
            await pipe.close()

    verdict = run(admit())
    assert (
        verdict.ok and verdict.reservation.team_micros == 40 and verdict.reservation.department_micros == 20
    )
    assert counter(f"gw:tm:{team_id}") == 40 and counter(f"gw:dm:{department_id}") == 20
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        assert client.eval(inflight.REAP, 3, ledger, stream, processes, "gone") == 1
    finally:
        client.delete(stream)
    assert counter(f"gw:tm:{team_id}") == 0 and counter(f"gw:dm:{department_id}") == 0


@pytest.mark.django_db(transaction=True)
def test_the_routing_table_carries_the_hard_limits(org, team, department):
    admin = actor_for(org["admin"])
    budgets.set_budget(actor=admin, team=team, amount="12.50", hard_limit=True)
    budgets.set_budget(actor=admin, department=department, amount="100")  # no hard limit: not carried
    assert build_snapshot().caps == {("team", team.pk): (12_500_000, 0)}


CONTRACTS_ID = 4242  # other_team's endpoint: its calls are charged to the caller


def spent_on_the_ledger(team, other_team, money: int) -> None:
    """``team`` has spent ``money`` this month calling other_team's endpoint (one unit an input token)."""
    from datetime import UTC, datetime, timedelta
    from decimal import Decimal

    from portfolio.billing import meters
    from portfolio.billing.choices import PriceKind
    from portfolio.billing.meters import TokenHour
    from portfolio.billing.models import Price

    Price.objects.get_or_create(
        kind=PriceKind.ENDPOINT,
        subject_id=str(CONTRACTS_ID),
        defaults={
            "subject_name": "contracts-llm",
            "effective_from": datetime(2000, 1, 1, tzinfo=UTC),
            "input_per_million": Decimal("1000000"),
            "output_per_million": Decimal("0"),
        },
    )
    hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    meters.replace_token_hours(
        hour,
        hour + timedelta(hours=1),
        [TokenHour(hour, CONTRACTS_ID, "contracts-llm", other_team.pk, other_team.department_id, "contracts-dep",
                   team.pk, team.department_id, 1, money, 0)],
    )  # fmt: skip


@pytest.fixture
def fresh_counters(team):
    """The team's and its department's counters, emptied: database ids repeat across tests."""
    import redis

    month = timezone.now().strftime("%Y%m")
    names = (f"gw:tm:{team.pk}:{month}", f"gw:dm:{team.department_id}:{month}")
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete(*names)
    yield
    client.delete(*names)
    client.close()


def call_contracts(team, other_team):
    """A call from ``team`` to other_team's endpoint that may cost 20 (a unit a token), admitted against
    the hard limits the routing table reads now; it costs 15."""
    from serving.gateway import payloads

    hop = EndpointInfo(
        "contracts-llm",
        other_team.pk,
        (Route(1, "contracts-dep", "contracts-dep", "", 1),),
        None,
        1_000_000.0,
        1_000_000.0,
        100,
        department_id=other_team.department_id,
    )
    shape = payloads.Shape(prompts=(10,), choices=1, per_choice=10)
    snapshot = Snapshot(caps=budgets.hard_limits())
    return run(call(snapshot, record(team.pk, team.department_id), hop, shape, (10, 5)))


@pytest.mark.django_db
def test_a_hard_limit_set_below_the_months_spend_refuses_the_next_call(org, team, other_team, fresh_counters):
    """The budget is set mid-month, before billing.check_budgets has measured anything for it: the
    gateway's counter must still start from the 900 already spent, not from 0."""
    spent_on_the_ledger(team, other_team, 900)
    budgets.set_budget(actor=actor_for(org["admin"]), team=team, amount="910", hard_limit=True)
    refused = call_contracts(team, other_team)
    assert not refused.ok and refused.reason == "team_budget"
    assert refused.remaining == 10_000_000


@pytest.mark.django_db
def test_turning_a_hard_limit_off_and_on_measures_the_spend_again(org, team, other_team):
    from decimal import Decimal

    admin = actor_for(org["admin"])
    budgets.set_budget(actor=admin, team=team, amount="910", hard_limit=True)
    spent_on_the_ledger(team, other_team, 900)
    budgets.set_budget(actor=admin, team=team, amount="910", hard_limit=False)
    assert Budget.objects.get(team=team).token_spend == 0, "measured only when a hard limit starts"
    budgets.set_budget(actor=admin, team=team, amount="910", hard_limit=True)
    assert Budget.objects.get(team=team).token_spend == Decimal("900.00")
    assert budgets.hard_limits()[("team", team.pk)] == (910_000_000, 900_000_000)


@pytest.mark.django_db
def test_a_counter_made_before_the_spend_was_measured_catches_up_with_the_ledger(
    org, team, other_team, fresh_counters
):
    """The gateway's first call made the counter from no spend; the ledger then shows 900 spent (calls
    through other gateway processes, a counter Redis lost) and billing.check_budgets stores it: from
    then on the counter holds it too, though it already existed."""
    from portfolio.billing import alerts

    budgets.set_budget(actor=actor_for(org["admin"]), team=team, amount="910", hard_limit=True)
    assert call_contracts(team, other_team).ok
    spent_on_the_ledger(team, other_team, 900)  # the 15 just settled among them
    alerts.check()
    refused = call_contracts(team, other_team)
    assert not refused.ok and refused.reason == "team_budget"
    assert counter(f"gw:tm:{team.pk}") == 900_000_000


@pytest.mark.django_db(transaction=True)
def test_a_hard_limit_leaves_a_teams_calls_to_its_own_endpoints_alone(org, team, gateway_url, stack):
    budgets.set_budget(actor=actor_for(org["admin"]), team=team, amount="0", hard_limit=True)
    dep, _ = stack["deployment"]("own-dep")
    stack["endpoint"]("own-llm", dep, price=("1000000", "1000000"))
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "own-llm")
    answer = httpx.post(
        f"{gateway_url}/v1/chat/completions",
        json={"model": "own-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=20,
    )
    assert answer.status_code == 200, answer.text


@pytest.mark.django_db(transaction=True)
def test_a_call_to_another_teams_shared_endpoint_past_the_callers_hard_limit_is_refused(
    org, team, other_team, gateway_url, stack
):
    """Through a real gateway: the calling team pays the other team's token price, so its hard limit bites."""
    from serving.services import endpoints

    admin = actor_for(org["admin"])
    budgets.set_budget(actor=admin, team=team, amount="5", hard_limit=True)
    dep, _ = stack["deployment"]("contracts-dep", owner=other_team)
    # One unit of money per token: even max_tokens=10 could cost more than the 5 the team may spend.
    shared = stack["endpoint"]("clause-finder", dep, owner=other_team, price=("1000000", "1000000"))
    endpoints.share_endpoint(actor=admin, endpoint=shared, team=team)
    secret = stack["key"]()
    wait_for_model(gateway_url, secret, "clause-finder")
    answer = httpx.post(
        f"{gateway_url}/v1/chat/completions",
        json={"model": "clause-finder", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=20,
    )
    assert answer.status_code == 429, answer.text
    assert answer.json()["error"]["code"] == "budget_exceeded"


@pytest.mark.django_db(transaction=True)
def test_a_scale_up_past_a_hard_limit_is_refused_with_the_reason(org, team, stack):
    admin = actor_for(org["admin"])
    dep, _ = stack["deployment"]("limited-dep", replicas=0)
    budgets.set_budget(actor=admin, team=team, amount="0", hard_limit=True)
    with pytest.raises(Conflict) as refused:
        deployments.scale(actor=admin, deployment=dep, replicas=2)
    assert refused.value.code == "budget_exceeded" and "hard limit" in refused.value.message
    Budget.objects.filter(team=team).update(hard_limit=False)
    assert deployments.scale(actor=admin, deployment=dep, replicas=2).replicas == 2
    Budget.objects.filter(team=team).update(hard_limit=True)
    assert deployments.scale(actor=admin, deployment=dep, replicas=1).replicas == 1, "scaling down is fine"


@pytest.mark.django_db(transaction=True)
def test_a_department_hard_limit_stops_its_teams_jobs_and_scale_ups(org, team, department):
    budgets.set_budget(actor=actor_for(org["admin"]), department=department, amount="0", hard_limit=True)
    with pytest.raises(Conflict, match="the department"):
        budgets.check_can_spend(team)
    Budget.objects.filter(department=department).update(amount="5")
    budgets.check_can_spend(team)  # nothing spent yet: below the limit
