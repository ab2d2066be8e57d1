"""Lineage of a model's versions: base -> adapters -> derived versions (and, later, datasets and jobs)."""

from __future__ import annotations

from dataclasses import dataclass

from portfolio.registry.choices import Source
from portfolio.registry.models import Model, ModelVersion


@dataclass(frozen=True)
class Node:
    id: str
    label: str
    kind: str
    status: str
    model: str
    number: int


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    relation: str  # "adapter of", "derived from", "merged from" (a merged version: from its adapter)


def _node(version: ModelVersion) -> Node:
    return Node(
        f"v{version.pk}", version.label, version.kind, version.status, version.model.name, version.number
    )


MAX_FOREIGN_ADAPTERS = 40
# The model's own versions drawn: the newest this many (the versions table pages the rest), plus the lineage
# of the version being viewed, itself at most MAX_CHAIN versions, so a page never reads or draws them all.
MAX_OWN_VERSIONS = 40
MAX_CHAIN = 40
_RELATED = ("model", "base_version__model", "parent_version__model")


@dataclass(frozen=True)
class Graph:
    nodes: list[Node]
    edges: list[Edge]
    not_drawn: int  # the model's own versions left out: older than the newest, outside the viewed lineage


def graph_for(model: Model, visible_versions) -> tuple[list[Node], list[Edge]]:
    """The model's newest versions plus the versions they hang from (other models' bases), as a graph."""
    graph = bounded_graph(model, visible_versions)
    return graph.nodes, graph.edges


def _chain(focus: ModelVersion, visible_versions, loaded: dict[int, ModelVersion]) -> list[ModelVersion]:
    """The viewed version and what it comes from (its base, what it was derived or merged from, theirs in
    turn), visible ones only, at most MAX_CHAIN; versions already read in ``loaded`` cost no query."""
    chain: dict[int, ModelVersion] = {}
    wanted = [focus.pk]
    while wanted and len(chain) < MAX_CHAIN:
        missing = [pk for pk in wanted if pk not in loaded]
        if missing:
            # Read through the visible ones only: a chain never passes through what the viewer may not see.
            loaded.update(
                {v.pk: v for v in visible_versions.filter(pk__in=missing).select_related(*_RELATED)}
            )
        following: list[int] = []
        for pk in wanted:
            version = loaded.get(pk)
            if version is None or pk in chain or len(chain) >= MAX_CHAIN:
                continue
            chain[pk] = version
            following += [
                p for p in (version.base_version_id, version.parent_version_id) if p and p not in chain
            ]
        wanted = following
    return list(chain.values())


def bounded_graph(model: Model, visible_versions, focus: ModelVersion | None = None) -> Graph:
    """The model's newest MAX_OWN_VERSIONS versions, the lineage of ``focus`` (the version being viewed, drawn
    however old), and the versions they hang from, as a graph that says how many of the model's it left out."""
    newest = list(model.versions.select_related(*_RELATED).order_by("-number")[:MAX_OWN_VERSIONS])
    total = model.versions.count() if len(newest) == MAX_OWN_VERSIONS else len(newest)
    drawn = {v.pk: v for v in newest}
    if focus is not None:
        for version in _chain(focus, visible_versions, dict(drawn)):
            drawn.setdefault(version.pk, version)
    versions = list(drawn.values())
    own = [v for v in versions if v.model_id == model.pk]
    nodes = {f"v{v.pk}": _node(v) for v in versions}
    edges: list[Edge] = []
    # Other models' adapters on these versions: the visible ones only, and at most MAX_FOREIGN_ADAPTERS (an
    # organisation-wide base may carry hundreds, every one read and drawn on each page of the model).
    foreign_adapters = list(
        visible_versions.filter(base_version__in=own)
        .exclude(model=model)
        .select_related("model")
        .order_by("-created_at", "-pk")[:MAX_FOREIGN_ADAPTERS]
    )
    candidates = {v.base_version_id for v in versions} | {v.parent_version_id for v in versions}
    candidates |= {a.pk for a in foreign_adapters}
    # Only the ids lineage could show are checked against what the viewer may see.
    allowed = set(visible_versions.filter(pk__in=candidates - {None}).values_list("pk", flat=True))
    for version in versions:
        for other, relation in (
            (version.base_version, "adapter of"),
            (version.parent_version, "merged from" if version.source == Source.MERGE else "derived from"),
        ):
            if other is None:
                continue
            if other.pk not in allowed:
                continue  # lineage never reveals what the viewer may not see
            nodes.setdefault(f"v{other.pk}", _node(other))
            edges.append(Edge(f"v{version.pk}", f"v{other.pk}", relation))
    for adapter in foreign_adapters:
        if adapter.pk in allowed:
            nodes.setdefault(f"v{adapter.pk}", _node(adapter))
            edges.append(Edge(f"v{adapter.pk}", f"v{adapter.base_version_id}", "adapter of"))
    drawn_own = sum(1 for node in nodes.values() if node.model == model.name)  # with those others hang from
    return Graph(sorted(nodes.values(), key=lambda n: (n.model, n.number)), edges, total - drawn_own)


def layout(nodes: list[Node], edges: list[Edge]) -> dict[str, tuple[int, int]]:
    """Layered positions for an SVG: roots (no outgoing edge) on the left, dependents to the right."""
    parents = {e.source: e.target for e in edges}
    depth: dict[str, int] = {}

    def depth_of(node_id: str, seen: frozenset = frozenset()) -> int:
        if node_id in depth:
            return depth[node_id]
        parent = parents.get(node_id)
        value = 0 if parent is None or parent in seen else depth_of(parent, seen | {node_id}) + 1
        depth[node_id] = value
        return value

    rows: dict[int, int] = {}
    positions = {}
    for node in nodes:
        column = depth_of(node.id)
        row = rows.get(column, 0)
        rows[column] = row + 1
        positions[node.id] = (column, row)
    return positions
