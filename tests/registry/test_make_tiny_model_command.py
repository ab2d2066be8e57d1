"""`manage.py make_tiny_model`: a model folder appears whole or not at all, and a wrong DIR or tokenizer is
refused in a sentence, not a traceback."""

import errno
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from portfolio.registry import tiny_models


@pytest.fixture
def tokenizer(tmp_path) -> Path:
    """A word-level tokenizer of a dozen words, saved as files: enough to build a model around."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "hello", "world", "tiny", "model"]
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(tmp_path / "tokenizer")
    return tmp_path / "tokenizer"


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_a_build_that_fails_after_the_weights_leaves_no_folder(tokenizer, tmp_path, monkeypatch, failure):
    def image_processor(*args):
        raise failure

    monkeypatch.setattr(tiny_models, "_image_processor", image_processor)
    expected = CommandError if isinstance(failure, OSError) else KeyboardInterrupt
    with pytest.raises(expected):
        call_command("make_tiny_model", "vision_language", str(tmp_path / "m"), "--tokenizer", str(tokenizer))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tokenizer"]


def test_a_file_for_dir_or_a_folder_without_a_tokenizer_is_refused(tokenizer, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(CommandError, match="is a file"):
        call_command("make_tiny_model", "dense", str(tmp_path / "file"), "--tokenizer", str(tokenizer))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CommandError, match="--tokenizer: .* holds no tokenizer"):
        call_command("make_tiny_model", "dense", str(tmp_path / "m"), "--tokenizer", str(tmp_path / "empty"))
    with pytest.raises(CommandError, match="--tokenizer: .* is not a folder"):
        call_command("make_tiny_model", "dense", str(tmp_path / "m"), "--tokenizer", str(tmp_path / "none"))
    assert not (tmp_path / "m").exists()


def test_a_model_is_built_into_an_empty_folder_readable_as_mkdir_would_make_it(tokenizer, tmp_path, capsys):
    (tmp_path / "m").mkdir()
    call_command("make_tiny_model", "dense", str(tmp_path / "m"), "--tokenizer", str(tokenizer))
    assert "LlamaForCausalLM (dense)" in capsys.readouterr().out
    assert {"model.safetensors", "tokenizer.json", "config.json"} <= {
        p.name for p in (tmp_path / "m").iterdir()
    }
    assert (tmp_path / "m").stat().st_mode & 0o055  # not mkdtemp's owner-only 0700
    assert sorted(path.name for path in tmp_path.iterdir()) == ["m", "tokenizer"]
