"""What the audit-transaction cases act on: a world of pools, models, deployments, keys, datasets and jobs,
each part built (with the audit working) the first time a case names it."""

from __future__ import annotations

from functools import cached_property
from types import SimpleNamespace

from django.db.models import Max
from django.utils import timezone

from portfolio.accounts import personal_tokens
from portfolio.registry import services as registry
from portfolio.registry.choices import Source, VersionKind, VersionStatus
from portfolio.registry.hashing import FileEntry, Manifest
from portfolio.registry.models import Artifact, ModelVersion
from serving import services as serving
from serving.choices import NodeState, PoolKind
from serving.gateway import services as gateway
from serving.models import Node
from tests.conftest import actor_for
from training import finetune, ingest
from training import services as training
from training.choices import DatasetKind, JobStatus
from training.evals import catalogue
from training.evals import runs as eval_runs

GIB = 1024**3
SHAPE = {
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "hidden_size": 576,
    "head_dim": 64,
}
ROWS = b"".join(
    b'{"messages": [{"role": "user", "content": "ticket %d"}, {"role": "assistant", "content": "billing"}]}\n'
    % i
    for i in range(12)
)


class World:
    """What the cases act on, each part built (with the audit working) on first use."""

    def __init__(self, org, team, other_team):
        self.users, self.team, self.other_team = org, team, other_team
        self.admin = actor_for(org["admin"])
        self.owner = actor_for(org["owner"])
        self.engineer = actor_for(org["engineer"])
        self.developer = actor_for(org["developer"])

    @staticmethod
    def _next(model) -> int:
        return (model.versions.aggregate(number=Max("number"))["number"] or 0) + 1

    @cached_property
    def pool(self):
        pool = serving.create_pool(actor=self.admin, name="cpu-pool", kind=PoolKind.CPU)
        Node.objects.create(
            name="cpu-01",
            pool=pool,
            cpu_cores=4,
            memory_bytes=24 * GIB,
            state=NodeState.READY,
            heartbeat_at=timezone.now(),
            address="127.0.0.1",
        )
        return pool

    @cached_property
    def node(self):
        return self.pool.nodes.get(name="cpu-01")

    @cached_property
    def artifact(self):
        return Artifact.objects.create(
            id="a" * 64, store_uri="file:///store/a", size_bytes=269_060_232, file_count=1, files=[]
        )

    @cached_property
    def model(self):
        return registry.create_model(actor=self.engineer, name="smollm2-135m", owner_team=self.team)

    @cached_property
    def base(self):
        return ModelVersion.objects.create(
            model=self.model,
            number=self._next(self.model),
            kind=VersionKind.BASE,
            source=Source.LOCAL,
            artifact=self.artifact,
            status=VersionStatus.READY,
            parameter_count=134_515_008,
            shape=SHAPE,
            dtype="bfloat16",
        )

    @cached_property
    def adapter(self):
        model = registry.create_model(actor=self.engineer, name="support-tone", owner_team=self.team)
        return ModelVersion.objects.create(
            model=model,
            number=1,
            kind=VersionKind.ADAPTER,
            base_version=self.base,
            source=Source.FINE_TUNE,
            artifact=self.artifact,
            status=VersionStatus.READY,
            parameter_count=1_000_000,
            metrics={"adapter": {"r": 8}},
        )

    @cached_property
    def importing(self):
        return ModelVersion.objects.create(
            model=self.model,
            number=self._next(self.model),
            kind=VersionKind.BASE,
            source=Source.HUB,
            source_ref="org/model",
            status=VersionStatus.IMPORTING,
            heartbeat_at=timezone.now(),
        )

    @cached_property
    def importing_too(self):
        return ModelVersion.objects.create(
            model=self.model,
            number=self._next(self.model),
            kind=VersionKind.BASE,
            source=Source.HUB,
            source_ref="org/model",
            status=VersionStatus.IMPORTING,
            heartbeat_at=timezone.now(),
        )

    @cached_property
    def deployment(self):
        return serving.create_deployment(
            actor=self.owner,
            name="support-bot",
            team=self.team,
            version=self.base,
            pool=self.pool,
            replicas=1,
        )

    @cached_property
    def stopped_deployment(self):
        return serving.create_deployment(
            actor=self.owner, name="idle-bot", team=self.team, version=self.base, pool=self.pool, replicas=0
        )

    @cached_property
    def attached(self):
        return serving.add_adapter(actor=self.owner, deployment=self.deployment, adapter=self.adapter)

    @cached_property
    def endpoint(self):
        return serving.create_endpoint(
            actor=self.owner, name="support", team=self.team, routes=[{"deployment": self.deployment.name}]
        )

    @cached_property
    def key(self):
        return gateway.create_key(actor=self.owner, team=self.team, name="app")[0]

    @cached_property
    def token(self):
        return personal_tokens.create_personal_token(actor=self.owner, name="laptop")[0]

    @cached_property
    def dataset(self):
        return training.create_dataset(
            actor=self.engineer, owner_team=self.team, name="tickets", kind=DatasetKind.CHAT
        )

    @cached_property
    def dataset_version(self):
        pending = training.upload_version(
            actor=self.engineer, dataset=self.dataset, chunks=[ROWS], filename="rows.jsonl", enqueue=False
        )
        return ingest.run_here(pending.pk)[0]

    @cached_property
    def ingested(self):
        """A running ingest of other rows, its work done: what is left is to record its version."""
        pending = training.upload_version(
            actor=self.engineer,
            dataset=self.dataset,
            chunks=[ROWS.replace(b"billing", b"shipping")],
            filename="more.jsonl",
            enqueue=False,
        )
        ingest.claim(pending.pk)
        pending.refresh_from_db()
        return SimpleNamespace(ingest=pending, prepared=ingest.prepare(pending))

    @cached_property
    def job(self):
        return finetune.start_job(
            actor=self.engineer, base_version=self.base, dataset_version=self.dataset_version, pool=self.pool
        )

    @cached_property
    def running_job(self):
        self.job.__class__.objects.filter(pk=self.job.pk).update(
            status=JobStatus.RUNNING, started_at=timezone.now()
        )
        return self.job

    @cached_property
    def task(self):
        return catalogue.create_task(
            actor=self.engineer, owner_team=self.team, name="Routing", kind="classification"
        )

    @cached_property
    def eval_set(self):
        return catalogue.add_eval_set(
            actor=self.engineer, task=self.task, dataset_version=self.dataset_version, source="all"
        )

    @cached_property
    def eval_run(self):
        return eval_runs.start_run(
            actor=self.engineer, task=self.task, eval_set=self.eval_set, endpoint=self.endpoint, enqueue=False
        )

    @cached_property
    def running_eval_run(self):
        self.eval_run.__class__.objects.filter(pk=self.eval_run.pk).update(
            status=JobStatus.RUNNING, started_at=timezone.now(), heartbeat_at=timezone.now()
        )
        return self.eval_run

    def manifest(self) -> Manifest:
        return Manifest.of([FileEntry("adapter_model.safetensors", 10, "b" * 64)])
