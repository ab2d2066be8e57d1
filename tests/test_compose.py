"""docker-compose.yml cannot run here (no Docker engine): check that it parses and that every platform
service runs a real entry point of this project."""

from pathlib import Path

import pytest
import yaml

from portfolio import cli

ROOT = Path(__file__).resolve().parent.parent
PLATFORM_SERVICES = {"migrate", "web", "worker", "beat", "node-cpu", "node-gpu"}
INFRASTRUCTURE = {"postgres", "redis", "minio", "keycloak"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_every_production_service(compose):
    assert set(compose["services"]) == PLATFORM_SERVICES | INFRASTRUCTURE


@pytest.mark.parametrize("service", sorted(PLATFORM_SERVICES))
def test_every_platform_service_runs_a_real_portfolio_command(compose, service):
    command = compose["services"][service]["command"]
    assert command[0] == "portfolio"
    scripts = (ROOT / "pyproject.toml").read_text()
    assert 'portfolio = "portfolio.cli:main"' in scripts
    args = cli.build_parser().parse_args(command[1:])  # exits (SystemExit) on an unknown sub-command
    assert args.command == command[1]


def test_platform_services_take_secrets_from_files_not_inline_values(compose):
    for name in PLATFORM_SERVICES:
        environment = compose["services"][name]["environment"]
        for key, value in environment.items():
            if any(word in key for word in ("SECRET", "PASSWORD", "SIGNING_KEY", "HASH_KEY")):
                assert key.endswith("_FILE"), f"{name}: {key} must come from a secret file"
                assert str(value).startswith("/run/secrets/")
        assert environment["PORTFOLIO_ENV"] == "production"


def test_the_gpu_agent_reserves_nvidia_devices(compose):
    devices = compose["services"]["node-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_only_the_gpu_agent_installs_the_gpu_extra_for_qlora(compose):
    extras = {
        name: compose["services"][name]["build"]["args"]["EXTRAS"].split(",")
        for name in ("node-cpu", "node-gpu")
    }
    assert "gpu" in extras["node-gpu"] and "train" in extras["node-gpu"]
    assert "gpu" not in extras["node-cpu"]


def test_the_dockerfile_installs_the_project_and_defaults_to_the_web_server():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'pip install ".[${EXTRAS}]"' in dockerfile
    assert 'CMD ["portfolio", "web"]' in dockerfile


@pytest.mark.parametrize(("service", "engine"), [("node-cpu", "cpu"), ("node-gpu", "gpu")])
def test_node_agents_carry_their_engine_and_join_a_pool(compose, service, engine):
    spec = compose["services"][service]
    assert spec["build"]["args"]["ENGINE"] == engine
    assert spec["environment"]["PORTFOLIO_NODE_POOL"] and spec["environment"]["PORTFOLIO_NODE_ADDRESS"] == service
    assert (ROOT / "serving" / "engines" / f"requirements-{engine}.txt").exists()
