"""Training fixtures: an isolated artifact store, JSONL builders, the real SmolLM2 tokenizer, and jobs
that never train (a stand-in base version, a pool with a ready node, ``finetune.enqueue`` recorded).

The tokenizer comes from the demo GGUF (fetched once per data folder) without the 25 s weight
conversion: transformers reads the tokenizer out of the GGUF, and a minimal base version stores only the
tokenizer files and a config with the context length.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from django.utils import timezone

from portfolio.registry import services as registry
from portfolio.registry.choices import Source, VersionKind, VersionStatus
from portfolio.registry.models import Artifact, ModelVersion
from portfolio.registry.storage import store_directory
from portfolio.registry.stores import default_store
from portfolio.registry.tasks import import_version
from serving.choices import PoolKind
from serving.models import ComputePool
from tests.conftest import actor_for
from tests.registry.conftest import ready_base
from tests.serving.nodes import add_node
from tests.training import tiny_lora
from training import finetune, ingest, services, tasks
from training.choices import DatasetKind, JobStatus
from training.models import DatasetIngest, DatasetVersion, FineTuneJob

SYSTEM = (
    "Route the ticket to one queue: billing, technical, account, shipping. Answer with the queue name only."
)


def chat(user: str, answer: str, system: str | None = SYSTEM) -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    return {
        "messages": [*messages, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    }


def jsonl(*rows) -> bytes:
    """Rows as JSONL; a str row is written as the line itself (for broken lines)."""
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows).encode()


def tickets(n: int) -> list[dict]:
    queues = ["billing", "technical", "account", "shipping"]
    return [chat(f"Ticket {i}: something about {queues[i % 4]}", queues[i % 4]) for i in range(n)]


def upload(actor, dataset, content: bytes, **options):
    """Upload a file and run its ingest, as a worker would: ``(version, created)``, or the refusal raised."""
    pending = services.upload_version(
        actor=actor, dataset=dataset, chunks=[content], filename="rows.jsonl", enqueue=False, **options
    )
    return ingest.run_here(pending.pk)


def work_off_ingests() -> list[DatasetIngest]:
    """What a worker does with the queued ingests (tests run neither on-commit callbacks nor a worker)."""
    queued = list(DatasetIngest.objects.filter(status=JobStatus.QUEUED).order_by("pk"))
    for pending in queued:
        tasks.ingest_dataset(pending.pk)
        pending.refresh_from_db()
    return queued


@pytest.fixture(autouse=True)
def isolated_store(settings, tmp_path):
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    settings.ARTIFACT_CACHE = tmp_path / "cache"
    settings.DATA_DIR = tmp_path / "data"
    default_store.cache_clear()
    yield
    default_store.cache_clear()


@pytest.fixture
def engineer(org):
    return actor_for(org["engineer"])


@pytest.fixture
def demo_team(team):
    """The team the demo commands (`make run`'s portfolio) seed into."""
    team.slug = "demo"
    team.save(update_fields=["slug"])
    return team


@pytest.fixture
def chat_set(engineer, team):
    return services.create_dataset(actor=engineer, owner_team=team, name="tickets", kind=DatasetKind.CHAT)


@pytest.fixture
def labels_set(engineer, team):
    return services.create_dataset(
        actor=engineer, owner_team=team, name="intents", kind=DatasetKind.CLASSIFICATION
    )


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory) -> Path:
    """The SmolLM2-135M-Instruct tokenizer saved as tokenizer files, with a config.json."""
    from transformers import AutoTokenizer

    from portfolio.registry.demo_model import fetch_demo_gguf

    gguf = fetch_demo_gguf(log=lambda message: None)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    folder = tmp_path_factory.mktemp("smollm2-tokenizer")
    tokenizer.save_pretrained(folder)
    (folder / "config.json").write_text(
        json.dumps(
            {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "max_position_embeddings": 8192}
        )
    )
    return folder


def stored(folder: Path) -> Artifact:
    """The files of ``folder`` in the artifact store, as an artifact whose checksums were just checked."""
    manifest = store_directory(default_store(), folder)
    return Artifact.objects.record(manifest, default_store().uri(manifest.artifact_id))


@pytest.fixture
def smollm2(smollm2_tokenizer_dir, engineer, team) -> ModelVersion:
    """A ready base version holding only the tokenizer, with a short context length (48) to flag rows."""
    return ready_base(
        engineer,
        team,
        "smollm2-135m-instruct",
        stored(smollm2_tokenizer_dir),
        source=Source.GGUF,
        context_length=48,
        has_chat_template=True,
    )


