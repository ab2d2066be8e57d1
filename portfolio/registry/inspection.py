"""Reading what a model is from its files alone: config, tokenizer config, safetensors headers.

Nothing here loads weights or runs code from the model: safetensors headers are plain JSON, and
``config.json`` is read as data (``auto_map`` there means the model wants custom code). Every file read
into memory is capped (``jsonfiles``), and a folder holding a file transformers would read whole past its
cap is refused here, at import, so that no trainer or engine meets it later.

Where torch and transformers are installed (the import worker, a node: the train extra), the layers LoRA
may adapt are read too, from the model built from the config on the meta device (transformers' own
classes, never the model's code; no weight allocated), and stored with the architecture facts: the web
server, which has no torch, checks a fine-tune's target modules against them.
"""

from __future__ import annotations

import json
import math
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from portfolio.registry import families, jsonfiles

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
CODE_SUFFIXES = (".py",)
MAX_HEADER_BYTES = 100 * 1024 * 1024
# The key of ``architecture_facts`` holding the layers LoRA may adapt (``training.lora_targets.facts_of``),
# and their reader: training registers it (it builds the model on the meta device where torch is installed).
LORA_LAYERS = "lora_layers"
LAYER_READERS: list[Callable[[Path], dict | None]] = []
# What an adapter's import records of its ``adapter_config.json`` (``metrics["adapter"]``): what it is, and
# what a deployment checks before serving it (``serving.adapter_checks``): its ranks (``rank_pattern`` gives
# some layers another than ``r``) and the PEFT features vLLM refuses to load.
ADAPTER_KEYS = (
    "peft_type",
    "r",
    "lora_alpha",
    "target_modules",
    "base_model_name_or_path",
    "task_type",
    "rank_pattern",
    "use_dora",
    "lora_bias",
    "bias",
    "modules_to_save",
    "init_lora_weights",
    "alora_invocation_tokens",
    "layer_replication",
    "use_bdlora",
    "use_qalora",
)

SAFETENSORS_DTYPES = {
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F64": "float64",
    "I8": "int8",
    "U8": "uint8",
    "F8_E4M3": "float8_e4m3",
    "F8_E5M2": "float8_e5m2",
}


class InspectionError(Exception):
    """The files are not a model we can register, with the reason."""


@dataclass
class ModelFacts:
    format: str = ""
    architecture: str = ""
    parameter_count: int | None = None
    context_length: int | None = None
    dtype: str = ""
    quantization: str = ""
    has_chat_template: bool = False
    is_adapter: bool = False
    adapter: dict = field(default_factory=dict)
    model_card: str = ""
    needs_remote_code: bool = False
    pickle_files: list[str] = field(default_factory=list)
    # The shape facts the scheduler's memory estimate needs (KV cache size per token).
    shape: dict = field(default_factory=dict)
    # Dense / MoE / state-space / hybrid / vision-language / speech, with what serving needs of each
    # (``families.read``); empty for adapters, which serve on their base.
    family: str = ""
    architecture_facts: dict = field(default_factory=dict)


SHAPE_KEYS = (
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_size",
    "head_dim",
    "vocab_size",
    "tie_word_embeddings",
    "model_type",
)


def safetensors_header(path: Path) -> dict:
    with path.open("rb") as handle:
        return read_safetensors_header(handle, path.name)


