"""Dependencies point one way: portfolio (foundation) <- serving <- training, and no modules import each other.

A module may import its own layer and the ones below it; only the composition root imports from every
layer. Imports are read with ``ast`` at any depth (a function-local import is a dependency all the same);
a string that merely names an app ("training.run") is not one, but a relation field's target
("serving.Endpoint") is: the table and its migrations depend on it.
"""

from __future__ import annotations

import ast
import fnmatch
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAYERS = ("portfolio", "serving", "training")  # lowest first
# May import from any layer: it puts the layers together.
COMPOSITION_ROOT = (
    "portfolio.settings",
    "portfolio.urls",
    "portfolio.api",
    "portfolio.asgi",
    "portfolio.celery",
    "portfolio.cli",
    "portfolio.launcher",
    "portfolio.launch*",  # what the command line's start-up is split into
    "portfolio.commands*",
)
RELATION_FIELDS = {"ForeignKey", "OneToOneField", "ManyToManyField"}

# Upward references allowed for now, each with the work that removes it. Nothing else may join them.
ALLOWED_UPWARD: set[tuple[str, str]] = set()
# Module circles not yet broken, each named by its modules (a circle that is gone must leave the list).
KNOWN_CIRCLES: set[frozenset[str]] = set()


@dataclass(frozen=True, order=True)
class Reference:
    """One dependency of ``module`` on ``target`` (a module, or ``app_label.Model`` for a relation)."""

    module: str
    line: int
    target: str

    def __str__(self) -> str:
        return f"{self.module} (line {self.line}) -> {self.target}"


def modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the layers, migrations left out."""
    found = {}
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if "migrations" in parts:
                continue
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def app_layers(root: Path) -> dict[str, str]:
    """App label -> layer, from each ``apps.py``'s ``name`` and ``label`` (the label defaults to the name's
    last part, as Django's does)."""
    labels = {}
    for layer in LAYERS:
        for path in (root / layer).rglob("apps.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.ClassDef):
                    continue
                values = {
                    target.id: statement.value.value
                    for statement in node.body
                    if isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Constant)
                    for target in statement.targets
                    if isinstance(target, ast.Name)
                }
                if isinstance(values.get("name"), str):
                    name = values["name"]
                    labels[values.get("label") or name.rpartition(".")[2]] = name.partition(".")[0]
    return labels


def _nearest_module(name: str, known: dict[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _relation_target(call: ast.Call, labels: dict[str, str]) -> str | None:
    """``app_label.Model`` when ``call`` declares a relation field to a model of a known app by string."""
    name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", None)
    if name not in RELATION_FIELDS:
        return None
    to = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == "to"), None)
    if isinstance(to, ast.Constant) and isinstance(to.value, str) and to.value.partition(".")[0] in labels:
        return to.value
    return None


def references(root: Path) -> list[Reference]:
    """Every import of one layer module by another, and every relation field's string target."""
    known = modules(root)
    labels = app_layers(root)
    found = []
    for module, path in known.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str | None] = []
            if isinstance(node, ast.Import):
                targets = [_nearest_module(alias.name, known) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([node.module] if node.module else [])])
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    targets.append(submodule if submodule in known else _nearest_module(base, known))
            elif isinstance(node, ast.Call):
                targets = [_relation_target(node, labels)]
            found += [Reference(module, node.lineno, t) for t in targets if t and t != module]
    return found


def layer_of(target: str, labels: dict[str, str]) -> str:
    top = target.partition(".")[0]
    return top if top in LAYERS else labels[top]


def is_composition_root(module: str) -> bool:
    return any(fnmatch.fnmatchcase(module, pattern) for pattern in COMPOSITION_ROOT)


def upward(root: Path) -> list[Reference]:
    labels = app_layers(root)
    return [
        ref
        for ref in references(root)
        if not is_composition_root(ref.module)
        and LAYERS.index(layer_of(ref.target, labels)) > LAYERS.index(ref.module.partition(".")[0])
    ]


def _reachable(graph: dict[str, dict[str, Reference]], start: str) -> set[str]:
    seen: set[str] = set()
    unvisited = list(graph.get(start, {}))
    while unvisited:
        module = unvisited.pop()
        if module not in seen:
            seen.add(module)
            unvisited += graph.get(module, {})
    return seen


