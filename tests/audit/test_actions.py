"""The audit trail keeps one vocabulary: every action the code records is an ``AuditAction``.

The code is read, not run: every call to ``audit.record`` / ``audit.record_standalone`` (and to the local
helpers that pass their ``action`` argument on to them) is found with ``ast``, and its action must be a
member of the enum, whether written as a string, as ``AuditAction.X``, as an f-string's fixed start, or as
a variable assigned in the same function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from django.db import transaction

from portfolio.accounts.actor import Actor
from portfolio.audit import services as audit
from portfolio.audit.choices import AuditAction, grouped_choices

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("portfolio", "serving", "training")
AUDIT_SERVICES = "portfolio.audit.services"
RECORDERS = ("record", "record_standalone")


def _modules():
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            if "migrations" not in path.parts:
                yield path, ast.parse(path.read_text(), filename=str(path))


def _recorder_names(tree: ast.Module) -> tuple[set[str], dict[str, str]]:
    """How a module reaches the record functions: module aliases (``audit``) and imported names."""
    aliases, names = set(), {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "portfolio.audit":
            aliases |= {a.asname or a.name for a in node.names if a.name == "services"}
        elif isinstance(node, ast.ImportFrom) and node.module == AUDIT_SERVICES:
            names |= {a.asname or a.name: a.name for a in node.names if a.name in RECORDERS}
    return aliases, names


def _position_of_action(call: ast.Call, index: int) -> ast.expr | None:
    for keyword in call.keywords:
        if keyword.arg == "action":
            return keyword.value
    return call.args[index] if len(call.args) > index else None


def _called_name(call: ast.Call, aliases: set[str], names: dict[str, str], local: dict[str, int]):
    """The action argument's position if the call records an audit event, else None."""
    func = call.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in aliases:
        return 1 if func.attr in RECORDERS else None
    if isinstance(func, ast.Name):
        if func.id in names:
            return 1
        return local.get(func.id)
    return None


def _functions(tree: ast.Module):
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def _strings_assigned(function, name: str) -> list[ast.expr]:
    """What the function assigns to ``name``: the values, a tuple's matching item, a dict's values."""
    values: list[ast.expr] = []
    for node in ast.walk(function):
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign) and node.value is not None
            else []
        )
        for target in targets:
            value = node.value
            if isinstance(target, ast.Name) and target.id == name:
                values.extend(value.values if isinstance(value, ast.Dict) else [value])
            elif isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
                values.extend(v for t, v in zip(target.elts, value.elts, strict=False) if _is(t, name))
    return values


