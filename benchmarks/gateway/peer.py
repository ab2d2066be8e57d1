"""The peer: LiteLLM's proxy, in its own environment, in front of the same upstream."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

from benchmarks.gateway.harness import Processes, free_port, wait_http

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
LITELLM_VENV = ROOT / ".venv-litellm"


def litellm_version() -> str:
    out = subprocess.run(
        [
            str(LITELLM_VENV / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; print(m.version('litellm'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def probe_litellm_virtual_keys(workdir: Path) -> dict:
    """Can LiteLLM's virtual keys (budgets, spend on PostgreSQL) run here? They need Prisma's generated
    client, whose query-engine binary Prisma downloads from its own server: try, bounded."""
    prisma = LITELLM_VENV / "bin" / "prisma"
    if not prisma.exists():
        return {"ok": False, "detail": "the prisma client (LiteLLM's database layer) is not installed"}
    schema = next(LITELLM_VENV.glob("lib/python*/site-packages/litellm/proxy/schema.prisma"), None)
    if schema is None:
        return {"ok": False, "detail": "LiteLLM's schema.prisma was not found"}
    folder = workdir / "prisma-probe"
    folder.mkdir(exist_ok=True)
    shutil.copy(schema, folder / "schema.prisma")
    env = {
        **os.environ,
        "PATH": f"{LITELLM_VENV / 'bin'}:{os.environ['PATH']}",
        "PRISMA_USE_GLOBAL_NODE": "1",
    }
    try:
        out = subprocess.run(
            [str(prisma), "generate", "--schema", "schema.prisma"],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "detail": "`prisma generate` did not finish within 180 s"}
    text = (out.stdout + out.stderr).strip()
    lines = [x for x in text.splitlines() if "error" in x.lower()] or text.splitlines()[-2:]
    return {"ok": out.returncode == 0, "detail": " ".join(lines)[:400]}


def start_litellm(procs: Processes, workdir: Path, core: int, json_port: int, sse_port: int):
    port = free_port()
    master_key = "sk-bench-" + secrets.token_hex(16)
    config = workdir / "litellm.yaml"
    config.write_text(
        (HERE / "litellm.yaml.template")
        .read_text()
        .replace("@@JSON_PORT@@", str(json_port))
        .replace("@@SSE_PORT@@", str(sse_port))
        .replace("@@RPM@@", "100000000")
        .replace("@@TPM@@", "2000000000")
        .replace("@@MASTER_KEY@@", master_key)
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "VIRTUAL_ENV")}
    env.update(
        {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_MODE": "PRODUCTION",
            "PATH": f"{LITELLM_VENV / 'bin'}:{os.environ['PATH']}",
            "NO_DOCS": "True",
        }
    )
    log = workdir / "litellm.log"
    process = procs.start(
        "litellm",
        [
            "taskset",
            "-c",
            str(core),
            str(LITELLM_VENV / "bin" / "litellm"),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        log=log,
        env=env,
        cwd=workdir,
    )
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/health/liveliness", process, log, timeout=180)
    return base, master_key, process