def circles(root: Path) -> list[list[Reference]]:
    """Modules that import each other, directly or round a longer loop: the imports of each loop."""
    graph: dict[str, dict[str, Reference]] = {}
    known = modules(root)
    for ref in references(root):
        if ref.target in known:
            graph.setdefault(ref.module, {}).setdefault(ref.target, ref)
    reach = {module: _reachable(graph, module) for module in graph}
    components = {
        frozenset(other for other in reach[module] if module in reach.get(other, ()))
        for module in graph
        if module in reach[module]
    }
    return [
        sorted(ref for m in component for t, ref in graph[m].items() if t in component)
        for component in sorted(components, key=sorted)
    ]


# --- The tree ---------------------------------------------------------------------------------------------
def test_no_module_outside_the_composition_root_imports_a_layer_above_its_own():
    found = [ref for ref in upward(REPO) if (ref.module, ref.target) not in ALLOWED_UPWARD]
    assert not found, (
        "Upward imports (register a check in the higher app's AppConfig.ready instead):\n"
        + "\n".join(map(str, found))
    )


def test_billing_points_at_nothing_above_it():
    """Serving, the gateway and training write into billing's ledger; billing reads only its own tables."""
    assert [str(ref) for ref in upward(REPO) if ref.module.startswith("portfolio.billing")] == []


def test_no_modules_import_each_other():
    found = [loop for loop in circles(REPO) if frozenset(ref.module for ref in loop) not in KNOWN_CIRCLES]
    assert not found, "Import circles:\n" + "\n\n".join("\n".join(map(str, loop)) for loop in found)


def test_the_known_circles_are_still_there_until_they_leave_the_list():
    found = {frozenset(ref.module for ref in loop) for loop in circles(REPO)}
    gone = [sorted(circle) for circle in KNOWN_CIRCLES - found]
    assert not gone, f"Broken: remove {gone} from KNOWN_CIRCLES."


# --- The reader itself, on a small tree -------------------------------------------------------------------
def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for layer in LAYERS:
        (root / layer).mkdir(exist_ok=True)
        (root / layer / "__init__.py").touch()
    return root


def test_a_function_local_import_of_a_higher_layer_is_found_with_its_line(tmp_path):
    root = _tree(
        tmp_path,
        {
            "serving/capacity.py": "import os\n\n\ndef free():\n    from training.models import Job\n",
            "training/models.py": "",
        },
    )
    assert [str(ref) for ref in upward(root)] == ["serving.capacity (line 5) -> training.models"]


def test_an_import_of_a_submodule_by_from_and_a_relative_import_are_both_found(tmp_path):
    root = _tree(
        tmp_path,
        {
            "portfolio/registry/__init__.py": "",
            "portfolio/registry/services.py": "from serving import scheduler\nfrom . import tasks\n",
            "portfolio/registry/tasks.py": "from .services import promote\n",
            "serving/scheduler.py": "",
        },
    )
    assert {(ref.module, ref.target) for ref in references(root)} == {
        ("portfolio.registry.services", "serving.scheduler"),
        ("portfolio.registry.services", "portfolio.registry.tasks"),
        ("portfolio.registry.tasks", "portfolio.registry.services"),
    }
    assert [[str(ref) for ref in loop] for loop in circles(root)] == [
        [
            "portfolio.registry.services (line 2) -> portfolio.registry.tasks",
            "portfolio.registry.tasks (line 1) -> portfolio.registry.services",
        ]
    ]


def test_a_relation_to_a_higher_app_counts_but_a_string_naming_an_app_does_not(tmp_path):
    root = _tree(
        tmp_path,
        {
            "portfolio/billing/apps.py": 'class C:\n    name = "portfolio.billing"\n',
            "portfolio/billing/models.py": (
                'from django.db import models\n\nACTIONS = ["training.run"]\n\n\nclass Price:\n'
                '    endpoint = models.OneToOneField("serving.Endpoint", on_delete=None)\n'
                '    team = models.ForeignKey(to="accounts.Team", on_delete=None)\n'
            ),
            "portfolio/accounts/apps.py": 'class C:\n    name = "portfolio.accounts"\n    label = "accounts"\n',
            "serving/apps.py": 'class C:\n    name = "serving"\n',
        },
    )
    assert [str(ref) for ref in upward(root)] == ["portfolio.billing.models (line 7) -> serving.Endpoint"]


def test_the_composition_root_may_import_every_layer_and_circles_longer_than_two_are_found(tmp_path):
    root = _tree(
        tmp_path,
        {
            "portfolio/urls.py": "import training.views\n",
            "portfolio/commands.py": "import training.views\n",
            "training/views.py": "import training.forms\n",
            "training/forms.py": "import training.services\n",
            "training/services.py": "from training import views\n",
        },
    )
    assert upward(root) == []
    assert [sorted({ref.module for ref in loop}) for loop in circles(root)] == [
        ["training.forms", "training.services", "training.views"]
    ]
