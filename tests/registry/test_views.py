"""The registry pages: a catalogue filtered to what the viewer may see, imports with live progress,
promotion with a confirmation, safe model cards, lineage and comparison."""

from __future__ import annotations

import io
import re
import zipfile

import pytest
from django.urls import reverse

from portfolio.audit.models import AuditEvent
from portfolio.errors import Invalid
from portfolio.registry import importing, services
from portfolio.registry.choices import Source, Task, VersionKind, VersionStatus, Visibility
from portfolio.registry.models import Alias, Model, ModelVersion
from portfolio.registry.stores import default_store
from portfolio.registry.tasks import import_version
from portfolio.templatetags.formatting import human_count
from tests.conftest import actor_for
from tests.registry.conftest import import_here, make_adapter_folder, make_model_folder

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("imports")]

HTMX = {"HTTP_HX_REQUEST": "true"}


def _import(actor, model, folder) -> ModelVersion:
    return import_here(actor, model, Source.LOCAL, str(folder))


@pytest.fixture
def router(org, team, settings) -> Model:
    """A team-visible model with two ready versions."""
    engineer = actor_for(org["engineer"])
    model = services.create_model(
        actor=engineer,
        name="router",
        owner_team=team,
        task=Task.CLASSIFICATION,
        tags=["support"],
        description="Routes tickets to the right queue.",
    )
    _import(engineer, model, make_model_folder(settings.IMPORT_ROOTS[0] / "tiny"))
    _import(engineer, model, make_model_folder(settings.IMPORT_ROOTS[0] / "wider", hidden=16))
    return model


@pytest.fixture
def public_model(org, other_team) -> Model:
    return services.create_model(
        actor=actor_for(org["outsider"]),
        name="clause-extractor",
        owner_team=other_team,
        task=Task.EXTRACTION,
        visibility=Visibility.ORGANISATION,
    )


def _text(response) -> str:
    return response.content.decode()


# --- The catalogue ---------------------------------------------------------------------------------
def test_the_list_shows_only_models_the_viewer_may_see(signed_in, org, router, public_model):
    page = _text(signed_in(org["outsider"]).get(reverse("model-list")))
    assert "clause-extractor" in page
    assert "router" not in page and "Routes tickets" not in page
    assert signed_in(org["outsider"]).get(reverse("model-detail", args=["router"])).status_code == 404
    assert signed_in(org["outsider"]).get(reverse("version-detail", args=["router", 1])).status_code == 404


def test_the_list_filters_by_search_task_team_and_alias(signed_in, org, router, public_model):
    services.promote(actor=actor_for(org["owner"]), version=router.versions.get(number=2), alias="production")
    client = signed_in(org["admin"])

    def names(**query) -> set[str]:
        page = _text(client.get(reverse("model-list"), query))
        return set(re.findall(r'<a href="/models/([a-z0-9._-]+)/"><strong>', page))

    assert names() == {"router", "clause-extractor"}
    assert names(q="tickets") == {"router"}  # description
    assert names(q="support") == {"router"}  # tag
    assert names(task="extraction") == {"clause-extractor"}
    assert names(team="contracts") == {"clause-extractor"}
    assert names(alias="production") == {"router"}
    assert names(q="nothing-like-this") == set()


def test_live_filtering_answers_htmx_with_the_results_table_only(signed_in, org, router):
    response = signed_in(org["viewer"]).get(reverse("model-list"), {"q": "router"}, **HTMX)
    page = _text(response)
    assert 'id="model-results"' in page
    assert "<html" not in page and "router" in page
    assert "HX-Request" in response["Vary"]


def test_the_list_shows_latest_version_and_aliases(signed_in, org, router):
    services.promote(actor=actor_for(org["owner"]), version=router.versions.get(number=1), alias="production")
    page = _text(signed_in(org["viewer"]).get(reverse("model-list")))
    assert 'href="/models/router/v2/"' in page
    assert "production → v1" in page


def test_the_list_runs_a_fixed_number_of_queries(signed_in, org, team, router, django_assert_max_num_queries):
    engineer = actor_for(org["engineer"])
    for n in range(5):
        model = services.create_model(actor=engineer, name=f"model-{n}", owner_team=team)
        services.start_import(
            actor=engineer, model=model, source=Source.HUB, ref="acme/tiny@main", enqueue=False
        )
    client = signed_in(org["viewer"])
    with django_assert_max_num_queries(14):
        response = client.get(reverse("model-list"))
    assert response.status_code == 200 and "model-4" in _text(response)


