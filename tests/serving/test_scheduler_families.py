"""The memory estimate per architecture family, from the facts registration reads out of real models'
configs: a MoE holds every expert, a hybrid keeps KV only in its attention layers, a state-space model a
fixed state per sequence, a vision-language model its vision tower, Whisper its cross-attention."""

from __future__ import annotations

import pytest

from portfolio.errors import Conflict
from portfolio.registry import families
from portfolio.registry.choices import Family
from portfolio.registry.inspection import SHAPE_KEYS
from serving import reconcile
from serving.choices import PoolKind
from serving.models import Replica
from serving.scheduler import GPU_RUNTIME_OVERHEAD, Unschedulable, estimate, place
from tests.serving.conftest import deploy
from tests.serving.test_scheduler import cpu_args, cpu_node, gpu, gpu_args, gpu_node

# Configs as the models publish them (the keys the estimate reads), with their parameter counts.
QWEN3_30B_A3B = {
    "model_type": "qwen3_moe",
    "num_hidden_layers": 48,
    "hidden_size": 2048,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "moe_intermediate_size": 768,
}
GRANITE_4_H = {
    "model_type": "granitemoehybrid",
    "num_hidden_layers": 40,
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "layer_types": ["attention" if i % 10 == 5 else "mamba" for i in range(40)],
    "mamba_n_heads": 128,
    "mamba_d_head": 64,
    "mamba_d_state": 128,
    "mamba_n_groups": 1,
    "mamba_d_conv": 4,
}
MAMBA2_2_7B = {
    "model_type": "mamba2",
    "num_hidden_layers": 64,
    "hidden_size": 2560,
    "num_heads": 80,
    "head_dim": 64,
    "state_size": 128,
    "n_groups": 1,
    "expand": 2,
    "conv_kernel": 4,
}
GEMMA3_4B = {
    "model_type": "gemma3",
    "mm_tokens_per_image": 256,
    "text_config": {
        "num_hidden_layers": 34,
        "hidden_size": 2560,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
    },
    "vision_config": {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,
        "image_size": 896,
        "patch_size": 14,
    },
}
WHISPER_LARGE_V3 = {
    "model_type": "whisper",
    "is_encoder_decoder": True,
    "d_model": 1280,
    "encoder_layers": 32,
    "decoder_layers": 32,
    "decoder_attention_heads": 20,
    "num_mel_bins": 128,
    "max_source_positions": 1500,
    "max_target_positions": 448,
}


def on(pool_kind, config, parameters, args, tensors=None):
    facts = families.read(config, tensors, parameters)
    shape = {k: v for k, v in families.text_config(config).items() if k in SHAPE_KEYS}
    return estimate(pool_kind=pool_kind, parameter_count=parameters, shape=shape, args=args, facts=facts)


def test_a_moe_holds_every_expert_in_memory_not_only_the_active_ones():
    total = 30_532_122_624
    est = on(PoolKind.GPU, QWEN3_30B_A3B, total, gpu_args(max_model_len=8192))
    assert est.weights_bytes == total * 2
    # KV: 48 attention layers x 4 KV heads x 128 x keys and values x 2 bytes, per token.
    assert est.kv_bytes == 2 * 48 * 4 * 128 * 2 * 8192
    assert est.state_bytes == 0
    assert "all 128 experts resident, 8 active per token" in est.describe()


def test_deepseeks_latent_attention_caches_one_compressed_latent_per_token_and_layer():
    config = {
        "model_type": "deepseek_v3",
        "num_hidden_layers": 61,
        "hidden_size": 7168,
        "num_attention_heads": 128,
        "num_key_value_heads": 128,
        "kv_lora_rank": 512,
        "qk_rope_head_dim": 64,
        "n_routed_experts": 256,
        "num_experts_per_tok": 8,
        "first_k_dense_replace": 3,
        "moe_intermediate_size": 2048,
    }
    est = on(PoolKind.GPU, config, 671_000_000_000, gpu_args(max_model_len=4096))
    assert est.kv_bytes == 61 * (512 + 64) * 2 * 4096  # not 61 x 2 x 128 heads x 56 per token
    assert families.read(config)["expert_parameters"] == 58 * 256 * 3 * 7168 * 2048


