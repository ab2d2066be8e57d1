"""The training loss over the answer tokens (``training.losses.answer_loss``), with the head run only where an
answer token is predicted and the prefix a batch shares run once: the same loss and the same gradients as
the model's own loss over every position, on tiny models with a LoRA adapter and rows of different
lengths."""

from __future__ import annotations

from portfolio.registry.tiny_models import text_layers
from tests.training.tiny_lora import make_base
from training import lora, losses
from training.defaults import Hyperparameters

ROWS = [  # (input ids, labels): the answer at the end of each row, as ``lora.encode`` lays them out
    ([1, 5, 9, 13, 20, 21], [-100, -100, -100, -100, 20, 21]),
    ([2, 40, 41, 42, 43, 44, 45, 46, 47], [-100] * 7 + [46, 47]),
    ([7, 7, 7, 8], [-100, -100, -100, 8]),
]


def model_and_batch(tmp_path):
    import torch

    base = make_base(tmp_path / "base")
    hp = Hyperparameters(lora_r=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])
    model = lora.load_model(base, hp, lora.Loading("lora", "cpu", "float32"), None)
    with torch.no_grad():  # peft starts B at zero: give the adapter gradients of its own to compare
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
            elif name.endswith(("q_proj.base_layer.weight", "k_proj.weight")):
                # Sharp attention: random weights this small attend almost evenly, whatever the positions
                # and the mask; these make each token's attention depend on both.
                parameter.normal_(0, 1.0)
    return model, lora._collate(ROWS, pad_id=0)


def gradients(model) -> dict:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def test_the_answer_only_loss_and_its_gradients_are_the_models_own(tmp_path):
    import torch

    model, (input_ids, labels, attention) = model_and_batch(tmp_path)
    assert losses.keeps_logits(model)
    own = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
    own.backward()
    expected = gradients(model)
    model.zero_grad()
    answer = losses.answer_loss(model, input_ids, attention, labels)
    answer.backward()
    assert torch.allclose(answer, own, atol=1e-6)
    got = gradients(model)
    assert expected.keys() == got.keys() and expected
    for name, grad in expected.items():
        assert torch.allclose(got[name], grad, atol=1e-6), name


