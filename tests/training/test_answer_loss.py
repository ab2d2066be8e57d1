"""The training loss over the answer tokens with the head run only where an answer token is predicted
(``training.lora.answer_loss``): the same loss and the same gradients as the model's own loss over every
position, on a tiny Llama with a LoRA adapter and rows of different lengths."""

from __future__ import annotations

from tests.training.tiny_lora import make_base
from training import lora
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
    return model, lora._collate(ROWS, pad_id=0)


def gradients(model) -> dict:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def test_the_answer_only_loss_and_its_gradients_are_the_models_own(tmp_path):
    import torch

    model, (input_ids, labels, attention) = model_and_batch(tmp_path)
    assert lora._keeps_logits(model)
    own = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
    own.backward()
    expected = gradients(model)
    model.zero_grad()
    answer = lora.answer_loss(model, input_ids, attention, labels)
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
    assert not lora._keeps_logits(plain)
    own = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
    assert torch.allclose(lora.answer_loss(plain, input_ids, attention, labels), own)


def test_a_mixture_of_experts_that_adds_its_router_loss_keeps_its_own_loss(tmp_path):
    model, _ = model_and_batch(tmp_path)
    model.get_base_model().config.output_router_logits = True
    assert not lora._keeps_logits(model)
