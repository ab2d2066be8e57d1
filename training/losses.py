"""The training loss: the mean cross-entropy over the answer tokens, computed with as little work as gives
the model's own value.

Two savings, both exact (the same loss and gradients, up to float rounding; tests/training/test_losses.py):

- **The head only where an answer is predicted.** The vocabulary projection runs only at the positions whose
  next token is labelled (transformers' ``logits_to_keep``): on a classification row that is 2-3 positions of
  about 55, and the head of a small model is a fifth of its compute (49,152 x 576 in SmolLM2-135M), forward
  and backward.
- **A batch packed into one sequence, its shared prefix once.** Rows of one task usually begin alike: the
  chat template and the task's system prompt (31 of the demo rows' 55 tokens on average). A batch runs as a
  single sequence: the leading tokens every row has in common, then each row's own tokens, with their own
  positions, and a mask by which each row's tokens see the shared prefix and their own row's earlier tokens,
  nothing else; no padding either. Each row computes as it would alone, and the gradient of the shared
  tokens is the sum of the rows' (4 x 59 padded tokens become 31 + 4 x 24 on the demo task). Only LoRA
  dropout differs: the shared tokens draw one dropout mask for the batch instead of one per row.

Packing needs a model that takes positions and a ready mask as given: not a sliding window nor a state-space
or hybrid model (a config that declares such layers trains unpacked), nor ALiBi or an attention kernel that
takes no mask (flash attention). It is checked on the model's first batch, packed against unpacked without
dropout, and a model whose two losses differ trains unpacked. Models whose forward takes no
``logits_to_keep``, and mixtures of experts whose own loss adds the router's balancing loss, get their own
loss over every position.
"""

from __future__ import annotations

import weakref

IGNORE = -100
# The most tokens a packed batch may hold: its mask is tokens x tokens.
MAX_PACKED = 4096
# How close packed and unpacked must be on a model's first batch: float32 differs by rounding (1e-6 on the
# demo model), bfloat16 (weights, autocast, or a quantized base's compute dtype) by its 8 bits of mantissa.
AGREE_FLOAT32 = (1e-4, 1e-5)  # relative, absolute
AGREE_REDUCED = (1e-2, 1e-3)

# Per model: whether packing gives its own loss (checked on its first batch).
_PACKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def answer_loss(model, input_ids, attention, labels):
    """The mean cross-entropy over the answer tokens of a right-padded batch, as the model's own loss
    computes it."""
    if not keeps_logits(model):
        return model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
    # A model already found to give another loss packed is not packed again (pack builds a tokens^2 mask).
    packed = None if _PACKS.get(model) is False else pack(model, input_ids, attention, labels)
    if packed is not None and _packs(model, packed, input_ids, attention, labels):
        return _packed_loss(model, packed)
    return _padded_loss(model, input_ids, attention, labels)


def shared_length(input_ids, attention, labels) -> int:
    """How many leading tokens every row of the batch has in common, none of them predicting an answer
    token (so every prediction falls in the rows' own part); 0 for a single row."""
    import torch

    if input_ids.shape[0] < 2:
        return 0
    same = ((input_ids == input_ids[:1]) & (attention == 1)).all(dim=0)
    common = int(same.long().cumprod(dim=0).sum())
    labelled = (labels != IGNORE).long()
    # Position p predicts token p + 1: the prefix ends before the first answer token's predictor.
    first_answer = int(torch.where(labelled.any(dim=1), labelled.argmax(dim=1), labels.shape[1]).min())
    return max(0, min(common, first_answer - 1))