def test_a_model_without_logits_to_keep_gets_its_own_loss(tmp_path):
    import torch

    model, (input_ids, labels, attention) = model_and_batch(tmp_path)

    class Plain(torch.nn.Module):
        """A causal LM whose forward selects no positions (as older architectures' do)."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, labels):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    plain = Plain(model)
    assert not losses.keeps_logits(plain)
    own = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
    assert torch.allclose(losses.answer_loss(plain, input_ids, attention, labels), own)


def test_a_mixture_of_experts_that_adds_its_router_loss_keeps_its_own_loss(tmp_path):
    model, _ = model_and_batch(tmp_path)
    model.get_base_model().config.output_router_logits = True
    assert not losses.keeps_logits(model)


SYSTEM = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38]  # a system prompt every row begins with: 10 tokens
SHARING_ROWS = [
    (SYSTEM + [1, 5, 9, 20, 21], [-100] * 13 + [20, 21]),
    (SYSTEM + [2, 40, 41, 42, 43, 44, 46, 47], [-100] * 16 + [46, 47]),
    (SYSTEM + [7, 8], [-100] * 11 + [8]),
]


def embedded_shapes(model) -> list[tuple]:
    """The (rows, tokens) of every forward the model runs from now on."""
    shapes: list[tuple] = []
    embeddings = model.get_base_model().get_input_embeddings()
    embeddings.register_forward_hook(lambda module, args, output: shapes.append(tuple(args[0].shape)))
    return shapes


def test_a_batch_runs_as_one_sequence_with_the_models_own_loss_and_gradients(tmp_path):
    import torch

    model, _ = model_and_batch(tmp_path)
    for rows in (SHARING_ROWS, ROWS):  # with a shared prefix, and without one (then packing only unpads)
        input_ids, labels, attention = lora._collate(rows, pad_id=0)
        model.zero_grad()
        own = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        own.backward()
        expected = gradients(model)
        model.zero_grad()
        losses.answer_loss(model, input_ids, attention, labels)  # the first batch checks packing once
        shapes = embedded_shapes(model)
        packed = losses.answer_loss(model, input_ids, attention, labels)
        packed.backward()
        # One sequence: the shared tokens once, then each row's own tokens, no padding.
        shared = len(SYSTEM) if rows is SHARING_ROWS else 0
        assert shapes == [(1, shared + sum(len(ids) - shared for ids, _ in rows))]
        assert torch.allclose(packed, own, atol=1e-5)
        got = gradients(model)
        assert expected.keys() == got.keys() and expected
        for name, grad in expected.items():
            assert torch.allclose(got[name], grad, atol=1e-5), name


def test_the_shared_prefix_ends_before_the_first_answer_is_predicted():
    def length(rows):
        return losses.shared_length(*(lora._collate(rows, pad_id=0)[i] for i in (0, 2, 1)))

    same = SYSTEM + [1, 2, 3]
    # Rows identical to the end: the prefix stops where the first answer token's predictor is.
    assert length([(same, [-100] * 11 + [2, 3]), (same, [-100] * 12 + [3])]) == 10
    assert length([(same, [-100] * 9 + [38, 1, 2, 3]), (same, [-100] * 12 + [3])]) == 8
    assert length([(same, [-100] * 12 + [3])]) == 0  # one row: nothing to share
    differ = [(SYSTEM[:7] + [first, 2, 3, 4], [-100] * 10 + [4]) for first in (1, 5)]
    assert length(differ) == 7
    # Padding is never shared: a row that ends where the others go on.
    rows = [(SYSTEM + [1], [-100] * 10 + [1]), (SYSTEM + [1, 2, 3], [-100] * 12 + [3])]
    assert length(rows) == 9


def test_a_sliding_window_model_trains_unpacked(tmp_path):
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    # A window of 12 tokens, which the ready mask of a packed batch would not apply.
    config = MistralConfig(**text_layers(96), sliding_window=12)
    torch.manual_seed(0)
    MistralForCausalLM(config).save_pretrained(tmp_path / "mistral")
    hp = Hyperparameters(lora_r=4, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = lora.load_model(tmp_path / "mistral", hp, lora.Loading("lora", "cpu", "float32"), None)
    input_ids, labels, attention = lora._collate(SHARING_ROWS, pad_id=0)
    own = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
    assert losses.pack(model, input_ids, attention, labels) is None
    shapes = embedded_shapes(model)
    assert torch.allclose(losses.answer_loss(model, input_ids, attention, labels), own, atol=1e-6)
    assert shapes == [tuple(input_ids.shape)]


def test_a_model_whose_packed_loss_differs_trains_unpacked(tmp_path, monkeypatch):
    import torch

    model, _ = model_and_batch(tmp_path)
    inner = model.get_base_model()
    forward = inner.forward

    def positions_ignored(*args, position_ids=None, logits_to_keep=0, **kwargs):
        """As a model that numbers the tokens itself (0, 1, 2, ... along the packed sequence)."""
        return forward(*args, logits_to_keep=logits_to_keep, **kwargs)

    inner.forward = positions_ignored
    assert losses.keeps_logits(model)
    input_ids, labels, attention = lora._collate(SHARING_ROWS, pad_id=0)
    own = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
    assert losses.pack(model, input_ids, attention, labels) is not None
    assert torch.allclose(losses.answer_loss(model, input_ids, attention, labels), own, atol=1e-6)
    shapes, packs = embedded_shapes(model), []
    monkeypatch.setattr(losses, "pack", lambda *batch: packs.append(batch))
    assert torch.allclose(losses.answer_loss(model, input_ids, attention, labels), own, atol=1e-6)
    assert shapes == [tuple(input_ids.shape)]  # checked once: from then on, the padded batch alone
    assert packs == []  # and its packed mask is no longer built


def _packed_a_little_off(model) -> None:
    """The model's packed forwards (those given positions) raise one vocabulary entry's logit: a packed loss
    about 1e-3 off the padded one (the demo's tiny model is near uniform over 96 tokens), as a base that
    computes in bfloat16 gives, and more than float32's rounding."""
    import torch

    inner = model.get_base_model()
    forward = inner.forward

    def raised(*args, position_ids=None, logits_to_keep=0, **kwargs):
        output = forward(*args, position_ids=position_ids, logits_to_keep=logits_to_keep, **kwargs)
        if position_ids is not None:
            output.logits = (
                output.logits + torch.nn.functional.one_hot(torch.tensor(0), output.logits.shape[-1]) * 0.4
            )
        return output

    inner.forward = raised


def test_a_quantized_base_is_held_to_reduced_precision_when_packing_is_checked(tmp_path):
    input_ids, labels, attention = lora._collate(SHARING_ROWS, pad_id=0)
    rows = {}
    for quantized in (False, True):
        model, _ = model_and_batch(tmp_path / str(quantized))
        _packed_a_little_off(model)
        if quantized:  # as transformers marks a base loaded with a quantization config (QLoRA's 4-bit)
            model.get_base_model().hf_quantizer = object()
        losses.answer_loss(model, input_ids, attention, labels)  # the first batch checks packing
        shapes = embedded_shapes(model)
        losses.answer_loss(model, input_ids, attention, labels)
        rows[quantized] = shapes[0][0]
    # Float32 weights with no quantizer: held to float32's tolerance, so padded (one row per example).
    assert rows == {False: input_ids.shape[0], True: 1}


def test_a_packed_batch_is_built_where_the_batch_is_whatever_torchs_default_device(tmp_path):
    # Found on an H200: the rows' ends were made on the CPU and joined with a GPU batch's labels. Torch's
    # default device set to "meta" stands in for a batch that lives elsewhere than where new tensors go.
    import torch

    model, _ = model_and_batch(tmp_path)
    config = model.get_base_model().config
    input_ids, labels, attention = lora._collate(SHARING_ROWS, pad_id=0)
    for kind in ("sdpa", "eager"):  # a boolean mask, or one added to the scores
        config._attn_implementation = kind
        expected = losses.pack(model, input_ids, attention, labels)
        torch.set_default_device("meta")
        try:
            packed = losses.pack(model, input_ids, attention, labels)
        finally:
            torch.set_default_device(None)
        assert expected is not None and packed is not None and packed.keys() == expected.keys()
        for name, tensor in packed.items():
            assert tensor.device == input_ids.device, (kind, name)
            assert torch.equal(tensor, expected[name]), (kind, name)
