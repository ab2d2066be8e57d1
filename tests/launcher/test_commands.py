"""The process command lines live in `portfolio.commands`, which `portfolio` (cli) and `portfolio run`
(launcher) both read: neither imports the other at module level."""

import ast
from pathlib import Path

from portfolio import commands

PORTFOLIO = Path(__file__).resolve().parents[2] / "portfolio"


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return names


def test_the_launcher_does_not_import_the_cli():
    assert "portfolio.cli" not in _imported_modules(PORTFOLIO / "launcher.py")


def test_the_cli_does_not_import_the_launcher_at_module_level():
    assert "portfolio.launcher" not in _imported_modules(PORTFOLIO / "cli.py")


def test_the_command_builders_import_nothing_of_the_platform_at_module_level():
    imported = {name for name in _imported_modules(PORTFOLIO / "commands.py") if name.startswith("portfolio")}
    assert imported == set()


def test_the_web_command_believes_forwarded_headers_only_from_the_given_proxies():
    command = commands.web_command("127.0.0.1", 8123, 2, proxies=["10.0.0.1"])
    assert command[command.index("--forwarded-allow-ips") + 1] == "10.0.0.1"
    assert command[command.index("--port") + 1] == "8123"


def test_the_data_folder_follows_portfolio_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("PORTFOLIO_DATA_DIR", str(tmp_path / "data"))
    assert commands.data_dir() == (tmp_path / "data").resolve()


def test_the_celery_processes_log_at_portfolio_log_level(monkeypatch):
    """Their --loglevel decides over the settings' level: it used to be INFO whatever the setting said."""
    monkeypatch.setenv("PORTFOLIO_LOG_LEVEL", "WARNING")
    worker = commands.worker_command(["control"], 2, "control@here")
    beat = commands.beat_command()
    assert worker[worker.index("--loglevel") + 1] == beat[beat.index("--loglevel") + 1] == "WARNING"
    monkeypatch.delenv("PORTFOLIO_LOG_LEVEL")
    assert commands.beat_command()[commands.beat_command().index("--loglevel") + 1] == "INFO"
