import time
from decimal import Decimal

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from portfolio.billing import subjects
from portfolio.billing.choices import PriceKind
from portfolio.billing.models import Price
from portfolio.billing.services import set_price
from portfolio.errors import DomainError, Invalid
from portfolio.registry.choices import VersionStatus
from portfolio.registry.demo_model import MODEL_NAME
from portfolio.registry.models import ModelVersion
from serving import services
from serving.choices import NodeState, PoolKind, ReplicaState
from serving.models import ComputePool, Deployment, Endpoint, Node
from serving.playground import try_prompt

DEMO_DEPLOYMENT = "smollm2-demo"
DEMO_ENDPOINT = "smollm2"
# What the demo charges, so that its billing pages show money rather than zeros: the demo endpoint's tokens,
# the pool's reservations and the artifact store's bytes.
DEMO_PRICES = {
    PriceKind.ENDPOINT: {
        "input_per_million": Decimal("0.50"),
        "output_per_million": Decimal("1.50"),
        "audio_second": Decimal("0.0001"),  # 0.006 a minute
    },
    PriceKind.POOL: {
        "gpu_hour": Decimal("2.50"),
        "cpu_core_hour": Decimal("0.05"),
        "memory_gib_hour": Decimal("0.01"),
    },
    PriceKind.STORE: {"gib_month": Decimal("0.10")},
}
DEMO_PRICE_NOTE = "demo prices"


class Command(BaseCommand):
    help = (
        "Deploy the demo model on this machine's CPU pool (idempotent): creates the pool if missing, waits for "
        "this machine's node agent, deploys SmolLM2 with LoRA serving on and an endpoint 'smollm2', and prices "
        "the endpoint, the pool and the artifact store where they have no price yet. With --wait-ready, waits "
        "until a replica answers a prompt."
    )

    def add_arguments(self, parser):
        parser.add_argument("--node-timeout", type=int, default=180)
        parser.add_argument(
            "--wait-ready", type=int, default=0, help="seconds to wait for an answer (0: don't)"
        )

    def handle(self, *args, node_timeout: int, wait_ready: int, **options):
        actor = Actor.for_system("demo")
        team = Team.objects.filter(slug="demo").first()
        version = (
            ModelVersion.objects.filter(model__name=MODEL_NAME, status=VersionStatus.READY)
            .order_by("number")
            .first()
        )
        if team is None or version is None:
            raise CommandError("Run `manage.py seed_demo` and `manage.py import_demo_model` first.")
        pool = ComputePool.objects.filter(name=settings.NODE_POOL).first() or services.create_pool(
            actor=actor,
            name=settings.NODE_POOL,
            kind=PoolKind.CPU,
            description="This machine (make run).",
        )
        deadline = time.monotonic() + node_timeout
        while not Node.objects.filter(pool=pool, state=NodeState.READY).exists():
            if time.monotonic() > deadline:
                raise CommandError(f"No node agent joined pool {pool.name} within {node_timeout}s.")
            time.sleep(1)
        deployment = Deployment.objects.filter(name=DEMO_DEPLOYMENT).first() or services.create_deployment(
            actor=actor,
            name=DEMO_DEPLOYMENT,
            team=team,
            version=version,
            pool=pool,
            replicas=1,
            args={"max_model_len": 2048, "enable_lora": True, "max_loras": 4, "max_lora_rank": 16},
        )
        if deployment.replicas == 0:
            # Scaled to zero since (by a person, or a stopped demo): waiting for a replica would be waiting
            # --wait-ready seconds for nothing. One replica again, through the service (audited).
            try:
                deployment = services.scale(actor=actor, deployment=deployment, replicas=1)
            except DomainError as exc:
                raise CommandError(f"The demo deployment has no replica and cannot get one: {exc}") from exc
            self.stdout.write(f"Demo deployment {deployment.name} had no replica: scaled to one.")
        endpoint = Endpoint.objects.filter(name=DEMO_ENDPOINT).first() or services.create_endpoint(
            actor=actor,
            name=DEMO_ENDPOINT,
            team=team,
            routes=[{"deployment": deployment.name, "weight": 100}],
            description='The demo model; pass model="smollm2".',
        )
        self.stdout.write(
            f"Demo deployment {deployment.name} on {pool.name}: the engine starts in about a minute."
        )
        try:
            priced = set_demo_prices(actor, endpoint=endpoint, pool=pool)
        except Invalid as exc:  # the demo runs unpriced rather than not at all
            self.stderr.write(f"Demo prices not set: {exc}")
        else:
            if priced:
                names = ", ".join(price.subject_name for price in priced)
                self.stdout.write(f"Demo prices set for {names} (see Billing > Price book).")
        if not wait_ready:
            return
        deadline = time.monotonic() + wait_ready
        refusal = ""
        while time.monotonic() < deadline:
            # Only a replica the node agent found healthy in this run is ready (requeue_engines).
            if deployment.replica_set.filter(state=ReplicaState.READY).exists():
                try:
                    result = try_prompt(
                        actor=actor,
                        deployment=deployment,
                        prompt="What is the capital of France?",
                        max_tokens=24,
                        temperature=0,
                    )
                except DomainError as exc:
                    # A replica healthy to its agent may not be routable yet (the gateway's view lags) or
                    # may refuse: keep waiting for an answer until the deadline, saying why once.
                    if exc.message != refusal:
                        refusal = exc.message
                        self.stderr.write(f"The demo did not answer yet: {refusal}")
                else:
                    self.stdout.write(
                        self.style.SUCCESS(
                            f"Demo ready: {deployment.name} answered in {result.latency_ms} ms: "
                            f"{result.text.strip()!r}"
                        )
                    )
                    return
            time.sleep(2)
        last = f" (last answer: {refusal})" if refusal else ""
        raise CommandError(
            f"The demo deployment was not ready within {wait_ready}s{last}; see its page for the log."
        )


def set_demo_prices(actor: Actor, *, endpoint: Endpoint, pool: ComputePool) -> list[Price]:
    """``DEMO_PRICES`` for the demo endpoint, its pool and the artifact store, through the price book's own
    service (each audited as ``price.set``), from the start of this hour. A subject that has a price already
    keeps it: rerunning the demo changes nothing, and an admin's prices stay."""
    names = {
        PriceKind.ENDPOINT: endpoint.name,
        PriceKind.POOL: pool.name,
        PriceKind.STORE: settings.ARTIFACT_STORE,
    }
    this_hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    priced = []
    with transaction.atomic():
        for kind, rates in DEMO_PRICES.items():
            subject = subjects.find(kind, names[kind])
            if subject is None or Price.objects.filter(kind=kind, subject_id=subject.id).exists():
                continue
            priced.append(
                set_price(
                    actor=actor, subject=subject, effective_from=this_hour, note=DEMO_PRICE_NOTE, **rates
                )
            )
    return priced