def test_register_model_is_offered_only_to_those_who_may(signed_in, org, router):
    assert 'href="/models/new/"' in _text(signed_in(org["engineer"]).get(reverse("model-list")))
    assert 'href="/models/new/"' not in _text(signed_in(org["viewer"]).get(reverse("model-list")))


# --- Registering and editing -----------------------------------------------------------------------
def test_an_engineer_registers_a_model_through_the_form(signed_in, org, team):
    client = signed_in(org["engineer"])
    response = client.post(
        reverse("model-create"),
        {
            "name": "Summarizer",
            "owner_team": team.pk,
            "task": "summarization",
            "visibility": "department",
            "tags": "support, Summaries,",
            "license": "Apache-2.0",
            "description": "Short summaries.",
        },
    )
    assert response.status_code == 302 and response["Location"] == "/models/summarizer/"
    model = Model.objects.get(name="summarizer")
    assert model.tags == ["summaries", "support"] and model.visibility == Visibility.DEPARTMENT
    event = AuditEvent.objects.get(action="model.create", object_id=str(model.pk))
    assert event.actor_label == "engineer"


def test_the_team_choice_lists_only_teams_where_the_actor_may_register(signed_in, org, team, other_team):
    page = _text(signed_in(org["engineer"]).get(reverse("model-create")))
    assert f'<option value="{team.pk}"' in page and other_team.name not in page


def test_registering_in_a_team_the_actor_cannot_see_is_404(signed_in, org, other_team):
    response = signed_in(org["engineer"]).post(
        reverse("model-create"), {"name": "x-model", "owner_team": other_team.pk}
    )
    assert response.status_code == 404
    assert not Model.objects.filter(name="x-model").exists()


def test_a_taken_name_is_a_form_error(signed_in, org, team, router):
    response = signed_in(org["engineer"]).post(
        reverse("model-create"),
        {"name": "router", "owner_team": team.pk, "task": "chat", "visibility": "team"},
    )
    assert response.status_code == 200
    assert "already exists" in _text(response)


def test_editing_a_model_saves_through_the_service(signed_in, org, router):
    response = signed_in(org["owner"]).post(
        reverse("model-edit", args=["router"]),
        {
            "task": "chat",
            "visibility": "organisation",
            "tags": "a, b",
            "license": "MIT",
            "description": "New.",
        },
    )
    assert response.status_code == 302
    router.refresh_from_db()
    assert (router.visibility, router.tags, router.license) == ("organisation", ["a", "b"], "MIT")
    assert AuditEvent.objects.filter(action="model.update", object_id=str(router.pk)).exists()


# --- Imports and uploads ---------------------------------------------------------------------------
def test_an_import_from_outside_the_import_roots_shows_the_error_and_creates_nothing(signed_in, org, router):
    before = router.versions.count()
    response = signed_in(org["engineer"]).post(
        reverse("model-import", args=["router"]), {"source": "local", "ref": "/etc"}
    )
    assert response.status_code == 200
    page = _text(response)
    assert "outside the import folders" in page
    assert 'id="id_ref"' in page and 'aria-invalid="true"' in page  # the message sits at the reference field
    assert router.versions.count() == before


def test_an_import_is_queued_on_commit_and_opens_the_version_page(
    signed_in, org, router, settings, django_capture_on_commit_callbacks
):
    folder = make_model_folder(settings.IMPORT_ROOTS[0] / "third")
    with django_capture_on_commit_callbacks() as callbacks:
        response = signed_in(org["engineer"]).post(
            reverse("model-import", args=["router"]), {"source": "local", "ref": str(folder)}
        )
    assert response.status_code == 302 and response["Location"] == "/models/router/v3/"
    assert len(callbacks) == 1
    assert router.versions.get(number=3).status == VersionStatus.IMPORTING


def test_only_platform_admins_are_offered_to_lift_the_safety_checks(signed_in, org, router):
    url = reverse("model-import", args=["router"])
    assert "allow_pickle" not in _text(signed_in(org["engineer"]).get(url))
    assert "allow_pickle" in _text(signed_in(org["admin"]).get(url))
    # Posted anyway by a non-admin: the field does not exist for them, so nothing is lifted.
    signed_in(org["engineer"]).post(url, {"source": "hub", "ref": "acme/tiny@main", "allow_pickle": "on"})
    version = router.versions.order_by("-number").first()
    assert version.import_options["allow_pickle"] is False


