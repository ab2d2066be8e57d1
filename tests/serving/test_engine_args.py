"""Engine arguments: only allow-listed ones, checked by type, range and pool kind; the vLLM command built from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from portfolio.errors import Invalid
from serving import engine_args
from serving.choices import PoolKind

SECRET = "sk-engine-secret-123"


def launch(pool_kind: str, args: dict | None = None, *, adapters=(), gpu_indices=(), task="chat"):
    return engine_args.build(
        python="/opt/engine/bin/python",
        pool_kind=pool_kind,
        args=engine_args.validate(args or {}, pool_kind),
        model_dir=Path("/models/smollm2"),
        served_name="support-bot",
        host="0.0.0.0",
        port=8101,
        adapters=adapters,
        gpu_indices=list(gpu_indices),
        api_key=SECRET,
        task=task,
    )


def value_after(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


# --- Validation ------------------------------------------------------------------------------------
def test_an_unknown_argument_is_refused_by_name():
    with pytest.raises(Invalid, match=r"engine_args\.trust_remote_code is not an allowed engine argument"):
        engine_args.validate({"trust_remote_code": True}, PoolKind.GPU)


def test_the_refusal_of_an_unknown_argument_lists_the_allowed_ones():
    with pytest.raises(Invalid) as refused:
        engine_args.validate({"chat_template": "/etc/passwd"}, PoolKind.CPU)
    assert "max_model_len" in refused.value.message


def test_arguments_must_be_an_object():
    with pytest.raises(Invalid, match="expected an object"):
        engine_args.validate(["--max-model-len", "4096"], PoolKind.CPU)  # type: ignore[arg-type]


def test_nothing_given_means_every_default_for_the_pool_kind():
    resolved = engine_args.validate({}, PoolKind.CPU)
    assert resolved["max_model_len"] == 2048 and resolved["dtype"] == "bfloat16"
    assert resolved["kv_cache_space_gib"] == 1 and resolved["cpu_cores"] == 1
    assert "gpu_memory_utilization" not in resolved and "tensor_parallel_size" not in resolved


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"max_model_len": "4096"}, r"engine_args\.max_model_len: expected a whole number"),
        ({"max_model_len": 4096.0}, r"engine_args\.max_model_len: expected a whole number"),
        ({"max_num_seqs": True}, r"engine_args\.max_num_seqs: expected a whole number"),
        ({"enable_lora": "yes"}, r"engine_args\.enable_lora: expected true or false"),
        ({"enable_prefix_caching": 1}, r"engine_args\.enable_prefix_caching: expected true or false"),
        ({"dtype": 16}, r"engine_args\.dtype: expected text"),
        ({"gpu_memory_utilization": "0.9"}, r"engine_args\.gpu_memory_utilization: expected a number"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_naming_the_argument(args, message):
    with pytest.raises(Invalid, match=message):
        engine_args.validate(args, PoolKind.GPU)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"max_model_len": 32}, r"engine_args\.max_model_len: 32 is outside 64\.\.1048576"),
        ({"max_num_seqs": 0}, r"engine_args\.max_num_seqs: 0 is outside"),
        (
            {"gpu_memory_utilization": 0.99},
            r"engine_args\.gpu_memory_utilization: 0\.99 is outside 0\.1\.\.0\.98",
        ),
        ({"gpu_memory_utilization": 1}, r"engine_args\.gpu_memory_utilization: 1\.0 is outside"),
        ({"tensor_parallel_size": 16}, r"engine_args\.tensor_parallel_size: 16 is outside 1\.\.8"),
        # A whole number too large for a float: refused by range, not a 500 (math.isfinite overflowed).
        ({"gpu_memory_utilization": 10**400}, r"engine_args\.gpu_memory_utilization: the number is outside"),
    ],
)
def test_a_value_out_of_range_is_refused_naming_the_argument(args, message):
    with pytest.raises(Invalid, match=message):
        engine_args.validate(args, PoolKind.GPU)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"dtype": "int4"}, r"engine_args\.dtype: 'int4' is not one of auto, bfloat16, float16, float32"),
        ({"max_lora_rank": 12}, r"engine_args\.max_lora_rank: 12 is not one of 8, 16"),
        ({"quantization": "gguf"}, r"engine_args\.quantization: 'gguf' is not one of"),
    ],
)
def test_a_value_outside_the_choices_is_refused_naming_the_argument(args, message):
    with pytest.raises(Invalid, match=message):
        engine_args.validate(args, PoolKind.GPU)


def test_a_whole_number_is_accepted_where_a_fraction_is_expected():
    assert (
        engine_args.validate({"gpu_memory_utilization": 0.5}, PoolKind.GPU)["gpu_memory_utilization"] == 0.5
    )
    assert isinstance(engine_args.validate({"max_model_len": 4096}, PoolKind.GPU)["max_model_len"], int)


@pytest.mark.parametrize(
    "args",
    [{"gpu_memory_utilization": 0.8}, {"tensor_parallel_size": 2}, {"quantization": "awq"}],
)
def test_gpu_only_arguments_are_refused_on_a_cpu_pool(args):
    (name,) = args
    with pytest.raises(Invalid, match=rf"engine_args\.{name} applies to gpu pools only"):
        engine_args.validate(args, PoolKind.CPU)


@pytest.mark.parametrize("args", [{"kv_cache_space_gib": 4}, {"cpu_cores": 2}])
def test_cpu_only_arguments_are_refused_on_a_gpu_pool(args):
    (name,) = args
    with pytest.raises(Invalid, match=rf"engine_args\.{name} applies to cpu pools only"):
        engine_args.validate(args, PoolKind.GPU)


def test_float16_is_refused_on_cpu_but_allowed_on_gpu():
    with pytest.raises(Invalid, match=r"engine_args\.dtype: float16 is not supported by vLLM on CPU"):
        engine_args.validate({"dtype": "float16"}, PoolKind.CPU)
    assert engine_args.validate({"dtype": "float16"}, PoolKind.GPU)["dtype"] == "float16"


# --- The command line ------------------------------------------------------------------------------
def test_a_cpu_engine_runs_the_openai_server_with_the_model_and_its_served_name():
    argv = launch(PoolKind.CPU, {"max_model_len": 4096, "dtype": "float32"}).argv
    assert argv[:3] == ["/opt/engine/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert value_after(argv, "--model") == "/models/smollm2"
    assert value_after(argv, "--served-model-name") == "support-bot"
    assert value_after(argv, "--host") == "0.0.0.0"
    assert value_after(argv, "--port") == "8101"
    assert value_after(argv, "--max-model-len") == "4096"
    assert value_after(argv, "--dtype") == "float32"


def test_a_cpu_engine_gets_its_kv_cache_size_from_the_environment_and_no_gpu_flags():
    started = launch(PoolKind.CPU, {"kv_cache_space_gib": 3})
    assert started.env["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert "--gpu-memory-utilization" not in started.argv
    assert "--tensor-parallel-size" not in started.argv
    assert "CUDA_VISIBLE_DEVICES" not in started.env


def test_the_engine_key_is_in_the_environment_and_never_on_the_command_line():
    started = launch(PoolKind.CPU)
    assert started.env["VLLM_API_KEY"] == SECRET
    assert not any(SECRET in part for part in started.argv)


def test_every_engine_loads_the_key_guard_from_the_folder_on_its_python_path():
    # vLLM's own key check leaves /invocations, /tokenize, /metrics... open: the guard closes every path.
    for started in (
        launch(PoolKind.CPU),
        launch(PoolKind.GPU, gpu_indices=[0]),
        launch(PoolKind.CPU, task="embedding"),
    ):
        assert value_after(started.argv, "--middleware") == "portfolio_engine_guard.RequireEngineKey"
        assert started.env["PYTHONPATH"] == str(engine_args.GUARD_DIR)
    assert (engine_args.GUARD_DIR / "portfolio_engine_guard.py").is_file()


def test_lora_flags_are_absent_unless_lora_is_enabled_or_adapters_are_served():
    started = launch(PoolKind.CPU)
    assert "--enable-lora" not in started.argv and "--lora-modules" not in started.argv
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in started.env


def test_enabling_lora_without_adapters_turns_on_runtime_loading():
    started = launch(PoolKind.CPU, {"enable_lora": True, "max_loras": 2, "max_lora_rank": 32})
    assert "--enable-lora" in started.argv
    assert value_after(started.argv, "--max-loras") == "2"
    assert value_after(started.argv, "--max-lora-rank") == "32"
    assert "--lora-modules" not in started.argv
    assert started.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_served_adapters_turn_on_lora_but_are_not_loaded_at_start():
    """Given as --lora-modules, an adapter the engine cannot load crashed every start, base model and all: they
    are hot-loaded once the engine is ready (adapter_sync), where a failure is the adapter's alone."""
    started = launch(PoolKind.CPU, adapters=["tone-formal", "billing"])
    assert "--enable-lora" in started.argv
    assert value_after(started.argv, "--max-loras") == "4"
    assert "--lora-modules" not in started.argv
    assert started.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_a_gpu_engine_claims_its_memory_fraction_on_the_gpus_it_was_given():
    started = launch(
        PoolKind.GPU, {"gpu_memory_utilization": 0.85, "tensor_parallel_size": 2}, gpu_indices=[2, 3]
    )
    assert value_after(started.argv, "--gpu-memory-utilization") == "0.85"
    assert value_after(started.argv, "--tensor-parallel-size") == "2"
    assert started.env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert started.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID", "numbered as nvidia-smi numbers them"
    assert "VLLM_CPU_KVCACHE_SPACE" not in started.env


