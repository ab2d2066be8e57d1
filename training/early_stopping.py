"""Early stopping on the eval loss, with the best adapter kept and put back at the end."""

from __future__ import annotations

from typing import Any

# Early stopping: the eval loss is measured this many times per epoch; training stops after
# ``early_stopping_patience`` measurements in a row without a new best (by at least MIN_IMPROVEMENT,
# relative), and the adapter of the best one is the one saved.
EVALS_PER_EPOCH = 2
MIN_IMPROVEMENT = 0.01


class EarlyStopping:
    """Stop when the eval loss has not reached a new best (lower by ``MIN_IMPROVEMENT``, relative) for
    ``patience`` measurements in a row; keep the trainable weights of the best measurement and put them back
    at the end (the adapter's weights: a few MB; a full fine-tune keeps its last weights instead, as a copy
    of every weight would double the memory it needs). ``patience`` 0: never stops."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best_loss: float | None = None
        self.best_step: int | None = None
        self.since_best = 0
        self.best_weights: dict[str, Any] | None = None

    def measured(self, loss: float, step: int, model) -> bool:
        """Record one measurement; True: stop now."""
        if self.best_loss is None or loss < self.best_loss * (1 - MIN_IMPROVEMENT):
            self.best_loss, self.best_step, self.since_best = loss, step, 0
            if self.patience and _is_adapter(model):
                self.best_weights = {
                    name: p.detach().to("cpu", copy=True)
                    for name, p in model.named_parameters()
                    if p.requires_grad
                }
            return False
        self.since_best += 1
        return bool(self.patience) and self.since_best >= self.patience

    def restore(self, model) -> bool:
        """Put the best measurement's weights back when a later one was worse; True when it did."""
        if self.best_weights is None or self.since_best == 0:
            return False
        import torch

        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in self.best_weights:
                    p.copy_(self.best_weights[name].to(p.device))
        return True

    def state(self) -> dict:
        return {
            "best_loss": self.best_loss,
            "best_step": self.best_step,
            "since_best": self.since_best,
            "best_weights": self.best_weights,
        }

    def load(self, state: dict) -> None:
        self.best_loss, self.best_step = state.get("best_loss"), state.get("best_step")
        self.since_best, self.best_weights = state.get("since_best", 0), state.get("best_weights")


def _is_adapter(model) -> bool:
    return hasattr(model, "peft_config")