def _adapter_zip(tmp_path) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in make_adapter_folder(tmp_path / "adapter").iterdir():
            archive.write(path, path.name)
    upload = io.BytesIO(buffer.getvalue())
    upload.name = "adapter.zip"
    return upload


def test_an_adapter_uploaded_through_the_form_appears_in_the_lineage(signed_in, org, router, tmp_path):
    base = router.versions.get(number=1)
    client = signed_in(org["engineer"])
    response = client.post(
        reverse("adapter-upload", args=["router"]), {"base_version": base.pk, "file": _adapter_zip(tmp_path)}
    )
    assert response.status_code == 302 and response["Location"] == "/models/router/v3/"
    adapter = router.versions.get(number=3)
    import_version(adapter.pk)
    adapter.refresh_from_db()
    assert adapter.status == VersionStatus.READY and adapter.kind == VersionKind.ADAPTER
    page = _text(client.get(reverse("model-detail", args=["router"])))
    svg = page[page.index("<svg") : page.index("</svg>")]
    assert "router:v3" in svg and "adapter of" in svg and 'href="/models/router/v1/"' in svg


def test_a_refused_upload_leaves_no_file_behind(signed_in, org, router, tmp_path, settings, monkeypatch):
    def refuse(**kwargs):
        raise Invalid("base_version: An adapter's base must be a ready base version.")

    monkeypatch.setattr(services, "start_import", refuse)
    response = signed_in(org["engineer"]).post(
        reverse("adapter-upload", args=["router"]),
        {"base_version": router.versions.get(number=1).pk, "file": _adapter_zip(tmp_path)},
    )
    assert response.status_code == 200 and "ready base version" in _text(response)
    assert list((settings.DATA_DIR / "uploads").iterdir()) == []


# --- Progress --------------------------------------------------------------------------------------
def test_the_progress_fragment_polls_while_importing_and_stops_when_ready(signed_in, org, router, settings):
    folder = make_model_folder(settings.IMPORT_ROOTS[0] / "next")
    version = services.start_import(
        actor=actor_for(org["engineer"]), model=router, source=Source.LOCAL, ref=str(folder), enqueue=False
    )
    importing.report_progress(version.pk, 40, "storing 1 / 2 MiB")
    client = signed_in(org["viewer"])
    url = reverse("version-progress", args=["router", version.number])

    page = _text(client.get(reverse("version-detail", args=["router", version.number])))
    assert f'hx-get="{url}"' in page and 'hx-trigger="every 1s"' in page

    response = client.get(url, **HTMX)
    fragment = _text(response)
    assert (
        'hx-trigger="every 1s"' in fragment and 'value="40"' in fragment and "storing 1 / 2 MiB" in fragment
    )
    assert "<progress" in fragment and "aria-label=" in fragment
    assert "HX-Refresh" not in response

    import_version(version.pk)
    response = client.get(url, **HTMX)
    assert "hx-trigger" not in _text(response)
    assert response["HX-Refresh"] == "true"
    assert "hx-trigger" not in _text(client.get(reverse("version-detail", args=["router", version.number])))


def test_a_failed_import_shows_its_reason_in_a_callout(signed_in, org, router):
    version = services.start_import(
        actor=actor_for(org["engineer"]), model=router, source=Source.HUB, ref="acme/tiny@main", enqueue=False
    )
    importing.fail_import(version.pk, "Repository acme/tiny not found on the mirror.")
    page = _text(signed_in(org["viewer"]).get(reverse("version-detail", args=["router", version.number])))
    assert 'class="alert alert--error callout"' in page and "Repository acme/tiny not found" in page