def test_a_moe_too_big_for_one_gpu_is_refused_with_what_to_change():
    est = on(PoolKind.GPU, QWEN3_30B_A3B, 30_532_122_624, gpu_args())
    with pytest.raises(Unschedulable) as refused:
        place(est, [gpu_node("gpu-01", gpu(0, 24))], pool_kind=PoolKind.GPU, args=gpu_args())
    message = str(refused.value)
    assert "Raise gpu_memory_utilization, use tensor_parallel_size, or a quantised version." in message
    assert "all 128 experts resident" in message


def test_a_hybrid_keeps_kv_only_in_its_attention_layers_and_state_for_every_running_sequence():
    args = gpu_args(max_model_len=32768, max_num_seqs=64)
    est = on(PoolKind.GPU, GRANITE_4_H, 32_000_000_000, args)
    assert est.kv_bytes == 2 * 4 * 8 * 128 * 2 * 32768  # 4 of 40 layers attend
    # Each of 36 Mamba2 layers: 8192 channels x state 128, a window of 3 over 8192 + 2 x 128 channels.
    per_layer = 8192 * 128 + (8192 + 2 * 128) * 3
    assert est.state_bytes == 36 * per_layer * 4 * 64
    assert est.per_gpu_bytes == est.weights_bytes + est.kv_bytes + est.state_bytes + GPU_RUNTIME_OVERHEAD
    assert "KV cache for 4 of 40 layers; 36 keep a fixed state" in est.describe()


def test_a_hybrids_kv_cache_is_a_tenth_of_what_the_dense_assumption_gave():
    dense = estimate(
        pool_kind=PoolKind.GPU,
        parameter_count=0,
        shape={k: GRANITE_4_H[k] for k in GRANITE_4_H if k in SHAPE_KEYS},
        args=gpu_args(max_model_len=32768),
    )
    hybrid = on(PoolKind.GPU, GRANITE_4_H, 0, gpu_args(max_model_len=32768))
    assert hybrid.kv_bytes * 10 == dense.kv_bytes


def test_a_state_space_model_needs_no_kv_cache_and_its_state_does_not_grow_with_length():
    short = on(PoolKind.GPU, MAMBA2_2_7B, 2_700_000_000, gpu_args(max_model_len=2048))
    long = on(PoolKind.GPU, MAMBA2_2_7B, 2_700_000_000, gpu_args(max_model_len=1_048_576))
    assert short.kv_bytes == long.kv_bytes == 0
    assert short.state_bytes == long.state_bytes > 0
    assert long.per_gpu_bytes == long.weights_bytes + long.state_bytes + GPU_RUNTIME_OVERHEAD


def test_a_state_space_model_refused_for_its_state_is_told_to_run_fewer_sequences_at_once():
    args = gpu_args(max_num_seqs=1024)
    # 64 layers x (5120 x 128 + 5376 x 3) numbers x 4 bytes: 164 MiB per sequence, 164 GiB for 1,024.
    est = on(PoolKind.GPU, MAMBA2_2_7B, 2_700_000_000, args)
    assert est.state_bytes == 64 * (5120 * 128 + 5376 * 3) * 4 * 1024
    with pytest.raises(Unschedulable) as refused:
        place(est, [gpu_node("gpu-01", gpu(0, 80, total_gib=80))], pool_kind=PoolKind.GPU, args=args)
    assert "Or lower max_num_seqs (1024): each running sequence holds its state." in str(refused.value)
    assert "KV cache 0.0 GiB + state" in str(refused.value)


def test_on_cpu_a_cache_too_small_for_one_full_sequence_is_refused_with_both_ways_out():
    args = cpu_args(max_model_len=131072, kv_cache_space_gib=1)
    dense = on(PoolKind.CPU, QWEN3_30B_A3B, 30_532_122_624, args)
    with pytest.raises(Unschedulable) as refused:
        place(dense, [cpu_node("cpu-01", 512)], pool_kind=PoolKind.CPU, args=args)
    # 98,304 bytes per token x 131,072 tokens = 12 GiB; 1 GiB holds 10,922 tokens.
    assert str(refused.value) == (
        "one sequence of max_model_len 131072 tokens needs 12.0 GiB of KV cache, more than "
        "kv_cache_space_gib 1: raise kv_cache_space_gib to 12 or lower max_model_len to 10922."
    )
    fits = cpu_args(max_model_len=10922, kv_cache_space_gib=1)
    assert (
        place(
            on(PoolKind.CPU, QWEN3_30B_A3B, 30_532_122_624, fits),
            [cpu_node("cpu-01", 512)],
            pool_kind=PoolKind.CPU,
            args=fits,
        ).node
        == "cpu-01"
    )