def read_safetensors_header(handle: BinaryIO, name: str) -> dict:
    """The JSON header at the start of a safetensors stream (a file, or a blob in the artifact store)."""
    raw = handle.read(8)
    if len(raw) != 8:
        raise InspectionError(f"{name}: not a safetensors file (too short)")
    (length,) = struct.unpack("<Q", raw)
    if length > MAX_HEADER_BYTES:
        raise InspectionError(f"{name}: safetensors header of {length} bytes is implausible")
    try:
        header = json.loads(handle.read(length))
    except (ValueError, RecursionError) as exc:
        raise InspectionError(f"{name}: safetensors header is not valid JSON") from exc
    if not isinstance(header, dict):
        raise InspectionError(f"{name}: safetensors header is not an object of tensors")
    for tensor, entry in header.items():
        # A shape counts the model's parameters, which size a CPU replica's memory and its bill: a negative,
        # fractional or absurd dimension, or a dtype that is no dtype, would be believed.
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if tensor != "__metadata__" and not (
            isinstance(entry.get("dtype") if isinstance(entry, dict) else None, str)
            and len(entry["dtype"]) <= 16
            and isinstance(shape, list)
            and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape)
        ):
            raise InspectionError(f"{name}: tensor {tensor[:100]!r} has no valid dtype and shape")
    return header


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        value = jsonfiles.read_json(path)
    except jsonfiles.FileTooLarge as exc:
        raise InspectionError(str(exc)) from exc
    except (ValueError, RecursionError) as exc:  # RecursionError: nested past what the parser follows
        raise InspectionError(f"{path.name} is not valid JSON: {str(exc)[:200]}") from exc
    return value if isinstance(value, dict) else {}


def _check_shard_indexes(directory: Path, files: list[Path], names: set[str]) -> None:
    """A sharded checkpoint's index (``model.safetensors.index.json``, ``pytorch_model.bin.index.json``)
    names the file of each weight, and transformers joins that name to the model's folder as it is: an
    absolute path or a ``../`` would have a trainer, a merge or an evaluation load any file of the node
    (another model's weights, published as this one's). Each name must be a file of this folder."""
    for path in files:
        if not path.name.endswith(".index.json"):
            continue
        weight_map = _read_json(path).get("weight_map")
        if weight_map is None:
            continue
        if not isinstance(weight_map, dict):
            raise InspectionError(f"{path.name}: weight_map is not an object of weight names and files")
        folder = path.parent.relative_to(directory)
        for shard in set(weight_map.values()):
            named = (folder / shard).as_posix() if isinstance(shard, str) else None
            if named is None or shard.startswith("/") or "\\" in shard or ".." in Path(shard).parts:
                raise InspectionError(
                    f"{path.name}: {shard!r} is not the name of a file in the model's folder"
                )
            if named not in names:
                raise InspectionError(f"{path.name}: names {shard!r}, which is not among the model's files")


def _loaded_weights(directory: Path, files: list[Path]) -> list[Path]:
    """The safetensors files an engine loads, whose tensors are the version's parameters: those at the top of
    the folder (vLLM and transformers look for ``*.safetensors`` there, not below: a repository's
    ``original/`` or ``onnx/`` copies are not loaded), and of them, where ``model.safetensors.index.json``
    names the shards, only those it names (vLLM's ``filter_duplicate_safetensors_files``: a Mistral
    repository's ``consolidated.safetensors`` holds the same weights as its shards). Every file was counted,
    doubling such a model's parameters, and with them its replicas' reserved memory and bill."""
    top = sorted(p for p in files if p.suffix == ".safetensors" and p.parent == directory)
    weight_map = _read_json(directory / "model.safetensors.index.json").get("weight_map")
    if isinstance(weight_map, dict):
        named = {directory / shard for shard in weight_map.values() if isinstance(shard, str)}
        top = [p for p in top if p in named]
    return top


