import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from portfolio.accounts.actor import Actor
from portfolio.accounts.models import Team
from portfolio.registry.choices import VersionStatus
from portfolio.registry.demo_model import MODEL_NAME
from portfolio.registry.models import ModelVersion
from serving import services
from serving.choices import NodeState, PoolKind, ReplicaState
from serving.models import ComputePool, Deployment, Endpoint, Node
from serving.playground import try_prompt

DEMO_DEPLOYMENT = "smollm2-demo"
DEMO_ENDPOINT = "smollm2"


class Command(BaseCommand):
    help = (
        "Deploy the demo model on this machine's CPU pool (idempotent): creates the pool if missing, waits for "
        "this machine's node agent, deploys SmolLM2 with LoRA serving on and an endpoint 'smollm2'. With "
        "--wait-ready, waits until a replica answers a prompt."
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
        if not Endpoint.objects.filter(name=DEMO_ENDPOINT).exists():
            services.create_endpoint(
                actor=actor,
                name=DEMO_ENDPOINT,
                team=team,
                routes=[{"deployment": deployment.name, "weight": 100}],
                description='The demo model; pass model="smollm2".',
            )
        self.stdout.write(
            f"Demo deployment {deployment.name} on {pool.name}: the engine starts in about a minute."
        )
        if not wait_ready:
            return
        deadline = time.monotonic() + wait_ready
        while time.monotonic() < deadline:
            # Only a replica the node agent found healthy in this run is ready (requeue_engines).
            if deployment.replica_set.filter(state=ReplicaState.READY).exists():
                result = try_prompt(
                    actor=actor,
                    deployment=deployment,
                    prompt="What is the capital of France?",
                    max_tokens=24,
                    temperature=0,
                )
                self.stdout.write(
                    self.style.SUCCESS(
                        f"Demo ready: {deployment.name} answered in {result.latency_ms} ms: {result.text.strip()!r}"
                    )
                )
                return
            time.sleep(2)
        raise CommandError(
            f"The demo deployment was not ready within {wait_ready}s; see its page for the log."
        )
