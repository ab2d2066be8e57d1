"""Registry fixtures: a tiny real safetensors model folder, stores on a local folder and on S3, an import root
and artifact store of a test's own, imports run here as a worker runs them, and ready base versions."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from portfolio.registry import services
from portfolio.registry.choices import Source, VersionKind, VersionStatus
from portfolio.registry.models import Artifact, ModelVersion
from portfolio.registry.storage import LocalStore, S3Store
from portfolio.registry.stores import default_store
from portfolio.registry.tasks import import_version
from tests.conftest import actor_for


def write_safetensors(path: Path, tensors: dict[str, list[int]], dtype: str = "BF16") -> None:
    """A valid safetensors file with zero-filled tensors of the given shapes."""
    import math
    import struct

    width = {"BF16": 2, "F16": 2, "F32": 4}[dtype]
    header, offset = {}, 0
    for name, shape in tensors.items():
        size = math.prod(shape) * width
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def make_model_folder(root: Path, *, hidden: int = 8) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "max_position_embeddings": 2048,
                "torch_dtype": "bfloat16",
            }
        )
    )
    (root / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    write_safetensors(root / "model.safetensors", {"embed": [32, hidden], "layer.weight": [hidden, hidden]})
    (root / "README.md").write_text("# Tiny\n\nA <script>alert(1)</script> test model.")
    return root


def make_adapter_folder(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "r": 8,
                "lora_alpha": 16,
                "target_modules": ["q_proj", "v_proj"],
                "base_model_name_or_path": "tiny",
            }
        )
    )
    write_safetensors(root / "adapter_model.safetensors", {"lora_A": [8, 8], "lora_B": [8, 8]}, dtype="F32")
    return root


def ready_base(actor, team, name: str, artifact: Artifact, **fields) -> ModelVersion:
    """Version 1 of a new model ``name`` of ``team``: a ready base version of ``artifact``, from a server
    folder unless ``fields`` say otherwise."""
    model = services.create_model(actor=actor, name=name, owner_team=team)
    values = {"kind": VersionKind.BASE, "source": Source.LOCAL, "status": VersionStatus.READY}
    return ModelVersion.objects.create(model=model, number=1, artifact=artifact, **(values | fields))


def import_here(actor, model, source: str, ref: str, **options) -> ModelVersion:
    """A version of ``model`` registered from ``ref`` and imported here, as a worker would: as it ended."""
    version = services.start_import(
        actor=actor, model=model, source=source, ref=ref, enqueue=False, **options
    )
    import_version(version.pk)
    version.refresh_from_db()
    return version


@pytest.fixture
def imports(settings, tmp_path):
    """The import root (created) and artifact store of this test alone: the root's path."""
    settings.IMPORT_ROOTS = [(tmp_path / "imports").resolve()]
    settings.ARTIFACT_ROOT = tmp_path / "artifacts"
    settings.ARTIFACT_CACHE = tmp_path / "cache"
    settings.DATA_DIR = tmp_path / "data"
    settings.IMPORT_ROOTS[0].mkdir()
    default_store.cache_clear()
    yield settings.IMPORT_ROOTS[0]
    default_store.cache_clear()


@pytest.fixture
def model(org, team):
    """The model the import tests register versions of (tests/registry/test_imports*.py)."""
    return services.create_model(actor=actor_for(org["engineer"]), name="ticket-router", owner_team=team)


@pytest.fixture
def model_folder(tmp_path) -> Path:
    return make_model_folder(tmp_path / "tiny-model")


@pytest.fixture
def local_store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-protocol server on loopback (moto's standalone server) standing in for MinIO."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_store(s3_server, request) -> S3Store:
    import uuid

    bucket = f"artifacts-{uuid.uuid4().hex[:12]}"
    return S3Store.from_settings(
        endpoint=s3_server,
        access_key="testing",
        secret_key="testing",
        bucket=bucket,
        secure=False,
        region="us-east-1",
    )


@pytest.fixture(params=["local", "s3"])
def store(request):
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """One tiny random-weight model per family (and Mixtral, Gemma 3), built once per run by the registry's own
    builder, with the SmolLM2 demo model's tokenizer: name -> folder."""
    from portfolio.registry import tiny_models as builder

    root = tmp_path_factory.mktemp("tiny-models")
    tokenizer = builder.save_demo_tokenizer(root / "tokenizer")
    return {
        name: builder.build(name, root / name, tokenizer)
        for name in [*builder.FAMILY_ARCHITECTURES, "mixtral", "gemma3"]
    }
