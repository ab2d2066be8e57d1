"""Fine-tuning on GPU pools, tested by what it builds, as the serving tests test engine arguments: no GPU
is present here or in CI. How each method loads its base on each device (the keyword arguments of
``from_pretrained``, QLoRA's 4-bit configuration), the GPU a job claims on its node and the environment its
trainer gets, the refusal when none is free, and a QLoRA job failing with what its node lacks."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from django.urls import reverse
from django.utils import timezone
from transformers import BitsAndBytesConfig

from portfolio.errors import Conflict
from serving import scheduler
from serving import services as serving_services
from serving.capacity import pool_capacity
from serving.choices import NodeState, PoolKind
from serving.models import ComputePool, Node, Replica
from serving.reconcile import reconcile_deployment
from training import finetune, job_reaper, lora, tasks
from training.choices import JobStatus, Method
from training.lora import Accelerator, Hyperparameters, Unsupported, loading_for
from training.models import FineTuneJob

GIB = 1024**3
CPU = Accelerator(visible_devices="", cuda=False, bf16=False, bitsandbytes=None)
H100 = Accelerator(
    visible_devices="1", cuda=True, bf16=True, bitsandbytes="0.50.2", device_name="NVIDIA H100"
)
T4 = Accelerator(visible_devices="0", cuda=True, bf16=False, bitsandbytes="0.50.2", device_name="Tesla T4")


# --- How the base is loaded: a pure choice per method and device --------------------------------------
@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_cpu_job_trains_in_float32_on_the_cpu_as_before(method):
    loading = loading_for(method, CPU)
    assert (loading.device, loading.autocast, loading.quantization) == ("cpu", None, None)
    assert loading.from_pretrained_kwargs() == {"dtype": torch.float32}


def test_lora_on_a_gpu_loads_the_frozen_base_in_bf16_on_the_one_gpu_the_job_sees():
    loading = loading_for("lora", H100)
    assert loading.from_pretrained_kwargs() == {"dtype": torch.bfloat16, "device_map": {"": 0}}
    assert (loading.device, loading.autocast) == ("cuda", "bfloat16")


def test_full_fine_tuning_on_a_gpu_keeps_float32_weights_and_computes_in_bf16():
    loading = loading_for("full", H100)
    assert loading.from_pretrained_kwargs() == {"dtype": torch.float32, "device_map": {"": 0}}
    assert loading.autocast == "bfloat16"


def test_a_gpu_without_native_bf16_trains_in_float32():
    for method in ("lora", "full"):
        loading = loading_for(method, T4)
        assert loading.from_pretrained_kwargs() == {"dtype": torch.float32, "device_map": {"": 0}}
        assert loading.autocast is None


def test_qlora_loads_the_base_in_4bit_nf4_with_double_quant_and_bf16_compute():
    kwargs = loading_for("qlora", H100).from_pretrained_kwargs()
    config = kwargs.pop("quantization_config")
    assert kwargs == {"dtype": torch.bfloat16, "device_map": {"": 0}}
    assert isinstance(config, BitsAndBytesConfig)
    assert config.load_in_4bit and not config.load_in_8bit
    assert (config.bnb_4bit_quant_type, config.bnb_4bit_use_double_quant) == ("nf4", True)
    assert config.bnb_4bit_compute_dtype == torch.bfloat16


def test_qlora_on_a_gpu_without_bf16_computes_in_float32_over_the_same_4bit_base():
    config = loading_for("qlora", T4).from_pretrained_kwargs()["quantization_config"]
    assert (config.load_in_4bit, config.bnb_4bit_quant_type, config.bnb_4bit_compute_dtype) == (
        True,
        "nf4",
        torch.float32,
    )


@pytest.mark.parametrize(
    ("accelerator", "missing", "not_missing"),
    [
        (CPU, ["a CUDA GPU", "bitsandbytes", "portfolio[gpu]"], []),
        (
            Accelerator("0", cuda=True, bf16=True, bitsandbytes=None),
            ["bitsandbytes", "portfolio[gpu]"],
            ["CUDA"],
        ),
        (Accelerator("", cuda=False, bf16=False, bitsandbytes="0.50.2"), ["a CUDA GPU"], ["bitsandbytes"]),
    ],
)
def test_qlora_where_cuda_or_bitsandbytes_is_missing_is_refused_naming_what_is_missing(
    accelerator, missing, not_missing
):
    with pytest.raises(Unsupported) as refused:
        loading_for("qlora", accelerator)
    message = str(refused.value)
    assert message.startswith("QLoRA needs") and "does not fall back to LoRA" in message
    assert all(part in message for part in missing), message
    assert not any(part in message for part in not_missing), message
    assert isinstance(refused.value, ValueError)  # the runner fails such a job; it does not error


def test_a_job_given_a_gpu_that_torch_cannot_use_is_refused_rather_than_run_on_the_cpu():
    with pytest.raises(Unsupported, match="GPU 3 .*CUDA_VISIBLE_DEVICES.*does not fall back to the CPU"):
        loading_for("lora", Accelerator(visible_devices="3", cuda=False, bf16=False, bitsandbytes=None))


def test_qlora_keeps_the_lora_learning_rate_and_records_its_own_method():
    lora_rate = Hyperparameters(method="lora").resolved(48).learning_rate
    assert Hyperparameters(method="qlora").resolved(48).learning_rate == lora_rate == 2e-3
    assert finetune._hyperparameters({}, Method.QLORA)["method"] == "qlora"


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    """A two-layer Llama with random weights (a few hundred KB): what QLoRA loads, minus the size."""
    from transformers import LlamaConfig, LlamaForCausalLM

    base = tmp_path_factory.mktemp("qlora") / "base"
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    LlamaForCausalLM(config).save_pretrained(base)
    return base


def test_qlora_loading_asks_transformers_for_its_bitsandbytes_4bit_load_which_this_machine_refuses(tiny_base):
    """The real ``from_pretrained`` with what ``loading_for("qlora", …)`` builds goes into transformers'
    bitsandbytes 4-bit quantizer, which needs bitsandbytes (and CUDA) and refuses here before reading a
    weight: a base asked for without its 4-bit configuration would load, unquantised, without a word."""
    with pytest.raises(ImportError, match="bitsandbytes` 4-bit quantization requires bitsandbytes"):
        lora.load_model(tiny_base, Hyperparameters(method="qlora"), loading_for("qlora", H100), None)
    # The same base for LoRA on this machine's CPU loads and gets its adapter: the refusal is QLoRA's own.
    model = lora.load_model(tiny_base, Hyperparameters(method="lora"), loading_for("lora", CPU), None)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_qlora_load_arguments_make_transformers_choose_its_bitsandbytes_4bit_nf4_quantizer():
    from transformers.quantizers import AutoHfQuantizer

    kwargs = loading_for("qlora", H100).from_pretrained_kwargs()
    quantizer = AutoHfQuantizer.from_config(kwargs["quantization_config"])
    assert type(quantizer).__name__ == "Bnb4BitHfQuantizer"
    saved = quantizer.quantization_config.to_dict()  # as it is written into a quantised model's config.json
    assert {key: saved[key] for key in ("load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type")} == {
        "load_in_4bit": True,
        "load_in_8bit": False,
        "bnb_4bit_quant_type": "nf4",
    }
    assert (saved["bnb_4bit_use_double_quant"], saved["bnb_4bit_compute_dtype"]) == (True, "bfloat16")
    assert kwargs["device_map"] == {"": 0}, "bitsandbytes places 4-bit weights on the job's one GPU"


def test_a_qlora_base_is_prepared_for_4bit_training_before_its_adapter_also_when_resumed(
    tiny_base, tmp_path, monkeypatch
):
    """``load_model`` with QLoRA's own loading. Only the 4-bit load itself cannot happen here (bitsandbytes
    needs CUDA): ``from_pretrained`` hands its quantization config to transformers' quantizer factory, then
    loads the same weights unquantised in the dtype asked for, marked 4-bit as bitsandbytes marks them.
    peft's preparation, the adapter and the resume are real, and judged by the model they produce."""
    from transformers import AutoModelForCausalLM
    from transformers.quantizers import AutoHfQuantizer

    quantizers, real_load = [], AutoModelForCausalLM.from_pretrained

    def load_4bit_stand_in(source, **kwargs):
        quantizers.append(AutoHfQuantizer.from_config(kwargs.pop("quantization_config")))
        assert kwargs.pop("device_map") == {"": 0}  # the job's one GPU: here, the CPU
        model = real_load(source, **kwargs)
        model.is_loaded_in_4bit = True
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", load_4bit_stand_in)
    loading = loading_for("qlora", H100)
    hp = Hyperparameters(method="qlora", target_modules=["q_proj", "v_proj"]).resolved(8)

    def check_prepared(model) -> set[str]:
        base = model.get_base_model()
        assert type(quantizers[-1]).__name__ == "Bnb4BitHfQuantizer"
        assert base.is_gradient_checkpointing and base.config.use_cache is False
        # Loaded in bf16 as asked; peft's preparation keeps every non-4-bit weight in float32 for stability.
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable), trainable
        return trainable

    model = lora.load_model(tiny_base, hp, loading, None)
    trainable = check_prepared(model)  # preparing after the adapter would have frozen it
    assert len(trainable) == 2 * 2 * 2  # A and B, of q and v, in two layers
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.fill_(0.25)
    model.save_pretrained(tmp_path / "checkpoint")

    resumed = lora.load_model(tiny_base, hp, loading, tmp_path / "checkpoint")
    assert check_prepared(resumed) == trainable and len(quantizers) == 2
    weights = {name: p for name, p in resumed.named_parameters() if ".lora_B." in name}
    assert weights and all(torch.all(p == 0.25) for p in weights.values()), "the checkpoint's adapter"


