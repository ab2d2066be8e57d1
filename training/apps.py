from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "training"
    label = "training"

    def ready(self) -> None:
        from portfolio.registry import inspection, merging, storage_meter
        from portfolio.registry import services as registry_services
        from serving import agent_loop, capacity, rollout_judge
        from serving.services import endpoints
        from training import (
            architectures,
            tasks,  # noqa: F401 - registers its Celery tasks, which finetune sends by name
            trainer_sweep,
        )
        from training import services as training_services
        from training.evals import canary_judging
        from training.finetune import gpu_holds
        from training.merges import services as merges
        from training.metering import kept_artifacts
        from training.promotion import score_regressions

        registry_services.PROMOTION_CHECKS.append(score_regressions)
        inspection.LAYER_READERS.append(architectures.read_facts)
        registry_services.VERSION_IN_USE_CHECKS.append(in_training)
        registry_services.UPLOADS_WAITING.append(training_services.ingests_waiting)
        endpoints.IN_USE_CHECKS.append(in_production)
        # Serving asks training to judge a rollout's canary (it cannot import training itself).
        rollout_judge.SAMPLERS.append(
            rollout_judge.JudgeSampler(check=canary_judging.check, sample=canary_judging.sample)
        )
        capacity.GPU_HOLDERS.append(gpu_holds)
        agent_loop.PASS_HOOKS.append(trainer_sweep.sweep)
        storage_meter.ARTIFACT_OWNERS.append(kept_artifacts)
        merging.ADAPTER_MERGERS.append(merges.start_merge)
        merging.MERGE_NOTES.append(merges.notes)


def in_training(version) -> str | None:
    """A version a queued or running fine-tune trains on, or a merge in flight reads (as the adapter or its
    base), is in use: archived under it, the job would register a ready version on an archived base. So is
    the output a job registered and still scores (a requeued attempt reads its files again): purged, that
    attempt would find them gone. So is the tokenizer an upload not yet ingested measures its rows with:
    purged before it is read, the upload would fail for a reason that is not its own."""
    from django.db.models import Q

    from training.merges.models import IN_FLIGHT, MergeJob
    from training.models import DatasetIngest, FineTuneJob

    jobs = list(
        FineTuneJob.objects.filter(
            Q(base_version=version) | Q(output_version=version), status__in=IN_FLIGHT
        ).values_list("pk", flat=True)
    )
    merges = list(
        MergeJob.objects.filter(
            Q(adapter=version) | Q(adapter__base_version=version), status__in=IN_FLIGHT
        ).values_list("pk", flat=True)
    )
    uploads = list(
        DatasetIngest.objects.filter(tokenizer_version=version, status__in=IN_FLIGHT)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    reasons = [
        _using([f"fine-tune #{pk}" for pk in jobs] + [f"merge #{pk}" for pk in merges], "using it"),
        _using([f"upload #{pk}" for pk in uploads], "measuring rows with it"),
    ]
    return "; ".join(reason for reason in reasons if reason) or None


def _using(named: list[str], doing: str) -> str:
    return f"{', '.join(named)} {'is' if len(named) == 1 else 'are'} {doing}" if named else ""


def in_production(endpoint) -> str | None:
    """An endpoint a task names as its production endpoint is in use: deleted, the task would lose it quietly
    (SET_NULL), with no audit row for the task. Names the endpoint's own team's tasks and counts other teams'
    (a shared endpoint's users are not the deleter's to learn of), as serving's ``deployed`` does for versions."""
    from training.evals.models import Task

    names: list[str] = []
    others = 0
    serving = Task.objects.filter(production_endpoint=endpoint).order_by("name", "pk")
    for name, team_id in serving.values_list("name", "owner_team_id"):
        if team_id == endpoint.owner_team_id:
            names.append(name)
        else:
            others += 1
    tasks = len(names) + others
    if others:
        names.append("1 task of another team" if others == 1 else f"{others} tasks of other teams")
    if not names:
        return None
    return (
        f"{endpoint.name} is the production endpoint of {', '.join(names)}; "
        f"choose another production endpoint for {'them' if tasks > 1 else 'it'} first"
    )
