"""Training's word on a promotion (registered with the registry in ``TrainingConfig.ready``): the candidate must
not score below the alias's holder on an eval set of the model's own team both were scored on, and a candidate
never scored on any of them (a chat-template copy, a fresh import) is not waved through where the holder was:
promoted so, it became the holder, and a lower-scoring version could follow it with no owner's word. A
candidate scored on other sets only (a retrain, scored on the dataset's newer version by its job) passes, as
before: the platform scores a version only in a fine-tune job, on that job's dataset version."""

from __future__ import annotations

from portfolio.registry.models import ModelVersion
from portfolio.registry.promotion_guard import Finding
from training.choices import EvalStatus
from training.models import EvalRun


def score_regressions(candidate: ModelVersion, holder: ModelVersion) -> list[Finding]:
    """Eval sets of the model's own team both have a score on (latest succeeded run of each) where the
    candidate scores lower; or, for a candidate with no score on any, every set the holder has one on. A
    holder never evaluated blocks nothing. Another team's runs of a shared base, on its private data, neither
    block the owner's promotion nor name that team's datasets."""
    team_id = candidate.model.owner_team_id

    def latest(version: ModelVersion) -> dict[int, EvalRun]:
        runs = {}
        own = EvalRun.objects.filter(
            version=version, status=EvalStatus.SUCCEEDED, dataset_version__dataset__owner_team_id=team_id
        ).select_related("dataset_version__dataset")
        for run in own.order_by("created_at", "id"):
            runs[run.dataset_version_id] = run
        return runs

    mine, theirs = latest(candidate), latest(holder)
    scored = any(run.headline is not None for run in mine.values())
    findings = []
    for dataset_version_id in sorted(theirs):
        held = theirs[dataset_version_id]
        b = held.headline
        if b is None:
            continue
        run = mine.get(dataset_version_id)
        a = run.headline if run is not None else None
        dv = held.dataset_version
        if a is None and not scored:
            text = f"not evaluated on {dv.dataset.name} v{dv.number}, where {holder.label} scores {b:.3f}"
            findings.append(Finding(text, unscored=True))
        elif a is not None and a < b:
            findings.append(Finding(f"{a:.3f} vs {b:.3f} on {dv.dataset.name} v{dv.number}"))
    return findings