# --- Fine-tuning jobs without training (the job pages, the start forms) -----------------------------
@pytest.fixture
def base(engineer, team) -> ModelVersion:
    """A ready base version (its artifact is a stand-in: nothing is loaded in these tests)."""
    artifact = Artifact.objects.create(
        id="a" * 64,
        store_uri="file:///nowhere",
        size_bytes=10,
        file_count=1,
        files=[{"path": "config.json", "size": 10, "sha256": "0" * 64}],
    )
    return ready_base(engineer, team, "smol-base", artifact, source=Source.HUB)


@pytest.fixture
def dataset_version(engineer, chat_set):
    version, _ = upload(engineer, chat_set, jsonl(*tickets(20)))
    return version


@pytest.fixture
def cpu_pool(db) -> ComputePool:
    pool = ComputePool.objects.create(name="cpu", kind=PoolKind.CPU)
    add_node(pool, "node-a", memory_bytes=2**34, cores=4)
    return pool


@pytest.fixture
def enqueued(monkeypatch) -> list[FineTuneJob]:
    jobs: list[FineTuneJob] = []
    monkeypatch.setattr(finetune, "enqueue", jobs.append)
    return jobs


@pytest.fixture
def make_job(team, base, dataset_version, cpu_pool):
    def make(**fields) -> FineTuneJob:
        values = {
            "owner_team": team,
            "base_version": base,
            "dataset_version": dataset_version,
            "target_model": base.model,
            "pool": cpu_pool,
            "node": cpu_pool.nodes.first(),
        }
        return FineTuneJob.objects.create(**(values | fields))

    return make


@pytest.fixture
def finished_job(make_job, base) -> FineTuneJob:
    """A succeeded job whose output is a ready adapter: version 2 of its base's model."""
    tuned = ModelVersion.objects.create(
        model=base.model,
        number=2,
        kind=VersionKind.ADAPTER,
        base_version=base,
        source=Source.FINE_TUNE,
        status=VersionStatus.READY,
    )
    return make_job(status=JobStatus.SUCCEEDED, output_version=tuned, finished_at=timezone.now())


@pytest.fixture(scope="session")
def tiny_llama(smollm2_tokenizer_dir, tmp_path_factory):
    """A one-layer Llama with random weights and SmolLM2's tokenizer (a few MB): trains in seconds."""
    from transformers import LlamaConfig, LlamaForCausalLM

    base = tmp_path_factory.mktemp("tiny") / "base"
    shutil.copytree(smollm2_tokenizer_dir, base)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
    )
    LlamaForCausalLM(config).save_pretrained(base)
    return base


@pytest.fixture
def versions(settings, tmp_path, engineer, team):
    """A tiny base and a random LoRA adapter on it, imported from a server folder as people import them."""
    root = (tmp_path / "imports").resolve()
    settings.IMPORT_ROOTS = [root]
    base_dir = tiny_lora.make_base(root / "base")
    adapter_dir = tiny_lora.make_adapter(base_dir, root / "adapter")
    base_model = registry.create_model(actor=engineer, name="tiny-base", owner_team=team)
    base = registry.start_import(
        actor=engineer, model=base_model, source=Source.LOCAL, ref=str(base_dir), enqueue=False
    )
    import_version(base.pk)
    base.refresh_from_db()
    router = registry.create_model(actor=engineer, name="tiny-router", owner_team=team)
    adapter = registry.start_import(
        actor=engineer,
        model=router,
        source=Source.LOCAL,
        ref=str(adapter_dir),
        base_version=base,
        enqueue=False,
    )
    import_version(adapter.pk)
    adapter.refresh_from_db()
    assert (base.status, adapter.status, adapter.kind) == ("ready", "ready", VersionKind.ADAPTER)
    return base, adapter


def damage(version: DatasetVersion, path: str, content: bytes | None) -> None:
    """Overwrite (or, with None, remove) one of the version's stored blobs, and drop the verified local copies."""
    from django.conf import settings

    blob = default_store().blob_path(version.artifact.manifest().get(path).sha256)
    if content is None:
        blob.unlink()
    else:
        blob.chmod(0o644)
        blob.write_bytes(content)
    shutil.rmtree(settings.ARTIFACT_CACHE, ignore_errors=True)
