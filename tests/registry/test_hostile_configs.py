"""A model's files are read as hostile data at import: a config or a safetensors header that lies is refused
with a reason naming the file, never believed (a layer count that builds lists in the shared import worker's
memory, a negative dimension that shrinks a CPU replica's reservation and its bill) and never an internal
error (a value of the wrong type, longer than the version's field, nested past the parser)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from portfolio.registry.inspection import InspectionError, inspect_directory
from tests.registry.conftest import write_safetensors

LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 2}


def _model(tmp_path: Path, config: dict | str, header: dict | list | None = None) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if header is None:
        write_safetensors(folder / "model.safetensors", {"embed": [32, 8]})
    else:
        raw = json.dumps(header).encode()
        (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    return folder


def test_a_layer_count_no_model_has_is_refused_before_anything_is_built(tmp_path):
    """Ten million here (two billion took the worker's memory whole: a list of that many layer kinds)."""
    folder = _model(tmp_path, {**LLAMA, "num_hidden_layers": 10_000_000})
    with pytest.raises(InspectionError, match="10,000,000 layers; a model has at most 1,024"):
        inspect_directory(folder)


@pytest.mark.parametrize(
    "tensor",
    [
        {"dtype": "BF16", "shape": [-6_500_000_000], "data_offsets": [0, 0]},
        {"dtype": "BF16", "shape": [2.5, 4], "data_offsets": [0, 0]},
        {"dtype": "BF16", "shape": "32x8", "data_offsets": [0, 0]},
        {"dtype": "B" * 200, "shape": [4], "data_offsets": [0, 0]},
        [1, 2, 3],
    ],
)
def test_a_tensor_whose_shape_or_dtype_lies_is_refused(tmp_path, tensor):
    """A negative dimension made the parameter count (a CPU replica's reserved memory, and its bill) small
    or negative; the other shapes failed as internal errors."""
    folder = _model(
        tmp_path,
        LLAMA,
        header={"model.embed": {"dtype": "BF16", "shape": [4], "data_offsets": [0, 8]}, "x": tensor},
    )
    with pytest.raises(InspectionError, match="model.safetensors: tensor 'x' has no valid dtype and shape"):
        inspect_directory(folder)


def test_a_header_that_is_no_object_is_refused(tmp_path):
    with pytest.raises(InspectionError, match="not an object of tensors"):
        inspect_directory(_model(tmp_path, LLAMA, header=[1, 2]))


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ({**LLAMA, "architectures": 5}, "architectures is not a list of class names"),
        ({**LLAMA, "architectures": ["X" * 200]}, "architectures is not a name of at most 100"),
        ({**LLAMA, "torch_dtype": "f" * 31}, "torch_dtype is not a name of at most 30"),
        (
            {**LLAMA, "quantization_config": {"quant_method": "q" * 41}},
            "quant_method is not a name of at most 40",
        ),
        ("[" * 100_000 + "]" * 100_000, "config.json is not valid JSON"),
    ],
)
def test_a_config_value_of_the_wrong_type_or_length_is_a_reason_not_an_internal_error(tmp_path, config, says):
    with pytest.raises(InspectionError, match=says):
        inspect_directory(_model(tmp_path, config))


@pytest.mark.parametrize("length", [True, 10**10, -1, 0])
def test_a_context_length_no_model_has_is_not_stored(tmp_path, length):
    """``true`` was stored as a context of one position; 10**10 and -1 failed the version's save."""
    facts = inspect_directory(_model(tmp_path, {**LLAMA, "max_position_embeddings": length}))
    assert facts.context_length is None
