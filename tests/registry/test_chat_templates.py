"""Versions without a chat template: registration says so (version page, API, the import's last line,
audit), and an engineer gives one, either at import or as a new version derived from an existing one.
Supplied templates must compile in transformers' sandboxed Jinja environment, within a size bound.

Imports run the real import task; GGUF files are converted by the real converter process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.urls import reverse

from portfolio.audit.models import AuditEvent
from portfolio.errors import Conflict, Forbidden, Invalid, NotFound
from portfolio.registry import chat_templates, derived_versions, lineage, services
from portfolio.registry.artifacts import materialize_version
from portfolio.registry.choices import Source, VersionKind, VersionStatus
from portfolio.registry.models import ModelVersion
from tests.conftest import actor_for
from tests.registry.conftest import import_here, make_adapter_folder, make_model_folder
from tests.registry.gguf_files import BOS, PROMPT, PROMPT_IDS_WITH_PREFIX, write_tiny_gguf

pytestmark = pytest.mark.django_db

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
RENDERED = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="session")
def conversion_cache(tmp_path_factory) -> Path:
    # One conversion of the tiny GGUF for the whole run (the converter caches by content hash).
    return tmp_path_factory.mktemp("gguf-conversions")


@pytest.fixture(autouse=True)
def isolated_store(imports, settings, conversion_cache):
    settings.GGUF_CONVERSION_CACHE = conversion_cache


@pytest.fixture
def model(org, team):
    return services.create_model(actor=actor_for(org["engineer"]), name="gemma-like", owner_team=team)


def _import(org, model, source, ref, **options) -> ModelVersion:
    return import_here(actor_for(org["engineer"]), model, source, ref, **options)


@pytest.fixture
def gguf_file(settings) -> Path:
    """A GGUF like Gemma 3 270M's: BOS required, no chat template."""
    return write_tiny_gguf(settings.IMPORT_ROOTS[0] / "tiny.gguf", add_bos=True)


@pytest.fixture
def templateless(org, model, gguf_file) -> ModelVersion:
    version = _import(org, model, Source.GGUF, str(gguf_file))
    assert version.status == VersionStatus.READY, version.status_detail
    return version


def _folder_without_template(root: Path) -> Path:
    folder = make_model_folder(root)
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>"}))
    return folder


def _stored_json(version: ModelVersion, path: str) -> dict:
    return json.loads((materialize_version(version) / path).read_text())


def _blob_count(settings) -> int:
    return sum(1 for p in (Path(settings.ARTIFACT_ROOT) / "blobs").rglob("*") if p.is_file())


# --- Saying so -------------------------------------------------------------------------------------
def test_a_gguf_without_a_chat_template_imports_saying_so_on_the_page_the_api_and_the_import_line(
    org,
    templateless,
    client,
):
    assert templateless.has_chat_template is False
    assert "without a chat template: chat calls are refused" in templateless.progress_detail
    ready = AuditEvent.objects.get(action="model_version.ready", object_id=str(templateless.pk))
    assert ready.after["has_chat_template"] is False

    client.force_login(org["viewer"])
    body = client.get("/api/v1/models/gemma-like/versions/1").json()
    assert body["has_chat_template"] is False and "without a chat template" in body["progress_detail"]
    page = client.get(reverse("version-detail", args=["gemma-like", 1])).content.decode()
    assert "This version has no chat template." in page and "/v1/chat/completions" in page
    assert reverse("version-chat-template", args=["gemma-like", 1]) not in page, "a viewer gets no form"

    assert "no chat template" in client.get(reverse("model-detail", args=["gemma-like"])).content.decode()

    client.force_login(org["engineer"])
    page = client.get(reverse("version-detail", args=["gemma-like", 1])).content.decode()
    assert reverse("version-chat-template", args=["gemma-like", 1]) in page