# --- The GPU a job claims ---------------------------------------------------------------------------
@pytest.fixture
def gpu_pool(db) -> ComputePool:
    pool = ComputePool.objects.create(name="gpu", kind=PoolKind.GPU)
    add_gpu_node(pool, "gpu-01", gpus=2)
    return pool


def add_gpu_node(pool: ComputePool, name: str, *, gpus: int) -> Node:
    return Node.objects.create(
        name=name,
        pool=pool,
        address="10.0.0.5",
        cpu_cores=16,
        memory_bytes=128 * GIB,
        gpus=[{"index": i, "name": "NVIDIA L4", "memory_bytes": 24 * GIB} for i in range(gpus)],
        state=NodeState.READY,
        heartbeat_at=timezone.now(),
    )


@pytest.fixture
def start(engineer, base, dataset_version, enqueued):
    def start_job(pool: ComputePool, method: str = Method.LORA) -> FineTuneJob:
        return finetune.start_job(
            actor=engineer, base_version=base, dataset_version=dataset_version, pool=pool, method=method
        )

    return start_job


def test_each_job_on_a_gpu_pool_claims_a_free_gpu_of_its_node_until_none_is_left(gpu_pool, start):
    first, second = start(gpu_pool, Method.QLORA), start(gpu_pool)
    assert (first.node.name, first.gpu_indices, second.gpu_indices) == ("gpu-01", [0], [1])
    with pytest.raises(
        Conflict, match=r"No free GPU on gpu: all 2 GPU\(s\) of its ready nodes are in use"
    ) as e:
        start(gpu_pool)
    assert e.value.code == "no_free_gpu"
    assert FineTuneJob.objects.count() == 2


