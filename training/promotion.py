"""Training's word on a promotion: a candidate that scores below the alias's holder on an eval set both
were scored on is a regression (registered with the registry in ``TrainingConfig.ready``)."""

from __future__ import annotations

from portfolio.registry.models import ModelVersion
from training.choices import EvalStatus
from training.models import EvalRun


def score_regressions(candidate: ModelVersion, holder: ModelVersion) -> list[str]:
    """Eval sets of the model's own team both versions were scored on where the candidate scores lower
    (latest run of each). Another team's runs of a shared base, on its private data, neither block the
    owner's promotion nor name that team's datasets in the refusal."""
    team_id = candidate.model.owner_team_id

    def latest(version: ModelVersion) -> dict:
        runs = {}
        own = EvalRun.objects.filter(
            version=version, status=EvalStatus.SUCCEEDED, dataset_version__dataset__owner_team_id=team_id
        )
        for run in own.order_by("created_at"):
            runs[run.dataset_version_id] = run
        return runs

    mine, theirs = latest(candidate), latest(holder)
    problems = []
    for dataset_version_id in sorted(set(mine) & set(theirs)):
        a, b = mine[dataset_version_id].headline, theirs[dataset_version_id].headline
        if a is not None and b is not None and a < b:
            dv = mine[dataset_version_id].dataset_version
            problems.append(f"{a:.3f} vs {b:.3f} on {dv.dataset.name} v{dv.number}")
    return problems
