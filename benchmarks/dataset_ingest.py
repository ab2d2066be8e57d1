"""Dataset ingest: how long a worker takes to check, split and measure a 100,000-row chat dataset.

    PORTFOLIO_DATA_DIR=.portfolio-bench python -m benchmarks.dataset_ingest [--rows 100000] [--characters]

Generates short, varied support conversations (a system prompt, one to three user/assistant turns), uploads
them as a user would (``services.upload_version``: the file is stored, the ingest queued) and runs the ingest
task in this process, as a worker runs it. Lengths are measured with the SmolLM2-135M-Instruct tokenizer and
its chat template (the demo GGUF's, fetched once per data folder), or in characters with ``--characters``.
Writes ``benchmarks/results/dataset_ingest.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portfolio.settings")

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.utils import timezone  # noqa: E402

from benchmarks.host import machine  # noqa: E402
from portfolio.accounts.actor import Actor  # noqa: E402
from portfolio.accounts.choices import TeamRole  # noqa: E402
from portfolio.accounts.models import Department, Membership, Team  # noqa: E402
from portfolio.registry.choices import Health, Source, VersionKind, VersionStatus  # noqa: E402
from portfolio.registry.models import Artifact, Model, ModelVersion  # noqa: E402
from portfolio.registry.storage import store_directory  # noqa: E402
from portfolio.registry.stores import default_store  # noqa: E402
from training import services, tasks  # noqa: E402
from training.models import DatasetIngest  # noqa: E402

RESULT = Path(__file__).parent / "results" / "dataset_ingest.json"
QUEUES = ["billing", "technical", "account", "shipping", "returns", "security"]
SUBJECTS = [
    "my invoice",
    "the login page",
    "a parcel",
    "my password",
    "the mobile app",
    "a refund",
    "two-factor codes",
    "the export to CSV",
    "my subscription",
    "a damaged item",
]
PROBLEMS = [
    "was charged twice",
    "does not load since this morning",
    "has not arrived after ten days",
    "stopped working after the update",
    "shows an error I do not understand",
    "is missing from my account",
    "keeps asking me to sign in again",
    "arrived broken and I want a replacement",
]
FOLLOW_UPS = [
    "I already tried restarting.",
    "This is the second time this month.",
    "My order number is {n}.",
    "Can someone call me back?",
    "It is urgent, our team cannot work.",
    "",
]
SYSTEM = "You route support tickets. Answer with the queue name, then one sentence for the agent."


def conversations(rows: int, seed: int = 7) -> bytes:
    rng = random.Random(seed)  # noqa: S311 - sample text, not secrets
    lines = []
    for i in range(rows):
        messages = [{"role": "system", "content": SYSTEM}]
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            follow = rng.choice(FOLLOW_UPS).format(n=rng.randint(10_000, 99_999))
            user = f"Hello, {rng.choice(SUBJECTS)} {rng.choice(PROBLEMS)}. {follow} (ticket {i})".strip()
            queue = rng.choice(QUEUES)
            answer = f"{queue}: the customer says {rng.choice(SUBJECTS)} {rng.choice(PROBLEMS)}."
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
        lines.append(json.dumps({"messages": messages}, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode()


def _team_and_actor() -> tuple[Team, Actor]:
    department, _ = Department.objects.get_or_create(name="Benchmarks", defaults={"cost_center": "CC-BENCH"})
    team, _ = Team.objects.get_or_create(slug="bench", defaults={"department": department, "name": "Bench"})
    user, _ = get_user_model().objects.get_or_create(username="bench-engineer")
    Membership.objects.get_or_create(user=user, team=team, defaults={"role": TeamRole.ENGINEER})
    return team, Actor(user=user)


def _tokenizer_version(team: Team) -> ModelVersion:
    """A ready base version holding the SmolLM2-135M-Instruct tokenizer files (no weights)."""
    from transformers import AutoTokenizer

    from portfolio.registry.demo_model import fetch_demo_gguf

    model, _ = Model.objects.get_or_create(name="bench-smollm2-tokenizer", defaults={"owner_team": team})
    existing = model.versions.filter(status=VersionStatus.READY).first()
    if existing is not None:
        return existing
    gguf = fetch_demo_gguf()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        Path(folder, "config.json").write_text(json.dumps({"max_position_embeddings": 8192}))
        manifest = store_directory(default_store(), Path(folder))
    artifact, _ = Artifact.objects.get_or_create(
        id=manifest.artifact_id,
        defaults={
            "store_uri": default_store().uri(manifest.artifact_id),
            "size_bytes": manifest.total_size,
            "file_count": len(manifest.files),
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in manifest.files],
            "health": Health.OK,
            "verified_at": timezone.now(),
        },
    )
    return ModelVersion.objects.create(
        model=model,
        number=1,
        kind=VersionKind.BASE,
        source=Source.GGUF,
        artifact=artifact,
        status=VersionStatus.READY,
        context_length=8192,
        has_chat_template=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--characters", action="store_true", help="measure in characters, no tokenizer")
    options = parser.parse_args()
    call_command("migrate", verbosity=0)
    team, actor = _team_and_actor()
    base = None if options.characters else _tokenizer_version(team)
    content = conversations(options.rows)
    dataset = services.create_dataset(actor=actor, owner_team=team, name=f"bench-{time.time_ns()}")

    started = time.perf_counter()
    pending = services.upload_version(
        actor=actor,
        dataset=dataset,
        chunks=[content],
        filename="tickets.jsonl",
        base_version=base,
        enqueue=False,
    )
    stored = time.perf_counter()
    tasks.ingest_dataset(pending.pk)
    ingested = time.perf_counter()

    done = DatasetIngest.objects.select_related("version").get(pk=pending.pk)
    if done.version is None:
        raise SystemExit(f"the ingest {done.status}: {done.status_detail}")
    lengths = done.version.stats["lengths"]
    result = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": options.rows,
        "bytes": len(content),
        "measured_in": lengths["unit"],
        "tokenizer": lengths["tokenizer"],
        "tokens_total": lengths["total"] if lengths["unit"] == "tokens" else None,
        "upload_seconds": round(stored - started, 2),
        "ingest_seconds": round(ingested - stored, 2),
        "rows_per_second": round(options.rows / (ingested - stored)),
        "train_eval": [done.version.train_count, done.version.eval_count],
        "machine": {
            **machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "processor": platform.machine(),
            "load_average_1m_at_end": round(os.getloadavg()[0], 1),  # other work on the machine meanwhile
        },
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
