"""Runs the trainer refuses rather than registers: one whose every row's answer is cut off by max_length
(it would train nothing, and its adapter would be its base under a new name), and one whose loss diverges
(a NaN loss curve cannot even be stored). Each ends with the reason, as a ValueError the job fails with."""

from __future__ import annotations

import pytest

from training import lora
from training.defaults import Architecture, Hyperparameters


def ticket(i: int, answer: str, words: int = 1) -> dict:
    prompt = f"Ticket {i}: " + "the parcel never arrived " * words
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


def train(base, out, rows, **overrides) -> dict:
    hp = Hyperparameters(**{"epochs": 1, "checkpoint_every": 0, **overrides}).resolved(
        len(rows), Architecture.read(base)
    )
    return lora.train(base_dir=base, output_dir=out, train_rows=rows, eval_rows=[], hp=hp)


def test_a_run_whose_prompts_all_fill_max_length_is_refused_not_registered(tiny_llama, tmp_path):
    rows = [ticket(i, "billing", words=40) for i in range(4)]  # ~200 tokens of prompt each
    with pytest.raises(ValueError, match=r"No training row keeps any of its answer within max_length=64"):
        train(tiny_llama, tmp_path / "out", rows, max_length=64)
    assert not (tmp_path / "out").exists(), "nothing was saved"
    # The same rows with room for their answers train.
    assert train(tiny_llama, tmp_path / "ok", rows, max_length=512)["steps_trained"] >= 1


def test_a_diverging_loss_fails_the_run_with_the_reason(tiny_llama, tmp_path, monkeypatch):
    import torch

    real = lora.answer_loss
    monkeypatch.setattr(lora, "answer_loss", lambda *args: real(*args) * torch.tensor(float("nan")))
    with pytest.raises(ValueError, match=r"The training loss diverged \(nan\) at step 1; lower the learning"):
        train(tiny_llama, tmp_path / "out", [ticket(i, "billing") for i in range(4)])
