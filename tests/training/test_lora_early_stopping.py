"""Early stopping on the eval loss: the rule (pure), and a real training run of a tiny Llama that stops once
its eval loss stops falling and saves the adapter of its best measurement."""

from __future__ import annotations

import pytest

from training import lora
from training.defaults import Architecture, Hyperparameters
from training.early_stopping import EarlyStopping


class Weights:
    """A stand-in model for the rule: no trainable weights to keep."""

    def named_parameters(self):
        return iter(())


def stops_at(losses: list[float], patience: int) -> int | None:
    stopping = EarlyStopping(patience)
    for i, loss in enumerate(losses, 1):
        if stopping.measured(loss, i, Weights()):
            return i
    return None


def test_training_stops_after_patience_measurements_without_a_new_best():
    assert stops_at([1.0, 0.5, 0.6, 0.7, 0.1], patience=2) == 4
    assert stops_at([1.0, 0.5, 0.6, 0.4, 0.45, 0.3], patience=2) is None


def test_a_change_under_one_percent_is_not_a_new_best():
    assert stops_at([1.0, 0.5, 0.499, 0.498], patience=2) == 4


def test_patience_zero_never_stops():
    assert stops_at([1.0, 2.0, 3.0, 4.0, 5.0], patience=0) is None


def ticket(i: int, answer: str) -> dict:
    return {
        "messages": [{"role": "user", "content": f"Ticket {i}"}, {"role": "assistant", "content": answer}]
    }


def test_a_run_whose_eval_loss_rises_stops_early_and_keeps_its_best_adapter(tiny_llama, tmp_path):
    # The held-out rows want the opposite answer: the better the model learns its rows, the worse they fare.
    train_rows = [ticket(i, "billing") for i in range(8)]
    eval_rows = [ticket(i, "shipping") for i in range(4)]
    hp = Hyperparameters(epochs=10, learning_rate=1e-2, checkpoint_every=0).resolved(
        len(train_rows), Architecture.read(tiny_llama)
    )
    assert hp.early_stopping_patience == 2  # the default
    measured = []
    metrics = lora.train(
        base_dir=tiny_llama,
        output_dir=tmp_path / "out",
        train_rows=train_rows,
        eval_rows=eval_rows,
        hp=hp,
        on_progress=lambda p: measured.append((p.step, p.eval_loss)) if p.eval_loss is not None else None,
    )
    total = 10 * 2  # 8 rows in batches of 4, 10 epochs
    assert metrics["stopped_early_at_step"] is not None and metrics["steps_trained"] < total
    assert metrics["stopped_early_at_step"] == measured[-1][0]
    losses = dict(measured)
    best_step = metrics["best_eval_step"]
    assert best_step < metrics["stopped_early_at_step"] and metrics["restored_best"] is True
    # No measurement after the best was a new best (lower by 1% or more).
    best_loss = losses[best_step]
    assert all(loss > best_loss * 0.99 for step, loss in measured if step > best_step)
    # The saved adapter is the best one: its eval loss, measured again from the saved files, is the best
    # measurement's (and the one the run reports, without measuring it a last time).
    assert metrics["eval_loss"] == best_loss
    assert remeasured(tiny_llama, tmp_path / "out", eval_rows) == pytest.approx(best_loss, rel=1e-4)


def remeasured(base, adapter, rows) -> float | None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    examples = [lora.encode(tokenizer, row, 512) for row in rows]
    return lora.evaluate_loss(model, examples, tokenizer.eos_token_id, 4)


def train_against_the_held_out(base, out, epochs: int, patience: int, measured: list | None = None) -> dict:
    """Eight billing rows trained for ``epochs`` (two steps each), measured on four that want shipping."""
    hp = Hyperparameters(
        epochs=epochs, learning_rate=1e-2, checkpoint_every=0, early_stopping_patience=patience
    ).resolved(8, Architecture.read(base))
    return lora.train(
        base_dir=base,
        output_dir=out,
        train_rows=[ticket(i, "billing") for i in range(8)],
        eval_rows=[ticket(i, "shipping") for i in range(4)],
        hp=hp,
        on_progress=lambda p: (
            measured.append((p.step, p.eval_loss))
            if measured is not None and p.eval_loss is not None
            else None
        ),
    )


def test_without_patience_the_run_trains_every_step(tiny_llama, tmp_path):
    metrics = train_against_the_held_out(tiny_llama, tmp_path / "out", epochs=3, patience=0)
    assert metrics["stopped_early_at_step"] is None and metrics["steps_trained"] == 6
    assert metrics["restored_best"] is False


def test_patience_running_out_at_the_last_step_is_no_early_stop(tiny_llama, tmp_path):
    # One epoch of two steps, patience 1: the eval loss is measured at both, and rises at the second (the
    # held-out rows want the opposite answer), so patience runs out at the run's last step.
    measured: list = []
    metrics = train_against_the_held_out(
        tiny_llama, tmp_path / "out", epochs=1, patience=1, measured=measured
    )
    assert [step for step, _ in measured] == [1, 2]
    assert measured[1][1] > measured[0][1] * 0.99  # no new best at the last step
    assert metrics["stopped_early_at_step"] is None and metrics["steps_trained"] == 2
    # The better adapter of step 1 is still the one saved.
    assert metrics["best_eval_step"] == 1 and metrics["restored_best"] is True
