"""A version's parameters are those of the files an engine loads: the safetensors at the top of the folder,
and where an index names the shards, only those (vLLM's own rule). Every ``*.safetensors`` anywhere was
counted: a Mistral repository's ``consolidated.safetensors`` beside its shards, or a copy in a sub-folder,
doubled the parameters, and with them a replica's reserved memory (refused as unschedulable) and its bill."""

from __future__ import annotations

import json
from pathlib import Path

from portfolio.registry.inspection import inspect_directory
from tests.registry.conftest import write_safetensors

LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 2}


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA))
    return folder


def _sharded(folder: Path) -> None:
    write_safetensors(folder / "model-00001-of-00002.safetensors", {"embed": [32, 8]})
    write_safetensors(folder / "model-00002-of-00002.safetensors", {"head": [8, 32]})
    index = {
        "weight_map": {
            "embed": "model-00001-of-00002.safetensors",
            "head": "model-00002-of-00002.safetensors",
        }
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def test_a_consolidated_copy_beside_indexed_shards_is_not_counted(tmp_path):
    folder = _folder(tmp_path)
    _sharded(folder)
    write_safetensors(folder / "consolidated.safetensors", {"embed": [32, 8], "head": [8, 32]})
    assert inspect_directory(folder).parameter_count == 2 * 32 * 8


def test_safetensors_in_a_sub_folder_are_not_counted(tmp_path):
    folder = _folder(tmp_path)
    write_safetensors(folder / "model.safetensors", {"embed": [32, 8]})
    (folder / "original").mkdir()
    write_safetensors(folder / "original" / "model.safetensors", {"embed": [32, 8]})
    facts = inspect_directory(folder)
    assert facts.parameter_count == 32 * 8 and facts.format == "safetensors"


def test_without_an_index_every_top_level_file_counts(tmp_path):
    folder = _folder(tmp_path)
    write_safetensors(folder / "model-00001-of-00002.safetensors", {"embed": [32, 8]})
    write_safetensors(folder / "model-00002-of-00002.safetensors", {"head": [8, 32]})
    assert inspect_directory(folder).parameter_count == 2 * 32 * 8