def test_a_finished_job_gives_its_gpu_back(gpu_pool, start):
    first = start(gpu_pool)
    start(gpu_pool)
    FineTuneJob.objects.filter(pk=first.pk).update(status=JobStatus.SUCCEEDED)
    assert start(gpu_pool).gpu_indices == [0]


def test_a_job_does_not_land_on_a_gpu_a_replica_serves_from(gpu_pool, start, engineer, team, base):
    deployment = serving_services.create_deployment(
        actor=engineer, name="router", team=team, version=base, pool=gpu_pool, replicas=1
    )
    reconcile_deployment(deployment.pk)
    assert Replica.objects.get(deployment=deployment).gpu_indices == [0]
    assert start(gpu_pool).gpu_indices == [1]
    with pytest.raises(Conflict, match="No free GPU on gpu"):
        start(gpu_pool)


def test_a_replica_does_not_land_on_a_gpu_a_job_holds(gpu_pool, start, engineer, team, base):
    job = start(gpu_pool)
    free = {gpu.index: gpu.free_bytes for gpu in pool_capacity(gpu_pool)[0].gpus}
    assert free == {0: 0, 1: 24 * GIB}
    deployment = serving_services.create_deployment(
        actor=engineer, name="router", team=team, version=base, pool=gpu_pool, replicas=2
    )
    reconcile_deployment(deployment.pk)
    assert [r.gpu_indices for r in Replica.objects.filter(deployment=deployment)] == [[1]]
    deployment.refresh_from_db()
    assert "Cannot place a replica" in deployment.status_detail
    # The job's own claim does not count against it when it is moved (the reaper).
    mine = pool_capacity(gpu_pool, exclude_holders={finetune.gpu_holder(job.pk)})[0].gpus[0]
    assert mine.free_bytes == 24 * GIB


