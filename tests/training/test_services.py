"""Dataset versions: validated whole or not at all, split, measured, stored by content, audited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.management import call_command

from portfolio.audit.models import AuditEvent
from portfolio.errors import Conflict, Forbidden, Invalid, NotFound
from portfolio.registry.models import Artifact
from tests.conftest import actor_for
from tests.registry.conftest import ready_base
from tests.training.conftest import chat, jsonl, tickets, upload
from training import services
from training.choices import DatasetKind
from training.models import Dataset, DatasetVersion

pytestmark = pytest.mark.django_db


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_valid_chat_file_becomes_a_version_with_a_split_and_statistics(engineer, chat_set, settings):
    rows = tickets(40)
    version, created = upload(engineer, chat_set, jsonl(*rows, "", rows[0]))
    assert created and version.number == 1
    assert (version.row_count, version.train_count, version.eval_count) == (40, 36, 4)
    assert version.shape == DatasetKind.CHAT and version.status == "ready"
    assert version.stats["duplicates"] == 1 and version.stats["empty_lines"] == 1
    assert version.stats["duplicate_lines"] == [[42, 1]] and version.stats["empty_line_numbers"] == [41]
    lengths = version.stats["lengths"]
    assert lengths["unit"] == "characters" and lengths["tokenizer"] is None
    assert lengths["min"] <= lengths["p50"] <= lengths["p95"] <= lengths["max"]
    assert sum(lengths["histogram"]["counts"]) == 40
    assert {f["path"] for f in version.artifact.files} == {"train.jsonl", "eval.jsonl", "original.jsonl"}

    files = services.dataset_files(version)
    train, evaluation = read_rows(files.train), read_rows(files.eval)
    assert len(train) == 36 and len(evaluation) == 4

    def canonical(row):
        return json.dumps(row, sort_keys=True)

    assert sorted(map(canonical, train + evaluation)) == sorted(map(canonical, rows))
    assert files.original.read_bytes() == jsonl(*rows, "", rows[0])
    assert list((Path(settings.DATA_DIR) / "work").iterdir()) == []  # no work files left behind
    event = AuditEvent.objects.get(action="dataset_version.create")
    assert (
        event.after["rows"] == {"total": 40, "train": 36, "eval": 4}
        and event.team_id == chat_set.owner_team_id
    )


def test_identical_rows_uploaded_again_return_the_existing_version(engineer, chat_set):
    rows = tickets(12)
    first, _ = upload(engineer, chat_set, jsonl(*rows))
    # Same rows, other spacing and a different split request: still the same content.
    again, created = upload(
        engineer, chat_set, "\n".join(json.dumps(r, indent=None) for r in rows).encode(), seed=7
    )
    assert not created and again.pk == first.pk
    assert DatasetVersion.objects.count() == 1
    second, created = upload(engineer, chat_set, jsonl(*rows[:11]))
    assert created and second.number == 2


def test_a_malformed_file_yields_line_numbered_errors_and_no_version_or_artifact(
    engineer, chat_set, settings
):
    content = jsonl(
        chat("a", "billing"),
        chat("b", "technical"),
        '{"messages": [',
        chat("c", "account"),
        "",
        chat("d", "shipping"),
        {"messages": [{"role": "user", "content": "no answer"}]},
        chat("e", "billing"),
        {"messages": [{"role": "customer", "content": "x"}, {"role": "assistant", "content": "y"}]},
    )
    with pytest.raises(Invalid) as caught:
        upload(engineer, chat_set, content)
    error = caught.value
    assert error.code == "invalid_dataset"
    assert [line.split(":")[0] for line in error.fields["file"]] == ["line 3", "line 7", "line 9"]
    assert "3 problems in 9 lines" in error.message and "No version was created" in error.message
    assert error.report.empty_line_numbers == [5]
    assert not DatasetVersion.objects.exists() and not Artifact.objects.exists()
    assert not AuditEvent.objects.filter(action="dataset_version.create").exists()
    assert list((Path(settings.DATA_DIR) / "work").iterdir()) == []


def test_an_empty_file_or_an_oversized_upload_is_refused(engineer, chat_set, settings):
    with pytest.raises(Invalid, match="no rows"):
        upload(engineer, chat_set, b"\n\n")
    settings.MAX_UPLOAD_BYTES = 100
    with pytest.raises(Invalid, match="exceeds the limit"):
        upload(engineer, chat_set, jsonl(*tickets(5)))
    assert not DatasetVersion.objects.exists()


def test_classification_split_is_stratified_and_labels_are_counted(engineer, labels_set):
    rows = [
        {"text": f"message {i} about {label}", "label": label}
        for label, n in (("billing", 40), ("technical", 30), ("account", 20), ("other", 10))
        for i in range(n)
    ]
    version, _ = upload(engineer, labels_set, jsonl(*rows), eval_fraction=0.2)
    assert version.labels == [
        {"label": "billing", "count": 40, "train": 32, "eval": 8},
        {"label": "technical", "count": 30, "train": 24, "eval": 6},
        {"label": "account", "count": 20, "train": 16, "eval": 4},
        {"label": "other", "count": 10, "train": 8, "eval": 2},
    ]
    evaluation = read_rows(services.dataset_files(version).eval)
    assert len(evaluation) == version.eval_count == 20


def test_token_statistics_use_the_base_versions_tokenizer_and_flag_rows_over_its_context(
    engineer, chat_set, smollm2
):
    from transformers import AutoTokenizer

    from training import tokens

    short = chat("I was charged twice", "billing", system=None)
    long = chat("My order " + "never arrived and " * 12 + "I want a refund.", "shipping", system=None)
    version, _ = upload(engineer, chat_set, jsonl(short, long, short), base_version=smollm2)
    lengths = version.stats["lengths"]
    assert lengths["unit"] == "tokens" and lengths["tokenizer"] == "smollm2-135m-instruct:v1"
    assert lengths["chat_template"] is True
    tokenizer = AutoTokenizer.from_pretrained(tokens.tokenizer_folder(smollm2))
    expected = [
        len(tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"])
        for row in (short, long)
    ]
    assert (lengths["min"], lengths["max"]) == (min(expected), max(expected))
    assert expected[0] <= 48 < expected[1]
    assert lengths["over_context"] == 1 and lengths["over_context_lines"] == [2]
    assert version.tokenizer_version == smollm2 and version.context_length == 48


def test_a_row_the_bases_chat_template_refuses_is_an_error_on_its_line(
    engineer, chat_set, smollm2, monkeypatch
):
    """Templates refuse rows with raise_exception (Gemma's a system turn): the upload is refused with the
    line, as the trainer would meet it, not an internal error of the whole ingest."""
    from training import tokens
    from training.ingest import DatasetInvalid

    tokenizer = tokens.measure_for(smollm2).tokenizer
    refusing = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}{{ m['content'] }}{% endfor %}"
    )
    monkeypatch.setattr(tokenizer, "chat_template", refusing)
    rows = jsonl(
        chat("no system", "billing", system=None), chat("with one", "billing"), chat("x", "y", system=None)
    )
    with pytest.raises(DatasetInvalid) as refused:
        upload(engineer, chat_set, rows, base_version=smollm2)
    assert [(error.line, error.kind) for error in refused.value.report.errors] == [(2, "chat_template")]
    assert "refuses it: System role not supported" in refused.value.report.errors[0].message


def test_a_chat_template_that_loops_for_ever_fails_the_upload_instead_of_holding_the_worker(
    engineer, chat_set, smollm2, monkeypatch
):
    """A template is code its team wrote (set on a version, or given at an import): nested loops of
    Jinja's largest range made a one-row upload's measuring run for days on a control worker, which every
    import, rollup and statement shares. The rendering has a budget; past it, the upload fails saying so."""
    import time

    from portfolio.errors import Invalid
    from training import tokens

    tokenizer = tokens.measure_for(smollm2).tokenizer
    looping = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}{{ messages }}"
    monkeypatch.setattr(tokenizer, "chat_template", looping)
    started = time.monotonic()
    with pytest.raises(Invalid, match="took more than 2.1s to render"):
        upload(engineer, chat_set, jsonl(chat("hi", "billing")), base_version=smollm2)
    assert time.monotonic() - started < 60


def test_only_owners_and_engineers_create_datasets_and_upload(org, team, chat_set):
    viewer, outsider = actor_for(org["viewer"]), actor_for(org["outsider"])
    with pytest.raises(Forbidden):
        services.create_dataset(actor=viewer, owner_team=team, name="mine")
    with pytest.raises(Forbidden):
        upload(viewer, chat_set, jsonl(*tickets(3)))
    with pytest.raises(NotFound):
        upload(outsider, chat_set, jsonl(*tickets(3)))
    assert not DatasetVersion.objects.exists()


def test_dataset_names_are_unique_per_team_only(engineer, org, team, other_team, chat_set):
    with pytest.raises(Conflict):
        services.create_dataset(actor=engineer, owner_team=team, name="Tickets")
    other = services.create_dataset(actor=actor_for(org["outsider"]), owner_team=other_team, name="tickets")
    assert other.name == "tickets"
    with pytest.raises(Invalid, match="name"):
        services.create_dataset(actor=engineer, owner_team=team, name="no spaces please")
    assert AuditEvent.objects.filter(action="dataset.create").count() == 2


def test_the_demo_command_registers_the_ticket_routing_set_once(org, team, settings):
    team.slug = "demo"
    team.save(update_fields=["slug"])
    call_command("seed_demo_dataset")
    call_command("seed_demo_dataset")
    dataset = Dataset.objects.get(owner_team=team, name="ticket-routing")
    version = dataset.versions.get()
    assert version.row_count == 80 and (version.train_count, version.eval_count) == (72, 8)
    answers = [row["messages"][-1]["content"] for row in read_rows(services.dataset_files(version).train)]
    assert set(answers) == {"billing", "technical", "account", "shipping"}
    # Chat rows whose answers are four queues: the split holds out each queue's share.
    assert version.stats["stratified_by"] == "answer"
    assert {item["label"]: (item["train"], item["eval"]) for item in version.labels} == {
        queue: (18, 2) for queue in ("billing", "technical", "account", "shipping")
    }


# --- Promotion guarded by evaluation ---------------------------------------------------------------
def _scored_versions(
    org, team, score_old: float, score_new: float, *, scored_by: str = "engineer", data_team=None
):
    from django.utils import timezone as tz

    from portfolio.registry import services as registry_services
    from portfolio.registry.models import Artifact, ModelVersion
    from training.models import EvalRun

    engineer = actor_for(org["engineer"])
    model = registry_services.create_model(actor=engineer, name="guarded", owner_team=team)
    artifact = Artifact.objects.create(
        id="e" * 64, store_uri="file:///x", size_bytes=1, file_count=0, files=[]
    )
    old, new = (
        ModelVersion.objects.create(model=model, number=n, source="local", artifact=artifact, status="ready")
        for n in (1, 2)
    )
    scorer = actor_for(org[scored_by])
    dataset = services.create_dataset(
        actor=scorer, owner_team=data_team or team, name="eval-set", kind="chat"
    )
    version, _ = upload(scorer, dataset, jsonl(*tickets(20)))
    for v, score in ((old, score_old), (new, score_new)):
        EvalRun.objects.create(
            version=v,
            dataset_version=version,
            status="succeeded",
            metrics={"accuracy": score},
            finished_at=tz.now(),
        )
    registry_services.promote(actor=engineer, version=old, alias="production")
    return old, new


def test_promotion_to_production_is_refused_when_the_candidate_scores_lower(org, team):
    from portfolio.errors import Conflict
    from portfolio.registry import services as registry_services

    _, new = _scored_versions(org, team, 0.9, 0.6)
    with pytest.raises(Conflict, match=r"scores below the current production guarded:v1 \(0.600 vs 0.900"):
        registry_services.promote(actor=actor_for(org["engineer"]), version=new, alias="production")


def test_another_teams_runs_on_its_own_data_neither_block_a_promotion_nor_name_its_dataset(
    org, team, other_team
):
    """Another team fine-tuning a shared base scores its versions on its private data: those runs are not
    the owner's yardstick, and a refusal naming them told the owner the other team's dataset names."""
    from portfolio.registry import services as registry_services

    _, new = _scored_versions(org, team, 0.9, 0.6, scored_by="outsider", data_team=other_team)
    promoted = registry_services.promote(actor=actor_for(org["engineer"]), version=new, alias="production")
    assert promoted.alias.version == new


def test_an_owner_may_force_a_lower_scoring_promotion_with_a_reason_kept_in_the_audit(org, team):
    from portfolio.audit.models import AuditEvent
    from portfolio.errors import Forbidden
    from portfolio.registry import services as registry_services

    _, new = _scored_versions(org, team, 0.9, 0.6)
    with pytest.raises(Forbidden):
        registry_services.promote(
            actor=actor_for(org["engineer"]), version=new, alias="production", force_reason="hotfix"
        )
    registry_services.promote(
        actor=actor_for(org["owner"]),
        version=new,
        alias="production",
        force_reason="latency regression in v1",
    )
    event = AuditEvent.objects.filter(action="model.promote").order_by("-sequence").first()
    assert event.after["forced"] == "latency regression in v1"


def test_a_better_scoring_candidate_is_promoted_without_ceremony(org, team):
    from portfolio.registry import services as registry_services
    from portfolio.registry.models import Alias

    _, new = _scored_versions(org, team, 0.6, 0.9)
    registry_services.promote(actor=actor_for(org["engineer"]), version=new, alias="production")
    assert Alias.objects.get(name="production").version == new


# --- Isolation: what a team's job uses is checked against the team, not only the person ------------
@pytest.fixture
def their_base(org, other_team, base):
    """A ready base version of the other team's own (team-visible) model."""
    return ready_base(
        actor_for(org["outsider"]), other_team, "contracts-base", base.artifact, source=base.source
    )


def start(actor, base_version, dataset_version, pool, **options):
    from training import finetune

    return finetune.start_job(
        actor=actor, base_version=base_version, dataset_version=dataset_version, pool=pool, **options
    )


def test_a_member_of_two_teams_cannot_fine_tune_the_other_teams_private_model_for_this_team(
    member_of_both, their_base, dataset_version, cpu_pool, enqueued
):
    from portfolio.registry import services as registry
    from portfolio.registry.choices import Visibility
    from training.models import FineTuneJob

    ours = registry.create_model(
        actor=member_of_both, name="support-router", owner_team=dataset_version.dataset.owner_team
    )
    with pytest.raises(
        Invalid, match=r"base_version: contracts-base:v1 is not shared with Support AI"
    ) as refused:
        start(member_of_both, their_base, dataset_version, cpu_pool, target_model=ours)
    assert refused.value.fields == {"base_version": ["Not shared with Support AI."]}
    assert not FineTuneJob.objects.exists() and not enqueued
    their_base.model.visibility = Visibility.ORGANISATION
    their_base.model.save(update_fields=["visibility"])
    job = start(member_of_both, their_base, dataset_version, cpu_pool, target_model=ours)
    assert (job.owner_team, job.base_version) == (dataset_version.dataset.owner_team, their_base)


def test_a_job_runs_only_on_a_pool_open_to_its_team_whoever_starts_it(
    org, member_of_both, other_team, base, dataset_version, enqueued
):
    from django.utils import timezone

    from serving.models import ComputePool, Node
    from training.models import FineTuneJob

    theirs_only = ComputePool.objects.create(name="contracts-cpu", kind="cpu")
    theirs_only.allowed_teams.set([other_team])
    Node.objects.create(
        name="contracts-node",
        pool=theirs_only,
        address="127.0.0.1",
        cpu_cores=4,
        memory_bytes=2**34,
        heartbeat_at=timezone.now(),
    )
    for actor in (member_of_both, actor_for(org["admin"])):
        with pytest.raises(Invalid, match=r"pool: contracts-cpu is not open to Support AI"):
            start(actor, base, dataset_version, theirs_only)
    assert not FineTuneJob.objects.exists() and not enqueued


def test_the_result_of_a_job_is_registered_under_a_model_of_its_team_only(
    org, member_of_both, other_team, base, dataset_version, cpu_pool, enqueued
):
    from portfolio.registry import services as registry

    theirs = registry.create_model(
        actor=actor_for(org["outsider"]), name="contracts-router", owner_team=other_team
    )
    with pytest.raises(Invalid, match=r"target_model: contracts-router belongs to another team") as refused:
        start(member_of_both, base, dataset_version, cpu_pool, target_model=theirs)
    assert refused.value.fields == {"target_model": ["Choose a model of Support AI."]}
    assert not enqueued
    assert start(member_of_both, base, dataset_version, cpu_pool).target_model == base.model


def test_a_dataset_is_measured_only_with_a_tokenizer_shared_with_its_team(
    member_of_both, chat_set, their_base
):
    with pytest.raises(Invalid, match=r"base_version: contracts-base:v1 is not shared with Support AI"):
        upload(member_of_both, chat_set, jsonl(*tickets(10)), base_version=their_base)
    assert not DatasetVersion.objects.exists()
