"""Scoring a model on held-out rows: exact match and containment of the generated answer (chat and
completion rows), accuracy and per-label F1 when answers are labels, and perplexity on the answers.

Generation (``score``) and the comparison of answers (``answer_metrics``, pure) are apart, so that what a
score means is tested exactly without a model.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Collection
from pathlib import Path
from typing import Any, cast

from training.lora import Loading

# A job scores the held-out rows twice (its base once per dataset version, then the new version) after it
# trained, on the node it holds: bounded as an endpoint eval run is. Rows past MAX_SCORED_ROWS (in file
# order) are not scored; a prompt keeps its last MAX_PROMPT_TOKENS tokens (its question is at its end), an
# expected answer its first MAX_ANSWER_TOKENS for the perplexity. Each answer may run to its expected
# answer's length and ANSWER_SLACK tokens more (a lead-in such as "The answer is"): a fixed 16 scored every
# longer answer 0 for every model. Prompt, answer and generation fit in the base's positions.
MAX_SCORED_ROWS = 2000
MAX_PROMPT_TOKENS = 2048
MAX_ANSWER_TOKENS = 512
ANSWER_SLACK = 8


# Straight and typographic quotes alike: a model writes “Paris” as often as "Paris".
_QUOTES = "\"'“”‘’«»„‹›"


def normalise(text: str) -> str:
    """Compared as people read them: Unicode forms ("é" composed or not), case, runs of whitespace and
    surrounding spaces, full stops, exclamation marks and quotes do not count."""
    text = unicodedata.normalize("NFKC", text)
    return re.sub(r"\s+", " ", text.strip().lower()).strip(" .!" + _QUOTES)


def _mention(phrase: str) -> re.Pattern[str]:
    """The phrase as a whole word or words: not inside a longer word ("no" is not in "know", "2" not in
    "12"), on each side where the phrase itself ends in a word character."""
    before = r"(?<!\w)" if re.match(r"\w", phrase) else ""
    after = r"(?!\w)" if re.search(r"\w$", phrase) else ""
    return re.compile(before + re.escape(phrase) + after)


def contains(answer: str, expected: str) -> bool:
    """Whether a normalised answer says the normalised expected one, as whole words; an empty expected
    answer is in everything, so it counts as in nothing."""
    return bool(expected) and _mention(expected).search(answer) is not None


def expected_answer(row: dict) -> str:
    if "messages" in row:
        return row["messages"][-1]["content"]
    if "completion" in row:
        return row["completion"]
    return str(row["label"])


def prompt_messages(row: dict) -> list[dict]:
    """The conversation a row asks a chat model to answer: everything but the row's own answer."""
    if "messages" in row:
        return row["messages"][:-1]
    text = row.get("prompt") or row.get("text") or ""
    return [{"role": "user", "content": text}]


def _prompt(tokenizer, row: dict) -> str:
    if "messages" in row:
        return tokenizer.apply_chat_template(row["messages"][:-1], add_generation_prompt=True, tokenize=False)
    return row["prompt"] if "prompt" in row else row["text"]  # an empty prompt is a valid completion row


def _prompt_ids(tokenizer, row: dict, room: int, device) -> dict:
    """A row's prompt as the model's input: its last ``room`` tokens; an empty prompt (valid for completion
    rows) starts from its beginning-of-text token: generation needs one to start from."""
    import torch

    ids = tokenizer(_prompt(tokenizer, row), return_tensors="pt", add_special_tokens=False)["input_ids"]
    ids = ids[:, -room:]
    if ids.shape[1] == 0:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = torch.tensor([[start]])
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


def _positions(model) -> int | None:
    """How many positions the model's embeddings have (Llama-like and GPT-2-like configs), if it says."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def predicted_label(answer: str, labels: Collection[str]) -> str:
    """The label a normalised answer names: the answer itself when it is one, else the label it mentions
    first as whole words (of labels found at the same place, the longest: "billing" over "bill"; "no" is
    not named by "I don't know"), else the answer as it is, a label no row expects (wrong for every row)."""
    if answer in labels:
        return answer
    found = []
    for label in labels:
        named = _mention(label).search(answer) if label else None
        if named is not None:
            found.append((named.start(), -len(label), label))
    return min(found)[2] if found else answer


def f1_by_label(pairs: list[tuple[str, str]]) -> dict[str, float]:
    """F1 of each expected label over (expected, predicted) pairs; a predicted label no row expects counts
    only as a miss of the row's own label."""
    labels = sorted({expected for expected, _ in pairs})
    scores = {}
    for label in labels:
        tp = sum(1 for e, p in pairs if e == label and p == label)
        fp = sum(1 for e, p in pairs if e != label and p == label)
        fn = sum(1 for e, p in pairs if e == label and p != label)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        scores[label] = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return scores


def label_pairs(
    expected: list[str], answers: list[str], *, labels: Collection[str] | None = None
) -> list[tuple[str, str]]:
    """(expected label, label answered) of each row, both as compared (``normalise``): the label an answer
    names among the expected ones (``predicted_label``), else the answer itself. ``labels``: the whole
    label set (normalised) the rows were drawn from, when these rows are only some of them: an answer naming
    a label none of these rows expects is then wrong, however few rows were scored."""
    truths = [normalise(text) for text in expected]
    labels = set(truths) | set(labels or ())
    return [
        (truth, predicted_label(normalise(answer), labels))
        for truth, answer in zip(truths, answers, strict=True)
    ]


