"""What a node shows, read from its schema: sockets, parameter rows, geometry.

:class:`NodeSpec` is the editor's view of a node type (or of a placeholder
for a type that is not installed, built from the data the node kept).
:func:`build_layout` turns a node and its spec into positions: socket
centres, the rectangle of each parameter row, the image and error areas.
Everything here is plain geometry; painting lives in ``node_item``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from PySide6.QtCore import QPointF, QRectF

from engine.graph import Graph, GraphNode
from engine.registry import Registry
from engine.schema import Input, Output

from . import theme

REROUTE = "Reroute"
PRIMITIVE = "PrimitiveNode"


@dataclass(frozen=True)
class NodeSpec:
    title: str
    category: str
    description: str
    inputs: tuple[Input, ...]
    outputs: tuple[Output, ...]
    output_node: bool = False
    placeholder: bool = False
    linkable_rows: bool = True   # False for notes: their text is not an input to link


@dataclass(frozen=True)
class Socket:
    """One end of a wire: an input (by name) or an output (by slot) of a node."""

    node_id: str
    is_output: bool
    name: str
    index: int
    type: str
    optional: bool = False


@dataclass
class Row:
    """A parameter row: the widget for ``input``, or its seed control when ``control``."""

    input: Input
    rect: QRectF
    control: bool = False


@dataclass
class Layout:
    width: float
    height: float
    inputs: dict[str, QPointF] = field(default_factory=dict)
    outputs: list[QPointF] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    image_rect: QRectF | None = None
    error_rect: QRectF | None = None


def spec_for(node: GraphNode, registry: Registry, graph: Graph | None = None) -> NodeSpec:
    cls = registry.get(node.type)
    if cls is None:
        return _placeholder_spec(node)
    if node.type == PRIMITIVE and graph is not None:
        return _primitive_spec(node, graph, registry)
    return NodeSpec(cls.title(), cls.CATEGORY, cls.DESCRIPTION, tuple(cls.INPUTS), tuple(cls.OUTPUTS),
                    cls.OUTPUT_NODE, linkable_rows=not (cls.VIRTUAL and not cls.OUTPUTS))


def _placeholder_spec(node: GraphNode) -> NodeSpec:
    """A type that is not installed: sockets from the data kept on load, values read-only."""
    inputs = [Input(str(d.get("name")), str(d.get("type", "*")), force_input=True)
              for d in node.extra.get("inputs", []) if isinstance(d, dict)]
    linked = {i.name for i in inputs}
    inputs += [Input(name, "*", force_input=True) for name in node.links if name not in linked]
    outputs = [Output(str(d.get("name", d.get("type", "*"))), str(d.get("type", "*")))
               for d in node.extra.get("outputs", []) if isinstance(d, dict)]
    return NodeSpec(node.type, "missing", f"Node type '{node.type}' is not installed. "
                    "The node keeps its data and saves it unchanged.", tuple(inputs), tuple(outputs),
                    placeholder=True)


def _primitive_spec(node: GraphNode, graph: Graph, registry: Registry) -> NodeSpec:
    """ComfyUI's PrimitiveNode takes the widget of the first input it feeds."""
    for link in graph.consumers(node.id):
        target = graph.nodes[link.dst]
        cls = registry.get(target.type)
        inp = cls.input(link.input) if cls else None
        if inp is not None and inp.type in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
            widget = dataclasses.replace(inp, name="value", force_input=False)
            return NodeSpec("Primitive", "utils", "One value feeding the widget inputs it is linked to.",
                            (widget,), (Output(inp.name, inp.type),))
    return NodeSpec("Primitive", "utils", "Connect the output to a widget input to get its widget.",
                    (), (Output("connect to widget input", "*"),))


def socket_inputs(spec: NodeSpec) -> list[Input]:
    """Inputs shown as plain sockets at the top (the rest are parameter rows with a socket)."""
    return [i for i in spec.inputs if not i.is_widget]


def row_height(inp: Input) -> float:
    return theme.ROW_H * theme.TEXT_ROWS if inp.multiline else theme.ROW_H


def build_layout(node: GraphNode, spec: NodeSpec, *, has_images: bool, has_error: bool) -> Layout:
    if node.type == REROUTE:
        layout = Layout(44.0, 22.0)
        layout.inputs["input"] = QPointF(0.0, 11.0)
        layout.outputs = [QPointF(44.0, 11.0)]
        return layout
    width = max(theme.NODE_WIDTH, node.size[0] if node.size else 0.0)
    if node.collapsed:
        return _collapsed_layout(node, spec, width)
    layout = Layout(width, 0.0)
    y = theme.TITLE_H + 4.0
    plain = socket_inputs(spec)
    for i in range(max(len(plain), len(spec.outputs))):
        cy = y + theme.ROW_H * (i + 0.5)
        if i < len(plain):
            layout.inputs[plain[i].name] = QPointF(0.0, cy)
        if i < len(spec.outputs):
            layout.outputs.append(QPointF(width, cy))
    y += theme.ROW_H * max(len(plain), len(spec.outputs))
    for inp in spec.inputs:
        if not inp.is_widget:
            continue
        h = row_height(inp)
        layout.rows.append(Row(inp, QRectF(theme.PAD + 4.0, y + 2.0, width - 2 * theme.PAD - 8.0, h - 4.0)))
        if spec.linkable_rows:
            layout.inputs[inp.name] = QPointF(0.0, y + theme.ROW_H / 2)
        y += h
        if inp.control_after_generate:
            layout.rows.append(Row(inp, QRectF(theme.PAD + 4.0, y + 2.0, width - 2 * theme.PAD - 8.0,
                                               theme.ROW_H - 4.0), control=True))
            y += theme.ROW_H
    if spec.placeholder:
        y += theme.ROW_H * min(len(node.values), 6)  # the kept values, listed read-only
    if has_images:
        layout.image_rect = QRectF(theme.PAD, y + 4.0, width - 2 * theme.PAD, theme.IMAGE_H)
        y += theme.IMAGE_H + 8.0
    if has_error:
        layout.error_rect = QRectF(theme.PAD, y + 4.0, width - 2 * theme.PAD, theme.ERROR_H)
        y += theme.ERROR_H + 8.0
    min_height = node.size[1] if node.size and has_images else 0.0
    layout.height = max(y + 6.0, min_height)
    return layout


def _collapsed_layout(node: GraphNode, spec: NodeSpec, width: float) -> Layout:
    collapsed_width = min(width, 60.0 + 7.0 * len(node.display_title() or spec.title))
    layout = Layout(collapsed_width, theme.TITLE_H)
    mid = theme.TITLE_H / 2
    for inp in spec.inputs:
        layout.inputs[inp.name] = QPointF(0.0, mid)
    layout.outputs = [QPointF(collapsed_width, mid) for _ in spec.outputs]
    return layout