def pack(model, input_ids, attention, labels) -> dict | None:
    """The batch as one sequence (see the module's docstring): its token ids, positions, next-token targets
    and attention mask, in the mask format of the model's attention; None for a single row, a batch of more
    than ``MAX_PACKED`` tokens, or an attention implementation without a ready-mask format."""
    import torch

    config = getattr(_inner(model), "config", None)
    kind = getattr(config, "_attn_implementation", None)
    rows = input_ids.shape[0]
    lengths = attention.sum(dim=1).tolist()
    shared = shared_length(input_ids, attention, labels)
    total = shared + sum(n - shared for n in lengths)
    if rows < 2 or total > MAX_PACKED or kind not in ("sdpa", "eager") or _windowed(config):
        return None
    # Built where the batch is (a GPU's tensors cannot be joined with the CPU's), whatever torch's default.
    device = input_ids.device
    ids, positions = [input_ids[0, :shared]], [torch.arange(shared, device=device)]
    targets, segments = [], [-1] * shared
    # The shared tokens predict nothing: the first row's own token after them is no answer (shared_length).
    targets.append(torch.full((shared,), IGNORE, dtype=labels.dtype, device=device))
    for row, length in enumerate(lengths):
        ids.append(input_ids[row, shared:length])
        positions.append(torch.arange(shared, length, device=device))
        ending = torch.full((1,), IGNORE, dtype=labels.dtype, device=device)
        targets.append(torch.cat([labels[row, shared + 1 : length], ending]))
        segments += [row] * (length - shared)
    segment = torch.tensor(segments, device=device)
    index = torch.arange(total, device=device)
    # Token i sees token j at or before it that is shared or of its own row.
    sees = (index[None, :] <= index[:, None]) & (
        (segment[None, :] == -1) | (segment[None, :] == segment[:, None])
    )
    if kind == "eager":  # added to the scores
        dtype = _inner(model).get_input_embeddings().weight.dtype
        sees = torch.zeros(sees.shape, dtype=dtype, device=device).masked_fill(~sees, torch.finfo(dtype).min)
    return {
        "input_ids": torch.cat(ids)[None],
        "position_ids": torch.cat(positions)[None],
        "attention_mask": sees[None, None],
        "targets": torch.cat(targets)[None],
    }


def _windowed(config) -> bool:
    """Whether some layer does not attend over the whole sequence, which a ready mask would not express: a
    sliding window (Mistral's ``sliding_window``, Gemma's ``layer_types``) or a state-space, convolution or
    linear-attention layer (Mamba, hybrids: their ``layer_types``), whose state would run on from one row
    into the next."""
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return True
    return any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ())


def _packs(model, packed: dict, input_ids, attention, labels) -> bool:
    """Whether packing gives this model's own loss: checked once, on its first batch, without dropout."""
    import torch

    if model not in _PACKS:
        training = model.training
        model.eval()
        try:
            with torch.no_grad():
                got, own = _packed_loss(model, packed), _padded_loss(model, input_ids, attention, labels)
        finally:
            model.train(training)
        reduced = (
            torch.is_autocast_enabled(input_ids.device.type)
            # A quantized base (QLoRA's 4-bit) computes in its compute dtype, whatever its adapters hold.
            or getattr(_inner(model), "hf_quantizer", None) is not None
            or any(p.dtype != torch.float32 for p in model.parameters() if p.is_floating_point())
        )
        rtol, atol = AGREE_REDUCED if reduced else AGREE_FLOAT32
        _PACKS[model] = bool(torch.isclose(got, own, rtol=rtol, atol=atol))
        if not _PACKS[model]:
            print(
                f"packed batches give another loss ({float(got):.6f}, {float(own):.6f}): unpacked", flush=True
            )
    return _PACKS[model]


def _packed_loss(model, packed: dict):
    targets = packed["targets"]
    keep = _kept(targets)
    output = model(
        input_ids=packed["input_ids"],
        position_ids=packed["position_ids"],
        attention_mask=packed["attention_mask"],
        logits_to_keep=keep,
    )
    return _tail_loss(output.logits, targets[:, keep])


def _padded_loss(model, input_ids, attention, labels):
    targets = labels[:, 1:]
    keep = _kept(targets)
    output = model(input_ids=input_ids, attention_mask=attention, logits_to_keep=keep)
    return _tail_loss(output.logits, targets[:, keep])


def _kept(targets):
    """The positions whose next token is labelled in any row (``targets``: the labels shifted by one)."""
    return (targets != IGNORE).any(dim=0).nonzero().flatten()


def _tail_loss(logits, targets):
    """The cross-entropy of the kept positions' logits against their targets."""
    import torch

    return torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE
    )


def keeps_logits(model) -> bool:
    """Whether the (base) model's forward selects the positions it computes logits for, and its own loss is
    the answer's cross-entropy alone (no router loss added)."""
    import inspect

    inner = _inner(model)
    if getattr(getattr(inner, "config", None), "output_router_logits", False):
        return False
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def _inner(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model
