"""Engine arguments: an allow-list with validation, and the vLLM command line built from it.

Only the arguments below can be set on a deployment; anything else is refused by name, so a deployment
can never smuggle a flag (a different host, a chat template from disk, remote code) into the engine.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from portfolio.errors import Invalid
from portfolio.templatetags.formatting import GIB
from serving.choices import PoolKind
from serving.scheduler import cpu_list


@dataclass(frozen=True)
class Spec:
    kind: type
    default: object
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple = ()
    pools: tuple[str, ...] = (PoolKind.GPU, PoolKind.CPU)
    help: str = ""
    # The architecture families (portfolio.registry.inspection) the argument means something for; empty: all.
    families: tuple[str, ...] = ()


SPECS: dict[str, Spec] = {
    "max_model_len": Spec(int, 2048, 64, 1_048_576, help="Longest prompt + completion, in tokens"),
    "dtype": Spec(str, "bfloat16", choices=("auto", "bfloat16", "float16", "float32")),
    "max_num_seqs": Spec(int, 16, 1, 1024, help="Sequences processed together"),
    "enable_lora": Spec(bool, False, help="Serve LoRA adapters (hot-loadable); costs throughput on CPU"),
    "max_loras": Spec(int, 4, 1, 64, help="Adapters resident at once"),
    "max_lora_rank": Spec(int, 16, choices=(8, 16, 32, 64, 128, 256)),
    "enable_prefix_caching": Spec(bool, False),
    "enforce_eager": Spec(bool, False, help="Skip graph capture: faster start, slower serving"),
    "gpu_memory_utilization": Spec(
        float, 0.9, 0.1, 0.98, pools=(PoolKind.GPU,), help="Fraction of each GPU's memory the engine claims"
    ),
    "tensor_parallel_size": Spec(int, 1, 1, 8, pools=(PoolKind.GPU,), help="GPUs per replica"),
    "quantization": Spec(str, "", choices=("", "awq", "gptq", "fp8", "bitsandbytes"), pools=(PoolKind.GPU,)),
    "kv_cache_space_gib": Spec(int, 1, 1, 1024, pools=(PoolKind.CPU,), help="KV cache size on CPU (GiB)"),
    "cpu_cores": Spec(int, 1, 1, 512, pools=(PoolKind.CPU,), help="Cores reserved for the replica"),
    "enable_expert_parallel": Spec(
        bool,
        False,
        pools=(PoolKind.GPU,),
        families=("moe",),
        help="Spread the experts over the replica's GPUs instead of slicing each one (tensor_parallel_size >= 2)",
    ),
    "images_per_prompt": Spec(
        int, 1, 0, 16, families=("vision_language",), help="Images one request may carry (0: text only)"
    ),
}
# What a version whose registration recorded no family is taken to be.
DEFAULT_FAMILY = "dense"


def _coerce(name: str, spec: Spec, value):
    if spec.kind is bool:
        if isinstance(value, bool):
            return value
        raise Invalid(f"engine_args.{name}: expected true or false.")
    if spec.kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"engine_args.{name}: expected a whole number.")
    elif spec.kind is float:
        # NaN and infinity pass every comparison below as false, then break the scheduler's arithmetic. An
        # int is finite (and math.isfinite raises OverflowError on one of 309 digits or more).
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or isinstance(value, float)
            and not math.isfinite(value)
        ):
            raise Invalid(f"engine_args.{name}: expected a number.")
        if isinstance(value, int) and abs(value) > 2**53:  # float() would lose it, or overflow
            raise Invalid(f"engine_args.{name}: the number is outside {spec.minimum}..{spec.maximum}.")
        value = float(value)
    elif not isinstance(value, str):
        raise Invalid(f"engine_args.{name}: expected text.")
    if spec.choices and value not in spec.choices:
        raise Invalid(f"engine_args.{name}: {value!r} is not one of {', '.join(map(str, spec.choices))}.")
    if spec.minimum is not None and value < spec.minimum or spec.maximum is not None and value > spec.maximum:
        raise Invalid(f"engine_args.{name}: {value} is outside {spec.minimum}..{spec.maximum}.")
    return value


def validate(args: dict, pool_kind: str, family: str = DEFAULT_FAMILY) -> dict:
    """Return the full argument set (defaults filled in) or raise ``Invalid`` naming the argument. ``family``
    is the served version's architecture family: arguments of other families are refused by name."""
    if not isinstance(args, dict):
        raise Invalid("engine_args: expected an object of argument names to values.")
    unknown = sorted(set(args) - set(SPECS))
    if unknown:
        raise Invalid(
            f"engine_args.{unknown[0]} is not an allowed engine argument "
            f"(allowed: {', '.join(sorted(SPECS))})."
        )
    resolved: dict[str, Any] = {}
    for name, spec in SPECS.items():
        if pool_kind not in spec.pools:
            if name in args:
                raise Invalid(f"engine_args.{name} applies to {'/'.join(spec.pools)} pools only.")
            continue
        if spec.families and family not in spec.families:
            if name in args:
                raise Invalid(
                    f"engine_args.{name} applies to {' / '.join(spec.families)} models only; "
                    f"this version is {family}."
                )
            continue
        resolved[name] = _coerce(name, spec, args[name]) if name in args else spec.default
    if resolved.get("enable_expert_parallel") and resolved["tensor_parallel_size"] < 2:
        raise Invalid(
            "engine_args.enable_expert_parallel spreads experts over a replica's GPUs: "
            "set tensor_parallel_size to 2 or more."
        )
    if pool_kind == PoolKind.CPU and resolved["dtype"] == "float16":
        raise Invalid("engine_args.dtype: float16 is not supported by vLLM on CPU; use bfloat16 or float32.")
    return resolved


