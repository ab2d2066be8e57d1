"""Placing replicas: an explicit memory estimate (weights + KV cache + LoRA slots), matched against free capacity.

GPU nodes are matched per GPU (a replica needs ``tensor_parallel_size`` GPUs on one node, each with its
share free); CPU nodes by RAM and cores, and a CPU replica gets concrete core ids that no other replica
holds (its engine binds its threads to them). Refusals say what was needed and the best that was available,
so a person can act on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from portfolio.templatetags.formatting import GIB, gib, index_ranges
from serving.choices import NodeState, PoolKind

BYTES_PER_PARAM = {
    "float32": 4.0,
    "bfloat16": 2.0,
    "float16": 2.0,
    "auto": 2.0,
    "int8": 1.0,
    "fp8": 1.0,
    "awq": 0.5,
    "gptq": 0.5,
    "bitsandbytes": 0.5,
}
# Measured: a vLLM CPU server process tree holds ~3.6 GiB with SmolLM2-135M and a 1 GiB KV cache.
CPU_RUNTIME_OVERHEAD = int(2.2 * GIB)
# CUDA context, activations and graph buffers per GPU.
GPU_RUNTIME_OVERHEAD = int(1.5 * GIB)


class Unschedulable(Exception):
    """No placement; the message says what was needed and what was free."""


def fmt_gib(n: int) -> str:
    return f"{gib(n)} GiB"


@dataclass(frozen=True)
class Estimate:
    weights_bytes: int
    kv_bytes: int
    overhead_bytes: int
    per_gpu_bytes: int  # what each GPU must hold (GPU pools)
    gpus: int
    ram_bytes: int  # what the node's RAM must hold (CPU pools)
    cores: int
    # State-space layers' fixed state per sequence, for every sequence served at once (GPU pools; on CPU
    # it lives in the fixed cache space, with the KV cache).
    state_bytes: int = 0
    # What one sequence of ``max_model_len`` tokens needs in the cache (KV of the attention layers, their
    # cross-attention, state): a CPU engine refuses to start when its cache space holds less.
    sequence_cache_bytes: int = 0
    kv_bytes_per_token: int = 0
    notes: tuple[str, ...] = ()  # what the architecture changed, in words
    # The LoRA slots an engine with LoRA on allocates up front (``lora_slot_bytes``).
    lora_bytes: int = 0

    def describe(self) -> str:
        state = f" + state {fmt_gib(self.state_bytes)}" if self.state_bytes else ""
        lora = f" + LoRA slots {fmt_gib(self.lora_bytes)}" if self.lora_bytes else ""
        notes = f" ({'; '.join(self.notes)})" if self.notes else ""
        return (
            f"weights {fmt_gib(self.weights_bytes)} + KV cache {fmt_gib(self.kv_bytes)}{state}{lora} + "
            f"runtime {fmt_gib(self.overhead_bytes)}{notes}"
        )


def kv_bytes_per_token(shape: dict, dtype_bytes: float = 2.0, facts: dict | None = None) -> int:
    """Keys and values of one token in every attention layer: only the attention layers of a hybrid (its
    state layers keep no KV cache), none for a pure state-space model, a compressed latent for DeepSeek's
    multi-head latent attention."""
    if facts and "attention_layers" in facts:
        per_layer = facts.get("kv_elements_per_layer") or 2 * facts["kv_heads"] * facts["head_dim"]
        return int(len(facts["attention_layers"]) * per_layer * dtype_bytes)
    layers = int(shape.get("num_hidden_layers") or 0)
    heads = int(shape.get("num_attention_heads") or 0)
    kv_heads = int(shape.get("num_key_value_heads") or heads)
    hidden = int(shape.get("hidden_size") or 0)
    head_dim = int(shape.get("head_dim") or (hidden // heads if heads else 0))
    return int(2 * layers * kv_heads * head_dim * dtype_bytes)


def lora_slot_bytes(
    shape: dict, args: dict, parameter_count: int, dtype_bytes: float = 2.0, *, per_gpu_of: int = 1
) -> int:
    """What an engine with LoRA on allocates before any adapter loads: ``max_loras`` slots of
    ``max_lora_rank`` for every linear layer vLLM wraps (attention's qkv and output projections, the MLP's
    gate/up and down), whatever rank and target modules the adapters have. Per layer and unit of rank, A holds
    the inputs (qkv: 3 x hidden; o: the heads' width; gate/up: 2 x hidden; down: the MLP's width) and B the
    outputs (heads + 2 x KV heads; hidden; 2 x MLP width; hidden). 64 slots of rank 256 on SmolLM2-135M:
    about 10 GB, beside its 0.27 GB of weights.

    ``per_gpu_of``: the tensor-parallel size, for what each GPU holds. Without ``--fully-sharded-loras`` (never
    passed) only half of each pair is split: the column-parallel layers' A (qkv, gate/up: 5 x hidden) and the
    row-parallel layers' B (o, down: 2 x hidden) are whole on every GPU.

    The stored shape has no MLP width: it is worked out from the parameters that are neither embeddings nor
    attention (3 x hidden x width per layer), at most 8 x hidden (no dense model is wider; a mixture of
    experts' total would count every expert), 4 x hidden when unknown."""
    layers = int(shape.get("num_hidden_layers") or 0)
    hidden = int(shape.get("hidden_size") or 0)
    heads = int(shape.get("num_attention_heads") or 0)
    if not layers or not hidden or not heads:
        return 0
    head_dim = int(shape.get("head_dim") or hidden // heads)
    q, kv = heads * head_dim, int(shape.get("num_key_value_heads") or heads) * head_dim
    width = int(shape.get("intermediate_size") or 0)
    if not width:
        embeddings = (
            int(shape.get("vocab_size") or 0) * hidden * (1 if shape.get("tie_word_embeddings") else 2)
        )
        per_layer = (parameter_count - embeddings) / layers - (2 * hidden * q + 2 * hidden * kv)
        width = int(per_layer / (3 * hidden)) if per_layer > 0 else 4 * hidden
    width = min(width, 8 * hidden)
    whole, split = 7 * hidden, 2 * q + 2 * kv + 3 * width
    per_rank = layers * (whole + split / per_gpu_of)
    return int(per_rank * args["max_lora_rank"] * args["max_loras"] * dtype_bytes)


def cross_attention_bytes(facts: dict, dtype_bytes: float = 2.0) -> int:
    """An encoder-decoder's (Whisper's) per-sequence KV of the encoder output, in every decoder layer."""
    tokens = facts.get("cross_attention_tokens") or 0
    return int(
        2 * facts.get("decoder_layers", 0) * facts["kv_heads"] * facts["head_dim"] * tokens * dtype_bytes
    )


def state_bytes_per_sequence(facts: dict) -> int:
    """The fixed state of one sequence in every state layer, whatever its length. Counted in float32:
    vLLM keeps SSM state in float32 on CPU and by default for most hybrids on GPU."""
    return int(len(facts.get("state_layers") or ()) * facts.get("state_elements_per_layer", 0) * 4)


def _notes(facts: dict, bytes_per_param: float) -> tuple[str, ...]:
    notes = []
    if facts.get("experts"):
        notes.append(
            f"all {facts['experts']} experts resident, {facts['experts_per_token']} active per token"
        )
    layers, attention = facts.get("layers", 0), len(facts.get("attention_layers") or ())
    if facts.get("state_layers"):
        notes.append(
            f"KV cache for {attention} of {layers} layers; {len(facts['state_layers'])} keep a fixed state"
        )
    vision = facts.get("vision")
    if vision:
        notes.append(f"vision tower {fmt_gib(int(vision['parameters'] * bytes_per_param))}")
    if facts.get("cross_attention_tokens"):
        notes.append(
            f"encoder-decoder: cross-attention over {facts['cross_attention_tokens']} encoder positions"
        )
    return tuple(notes)


def estimate(
    *,
    pool_kind: str,
    parameter_count: int,
    shape: dict,
    args: dict,
    adapters: Sequence[int] = (),
    facts: dict | None = None,
) -> Estimate:
    """What a replica needs. ``adapters``: the parameters of each adapter attached to the deployment.
    ``facts``: the version's architecture facts (``registry.families``); without them (versions imported
    before they were read) every layer is taken to be attention."""
    facts = facts or {}
    dtype = args.get("quantization") or args.get("dtype", "bfloat16")
    bytes_per_param = BYTES_PER_PARAM.get(dtype, 2.0)
    # Every expert is resident, however few run per token: a MoE's weights are its total parameters.
    parameters = parameter_count + resident_adapter_parameters(pool_kind, args, adapters)
    vision = facts.get("vision") or {}
    if vision and not vision.get("in_weights"):
        parameters += vision.get("parameters", 0)  # the tower is a separate file (a GGUF's projector)
    weights = int(parameters * bytes_per_param)
    kv_dtype_bytes = 4.0 if args.get("dtype") == "float32" else 2.0
    kv_per_token = kv_bytes_per_token(shape, kv_dtype_bytes, facts)
    cross = cross_attention_bytes(facts, kv_dtype_bytes) if facts.get("cross_attention_tokens") else 0
    state_per_sequence = state_bytes_per_sequence(facts)
    # At least one full-length sequence must fit in the cache for vLLM to start.
    one_sequence = kv_per_token * args["max_model_len"] + cross + state_per_sequence
    notes = _notes(facts, bytes_per_param)
    # The engine turns LoRA on when asked, or when it serves adapters (``engine_args.argv``); the slots are in
    # the model's own precision (float32 or 16-bit; a quantised model's are 16-bit).
    lora_on = args.get("enable_lora") or bool(adapters)
    lora = lora_slot_bytes(shape, args, parameter_count, kv_dtype_bytes) if lora_on else 0
    if pool_kind == PoolKind.CPU:
        kv = int(args["kv_cache_space_gib"] * GIB)
        return Estimate(
            weights_bytes=weights,
            kv_bytes=kv,
            overhead_bytes=CPU_RUNTIME_OVERHEAD,
            per_gpu_bytes=0,
            gpus=0,
            ram_bytes=weights + kv + lora + CPU_RUNTIME_OVERHEAD,
            cores=args["cpu_cores"],
            sequence_cache_bytes=one_sequence,
            kv_bytes_per_token=kv_per_token,
            notes=notes,
            lora_bytes=lora,
        )
    tp = args["tensor_parallel_size"]
    kv = kv_per_token * args["max_model_len"] + cross
    # State does not grow with length but is held for every sequence running at once.
    state = state_per_sequence * args.get("max_num_seqs", 1)
    lora_per_gpu = (
        lora_slot_bytes(shape, args, parameter_count, kv_dtype_bytes, per_gpu_of=tp) if lora_on else 0
    )
    per_gpu = (weights + kv + state) // tp + lora_per_gpu + GPU_RUNTIME_OVERHEAD
    return Estimate(
        weights_bytes=weights,
        kv_bytes=kv,
        overhead_bytes=GPU_RUNTIME_OVERHEAD,
        per_gpu_bytes=per_gpu,
        gpus=tp,
        ram_bytes=0,
        cores=0,
        state_bytes=state,
        sequence_cache_bytes=one_sequence,
        kv_bytes_per_token=kv_per_token,
        notes=notes,
        lora_bytes=lora,
    )


def resident_adapter_parameters(pool_kind: str, args: dict, adapters: Sequence[int]) -> int:
    """The adapters' weights an engine holds besides its LoRA slots: vLLM keeps the adapters it has loaded in
    an LRU cache in host memory of ``max_cpu_loras`` (never passed: ``max_loras``) entries, evicting the
    least recently used and reading it again from disk when asked for (vllm/lora/worker_manager.py), and
    copies those a batch uses into the slots. It loads an adapter before it evicts one, so for a moment it
    holds one more. On a CPU pool that cache is the node's RAM: the largest ``max_loras`` + 1 adapters count.
    On a GPU pool it is not on the GPUs (the slots are), and the node's RAM is not scheduled: none count.
    Counting every attached adapter, on each GPU or in RAM, refused a deployment with many adapters as
    unschedulable long before it was."""
    if pool_kind != PoolKind.CPU or not adapters:
        return 0
    return sum(sorted(adapters, reverse=True)[: max(1, int(args.get("max_loras") or 1)) + 1])


@dataclass
class GpuFree:
    index: int
    name: str
    total_bytes: int
    free_bytes: int


@dataclass
class NodeFree:
    name: str
    state: str
    ram_free: int
    cores_free: int
    gpus: list[GpuFree] = field(default_factory=list)
    # Core ids no pinned replica holds; None: not known, the first ``cores_free`` ids.
    free_core_ids: list[int] | None = None

    def core_ids(self) -> list[int]:
        return sorted(self.free_core_ids) if self.free_core_ids is not None else list(range(self.cores_free))


@dataclass(frozen=True)
class Placement:
    node: str
    gpu_indices: list[int]
    reserved_memory_bytes: int
    reserved_cores: int
    cpu_ids: tuple[int, ...] = ()  # the cores a CPU replica's engine binds its threads to
    kv_cache_bytes: int = 0  # the KV cache a CPU replica's engine allocates (part of the reserved RAM)


def place(
    estimate_: Estimate, nodes: list[NodeFree], *, pool_kind: str, args: dict, avoid: set[str] | None = None
) -> Placement:
    """Pick a node (and GPUs) for one replica; nodes in ``avoid`` are used only if nothing else fits."""
    usable = [n for n in nodes if n.state == NodeState.READY]
    if not usable:
        raise Unschedulable(
            "No ready node in this pool (nodes are lost, cordoned or draining, or none joined)."
        )
    avoid = avoid or set()
    ordered = sorted(usable, key=lambda n: (n.name in avoid, n.name))
    if pool_kind == PoolKind.CPU:
        _refuse_a_cache_too_small(estimate_, args)
        return _place_cpu(estimate_, ordered, avoid)
    return _place_gpu(estimate_, ordered, args)


def choose_cores(free: list[int], count: int) -> tuple[int, ...]:
    """``count`` of the free core ids: the first run of neighbouring ids long enough, else the lowest ids."""
    free = sorted(free)
    for start in range(len(free) - count + 1):
        run = free[start : start + count]
        if run[-1] - run[0] == count - 1:
            return tuple(run)
    return tuple(free[:count])


def cpu_list(ids: list[int] | tuple[int, ...]) -> str:
    """Core ids as vLLM's ``VLLM_CPU_OMP_THREADS_BIND`` (and a person) reads them: ``0-3,6``."""
    return index_ranges(ids)


def _refuse_a_cache_too_small(est: Estimate, args: dict) -> None:
    """vLLM CPU refuses to start when its cache space cannot hold one ``max_model_len`` sequence: say so
    before a replica is started, with the two ways out."""
    if est.sequence_cache_bytes <= est.kv_bytes:
        return
    length = args["max_model_len"]
    per_token = est.kv_bytes_per_token
    fixed = est.sequence_cache_bytes - per_token * length  # cross-attention and state: not per token
    fits = max(0, (est.kv_bytes - fixed) // per_token) if per_token else 0
    shorter = f" or lower max_model_len to {fits}" if fits >= 64 else ""
    raise Unschedulable(
        f"one sequence of max_model_len {length} tokens needs {fmt_gib(est.sequence_cache_bytes)} of KV cache, "
        f"more than kv_cache_space_gib {args['kv_cache_space_gib']}: raise kv_cache_space_gib to "
        f"{-(-est.sequence_cache_bytes // GIB)}{shorter}."
    )


def _place_cpu(est: Estimate, nodes: list[NodeFree], avoid: set[str]) -> Placement:
    fits = [
        n for n in nodes if n.ram_free >= est.ram_bytes and min(n.cores_free, len(n.core_ids())) >= est.cores
    ]
    if fits:
        # Not-avoided first, then most free RAM: spreads replicas of a deployment and keeps room for big ones.
        best = max(fits, key=lambda n: (n.name not in avoid, n.ram_free, -nodes.index(n)))
        cores = choose_cores(best.core_ids(), est.cores)
        return Placement(best.name, [], est.ram_bytes, est.cores, cores, est.kv_bytes)
    roomiest = max(nodes, key=lambda n: n.ram_free)
    raise Unschedulable(
        f"needs {fmt_gib(est.ram_bytes)} of RAM ({est.describe()}) and {est.cores} core(s) on one node; "
        f"the most free is {fmt_gib(roomiest.ram_free)} and {roomiest.cores_free} core(s) on {roomiest.name}."
    )


def _place_gpu(est: Estimate, nodes: list[NodeFree], args: dict) -> Placement:
    candidates = []
    for node in nodes:
        claim = {g.index: int(g.total_bytes * args["gpu_memory_utilization"]) for g in node.gpus}
        good = [
            g for g in node.gpus if claim[g.index] >= est.per_gpu_bytes and g.free_bytes >= claim[g.index]
        ]
        if len(good) >= est.gpus:
            chosen = sorted(good, key=lambda g: (-g.free_bytes, g.index))[: est.gpus]
            candidates.append((node, chosen, claim))
    if candidates:
        node, chosen, claim = candidates[0]
        return Placement(node.name, sorted(g.index for g in chosen), max(claim[g.index] for g in chosen), 0)
    all_gpus = [(n, g) for n in nodes for g in n.gpus]
    if not all_gpus:
        raise Unschedulable("No GPUs are reported by the ready nodes of this pool.")
    node, gpu = max(all_gpus, key=lambda pair: pair[1].free_bytes)
    where = "one GPU" if est.gpus == 1 else f"each of {est.gpus} GPUs on one node"
    biggest_claim = int(gpu.total_bytes * args["gpu_memory_utilization"])
    hint = ""
    if biggest_claim < est.per_gpu_bytes:
        hint = " Raise gpu_memory_utilization, use tensor_parallel_size, or a quantised version."
        if est.state_bytes > est.kv_bytes:
            # A state-space model's state is held for every running sequence: fewer at once need less.
            hint += (
                f" Or lower max_num_seqs ({args.get('max_num_seqs')}): each running sequence holds its state."
            )
    raise Unschedulable(
        f"needs {fmt_gib(est.per_gpu_bytes)} on {where} ({est.describe()}); "
        f"the largest free is {fmt_gib(gpu.free_bytes)} on {node.name}:{gpu.index}.{hint}"
    )