def test_on_cpu_a_state_space_model_takes_any_length_in_the_same_cache():
    args = cpu_args(max_model_len=131072, kv_cache_space_gib=1)
    est = on(PoolKind.CPU, MAMBA2_2_7B, 2_700_000_000, args)
    assert place(est, [cpu_node("cpu-01", 64)], pool_kind=PoolKind.CPU, args=args).node == "cpu-01"


def test_a_vision_tower_in_a_separate_file_is_added_to_the_weights():
    language = 3_880_000_000
    in_files = {"vision_tower.encoder.w": [400_000_000], "language_model.w": [language]}
    counted = on(PoolKind.GPU, GEMMA3_4B, language + 400_000_000, gpu_args(), in_files)
    assert counted.weights_bytes == (language + 400_000_000) * 2  # the tower is in the weights already
    assert "vision tower 0.7 GiB" in counted.describe()
    separate = on(PoolKind.GPU, GEMMA3_4B, language, gpu_args(), {"language_model.w": [language]})
    tower = 27 * (4 * 1152 * 1152 + 2 * 1152 * 4304)
    assert separate.weights_bytes == (language + tower) * 2
    # The decoder's KV cache, read from text_config: 34 layers x 4 KV heads x 256.
    assert separate.kv_bytes == 2 * 34 * 4 * 256 * 2 * 2048


def test_whisper_holds_the_encoders_output_as_cross_attention_kv_per_sequence():
    est = on(PoolKind.GPU, WHISPER_LARGE_V3, 1_550_000_000, gpu_args(max_model_len=448))
    self_attention = 2 * 32 * 20 * 64 * 2 * 448
    cross_attention = 2 * 32 * 20 * 64 * 2 * 1500
    assert est.kv_bytes == self_attention + cross_attention
    assert "cross-attention over 1500 encoder positions" in est.describe()


def test_versions_without_facts_are_estimated_as_before_from_their_shape():
    shape = {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64}
    est = estimate(
        pool_kind=PoolKind.GPU, parameter_count=0, shape=shape, args=gpu_args(max_model_len=100), facts={}
    )
    assert est.kv_bytes == 2 * 2 * 4 * 16 * 2 * 100 and est.state_bytes == 0
    assert est.describe().endswith("runtime 1.5 GiB")


# --- Through a reconcile: the version's stored facts are what the estimate reads -----------------------
@pytest.mark.django_db
def test_deploying_and_reconciling_size_the_cache_by_the_versions_family(
    owner, team, base_version, pool, node
):
    long = {"max_model_len": 131072}
    with pytest.raises(Conflict, match="raise kv_cache_space_gib to 3 or lower max_model_len to 46603"):
        deploy(owner, team, base_version, pool, args=long)  # SmolLM2's 30 attention layers
    base_version.family = Family.STATE_SPACE
    base_version.architecture_facts = families.read(MAMBA2_2_7B)
    base_version.save(update_fields=["family", "architecture_facts"])
    deployment = deploy(owner, team, base_version, pool, args=long)
    reconcile.reconcile_deployment(deployment.pk)
    assert Replica.objects.filter(deployment=deployment).count() == 1
    # The reconcile reads the facts too, not only the preflight: facts changed under the deployment tell apart.
    base_version.architecture_facts = families.read(QWEN3_30B_A3B)
    base_version.save(update_fields=["architecture_facts"])
    Replica.objects.filter(deployment=deployment).delete()
    reconcile.reconcile_deployment(deployment.pk)
    deployment.refresh_from_db()
    assert not Replica.objects.filter(deployment=deployment).exists()
    assert "raise kv_cache_space_gib to 12 or lower max_model_len to 10922" in deployment.status_detail