def test_a_gpu_pool_whose_nodes_report_no_gpus_refuses_the_job_saying_so(start):
    pool = ComputePool.objects.create(name="gpu-empty", kind=PoolKind.GPU)
    add_gpu_node(pool, "gpu-02", gpus=0)
    with pytest.raises(Conflict, match="No free GPU on gpu-empty: its ready nodes report no GPUs"):
        start(pool)


def test_jobs_spread_over_the_nodes_of_a_gpu_pool_before_sharing_one(gpu_pool, start):
    add_gpu_node(gpu_pool, "gpu-00", gpus=2)
    first = start(gpu_pool)
    FineTuneJob.objects.filter(pk=first.pk).update(status=JobStatus.RUNNING)
    second = start(gpu_pool)
    assert (first.node.name, first.gpu_indices) == ("gpu-00", [0])
    assert (second.node.name, second.gpu_indices) == ("gpu-01", [0])  # gpu-00 has a free GPU, but a job


def test_a_cpu_pool_job_claims_no_gpu(cpu_pool, start):
    assert start(cpu_pool).gpu_indices == []


def test_the_trainer_sees_only_the_gpu_its_job_holds_and_a_cpu_job_none(gpu_pool, cpu_pool, start):
    gpu_job = start(gpu_pool)
    start(gpu_pool)
    second = FineTuneJob.objects.exclude(pk=gpu_job.pk).get()
    env = tasks._trainer_env(second)
    assert (env["CUDA_VISIBLE_DEVICES"], env["CUDA_DEVICE_ORDER"]) == ("1", "PCI_BUS_ID")
    assert tasks._trainer_env(start(cpu_pool))["CUDA_VISIBLE_DEVICES"] == ""


def test_a_gpu_job_on_a_silent_node_moves_with_a_gpu_claim_on_a_ready_one(gpu_pool, start):
    job = start(gpu_pool)
    stale = timezone.now() - timedelta(hours=1)
    FineTuneJob.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING, attempt=1, heartbeat_at=stale)
    Node.objects.filter(name="gpu-01").update(heartbeat_at=stale)
    add_gpu_node(gpu_pool, "gpu-02", gpus=1)
    job_reaper.reap_stale_jobs(timedelta(minutes=2))
    job.refresh_from_db()
    assert (job.status, job.node.name, job.gpu_indices) == (JobStatus.QUEUED, "gpu-02", [0])
    assert "on gpu-02 (GPU 0)" in job.status_detail


