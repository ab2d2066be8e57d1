"""Every third-party package the code imports is declared in pyproject.toml (as a dependency or in the extra
that installs it), not merely brought in by another package that may stop bringing it."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("portfolio", "serving", "training", "tests", "benchmarks", "manage.py")
OURS = {"portfolio", "serving", "training", "tests", "benchmarks"}
# Imported, but from somewhere other than this package's environment.
ELSEWHERE = {
    "vllm": "engines run from their own environment (serving/engines/requirements-*.txt)",
    "portfolio_engine_guard": "written by serving/engine_args.py into the engine's own path",
}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _names(requirements) -> set[str]:
    return {_normalise(re.match(r"[A-Za-z0-9_.-]+", requirement).group()) for requirement in requirements}


def declared() -> set[str]:
    project = _project()
    extras = (r for extra in project["optional-dependencies"].values() for r in extra)
    return _names([*project["dependencies"], *extras])


def third_party(nodes) -> list[str]:
    """The third-party top-level modules these statements import."""
    tops = []
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.partition(".")[0]
            if top not in sys.stdlib_module_names and top not in OURS and top != "__future__":
                tops.append(top)
    return tops


def imported() -> dict[str, str]:
    """Top-level third-party module -> the first file that imports it."""
    found: dict[str, str] = {}
    for source in SOURCES:
        paths = [REPO / source] if source.endswith(".py") else sorted((REPO / source).rglob("*.py"))
        for path in paths:
            for top in third_party(ast.walk(ast.parse(path.read_text(), str(path)))):
                found.setdefault(top, str(path.relative_to(REPO)))
    return found


def outside(found: dict[str, str], names: set[str]) -> dict[str, str]:
    """The modules of ``found`` that no distribution among ``names`` provides."""
    distributions = packages_distributions()
    return {
        module: where
        for module, where in found.items()
        if module not in ELSEWHERE
        and not any(_normalise(dist) in names for dist in distributions.get(module, []))
    }


def test_every_imported_third_party_package_is_declared():
    missing = outside(imported(), declared())
    assert not missing, "Imported but not declared in pyproject.toml (module: first importer): " + str(
        missing
    )


def core() -> set[str]:
    return _names(_project()["dependencies"])


def imported_on_load(sources=("portfolio", "serving", "training")) -> dict[str, str]:
    """Third-party modules the application imports when its modules load (statements of a module's body,
    try blocks included; imports inside functions, which load only when called, and those for type checkers
    are left out) -> the first file."""
    found: dict[str, str] = {}
    for source in sources:
        for path in sorted((REPO / source).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            body, statements = list(ast.parse(path.read_text(), str(path)).body), []
            while body:
                node = body.pop(0)
                if isinstance(node, ast.Try):
                    body += [*node.body, *(s for h in node.handlers for s in h.body), *node.orelse]
                else:
                    statements.append(node)
            for top in third_party(statements):
                found.setdefault(top, str(path.relative_to(REPO)))
    return found


def test_what_the_application_imports_on_load_is_a_core_dependency_not_an_extra():
    # Found on a GPU machine: the gateway's URLs import the SSO client, whose python-keycloak was an optional
    # extra, so an install without that extra served nothing but errors.
    missing = outside(imported_on_load(), core())
    assert not missing, "Loaded with the application but only in an extra (module: first importer): " + str(
        missing
    )
