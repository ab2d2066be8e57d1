"""Hard-limited budgets where the money is spent: the gateway's admission script refuses a call that
could pass its team's or department's monthly limit (429 ``budget_exceeded``), atomically with the key's
own limits, reserving and settling like them; a lost counter starts again from the ledger's spend.

These tests run the script on the real Redis the gateway uses. Hard limits as billing sets them (the
ledger's spend, a real gateway, scale-ups and jobs) are tests/gateway/test_hard_limits_budgets.py."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import orjson
from django.conf import settings

from serving.gateway import admission, errors, redis_pipe
from serving.gateway.limits import Limiter, SpendCaps
from serving.gateway.routing import EndpointInfo, Route, Snapshot
from tests.gateway.spend_counters import call, counter, record, run, settle


def ids() -> tuple[int, int]:
    """A team and a department id no other test's counters use (the counters live in the shared Redis)."""
    base = uuid.uuid4().int % 10**9 + 10**9
    return base, base + 1


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