def test_quantization_is_passed_only_when_set():
    assert "--quantization" not in launch(PoolKind.GPU, gpu_indices=[0]).argv
    quantised = launch(PoolKind.GPU, {"quantization": "awq"}, gpu_indices=[0]).argv
    assert value_after(quantised, "--quantization") == "awq"


def test_an_embedding_model_runs_as_a_pooling_engine_and_a_chat_model_does_not():
    assert value_after(launch(PoolKind.CPU, task="embedding").argv, "--runner") == "pooling"
    assert "--runner" not in launch(PoolKind.CPU).argv


# --- Per architecture family ----------------------------------------------------------------------
def family_launch(pool_kind: str, family: str, args: dict) -> list[str]:
    return engine_args.build(
        python="/opt/engine/bin/python",
        pool_kind=pool_kind,
        args=engine_args.validate(args, pool_kind, family),
        model_dir=Path("/models/tiny"),
        served_name="tiny",
        host="127.0.0.1",
        port=8101,
        adapters={},
        gpu_indices=[0, 1],
        api_key=SECRET,
    ).argv


def test_expert_parallel_spreads_a_moe_models_experts_over_the_replicas_gpus():
    argv = family_launch(PoolKind.GPU, "moe", {"enable_expert_parallel": True, "tensor_parallel_size": 2})
    assert "--enable-expert-parallel" in argv and value_after(argv, "--tensor-parallel-size") == "2"
    assert "--enable-expert-parallel" not in family_launch(PoolKind.GPU, "moe", {})