# --- Promotion, archive, verification --------------------------------------------------------------
def test_promoting_through_the_form_moves_the_alias_after_a_confirmation(signed_in, org, router):
    client = signed_in(org["engineer"])
    response = client.post(reverse("version-promote", args=["router", 1]), {"alias": "production"})
    assert response.status_code == 302
    assert Alias.objects.get(model=router, name="production").version.number == 1

    # Moving it away from v1 first says which version holds it.
    response = client.post(reverse("version-promote", args=["router", 2]), {"alias": "production"})
    assert response.status_code == 200
    assert "currently points to" in _text(response) and "router:v1" in _text(response)
    assert Alias.objects.get(model=router, name="production").version.number == 1

    response = client.post(
        reverse("version-promote", args=["router", 2]), {"alias": "production", "confirm": "on"}
    )
    assert response.status_code == 302
    assert Alias.objects.get(model=router, name="production").version.number == 2
    event = AuditEvent.objects.filter(action="model.promote").order_by("-sequence").first()
    assert event.before == {"alias": "production", "version": "router:v1"}
    page = _text(client.get(reverse("model-detail", args=["router"])))
    assert "before: router:v1" in page


def test_a_viewer_gets_403_on_promote(signed_in, org, router):
    response = signed_in(org["viewer"]).post(
        reverse("version-promote", args=["router", 1]), {"alias": "production"}
    )
    assert response.status_code == 403
    assert not Alias.objects.filter(model=router).exists()


def test_an_invalid_alias_is_a_form_error(signed_in, org, router):
    response = signed_in(org["engineer"]).post(
        reverse("version-promote", args=["router", 1]), {"alias": "Prod Uction"}
    )
    assert response.status_code == 200
    assert "lower-case letters" in _text(response)


def test_archiving_a_version_holding_an_alias_is_refused_with_the_reason(signed_in, org, router):
    services.promote(actor=actor_for(org["owner"]), version=router.versions.get(number=1), alias="production")
    client = signed_in(org["engineer"])
    response = client.post(reverse("version-archive", args=["router", 1]), follow=True)
    assert "cannot be archived" in _text(response) and "move the alias first" in _text(response)
    assert router.versions.get(number=1).status == VersionStatus.READY
    client.post(reverse("version-archive", args=["router", 2]))
    assert router.versions.get(number=2).status == VersionStatus.ARCHIVED


def test_verify_now_finds_a_corrupted_file(signed_in, org, router):
    version = router.versions.get(number=1)
    blob = default_store().blob_path(version.artifact.manifest().get("config.json").sha256)
    blob.chmod(0o644)
    blob.write_bytes(b"{}")
    response = signed_in(org["engineer"]).post(reverse("version-verify", args=["router", 1]), follow=True)
    assert "do not match their checksums" in _text(response) and "config.json" in _text(response)
    version.artifact.refresh_from_db()
    assert version.artifact.health == "corrupt"
    assert signed_in(org["viewer"]).post(reverse("version-verify", args=["router", 1])).status_code == 403


# --- What the pages show ---------------------------------------------------------------------------
def test_a_model_card_with_a_script_renders_escaped(signed_in, org, router):
    page = _text(signed_in(org["viewer"]).get(reverse("version-detail", args=["router", 1])))
    assert "<script>" not in page.split('<div class="model-card">', 1)[1]
    assert "&lt;script&gt;" in page
    page = _text(signed_in(org["viewer"]).get(reverse("model-detail", args=["router"])))
    assert "<script>alert" not in page


def test_a_model_card_image_is_shown_as_its_alt_text_and_never_fetched(signed_in, org, router):
    # An image of this site's own URL would be fetched with the viewer's session on page load.
    router.versions.update(
        model_card="Eval ![the chart](/audit/export/?format=csv) and ![bill](https://x.example/b.png)."
    )
    client = signed_in(org["viewer"])
    for url in (reverse("version-detail", args=["router", 1]), reverse("model-detail", args=["router"])):
        card = _text(client.get(url)).split('<div class="model-card">', 1)[1].split("</div>", 1)[0]
        assert "<img" not in card and "/audit/export" not in card and "x.example" not in card
        assert "Eval the chart and bill." in card


def test_the_version_page_lists_files_with_checksums_and_download_links(signed_in, org, router):
    version = router.versions.get(number=1)
    entry = version.artifact.manifest().get("config.json")
    client = signed_in(org["viewer"])
    page = _text(client.get(reverse("version-detail", args=["router", 1])))
    assert f'title="{entry.sha256}"' in page and f"{entry.sha256[:12]}…" in page
    href = "/api/v1/models/router/versions/1/files/config.json"
    assert f'href="{href}"' in page
    assert client.get(href).status_code == 200