def _is(node: ast.expr, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def _problem(value: ast.expr, function, forwarded: set[str]) -> str | None:
    """Why this action expression is not (provably) an AuditAction, or None."""
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        return None if value.value in AuditAction.values else f"{value.value!r} is not an AuditAction"
    if (
        isinstance(value, ast.Attribute)
        and isinstance(value.value, ast.Name)
        and value.value.id == "AuditAction"
    ):
        return None if value.attr in AuditAction.names else f"AuditAction has no {value.attr}"
    if isinstance(value, ast.JoinedStr):
        head = value.values[0] if value.values else None
        prefix = head.value if isinstance(head, ast.Constant) and isinstance(head.value, str) else ""
        if prefix and any(action.startswith(prefix) for action in AuditAction.values):
            return None
        return f"f-string {ast.unparse(value)} starts no AuditAction"
    if isinstance(value, ast.IfExp):
        return _problem(value.body, function, forwarded) or _problem(value.orelse, function, forwarded)
    name = value.value if isinstance(value, ast.Subscript) else value
    if isinstance(name, ast.Name) and function is not None:
        assigned = _strings_assigned(function, name.id)
        if not assigned and name.id not in forwarded:  # a forwarded parameter is checked where it is passed
            return f"cannot tell which action {ast.unparse(value)} is"
        problems = [p for item in assigned if (p := _problem(item, function, set()))]
        return "; ".join(problems) or None
    return f"cannot tell which action {ast.unparse(value)} is"


def _audit_calls():
    """Every audit-recording call in the layers: (where, action expression, enclosing function, and the
    enclosing function's parameters that are passed on as the action)."""
    found = []
    for path, tree in _modules():
        aliases, names = _recorder_names(tree)
        if not aliases and not names:
            continue
        functions = _functions(tree)
        enclosing = {
            id(call): function
            for function in functions
            for call in ast.walk(function)
            if isinstance(call, ast.Call)
        }
        local: dict[str, int] = {}  # helpers of this module that pass their ``action`` parameter on
        for _ in range(3):  # a helper of a helper
            for function in functions:
                params = [a.arg for a in function.args.args]
                if "action" not in params or function.name in local:
                    continue
                for call in ast.walk(function):
                    if not isinstance(call, ast.Call):
                        continue
                    index = _called_name(call, aliases, names, local)
                    passed = _position_of_action(call, index) if index is not None else None
                    if passed is not None and _is(passed, "action"):
                        local[function.name] = params.index("action")
        if path.relative_to(ROOT).as_posix() == "portfolio/audit/services.py":
            continue  # the record functions themselves
        for call in ast.walk(tree):
            if not isinstance(call, ast.Call):
                continue
            index = _called_name(call, aliases, names, local)
            if index is None:
                continue
            function = enclosing.get(id(call))
            forwarded = {"action"} if function is not None and function.name in local else set()
            where = f"{path.relative_to(ROOT)}:{call.lineno}"
            found.append((where, _position_of_action(call, index), function, forwarded))
    return found


def test_every_action_the_code_records_is_an_audit_action():
    calls = _audit_calls()
    assert len(calls) > 50, "the reader finds the record calls"
    problems = [
        f"{where}: {problem}"
        for where, value, function, forwarded in calls
        if (problem := _problem(value, function, forwarded) if value is not None else "no action given")
    ]
    assert problems == []


def test_every_audit_action_is_recorded_somewhere():
    written: set[str] = set()
    prefixes: set[str] = set()
    for _, value, function, _ in _audit_calls():
        items = [value]
        while items:
            item = items.pop()
            if isinstance(item, ast.Constant) and isinstance(item.value, str):
                written.add(item.value)
            elif isinstance(item, ast.Attribute) and item.attr in AuditAction.names:
                written.add(AuditAction[item.attr].value)
            elif isinstance(item, ast.JoinedStr) and isinstance(item.values[0], ast.Constant):
                prefixes.add(item.values[0].value)
            elif isinstance(item, ast.IfExp):
                items += [item.body, item.orelse]
            elif isinstance(item, ast.Subscript | ast.Name) and function is not None:
                name = item.value if isinstance(item, ast.Subscript) else item
                if isinstance(name, ast.Name):
                    items += _strings_assigned(function, name.id)
    # Forwarding helpers are called with literals too (sign-in attempts): those are literal calls above.
    unused = [
        a for a in AuditAction.values if a not in written and not any(a.startswith(p) for p in prefixes)
    ]
    assert unused == [], "an action nothing records any more is taken off the enum"


def test_the_reader_catches_an_action_outside_the_enum():
    source = (
        "from portfolio.audit import services as audit\n"
        "def change(actor, ok):\n"
        "    audit.record(actor, 'team.rename', None)\n"
        "    action = 'node.cordon' if ok else 'node.explode'\n"
        "    audit.record(actor, action, None)\n"
        "    audit.record(actor, AuditAction.TEAM_CREATE)\n"
        "    audit.record(actor, AuditAction.TEAM_MELT)\n"
    )
    tree = ast.parse(source)
    function = _functions(tree)[0]
    aliases, names = _recorder_names(tree)
    values = [
        _position_of_action(call, 1)
        for call in ast.walk(tree)
        if isinstance(call, ast.Call) and _called_name(call, aliases, names, {}) is not None
    ]
    assert [_problem(value, function, set()) for value in values] == [
        "'team.rename' is not an AuditAction",
        "'node.explode' is not an AuditAction",
        None,
        "AuditAction has no TEAM_MELT",
    ]


def test_actions_are_named_object_dot_verb():
    for action in AuditAction:
        subject, _, verb = action.value.partition(".")
        assert subject and verb and action.value == action.value.lower(), action
        assert action.name == action.value.upper().replace(".", "_"), action


@pytest.mark.django_db
def test_recording_an_action_outside_the_enum_is_refused():
    with transaction.atomic(), pytest.raises(ValueError, match="not an AuditAction"):
        audit.record(Actor.for_system("tests"), "team.rename", object_type="t", object_id="1")


@pytest.mark.django_db
def test_an_action_given_as_the_enum_is_stored_as_its_plain_value():
    with transaction.atomic():
        event = audit.record(
            Actor.for_system("tests"), AuditAction.TEAM_UPDATE, object_type="t", object_id="1"
        )
    event.refresh_from_db()
    assert type(event.action) is str and event.action == "team.update"


def test_the_filter_choices_group_actions_by_object_with_a_prefix_first():
    groups = dict(grouped_choices())
    assert groups["team"][0] == ("team.", "every team action")
    assert ("team.create", "team.create · Team created") in groups["team"]
    assert sum(len(options) - 1 for options in groups.values()) == len(AuditAction)


@pytest.mark.django_db
def test_the_rest_list_documents_its_action_filter_with_the_vocabulary(client):
    schema = client.get("/api/v1/openapi.json").json()
    parameters = schema["paths"]["/api/v1/audit/events"]["get"]["parameters"]
    (action,) = [p for p in parameters if p["name"] == "action"]
    described = action.get("description") or action["schema"].get("description", "")
    assert "`team.`" in described and all(f"`{a}`" in described for a in AuditAction.values)