def inspect_directory(directory: Path) -> ModelFacts:
    try:
        jsonfiles.refuse_oversized(directory)
    except jsonfiles.FileTooLarge as exc:
        raise InspectionError(str(exc)) from exc
    facts = ModelFacts()
    files = [p for p in directory.rglob("*") if p.is_file()]
    names = {p.relative_to(directory).as_posix() for p in files}
    facts.pickle_files = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    facts.needs_remote_code = any(n.endswith(CODE_SUFFIXES) for n in names)

    _check_shard_indexes(directory, files, names)
    weights = _loaded_weights(directory, files)
    counts: Counter[str] = Counter()
    parameters = 0
    tensors: dict[str, list[int]] = {}
    for path in weights:
        for name, tensor in safetensors_header(path).items():
            if name == "__metadata__":
                continue
            n = math.prod(tensor.get("shape") or [1])
            parameters += n
            counts[tensor.get("dtype", "")] += n
            tensors[name] = list(tensor.get("shape") or [])
    if weights:
        facts.parameter_count = parameters
        facts.dtype = SAFETENSORS_DTYPES.get(counts.most_common(1)[0][0], counts.most_common(1)[0][0].lower())

    adapter_config = _read_json(directory / "adapter_config.json")
    if adapter_config:
        facts.is_adapter = True
        facts.format = "peft-lora"
        facts.adapter = {key: adapter_config[key] for key in ADAPTER_KEYS if key in adapter_config}
        if isinstance(facts.adapter.get("target_modules"), set):
            facts.adapter["target_modules"] = sorted(facts.adapter["target_modules"])
    else:
        config = _read_json(directory / "config.json")
        if config.get("auto_map"):
            facts.needs_remote_code = True
        _check_words(config)
        architectures = config.get("architectures") or []
        facts.architecture = architectures[0] if architectures else config.get("model_type", "")
        text = families.text_config(config)
        # A vision-language model's length is its decoder's; Whisper's is its decoder's too.
        keys = (
            "max_position_embeddings",
            "n_positions",
            "max_sequence_length",
            "seq_length",
            "max_target_positions",
        )
        facts.context_length = next((c[k] for c in (config, text) for k in keys if _length(c.get(k))), None)
        facts.dtype = facts.dtype or str(config.get("torch_dtype") or config.get("dtype") or "")
        quantization = config.get("quantization_config") or {}
        facts.quantization = (
            str(quantization.get("quant_method", "")) if isinstance(quantization, dict) else ""
        )
        facts.format = "safetensors" if weights else ("pickle" if facts.pickle_files else "")
        facts.shape = {key: text[key] for key in SHAPE_KEYS if key in text}
        if config:
            try:
                facts.architecture_facts = families.read(config, tensors, facts.parameter_count)
            except ValueError as exc:  # a layer count past families.MAX_LAYERS
                raise InspectionError(str(exc)) from exc
            facts.family = facts.architecture_facts["family"]
            layers = lora_layers(directory)
            if layers is not None:
                facts.architecture_facts[LORA_LAYERS] = layers
    tokenizer_config = _read_json(directory / "tokenizer_config.json")
    facts.has_chat_template = (
        bool(tokenizer_config.get("chat_template")) or (directory / "chat_template.jinja").exists()
    )
    readme = directory / "README.md"
    if readme.exists() and readme.stat().st_size < 512 * 1024:
        facts.model_card = readme.read_text(errors="replace")
    return facts


def _length(value: object) -> bool:
    """A context length as a version stores it: a whole positive number of positions (not ``true``)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**31


def _check_words(config: dict) -> None:
    """The words of ``config.json`` a version stores, of the types and lengths its fields hold: a list for
    ``architectures`` of names, short strings for the dtype and the quantization method."""
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise InspectionError("config.json: architectures is not a list of class names")
    quantization = config.get("quantization_config") or {}
    words = {
        "architectures": (architectures[0] if architectures else config.get("model_type", ""), 100),
        "torch_dtype": (config.get("torch_dtype") or config.get("dtype") or "", 30),
        "quantization_config.quant_method": (
            quantization.get("quant_method", "") if isinstance(quantization, dict) else "",
            40,
        ),
    }
    for key, (value, longest) in words.items():
        if not isinstance(value, str) or len(value) > longest:
            raise InspectionError(f"config.json: {key} is not a name of at most {longest} characters")


def lora_layers(directory: Path) -> dict | None:
    """The layers LoRA may adapt in the model whose ``config.json`` is in ``directory``, as training stores
    them (its reader, registered in ``LAYER_READERS``); ``{}`` when the model cannot be built from its config,
    None where they cannot be read here (no torch: nothing is stored, and a process that has it reads them
    later)."""
    for read in LAYER_READERS:
        return read(directory)
    return None