def test_a_file_stored_with_a_newline_in_its_name_is_listed_without_a_link(signed_in, org, router):
    """Stored before such names were refused: the page was a 500 for every reader (no URL holds it)."""
    artifact = router.versions.get(number=1).artifact
    artifact.files = [*artifact.files, {"path": "notes\n.txt", "size": 5, "sha256": "0" * 64}]
    artifact.save(update_fields=["files"])
    response = signed_in(org["viewer"]).get(reverse("version-detail", args=["router", 1]))
    assert response.status_code == 200
    assert 'href="/api/v1/models/router/versions/1/files/config.json"' in _text(response)


def test_parameter_counts_read_like_people_quote_them(signed_in, org, router):
    page = _text(signed_in(org["viewer"]).get(reverse("model-detail", args=["router"])))
    assert 'title="320 parameters">320<' in page  # v1: 32x8 + 8x8
    assert human_count(134_515_008) == "134.5M" and human_count(1_711_376_384) == "1.7B"
    assert human_count(999_960) == "1.0M" and human_count(999_400) == "999.4K" and human_count(None) == "—"


def test_compare_shows_both_versions_and_marks_the_differences(signed_in, org, router):
    response = signed_in(org["viewer"]).get(reverse("model-compare", args=["router"]), {"a": 1, "b": 2})
    page = _text(response)
    assert response.status_code == 200
    assert 'href="/models/router/v1/"' in page and 'href="/models/router/v2/"' in page
    assert re.search(r'<tr class="differs">\s*<th scope="row">Parameters', page)
    assert not re.search(r'<tr class="differs">\s*<th scope="row">Architecture', page)


def test_compare_does_not_name_a_base_the_viewer_may_not_see(signed_in, org, router, public_model, settings):
    # Adapters shared with the whole organisation, on a base kept to its own team.
    outsider = actor_for(org["outsider"])
    for folder in ("one", "two"):
        _import(outsider, public_model, make_model_folder(settings.IMPORT_ROOTS[0] / folder))
    public_model.versions.update(kind=VersionKind.ADAPTER, base_version=router.versions.get(number=1))
    compare = reverse("model-compare", args=["clause-extractor"])
    page = _text(signed_in(org["outsider"]).get(compare, {"a": 1, "b": 2}))
    assert "router" not in page and "a version you cannot see" in page
    page = _text(signed_in(org["viewer"]).get(compare, {"a": 1, "b": 2}))
    assert "router:v1" in page


def test_compare_shows_how_a_metric_moved(signed_in, org, router):
    ModelVersion.objects.filter(model=router, number=1).update(metrics={"accuracy": 0.871})
    ModelVersion.objects.filter(model=router, number=2).update(metrics={"accuracy": 0.903})
    # No versions chosen: the two newest ready ones, v1 and v2.
    page = _text(signed_in(org["viewer"]).get(reverse("model-compare", args=["router"])))
    assert "0.871" in page and "0.903" in page and "(+0.032)" in page


def test_compare_of_a_version_of_another_model_is_not_possible(signed_in, org, router):
    response = signed_in(org["viewer"]).get(reverse("model-compare", args=["router"]), {"a": 1, "b": 99})
    assert response.status_code == 200 and "Select a valid choice" in _text(response)


def test_a_base_with_many_adapters_lists_some_and_says_how_many_drawing_at_most_40(
    signed_in, org, router, public_model
):
    """Every adapter of every model on a base was read and drawn on each of its pages: an organisation-wide
    base with hundreds of adapters made pages of hundreds of links and a graph nobody could read."""
    from portfolio.registry import lineage

    base = router.versions.get(number=1)
    ModelVersion.objects.bulk_create(
        ModelVersion(model=public_model, number=n, kind=VersionKind.ADAPTER, base_version=base,
                     source=Source.LOCAL, status=VersionStatus.READY)
        for n in range(1, 61)
    )  # fmt: skip
    html = _text(signed_in(org["engineer"]).get(reverse("version-detail", args=["router", 1])))
    adapters = html[html.index("<dt>Adapters</dt>") :].split("</dd>")[0]
    assert adapters.count("clause-extractor:v") == 50 and "60 in all" in adapters
    nodes, edges = lineage.graph_for(router, ModelVersion.objects.all())
    assert sum(1 for edge in edges if edge.relation == "adapter of") == 40
