"""Row lengths in tokens of a base model's tokenizer (or in characters without one), and their statistics.

Only the tokenizer's files are copied out of the base version's artifact (verified, cached per artifact),
never its weights: counting tokens for a 17B model must not copy 30 GB. Chat rows are measured as the
trainer will see them: rendered with the model's chat template when it has one.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from django.conf import settings

from portfolio.registry.artifacts import local_copy, mark_artifact_health
from portfolio.registry.hashing import Manifest
from portfolio.registry.jsonfiles import FileTooLarge, refuse_oversized
from portfolio.registry.models import Artifact, ModelVersion
from portfolio.registry.storage import CorruptArtifact
from training.choices import DatasetKind

TOKENIZER_FILES = frozenset(
    {
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "tokenizer.model",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "chat_template.json",
        "chat_template.jinja",
    }
)
BATCH = 1024
HISTOGRAM_BINS = 20
MAX_FLAGGED = 50


# A chat template renders a row in microseconds; one that takes this long is looping on purpose.
RENDER_SECONDS, RENDER_SECONDS_PER_ROW = 2.0, 0.1


class TemplateTooSlow(Exception):
    """A chat template that ran past its render budget (``render_budget``)."""


@contextlib.contextmanager
def render_budget(seconds: float, label: str) -> Iterator[None]:
    """Raise ``TemplateTooSlow`` in the block once it has run ``seconds`` (a timer signal, so only in the
    main thread, where a Celery worker's prefork child and the solo pool run tasks; elsewhere unbounded)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum, frame):
        raise TemplateTooSlow(
            f"The chat template of {label} took more than {seconds:.1f}s to render a batch of rows (its own "
            "loops, not the rows): fix the template, or upload against another base."
        )

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class TokenizerUnavailable(Exception):
    """The version's artifact has no usable tokenizer."""


@dataclass(frozen=True)
class Measure:
    """How rows are measured: ``tokenizer`` None means characters."""

    tokenizer: object | None
    version_label: str | None = None
    context_length: int | None = None

    @property
    def unit(self) -> str:
        return "tokens" if self.tokenizer is not None else "characters"

    @property
    def uses_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))


def tokenizer_folder(version: ModelVersion) -> Path:
    """A verified local copy of the tokenizer files of ``version``'s artifact. Files lost since the upload
    chose the version (deleted, or found damaged) are ``TokenizerUnavailable``: the upload fails saying so."""
    try:
        artifact = version.artifact
    except Artifact.DoesNotExist:  # read before its files were deleted: its artifact row went with them
        raise TokenizerUnavailable(f"The stored files of {version.label} were deleted.") from None
    if artifact is None:
        raise TokenizerUnavailable(f"{version.label} has no stored files.")
    manifest = artifact.manifest()
    entries = [entry for entry in manifest.files if entry.path in TOKENIZER_FILES]
    if not any(
        entry.path in ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt") for entry in entries
    ):
        raise TokenizerUnavailable(f"{version.label} has no tokenizer files.")
    destination = Path(settings.ARTIFACT_CACHE) / "tokenizers" / artifact.id
    try:
        return local_copy(Manifest.of(entries), destination)
    except CorruptArtifact as exc:
        raise _lost(version, artifact.id, exc) from exc


def _lost(version: ModelVersion, artifact_id: str, damage: CorruptArtifact) -> TokenizerUnavailable:
    """Why a tokenizer's files could not be read: deleted meanwhile (their artifact row is gone too), or
    damaged, which marks the artifact corrupt as ``artifacts.materialize_version`` does for a model."""
    if not Artifact.objects.filter(pk=artifact_id).exists():
        return TokenizerUnavailable(f"The stored files of {version.label} were deleted.")
    mark_artifact_health(artifact_id, [str(damage)])
    return TokenizerUnavailable(
        f"The stored tokenizer files of {version.label} are damaged ({damage}): import the same files "
        "again to repair them, or upload against another base."
    )


