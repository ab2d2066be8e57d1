"""Checkpoints on the node's disk: each is whole (weights and trainer state) when handed to ``on_checkpoint``,
which stores it, and is removed once stored, so a run never holds more than the one being stored."""

from __future__ import annotations

from training import lora
from training.defaults import Architecture, Hyperparameters


def ticket(i: int, answer: str) -> dict:
    return {
        "messages": [{"role": "user", "content": f"Ticket {i}"}, {"role": "assistant", "content": answer}]
    }


def test_a_checkpoint_is_removed_from_the_work_folder_once_it_is_stored(tiny_llama, tmp_path):
    rows = [ticket(i, "billing") for i in range(8)]
    hp = Hyperparameters(epochs=2, checkpoint_every=1, early_stopping_patience=0).resolved(
        len(rows), Architecture.read(tiny_llama)
    )
    work = tmp_path / "work"
    stored = []

    def on_checkpoint(path, step):
        assert (path / lora.TRAINER_STATE).is_file() and (path / "adapter_model.safetensors").is_file()
        # Only the checkpoint being stored is on disk: every earlier one is gone.
        assert [p.name for p in work.glob("checkpoint-*")] == [path.name]
        stored.append(step)

    lora.train(
        base_dir=tiny_llama,
        output_dir=work / "output",
        train_rows=rows,
        eval_rows=[],
        hp=hp,
        on_checkpoint=on_checkpoint,
    )
    assert stored == [1, 2, 3]  # 8 rows in batches of 4, 2 epochs: none at the last step
    assert list(work.glob("checkpoint-*")) == []
    assert (work / "output" / "adapter_model.safetensors").is_file()
