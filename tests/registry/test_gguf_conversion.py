"""A GGUF converts to a folder whose tokenizer is the one the file describes: a prompt encodes to exactly
the ids llama.cpp would give it (BOS and EOS as the file says, the space prefix as it says), generation
stops on every end-of-generation token it names, and its chat templates, named ones too, come along.

The tiny GGUFs (tests/registry/gguf_files.py) have a vocabulary small enough that the expected ids are
worked out by hand; the real Gemma 3 270M GGUF, whose missing BOS made its completions degenerate,
is checked against its own GGUF-loaded tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from portfolio.registry.gguf_convert import convert, convert_tokenizer
from tests.registry.gemma import fetch_gemma_gguf
from tests.registry.gguf_files import (
    BOS,
    EOS,
    EOT,
    PAD,
    PROMPT,
    PROMPT_IDS_WITH_PREFIX,
    PROMPT_IDS_WITHOUT_PREFIX,
    UNK,
    write_tiny_gguf,
)


def _tokenizer(folder: Path, **kwargs):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), **kwargs)


def _converted_tokenizer(tmp_path: Path, **flags):
    gguf = write_tiny_gguf(tmp_path / "source" / "tiny.gguf", **flags)
    convert_tokenizer(gguf, tmp_path / "converted")
    return gguf, _tokenizer(tmp_path / "converted")


@pytest.mark.parametrize(
    ("add_bos", "add_eos", "add_space_prefix"),
    [(True, False, None), (True, True, True), (True, False, False), (False, False, None)],
)
def test_a_prompt_encodes_to_the_ids_the_gguf_says(tmp_path, add_bos, add_eos, add_space_prefix):
    _, tokenizer = _converted_tokenizer(
        tmp_path, add_bos=add_bos, add_eos=add_eos, add_space_prefix=add_space_prefix
    )
    text = PROMPT_IDS_WITHOUT_PREFIX if add_space_prefix is False else PROMPT_IDS_WITH_PREFIX
    expected = [BOS] * add_bos + text + [EOS] * add_eos
    ids = tokenizer(PROMPT)["input_ids"]
    assert ids == expected, tokenizer.convert_ids_to_tokens(ids)
    assert tokenizer.decode(ids, skip_special_tokens=True) == PROMPT


def test_the_converted_tokenizer_gives_the_gguf_tokenizers_ids_with_its_bos(tmp_path):
    import gguf as gguf_package

    source, converted = _converted_tokenizer(tmp_path, add_bos=True)
    original = _tokenizer(source.parent, gguf_file=source.name)
    # The flags as llama.cpp's own reader sees them, not as the converter read them.
    fields = gguf_package.GGUFReader(str(source)).fields
    assert fields["tokenizer.ggml.add_bos_token"].contents() is True
    bos = fields["tokenizer.ggml.bos_token_id"].contents()
    for prompt in ("hi the", "the hi hi", "th e"):
        assert converted(prompt)["input_ids"] == [
            bos,
            *original(prompt, add_special_tokens=False)["input_ids"],
        ]


def test_special_tokens_stop_tokens_flags_and_named_chat_templates_come_along(tmp_path):
    from transformers import GenerationConfig

    source = write_tiny_gguf(
        tmp_path / "source" / "tiny.gguf",
        eot=True,
        chat_template="{% for m in messages %}{{ m.content }}{% endfor %}",
        named_templates={"tool_use": "{{ tools | tojson }}"},
    )
    out = tmp_path / "converted"
    result = convert(source, out, dtype="float32")
    assert result["architecture"] == "LlamaForCausalLM"

    tokenizer = _tokenizer(out)
    specials = (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token, tokenizer.pad_token)
    assert specials == ("<s>", "</s>", "<unk>", "<pad>")
    assert tokenizer.convert_tokens_to_ids(list(specials)) == [BOS, EOS, UNK, PAD]
    assert tokenizer.chat_template == {
        "default": "{% for m in messages %}{{ m.content }}{% endfor %}",
        "tool_use": "{{ tools | tojson }}",
    }
    # llama.cpp ends a generation on EOS and on end-of-turn; engines read the stops from here.
    assert GenerationConfig.from_pretrained(out).eos_token_id == [EOS, EOT]
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert (config["add_bos_token"], config["add_eos_token"], config["clean_up_tokenization_spaces"]) == (
        True,
        False,
        False,
    )


def test_a_gguf_without_a_chat_template_converts_to_a_tokenizer_without_one(tmp_path):
    _, tokenizer = _converted_tokenizer(tmp_path)
    assert tokenizer.chat_template is None
    assert not list((tmp_path / "converted").glob("*.jinja"))


@pytest.fixture(scope="session")
def gemma_gguf() -> Path:
    from django.conf import settings

    return fetch_gemma_gguf(Path(settings.DATA_DIR))


def test_the_real_gemma_gguf_converts_to_a_tokenizer_that_starts_prompts_with_bos(gemma_gguf, tmp_path):
    convert_tokenizer(gemma_gguf, tmp_path / "converted")
    converted = _tokenizer(tmp_path / "converted")
    original = _tokenizer(gemma_gguf.parent, gguf_file=gemma_gguf.name)
    # The file says tokenizer.ggml.add_bos_token = true and bos_token_id = 2 (<bos>).
    assert converted("The capital of France is")["input_ids"] == [2, 818, 5279, 529, 7001, 563]
    for prompt in ("The capital of France is", "Hello  world\n\n  indented", "1+1=2, ¿qué? 日本語"):
        assert converted(prompt)["input_ids"] == [2, *original(prompt, add_special_tokens=False)["input_ids"]]
    assert (
        converted.chat_template is None
    )  # a base model: its GGUF has none (tests/registry/test_chat_templates.py)


@pytest.mark.django_db
def test_a_conversion_an_older_converter_cached_is_not_reused(org, team, settings, tmp_path, imports):
    from portfolio.registry import services
    from portfolio.registry.artifacts import materialize_version
    from portfolio.registry.choices import Source, VersionStatus
    from portfolio.registry.hashing import sha256_file
    from tests.conftest import actor_for
    from tests.registry.conftest import import_here, make_model_folder

    settings.GGUF_CONVERSION_CACHE = tmp_path / "conversions"
    source = write_tiny_gguf(imports / "tiny.gguf", add_bos=True)
    # What the converter before the tokenizer flags left in the cache, under the key it used.
    stale = make_model_folder(settings.GGUF_CONVERSION_CACHE / sha256_file(source))
    (stale / "written-by-the-old-converter.txt").write_text("no BOS in here")
    (stale / ".complete").touch()

    engineer = actor_for(org["engineer"])
    model = services.create_model(actor=engineer, name="tiny", owner_team=team)
    version = import_here(engineer, model, Source.GGUF, str(source))
    assert version.status == VersionStatus.READY, version.status_detail
    assert "written-by-the-old-converter.txt" not in {f["path"] for f in version.artifact.files}
    assert _tokenizer(materialize_version(version))(PROMPT)["input_ids"] == [BOS, *PROMPT_IDS_WITH_PREFIX]


def test_a_gguf_over_the_import_limit_is_refused_before_it_is_converted(
    org, team, settings, tmp_path, imports
):
    """The version keeps the GGUF beside its conversion, so one over the limit can never import: it was
    converted first (up to half an hour, several times its size written, and the conversion cached)."""
    from portfolio.registry import services
    from portfolio.registry.choices import Source, VersionStatus
    from tests.conftest import actor_for
    from tests.registry.conftest import import_here

    settings.GGUF_CONVERSION_CACHE = tmp_path / "conversions"
    source = write_tiny_gguf(imports / "tiny.gguf", add_bos=True)
    settings.MAX_IMPORT_BYTES = source.stat().st_size - 1
    engineer = actor_for(org["engineer"])
    model = services.create_model(actor=engineer, name="tiny", owner_team=team)
    version = import_here(engineer, model, Source.GGUF, str(source))
    assert version.status == VersionStatus.FAILED and "not converted" in version.status_detail
    assert not settings.GGUF_CONVERSION_CACHE.exists() or not any(settings.GGUF_CONVERSION_CACHE.iterdir())


def test_a_conversion_is_cached_whole_and_renamed_into_place(
    org, team, settings, tmp_path, imports, monkeypatch
):
    """The cache's entry was deleted and written again in place: an import reusing it meanwhile (it had
    seen .complete) could copy a tree missing its tokenizer or a shard. Now nothing is written in place."""
    from portfolio.registry import importers, services
    from portfolio.registry.choices import Source, VersionStatus
    from tests.conftest import actor_for
    from tests.registry.conftest import import_here

    settings.GGUF_CONVERSION_CACHE = tmp_path / "conversions"
    source = write_tiny_gguf(imports / "tiny.gguf", add_bos=True)
    written_to: list[Path] = []
    link_tree = importers._link_tree

    def watched(source_dir, target):
        written_to.append(target)
        return link_tree(source_dir, target)

    engineer = actor_for(org["engineer"])
    model = services.create_model(actor=engineer, name="tiny", owner_team=team)
    monkeypatch.setattr(importers, "_link_tree", watched)
    version = import_here(engineer, model, Source.GGUF, str(source))
    assert version.status == VersionStatus.READY, version.status_detail
    [entry] = list(settings.GGUF_CONVERSION_CACHE.iterdir())
    assert (entry / ".complete").exists() and (entry / "config.json").exists()
    assert entry not in written_to and any(".incoming-" in p.name for p in written_to)