def test_a_gpu_job_reaped_on_a_node_that_is_back_may_keep_its_own_gpu(start):
    pool = ComputePool.objects.create(name="gpu-one", kind=PoolKind.GPU)
    add_gpu_node(pool, "gpu-03", gpus=1)
    job = start(pool)
    FineTuneJob.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING, attempt=1, heartbeat_at=timezone.now() - timedelta(hours=1)
    )
    job_reaper.reap_stale_jobs(timedelta(minutes=2))
    job.refresh_from_db()
    assert (job.status, job.gpu_indices) == (JobStatus.QUEUED, [0])


def test_whole_gpu_placement_is_the_replica_schedulers(gpu_pool):
    """A trainer is placed by ``scheduler.place`` as a one-GPU replica claiming all of a GPU."""
    nodes = [
        scheduler.NodeFree("n1", NodeState.READY, 0, 0, [scheduler.GpuFree(0, "L4", 24 * GIB, 24 * GIB - 1)]),
        scheduler.NodeFree("n2", NodeState.READY, 0, 0, [scheduler.GpuFree(3, "L4", 24 * GIB, 24 * GIB)]),
    ]
    placement = scheduler.place(
        finetune.WHOLE_GPU, nodes, pool_kind=PoolKind.GPU, args=finetune.WHOLE_GPU_ARGS
    )
    assert (placement.node, placement.gpu_indices) == ("n2", [3])


# --- A QLoRA job where the node lacks CUDA or bitsandbytes: failed, with what is missing ----------------
@pytest.mark.django_db(transaction=True)
def test_a_qlora_job_on_a_node_without_cuda_fails_naming_what_is_missing_and_never_trains_lora(
    gpu_pool, start
):
    """The real node task and trainer process: the trainer is given GPU 0, which this machine's torch
    cannot use, and bitsandbytes is not installed here; the job fails (not errors) saying so."""
    job = start(gpu_pool, Method.QLORA)
    assert job.gpu_indices == [0]
    tasks.run_job(job.pk)
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED, f"{job.status}: {job.status_detail}\n{job.log_tail}"
    assert job.status_detail.startswith("Unsupported: QLoRA needs"), job.status_detail
    assert "GPU 0" in job.status_detail and "bitsandbytes" in job.status_detail
    assert job.output_version is None and job.step == 0
    assert job.gpu_seconds > 0 and job.gpu_seconds == pytest.approx(job.compute_seconds)


# --- What people see ----------------------------------------------------------------------------------
def test_the_start_form_names_the_gpu_a_job_holds_and_shows_the_no_free_gpu_refusal(
    client, org, base, dataset_version, gpu_pool, enqueued
):
    data = {"base_version": base.pk, "dataset_version": dataset_version.pk, "pool": "gpu", "method": "qlora"}
    client.force_login(org["engineer"])
    for expected in ("gpu-01 (GPU 0)", "gpu-01 (GPU 1)"):
        response = client.post(reverse("job-create"), data, follow=True)
        assert f"queued on {expected}" in response.content.decode()
    page = client.get(reverse("job-detail", kwargs={"job_id": FineTuneJob.objects.first().pk}))
    assert re.search(r"<dt>GPU</dt><dd>1 <span[^>]*>of gpu-01</span>", page.content.decode())
    refused = client.post(reverse("job-create"), data)
    assert refused.status_code == 200 and "No free GPU on gpu" in refused.content.decode()
    assert FineTuneJob.objects.count() == 2


def test_the_api_lists_the_gpus_a_job_holds(client, org, gpu_pool, start):
    job = start(gpu_pool)
    client.force_login(org["engineer"])
    answer = client.get(f"/api/v1/training/jobs/{job.pk}")
    assert answer.status_code == 200 and answer.json()["gpu_indices"] == [0]
