"""A model's lineage drawn as inline SVG: bases on the left, adapters and derived versions to their right."""

from __future__ import annotations

from dataclasses import dataclass

from django.urls import reverse

from portfolio.accounts import gate
from portfolio.accounts.actor import Actor
from portfolio.registry import lineage
from portfolio.registry.models import Model, ModelVersion

NODE_HEIGHT = 46
COLUMN_GAP = 84
ROW_STEP = 66
MARGIN = 12
MAX_LABEL = 32


@dataclass(frozen=True)
class SvgNode:
    x: int
    y: int
    width: int
    label: str
    full_label: str
    caption: str
    status: str
    href: str
    current: bool


@dataclass(frozen=True)
class SvgEdge:
    path: str
    label: str
    label_x: int
    label_y: int
    text: str


def lineage_svg(model: Model, actor: Actor, current: ModelVersion | None = None) -> dict | None:
    """The model's lineage laid out for the ``registry/includes/lineage.html`` SVG: bases on the left,
    adapters and derived versions to their right; every node links to its version page. The model's newest
    versions only, plus the lineage of ``current``; ``not_drawn`` says how many of the model's were left out."""
    graph = lineage.bounded_graph(model, gate.visible(actor, ModelVersion), focus=current)
    nodes, edges = graph.nodes, graph.edges
    if not nodes:
        return None
    # Rows in creation order (graph_for sorts its ids as strings, which puts v10 before v2).
    nodes = sorted(nodes, key=lambda node: int(node.id[1:]))
    positions = lineage.layout(nodes, edges)
    pks = {int(node.id[1:]) for node in nodes}
    numbers = {
        f"v{row['pk']}": (row["model__name"], row["number"])
        for row in ModelVersion.objects.filter(pk__in=pks).values("pk", "number", "model__name")
    }
    longest = max(min(len(node.label), MAX_LABEL) for node in nodes)
    width = max(150, 8 * longest + 40)  # 13px bold: about 8px a character
    boxes: dict[str, SvgNode] = {}
    for node in nodes:
        column, row = positions[node.id]
        model_name, number = numbers[node.id]
        label = node.label if len(node.label) <= MAX_LABEL else node.label[: MAX_LABEL - 1] + "…"
        boxes[node.id] = SvgNode(
            x=MARGIN + column * (width + COLUMN_GAP),
            y=MARGIN + row * ROW_STEP,
            width=width,
            label=label,
            full_label=node.label,
            caption=f"{'adapter' if node.kind == 'adapter' else 'base'} · {node.status}",
            status=node.status,
            href=reverse("version-detail", kwargs={"name": model_name, "number": number}),
            current=current is not None and node.id == f"v{current.pk}",
        )
    lines = []
    for edge in edges:
        source, target = boxes[edge.source], boxes[edge.target]
        y1, y2 = source.y + NODE_HEIGHT // 2, target.y + NODE_HEIGHT // 2
        if target.x + target.width < source.x:
            # The usual case: from the dependent's left side back to its base on the left.
            x1, x2 = source.x, target.x + target.width
            bend = (x1 - x2) // 2
            path = f"M{x1},{y1} C{x1 - bend},{y1} {x2 + bend},{y2} {x2 + 6},{y2}"
            label_x, label_y = (x1 + x2) // 2, (y1 + y2) // 2 - 6
        else:
            # Same column (a version derived from a sibling): a loop on the right side.
            x1, x2 = source.x + source.width, target.x + target.width
            reach = max(x1, x2) + 40
            path = f"M{x1},{y1} C{reach},{y1} {reach},{y2} {x2 + 6},{y2}"
            label_x, label_y = reach - 4, (y1 + y2) // 2
        lines.append(
            SvgEdge(
                path=path,
                label=edge.relation,
                label_x=label_x,
                label_y=label_y,
                text=f"{source.full_label} is {edge.relation} {target.full_label}",
            )
        )
    columns = max(column for column, _ in positions.values()) + 1
    rows = max(row for _, row in positions.values()) + 1
    return {
        "nodes": list(boxes.values()),
        "edges": lines,
        "width": 2 * MARGIN + columns * width + (columns - 1) * COLUMN_GAP + 48,
        "height": 2 * MARGIN + (rows - 1) * ROW_STEP + NODE_HEIGHT,
        "node_height": NODE_HEIGHT,
        "not_drawn": graph.not_drawn,
        "drawn_newest": lineage.MAX_OWN_VERSIONS,
        "focused": current is not None,
    }
