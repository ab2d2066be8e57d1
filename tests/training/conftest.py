"""Training fixtures: an isolated artifact store, JSONL builders, and the real SmolLM2 tokenizer.

The tokenizer comes from the demo GGUF (fetched once per data folder) without the 25 s weight
conversion: transformers reads the tokenizer out of the GGUF, and a minimal base version stores only the
tokenizer files and a config with the context length.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.utils import timezone

from portfolio.registry import services as registry
from portfolio.registry.choices import Health, Source, VersionKind, VersionStatus
from portfolio.registry.models import Artifact, ModelVersion
from portfolio.registry.storage import store_directory
from portfolio.registry.stores import default_store
from tests.conftest import actor_for
from training import services
from training.choices import DatasetKind

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
    return services.upload_version(
        actor=actor, dataset=dataset, chunks=[content], filename="rows.jsonl", **options
    )


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


@pytest.fixture
def smollm2(smollm2_tokenizer_dir, engineer, team) -> ModelVersion:
    """A ready base version holding only the tokenizer, with a short context length (48) to flag rows."""
    manifest = store_directory(default_store(), smollm2_tokenizer_dir)
    artifact = Artifact.objects.create(
        id=manifest.artifact_id,
        store_uri=default_store().uri(manifest.artifact_id),
        size_bytes=manifest.total_size,
        file_count=len(manifest.files),
        files=[{"path": f.path, "size": f.size, "sha256": f.sha256} for f in manifest.files],
        health=Health.OK,
        verified_at=timezone.now(),
    )
    model = registry.create_model(actor=engineer, name="smollm2-135m-instruct", owner_team=team)
    return ModelVersion.objects.create(
        model=model,
        number=1,
        kind=VersionKind.BASE,
        source=Source.GGUF,
        artifact=artifact,
        status=VersionStatus.READY,
        context_length=48,
        has_chat_template=True,
    )
