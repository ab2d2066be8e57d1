"""`manage.py deploy_demo` (what `make run` deploys) also prices the demo, so that its billing pages show
money rather than zeros: the endpoint's tokens, the pool's reservations and the artifact store's bytes, each
through the price book's own service and audited. A rerun, or a price an admin set first, changes nothing."""

from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from portfolio.audit.models import AuditEvent
from portfolio.billing import subjects
from portfolio.billing.choices import PriceKind
from portfolio.billing.models import Price
from portfolio.billing.services import set_price
from portfolio.errors import Conflict
from portfolio.registry.demo_model import MODEL_NAME
from serving.choices import ReplicaState
from serving.management.commands import deploy_demo as command
from serving.management.commands.deploy_demo import DEMO_PRICES
from serving.models import Deployment, Replica
from serving.playground import TryResult

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo(team, base_version, pool, node, settings):
    """What `make run` has before deploy_demo: the demo team, the imported model and this machine's pool."""
    team.slug = "demo"
    team.save(update_fields=["slug"])
    base_version.model.name = MODEL_NAME
    base_version.model.save(update_fields=["name"])
    settings.NODE_POOL = pool.name
    return pool


def deploy_demo() -> str:
    out = StringIO()
    call_command("deploy_demo", stdout=out)
    return out.getvalue()


def test_the_demo_is_priced_once_through_the_price_book_and_audited(demo, settings):
    assert "Demo prices set for smollm2, cpu-pool, local" in deploy_demo()
    assert "Demo prices" not in deploy_demo()

    prices = {(price.kind, price.subject_name): price for price in Price.objects.all()}
    assert set(prices) == {
        (PriceKind.ENDPOINT, "smollm2"),
        (PriceKind.POOL, "cpu-pool"),
        (PriceKind.STORE, settings.ARTIFACT_STORE),
    }
    for (kind, _), price in prices.items():
        assert price.rates() == DEMO_PRICES[kind] and price.note == "demo prices"
        assert (price.effective_from.minute, price.effective_from.second) == (0, 0)
    events = AuditEvent.objects.filter(action="price.set")
    assert events.count() == 3 and {event.actor_label for event in events} == {"system:demo"}


def test_a_price_set_before_is_kept(demo, admin):
    mine = set_price(
        actor=admin, subject=subjects.find(PriceKind.POOL, "cpu-pool"), cpu_core_hour=Decimal("0.2")
    )
    deploy_demo()
    assert list(Price.objects.filter(kind=PriceKind.POOL)) == [mine]
    assert Price.objects.filter(note="demo prices").count() == 2


def ready_replica(node) -> None:
    """The demo deployed and its replica found healthy by the agent."""
    deploy_demo()
    deployment = Deployment.objects.get(name=command.DEMO_DEPLOYMENT)
    Replica.objects.create(
        deployment=deployment, node=node, generation=1, host=node.address, state=ReplicaState.READY
    )


def test_a_refused_prompt_is_waited_out_in_a_sentence_and_the_answer_still_counts(demo, node, monkeypatch):
    ready_replica(node)
    answers = [
        Conflict("The gateway did not answer: connection refused"),
        TryResult("Paris", 8, 2, 40, "", ""),
    ]

    def try_prompt(**kwargs):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(command, "try_prompt", try_prompt)
    monkeypatch.setattr(command.time, "sleep", lambda seconds: None)
    out, err = StringIO(), StringIO()
    call_command("deploy_demo", "--wait-ready", "60", stdout=out, stderr=err)
    assert "The demo did not answer yet: The gateway did not answer" in err.getvalue()
    assert "Demo ready: smollm2-demo answered in 40 ms: 'Paris'" in out.getvalue()


def test_a_demo_that_never_answers_fails_naming_the_last_refusal(demo, node, monkeypatch):
    ready_replica(node)

    def try_prompt(**kwargs):
        raise Conflict("Budget exceeded for team demo.")

    clock = iter(range(0, 10_000, 5))
    monkeypatch.setattr(command, "try_prompt", try_prompt)
    monkeypatch.setattr(command.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(command.time, "monotonic", lambda: next(clock))
    err = StringIO()
    with pytest.raises(CommandError, match=r"not ready within 30s \(last answer: Budget exceeded"):
        call_command("deploy_demo", "--wait-ready", "30", stdout=StringIO(), stderr=err)
    assert err.getvalue().count("Budget exceeded") == 1