# The confusion matrix's column for an answer that names no expected label. Labels are compared lower-cased
# (``normalise``), so a key with a capital letter is none of them: not even a label written "(other)".
OTHER = "(Other)"


def confusion(pairs: list[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """Expected label -> the labels answered for its rows, with counts (the misses as well as the hits);
    an answer that names no expected label counts under ``OTHER``, so the table is at most labels x
    (labels + 1) whatever the model says."""
    labels = {expected for expected, _ in pairs}
    table: dict[str, Counter[str]] = {}
    for expected, predicted in pairs:
        table.setdefault(expected, Counter())[predicted if predicted in labels else OTHER] += 1
    return {expected: dict(sorted(counts.items())) for expected, counts in sorted(table.items())}


def answer_metrics(expected: list[str], answers: list[str]) -> dict[str, Any]:
    """How generated ``answers`` compare with the ``expected`` ones, row by row, both normalised: the share
    that match exactly and that contain the expected answer; when the expected answers are few distinct
    values (a classification task), accuracy of the label each answer names, F1 per label and the label
    counts. No rows: no score (None), not 0%."""
    if len(expected) != len(answers):
        raise ValueError(f"{len(answers)} answers for {len(expected)} rows")
    truths = [normalise(text) for text in expected]
    said = [normalise(text) for text in answers]
    n = len(truths)
    if n == 0:
        return {"rows": 0, "exact_match": None, "contains": None}
    rows = list(zip(truths, said, strict=True))
    metrics: dict[str, Any] = {
        "rows": n,
        "exact_match": sum(answer == truth for truth, answer in rows) / n,
        "contains": sum(contains(answer, truth) for truth, answer in rows) / n,
    }
    if len(set(truths)) <= max(20, n // 3):  # few distinct answers: a classification task
        pairs = label_pairs(expected, answers)
        metrics["accuracy"] = sum(truth == predicted for truth, predicted in pairs) / n
        metrics["f1_by_label"] = f1_by_label(pairs)
        metrics["label_counts"] = dict(Counter(truths))
        metrics["confusion"] = confusion(pairs)
    return metrics


def score(
    *,
    base_dir: Path,
    adapter_dir: Path | None,
    rows: list[dict],
    max_new_tokens: int = 16,
    loading: Loading | None = None,
    keep_answers: bool = False,
) -> dict:
    """Greedy generation on every row, each answer allowed ``max_new_tokens`` tokens or, where longer, its
    expected answer's and ANSWER_SLACK more; the metrics of the issue's eval run. On the CPU in float32 unless
    ``loading`` says otherwise (the job's GPU, see ``training.lora.inference_loading``). ``keep_answers``:
    the generated answers too, in the rows' order (a benchmark's; a job stores only the metrics)."""
    from portfolio.registry.jsonfiles import refuse_oversized

    # transformers and peft read configs and the tokenizer whole: one past its cap is refused first.
    for folder in (base_dir, adapter_dir):
        if folder is not None:
            refuse_oversized(folder)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loading = loading or Loading("eval", "cpu", "float32")
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    # A transformers model or a peft wrapper of it: both generate and score alike, which no stub says.
    model: Any = AutoModelForCausalLM.from_pretrained(base_dir, **loading.from_pretrained_kwargs())
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    held_out = len(rows)
    rows = rows[:MAX_SCORED_ROWS]
    answers: list[str] = []
    nll, answer_tokens = 0.0, 0
    positions = _positions(model) or MAX_PROMPT_TOKENS + MAX_ANSWER_TOKENS + ANSWER_SLACK
    with torch.no_grad():
        for row in rows:
            answer_ids = tokenizer(expected_answer(row), return_tensors="pt", add_special_tokens=False)[
                "input_ids"
            ][:, : min(MAX_ANSWER_TOKENS, positions // 2)].to(model.device)
            new_tokens = min(max(max_new_tokens, answer_ids.shape[1] + ANSWER_SLACK), positions // 2)
            room = min(MAX_PROMPT_TOKENS, positions - max(new_tokens, answer_ids.shape[1]))
            prompt_ids = _prompt_ids(tokenizer, row, room, model.device)
            output = model.generate(
                **prompt_ids,
                max_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.eos_token_id,
            )
            # One sequence decodes to one string.
            generated = output[0][prompt_ids["input_ids"].shape[1] :]
            answers.append(cast(str, tokenizer.decode(generated, skip_special_tokens=True)))
            # Perplexity of the expected answer given the prompt.
            full = torch.cat([prompt_ids["input_ids"], answer_ids], dim=1)
            targets = full.clone()
            targets[:, : prompt_ids["input_ids"].shape[1]] = -100
            loss = model(input_ids=full, labels=targets).loss
            nll += float(loss) * answer_ids.shape[1]
            answer_tokens += answer_ids.shape[1]
    metrics = answer_metrics([expected_answer(row) for row in rows], answers)
    metrics["perplexity"] = math.exp(nll / answer_tokens) if answer_tokens else None
    if held_out > len(rows):
        metrics["rows_not_scored"] = held_out - len(rows)
    if keep_answers:
        metrics["answers"] = answers
    return metrics