# --- At import -------------------------------------------------------------------------------------
def test_a_template_given_at_import_goes_into_the_tokenizer_and_the_conversion_cache_stays_as_it_was(
    org,
    model,
    gguf_file,
    settings,
):
    version = _import(org, model, Source.GGUF, str(gguf_file), chat_template=CHATML)
    assert version.status == VersionStatus.READY, version.status_detail
    assert version.has_chat_template and version.progress_detail == "ready"

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(materialize_version(version))
    messages = [{"role": "user", "content": "hi"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == RENDERED
    assert tokenizer(PROMPT)["input_ids"] == [BOS, *PROMPT_IDS_WITH_PREFIX], "the GGUF's BOS is kept"
    cached = [
        json.loads(p.read_text()) for p in Path(settings.GGUF_CONVERSION_CACHE).rglob("tokenizer_config.json")
    ]
    assert cached and all("chat_template" not in config for config in cached), "the cache was written through"
    # The audit row identifies the template; its text is in the version's files.
    event = AuditEvent.objects.get(action="model_version.import", object_id=str(version.pk))
    assert event.after["options"]["chat_template"] == chat_templates.fingerprint(CHATML)


def test_a_template_given_for_a_server_folder_replaces_the_files_one_and_leaves_the_folder_untouched(
    org,
    model,
    settings,
):
    folder = make_model_folder(settings.IMPORT_ROOTS[0] / "tiny")
    (folder / "chat_template.jinja").write_text("{{ 'the old one' }}")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    version = _import(org, model, Source.LOCAL, str(folder), chat_template=CHATML)
    assert version.status == VersionStatus.READY, version.status_detail
    assert _stored_json(version, "tokenizer_config.json")["chat_template"] == CHATML
    # transformers prefers chat_template.jinja over tokenizer_config.json: it must not survive.
    assert "chat_template.jinja" not in {f["path"] for f in version.artifact.files}
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_an_adapter_import_cannot_bring_its_own_template(org, model, settings):
    base = _import(org, model, Source.LOCAL, str(make_model_folder(settings.IMPORT_ROOTS[0] / "base")))
    adapter = make_adapter_folder(settings.IMPORT_ROOTS[0] / "adapter")
    with pytest.raises(Invalid, match="base version's tokenizer"):
        services.start_import(
            actor=actor_for(org["engineer"]),
            model=model,
            source=Source.LOCAL,
            ref=str(adapter),
            base_version=base,
            chat_template=CHATML,
            enqueue=False,
        )
    assert ModelVersion.objects.count() == 1


# --- As a derived version --------------------------------------------------------------------------
def test_a_template_given_later_makes_a_derived_version_sharing_the_weights(org, templateless, settings):
    weights_blobs = _blob_count(settings)
    derived = derived_versions.set_chat_template(
        actor=actor_for(org["engineer"]), version=templateless, chat_template=CHATML
    )
    assert (derived.number, derived.status, derived.kind) == (2, VersionStatus.READY, VersionKind.BASE)
    assert (derived.source, derived.parent_version) == (Source.DERIVED, templateless)
    assert derived.has_chat_template and derived.architecture == templateless.architecture
    assert derived.parameter_count == templateless.parameter_count

    old = {f["path"]: f["sha256"] for f in templateless.artifact.files}
    new = {f["path"]: f["sha256"] for f in derived.artifact.files}
    assert set(old) == set(new)
    assert [path for path in old if old[path] != new[path]] == ["tokenizer_config.json"]
    assert _blob_count(settings) == weights_blobs + 1, "only the rewritten config is stored anew"

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(materialize_version(derived))
    assert (
        tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
        )
        == RENDERED
    )
    assert tokenizer(PROMPT)["input_ids"] == [BOS, *PROMPT_IDS_WITH_PREFIX]

    templateless.refresh_from_db()
    assert templateless.has_chat_template is False and templateless.artifact_id != derived.artifact_id
    event = AuditEvent.objects.get(action="model_version.chat_template")
    assert event.object_id == str(derived.pk) and event.actor_user_id == org["engineer"].pk
    assert event.before == {"version": "gemma-like:v1", "has_chat_template": False}
    assert event.after["derived_from"] == "gemma-like:v1"
    assert event.after["chat_template"] == chat_templates.fingerprint(CHATML)
    _, edges = lineage.graph_for(templateless.model, ModelVersion.objects.all())
    assert [(e.source, e.target, e.relation) for e in edges] == [
        (f"v{derived.pk}", f"v{templateless.pk}", "derived from")
    ]


def test_a_template_replaces_one_the_version_has_and_the_old_jinja_file_goes(org, model, settings):
    folder = make_model_folder(settings.IMPORT_ROOTS[0] / "tiny")
    (folder / "chat_template.jinja").write_text("{{ 'the old one' }}")
    version = _import(org, model, Source.LOCAL, str(folder))
    derived = derived_versions.set_chat_template(
        actor=actor_for(org["owner"]), version=version, chat_template=CHATML
    )
    paths = {f["path"] for f in derived.artifact.files}
    assert "chat_template.jinja" not in paths and "chat_template.jinja" in {
        f["path"] for f in version.artifact.files
    }
    assert _stored_json(derived, "tokenizer_config.json")["chat_template"] == CHATML


@pytest.mark.parametrize("when", ["at import", "later"])
def test_named_templates_and_a_processors_template_go_with_the_old_one(org, model, settings, when):
    """transformers reads ``additional_chat_templates/*.jinja`` into a set of named templates that replaced
    the one given (no default among them: every chat call failed, or a tool call took the old ``tool_use``),
    and a vision model's processor reads ``chat_template.json`` before the tokenizer's."""
    folder = make_model_folder(settings.IMPORT_ROOTS[0] / "tiny")
    (folder / "additional_chat_templates").mkdir()
    (folder / "additional_chat_templates" / "tool_use.jinja").write_text("{{ 'the old tool use' }}")
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": "{{ 'the old processor' }}"}))
    if when == "at import":
        version = _import(org, model, Source.LOCAL, str(folder), chat_template=CHATML)
    else:
        version = derived_versions.set_chat_template(
            actor=actor_for(org["owner"]),
            version=_import(org, model, Source.LOCAL, str(folder)),
            chat_template=CHATML,
        )
    assert version.status == VersionStatus.READY, version.status_detail
    paths = {f["path"] for f in version.artifact.files}
    assert not {"chat_template.json", "additional_chat_templates/tool_use.jinja"} & paths
    assert _stored_json(version, "tokenizer_config.json")["chat_template"] == CHATML
    assert (folder / "additional_chat_templates" / "tool_use.jinja").exists()  # the folder is left as it was


def test_only_owners_and_engineers_give_a_template_others_are_refused(org, model, settings, client):
    version = _import(org, model, Source.LOCAL, str(_folder_without_template(settings.IMPORT_ROOTS[0] / "t")))
    url = "/api/v1/models/gemma-like/versions/1/chat-template"
    expected = {"owner": 201, "engineer": 201, "developer": 403, "viewer": 403, "outsider": 404}
    for role, status in expected.items():
        client.force_login(org[role])
        response = client.post(url, {"chat_template": CHATML}, content_type="application/json")
        assert response.status_code == status, (role, response.content)
        if status != 201:
            assert response.json()["error"]["code"] in ("forbidden", "not_found")
    assert sorted(version.model.versions.values_list("number", flat=True)) == [1, 2, 3]
    with pytest.raises(NotFound):
        derived_versions.set_chat_template(
            actor=actor_for(org["outsider"]), version=version, chat_template=CHATML
        )
    with pytest.raises(Forbidden):
        derived_versions.set_chat_template(
            actor=actor_for(org["developer"]), version=version, chat_template=CHATML
        )


@pytest.mark.parametrize(
    ("template", "status", "says"),
    [
        ("{% for m in messages %}{{ m.content }}", 400, "Not a valid Jinja template"),
        ("{{ messages | no_such_filter }}", 400, "no_such_filter"),
        ("{{ messages }\n", 400, "line 1"),
        ("é" * 40_000, 400, f"At most {chat_templates.MAX_CHAT_TEMPLATE_BYTES} bytes"),
        ("x" * (chat_templates.MAX_CHAT_TEMPLATE_BYTES + 1), 422, "chat_template"),
        ("{{ messages }}\x00", 400, "NUL"),
        ("{{ messages }}\ud800", 422, "chat_template"),
        ("   ", 400, "Give the template"),
    ],
    ids=[
        "unclosed-block",
        "unknown-filter",
        "syntax",
        "too-many-bytes",
        "too-long",
        "nul",
        "lone-surrogate",
        "blank",
    ],
)
def test_a_template_engines_cannot_compile_is_refused_and_nothing_is_made(
    org,
    model,
    settings,
    client,
    template,
    status,
    says,
):
    _import(org, model, Source.LOCAL, str(_folder_without_template(settings.IMPORT_ROOTS[0] / "t")))
    blobs = _blob_count(settings)
    client.force_login(org["engineer"])
    response = client.post(
        "/api/v1/models/gemma-like/versions/1/chat-template",
        {"chat_template": template},
        content_type="application/json",
    )
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert says in error["message"] and "chat_template" in error["fields"] and error["request_id"]
    assert ModelVersion.objects.count() == 1 and _blob_count(settings) == blobs
    if not template.strip():
        return  # at import the template is optional: blank means none
    response = client.post(
        "/api/v1/models/gemma-like/imports",
        {"source": "local", "ref": str(settings.IMPORT_ROOTS[0] / "t"), "chat_template": template},
        content_type="application/json",
    )
    assert response.status_code == status and ModelVersion.objects.count() == 1


@pytest.mark.parametrize(
    "template",
    [
        "{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}",
        "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}{{ m | tojson }}{% endfor %}",
        "{{ raise_exception('system messages are not supported') if messages[0].role == 'system' }}",
    ],
    ids=["generation-block", "loop-controls", "raise-exception"],
)
def test_templates_using_what_transformers_adds_to_jinja_are_accepted(template):
    assert chat_templates.validate(template) == template


def test_text_no_file_or_database_can_hold_is_refused_before_the_api_schema_too():
    with pytest.raises(Invalid, match="not valid Unicode"):
        chat_templates.validate("{{ messages }}\ud800")


def test_an_adapter_has_a_chat_template_exactly_when_its_base_has_one(org, model, settings):
    with_template = _import(org, model, Source.LOCAL, str(make_model_folder(settings.IMPORT_ROOTS[0] / "a")))
    without = _import(org, model, Source.LOCAL, str(_folder_without_template(settings.IMPORT_ROOTS[0] / "b")))
    adapter_folder = make_adapter_folder(settings.IMPORT_ROOTS[0] / "adapter")  # no tokenizer files at all
    on_templated = _import(org, model, Source.LOCAL, str(adapter_folder), base_version=with_template)
    on_templateless = _import(org, model, Source.LOCAL, str(adapter_folder), base_version=without)
    assert (on_templated.status, on_templateless.status) == (VersionStatus.READY, VersionStatus.READY)
    assert (on_templated.has_chat_template, on_templateless.has_chat_template) == (True, False)
    with pytest.raises(Invalid, match="set the template on the base version"):
        derived_versions.set_chat_template(
            actor=actor_for(org["engineer"]), version=on_templateless, chat_template=CHATML
        )


def test_an_archived_version_gets_no_derived_version(org, model, settings):
    version = _import(org, model, Source.LOCAL, str(_folder_without_template(settings.IMPORT_ROOTS[0] / "t")))
    services.archive_version(actor=actor_for(org["engineer"]), version=version)
    with pytest.raises(Conflict, match="archived"):
        derived_versions.set_chat_template(
            actor=actor_for(org["engineer"]), version=version, chat_template=CHATML
        )


def test_a_template_whose_version_was_archived_meanwhile_leaves_nothing_stored(
    org, model, settings, monkeypatch
):
    """The version archived between the check and the registration's lock: the rewritten tokenizer file and
    the new manifest stayed in the store, referred to by nothing, and no sweep knew of them."""
    from portfolio.registry.models import PendingWrite

    version = _import(org, model, Source.LOCAL, str(_folder_without_template(settings.IMPORT_ROOTS[0] / "t")))
    blobs = _blob_count(settings)
    derive = chat_templates.derive_manifest

    def archived_meanwhile(*args, **kwargs):
        derived = derive(*args, **kwargs)
        services.archive_version(actor=actor_for(org["engineer"]), version=version)
        return derived

    monkeypatch.setattr(chat_templates, "derive_manifest", archived_meanwhile)
    with pytest.raises(Conflict, match="archived"):
        derived_versions.set_chat_template(
            actor=actor_for(org["engineer"]), version=version, chat_template=CHATML
        )
    assert _blob_count(settings) == blobs, "the rewritten tokenizer file is deleted"
    assert not PendingWrite.objects.exists()


# --- The version page --------------------------------------------------------------------------------
def test_the_version_pages_form_makes_the_derived_version_or_says_what_is_wrong(org, model, settings, client):
    _import(org, model, Source.LOCAL, str(_folder_without_template(settings.IMPORT_ROOTS[0] / "t")))
    url = reverse("version-chat-template", args=["gemma-like", 1])
    client.force_login(org["viewer"])
    assert client.post(url, {"chat_template": CHATML}).status_code == 403
    client.force_login(org["outsider"])
    assert client.post(url, {"chat_template": CHATML}).status_code == 404

    client.force_login(org["engineer"])
    response = client.post(url, {"chat_template": "{% if %}"})
    assert response.status_code == 400 and "Not a valid Jinja template" in response.content.decode()
    assert ModelVersion.objects.count() == 1
    response = client.post(url, {"chat_template": CHATML}, follow=True)
    assert response.redirect_chain[-1][0] == reverse("version-detail", args=["gemma-like", 2])
    assert "gemma-like:v2 has the same weights as gemma-like:v1" in response.content.decode()


def test_the_import_form_passes_the_template_on(org, model, settings, client):
    folder = _folder_without_template(settings.IMPORT_ROOTS[0] / "t")
    client.force_login(org["engineer"])
    response = client.post(
        reverse("model-import", args=["gemma-like"]),
        {"source": "local", "ref": str(folder), "chat_template": CHATML},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    version = ModelVersion.objects.get()
    assert version.import_options["chat_template"] == CHATML