# RFC 2606's reserved top-level name: matches no URL an engine could fetch.
NO_MEDIA_DOMAIN = "no-media.invalid"


def for_deployment(deployment) -> dict:
    """A deployment's full argument set, checked against its pool kind and its version's family."""
    return validate(deployment.engine_args, deployment.pool.kind, deployment.version.family or DEFAULT_FAMILY)


# The middleware that keeps every engine path behind the replica's key (vLLM's own check covers /v1 and a
# few other prefixes only): a standard-library module in this folder, put on the engine's PYTHONPATH.
GUARD_DIR = Path(__file__).resolve().parent / "engines"
GUARD_MIDDLEWARE = "portfolio_engine_guard.RequireEngineKey"


@dataclass(frozen=True)
class EngineLaunch:
    argv: list[str]
    env: dict[str, str]


def build(
    *,
    python: str,
    pool_kind: str,
    args: dict,
    model_dir: Path,
    served_name: str,
    host: str,
    port: int,
    adapters: Collection[str],
    gpu_indices: list[int],
    api_key: str,
    task: str = "chat",
    cpu_ids: list[int] | tuple[int, ...] = (),
    kv_cache_bytes: int = 0,
    media_hosts: list[str] | tuple[str, ...] = (),
) -> EngineLaunch:
    """The command and environment of one vLLM OpenAI-compatible server process. On CPU, ``cpu_ids`` are the
    cores the scheduler gave the replica (its OpenMP threads are bound to them) and ``kv_cache_bytes`` the
    KV cache it reserved; a replica placed before cores were pinned has none and binds as vLLM chooses.
    ``adapters``: the names of the deployment's adapters, which turn LoRA on; the engine starts with none
    loaded (the node agent hot-loads them once it is ready: ``adapter_sync``)."""
    argv = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        served_name,
        "--host",
        host,
        "--port",
        str(port),
        "--max-model-len",
        str(args["max_model_len"]),
        "--dtype",
        args["dtype"],
        "--max-num-seqs",
        str(args["max_num_seqs"]),
        "--disable-uvicorn-access-log",
        "--middleware",
        GUARD_MIDDLEWARE,
    ]
    # The engine's key is passed in the environment, not on the command line (visible in `ps`).
    env = {
        "VLLM_API_KEY": api_key,
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(GUARD_DIR),
    }
    if task in ("embedding", "rerank"):
        # Serves /v1/embeddings, or /v1/rerank and /v1/score: a pooling model (BERT-like ones are detected
        # anyway; decoder-based embedding models and rerankers are not).
        argv += ["--runner", "pooling"]
    if "images_per_prompt" in args:
        # A vision-language version: vLLM reserves memory for this many images a prompt, and refuses more.
        argv += ["--limit-mm-per-prompt", json.dumps({"image": args["images_per_prompt"]})]
        # Defence in depth behind the gateway's own check (serving/gateway/images.py): the engine fetches image
        # URLs only from the internal hosts allowed there, and from none (a reserved name) when none is.
        domains = sorted({urlsplit(f"//{host}").hostname or "" for host in media_hosts} - {""})
        argv += ["--allowed-media-domains", *(domains or [NO_MEDIA_DOMAIN])]
    if args["enable_prefix_caching"]:
        argv.append("--enable-prefix-caching")
    if args["enforce_eager"]:
        argv.append("--enforce-eager")
    if args["enable_lora"] or adapters:
        argv += [
            "--enable-lora",
            "--max-loras",
            str(args["max_loras"]),
            "--max-lora-rank",
            str(args["max_lora_rank"]),
        ]
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    if pool_kind == PoolKind.GPU:
        argv += [
            "--gpu-memory-utilization",
            str(args["gpu_memory_utilization"]),
            "--tensor-parallel-size",
            str(args["tensor_parallel_size"]),
        ]
        if args["quantization"]:
            argv += ["--quantization", args["quantization"]]
        if args.get("enable_expert_parallel"):
            argv.append("--enable-expert-parallel")
        # The indices the node agent reported come from nvidia-smi, which numbers GPUs by PCI bus id; CUDA's
        # own default order (fastest first) can differ on a machine with mixed GPUs.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in gpu_indices)
    else:
        # vLLM reads whole GiB.
        kv_gib = kv_cache_bytes // GIB if kv_cache_bytes else args["kv_cache_space_gib"]
        env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, kv_gib))
        if cpu_ids:
            # One list for the single rank, as "0-1,4" (vllm.utils.ompmultiprocessing reads it).
            env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_list(cpu_ids)
    return EngineLaunch(argv=argv, env=env)