def test_expert_parallel_is_refused_on_a_dense_model_and_on_one_gpu():
    with pytest.raises(Invalid, match="applies to moe models only; this version is dense"):
        engine_args.validate({"enable_expert_parallel": True, "tensor_parallel_size": 2}, PoolKind.GPU)
    with pytest.raises(Invalid, match="tensor_parallel_size to 2 or more"):
        engine_args.validate({"enable_expert_parallel": True}, PoolKind.GPU, "moe")
    with pytest.raises(Invalid, match="applies to gpu pools only"):
        engine_args.validate({"enable_expert_parallel": True}, PoolKind.CPU, "moe")


def test_a_vision_model_is_limited_to_one_image_a_prompt_unless_told_otherwise():
    argv = family_launch(PoolKind.CPU, "vision_language", {})
    assert value_after(argv, "--limit-mm-per-prompt") == '{"image": 1}'
    argv = family_launch(PoolKind.CPU, "vision_language", {"images_per_prompt": 4})
    assert value_after(argv, "--limit-mm-per-prompt") == '{"image": 4}'


@pytest.mark.parametrize("count", [-1, 17, True, "2"])
def test_images_per_prompt_is_bounded(count):
    with pytest.raises(Invalid, match="images_per_prompt"):
        engine_args.validate({"images_per_prompt": count}, PoolKind.CPU, "vision_language")


def test_images_per_prompt_is_refused_on_a_text_model_and_absent_from_its_command():
    with pytest.raises(Invalid, match="applies to vision_language models only"):
        engine_args.validate({"images_per_prompt": 2}, PoolKind.CPU)
    assert "--limit-mm-per-prompt" not in family_launch(PoolKind.CPU, "dense", {})


def test_a_reranker_runs_as_a_pooling_engine_and_a_speech_model_as_a_generating_one():
    assert value_after(launch(PoolKind.CPU, task="rerank").argv, "--runner") == "pooling"
    assert "--runner" not in launch(PoolKind.CPU, task="speech").argv


def test_a_vision_engine_fetches_image_urls_only_from_the_gateways_internal_hosts():
    def domains(media_hosts) -> list[str]:
        argv = engine_args.build(
            python="/opt/engine/bin/python",
            pool_kind=PoolKind.CPU,
            args=engine_args.validate({}, PoolKind.CPU, "vision_language"),
            model_dir=Path("/models/tiny"),
            served_name="tiny",
            host="127.0.0.1",
            port=8101,
            adapters={},
            gpu_indices=[],
            api_key=SECRET,
            media_hosts=media_hosts,
        ).argv
        return argv[argv.index("--allowed-media-domains") + 1 :][:2]

    assert domains(["images.internal:8443", "cdn.corp"]) == ["cdn.corp", "images.internal"]
    # None allowed at the gateway: a reserved name no URL matches (vLLM allows every domain when unset).
    assert domains([]) == [engine_args.NO_MEDIA_DOMAIN]
    assert "--allowed-media-domains" not in family_launch(PoolKind.CPU, "dense", {})