@lru_cache(maxsize=4)
def _load(folder: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def measure_for(version: ModelVersion | None) -> Measure:
    if version is None:
        return Measure(tokenizer=None)
    folder = tokenizer_folder(version)
    try:
        refuse_oversized(folder)  # transformers reads the tokenizer's files whole
    except FileTooLarge as exc:
        raise TokenizerUnavailable(f"The tokenizer of {version.label} is refused: {exc}") from exc
    try:
        tokenizer = _load(str(folder))
    except Exception as exc:  # transformers raises many kinds; all mean "not loadable"
        raise TokenizerUnavailable(
            f"The tokenizer of {version.label} could not be loaded ({exc.__class__.__name__})."
        ) from exc
    return Measure(tokenizer=tokenizer, version_label=version.label, context_length=version.context_length)


def _plain_chat(messages: list[dict]) -> str:
    return "\n".join(f"{message['role']}: {message['content']}" for message in messages)


def _texts(rows: list[dict], shape: str, measure: Measure) -> list[str]:
    if shape == DatasetKind.CHAT:
        if measure.uses_chat_template:
            # One call for the batch: the template is compiled once, not checked again per row. Within a
            # budget: a template is code its team wrote, and its loops could hold this worker for days.
            budget = RENDER_SECONDS + RENDER_SECONDS_PER_ROW * len(rows)
            conversations = [row["messages"] for row in rows]
            with render_budget(budget, measure.version_label or "the base"):
                return measure.tokenizer.apply_chat_template(conversations, tokenize=False)  # type: ignore[union-attr]
        return [_plain_chat(row["messages"]) for row in rows]
    if shape == DatasetKind.COMPLETION:
        return [row["prompt"] + row["completion"] for row in rows]
    return [row["text"] for row in rows]


def lengths(rows: list[dict], shape: str, measure: Measure) -> list[int]:
    """The length of each row of a batch (``BATCH`` rows at a time is a good size), in order."""
    if not rows:
        return []
    texts = _texts(rows, shape, measure)
    if measure.tokenizer is None:
        return [len(text) for text in texts]
    # A rendered chat template already holds the special tokens; other text gets the tokenizer's own.
    special = not (shape == DatasetKind.CHAT and measure.uses_chat_template)
    return _encode(measure.tokenizer, texts, special)


def _encode(tokenizer, texts: list[str], special: bool) -> list[int]:
    # A fast tokenizer's Rust batch without offsets: the same ids, a third less work (lengths are all we need).
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        return [
            len(encoding.ids) for encoding in backend.encode_batch_fast(texts, add_special_tokens=special)
        ]
    encoded = tokenizer(texts, add_special_tokens=special)["input_ids"]
    return [len(ids) for ids in encoded]


def _percentile(ordered: list[int], p: float) -> int:
    """Nearest-rank percentile of an ordered list."""
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _nice_width(span: int, bins: int) -> int:
    raw = max(1, math.ceil(span / bins))
    power = 10 ** max(0, len(str(raw)) - 1)
    for step in (1, 2, 5, 10):
        if raw <= step * power:
            return step * power
    return 10 * power  # pragma: no cover


def histogram(values: array, bins: int = HISTOGRAM_BINS) -> dict:
    """Counts in equal, round-width bins from just below the shortest row to the longest:
    {"width", "edges", "counts"} (``edges`` has one more entry than ``counts``)."""
    if not values:
        return {"width": 0, "edges": [], "counts": []}
    low, top = min(values), max(values)
    width = _nice_width(top - low + 1, bins)
    start = low // width * width
    counts = [0] * ((top - start) // width + 1)
    for value in values:
        counts[(value - start) // width] += 1
    return {"width": width, "edges": [start + i * width for i in range(len(counts) + 1)], "counts": counts}


def summarize(
    values: array, measure: Measure, shape: str, over_context_lines: list[int], over_context: int
) -> dict:
    ordered = sorted(values)
    stats: dict = {
        "unit": measure.unit,
        "tokenizer": measure.version_label,
        "chat_template": shape == DatasetKind.CHAT and measure.uses_chat_template,
        "context_length": measure.context_length,
        "over_context": over_context,
        "over_context_lines": over_context_lines,
        "total": sum(ordered),
        "histogram": histogram(values),
    }
    if ordered:
        stats.update(
            min=ordered[0],
            mean=round(sum(ordered) / len(ordered), 1),
            p50=_percentile(ordered, 50),
            p95=_percentile(ordered, 95),
            max=ordered[-1],
        )
    return stats
