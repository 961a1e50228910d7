"""Wires: links drawn as curves, the wire being dragged, and the rule for connecting.

A wire caches its path and its hit shape and rebuilds them only when one of
its ends moves.  :func:`check_connection` is the one place that decides
whether an output may feed an input, and says why not.
"""
from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QFontMetricsF, QPainter, QPainterPath, QPainterPathStroker, QPen
from PySide6.QtWidgets import QGraphicsPathItem

from engine.graph import Graph, Link
from engine.schema import types_compatible

from . import theme
from .layout import Socket


def curve(p1: QPointF, p2: QPointF) -> QPainterPath:
    """A horizontal S-curve from an output at ``p1`` to an input at ``p2``."""
    dx = max(abs(p2.x() - p1.x()) * 0.5, 40.0)
    path = QPainterPath(p1)
    path.cubicTo(QPointF(p1.x() + dx, p1.y()), QPointF(p2.x() - dx, p2.y()), p2)
    return path


def check_connection(graph: Graph, a: Socket, b: Socket, src_type: str) -> tuple[Socket, Socket] | str:
    """(output, input) when ``a`` and ``b`` may be linked, else the reason they may not.

    ``src_type`` is the output's effective type (a reroute takes its source's).
    """
    if a.is_output == b.is_output:
        return "connect an output to an input"
    out, inp = (a, b) if a.is_output else (b, a)
    if out.node_id == inp.node_id:
        return "a node cannot feed itself"
    if not types_compatible(src_type, inp.type):
        return f"{src_type} cannot connect to {inp.type} input '{inp.name}'"
    if _reaches(graph, inp.node_id, out.node_id):
        return "this link would make a loop"
    return out, inp


def _reaches(graph: Graph, start: str, goal: str) -> bool:
    """True when ``goal`` is downstream of ``start`` (visited set: linear in the graph)."""
    consumers: dict[str, list[str]] = {}
    for link in graph.links():
        consumers.setdefault(link.src, []).append(link.dst)
    seen, stack = set(), [start]
    while stack:
        node = stack.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            stack.extend(consumers.get(node, ()))
    return False


class WireItem(QGraphicsPathItem):
    """A link of the model, from an output socket to an input socket.

    Painted by Qt itself (no Python ``paint``): a large graph repaints
    hundreds of wires per frame.  Selection is the item's own flag, shown by
    a wider, brighter pen.
    """

    def __init__(self, link: Link, src_item, dst_item, type_name: str):
        super().__init__()
        self.link = link
        self.src_item, self.dst_item = src_item, dst_item
        self.type_name = type_name
        self.selected = False
        self._shape = QPainterPath()
        self.setZValue(0.0)
        self.set_type(type_name)
        self.update_path()

    def set_type(self, type_name: str) -> None:
        self.type_name = type_name
        self.refresh_pen()

    def set_selected(self, selected: bool) -> None:
        self.selected = selected
        self.refresh_pen()

    def refresh_pen(self) -> None:
        """Colour by type, faint when an end is muted, wide and light when selected."""
        color = QColor(theme.type_color(self.type_name))
        if self.selected:
            color = color.lighter(150)
        if "muted" in (self.src_item.node.mode, self.dst_item.node.mode):
            color.setAlpha(70)
        self.setPen(QPen(color, 4.5 if self.selected else 2.4, Qt.SolidLine, Qt.RoundCap))

    def endpoints(self) -> tuple[QPointF, QPointF]:
        src = self.src_item.output_socket(self.link.slot)
        dst = self.dst_item.input_socket(self.link.input)
        p1 = self.src_item.socket_pos(src) if src else self.src_item.mapToScene(QPointF(self.src_item.layout.width, 12))
        p2 = self.dst_item.socket_pos(dst) if dst else self.dst_item.mapToScene(QPointF(0, 12))
        return p1, p2

    def update_path(self) -> None:
        path = curve(*self.endpoints())
        self.setPath(path)
        stroker = QPainterPathStroker()
        stroker.setWidth(10.0)
        self._shape = stroker.createStroke(path)

    def shape(self) -> QPainterPath:
        return self._shape


class DragWire(QGraphicsPathItem):
    """The wire following the cursor while connecting; red with a reason when refused."""

    def __init__(self, anchor: Socket, anchor_pos: QPointF, type_name: str):
        super().__init__()
        self.anchor, self.anchor_pos, self.type_name = anchor, anchor_pos, type_name
        self.end = anchor_pos
        self.reason = ""
        self.setZValue(10.0)

    def move_to(self, end: QPointF, reason: str = "") -> None:
        self.prepareGeometryChange()
        self.end, self.reason = end, reason
        p1, p2 = (self.anchor_pos, end) if self.anchor.is_output else (end, self.anchor_pos)
        self.setPath(curve(p1, p2))

    def boundingRect(self) -> QRectF:
        return super().boundingRect().united(QRectF(self.end, self.end).adjusted(-10, -40, 420, 10))

    def paint(self, painter: QPainter, option, widget=None):
        painter.setRenderHint(QPainter.Antialiasing, True)
        refused = bool(self.reason)
        color = theme.ERROR_COLOR if refused else theme.type_color(self.type_name)
        painter.setPen(QPen(color, 2.4, Qt.DashLine if refused else Qt.SolidLine, Qt.RoundCap))
        painter.setBrush(Qt.NoBrush)
        painter.drawPath(self.path())
        if refused:
            painter.setFont(theme.ui_font(9.0, bold=True))
            metrics = QFontMetricsF(painter.font())
            box = QRectF(self.end.x() + 12, self.end.y() - 30, metrics.horizontalAdvance(self.reason) + 14, 22)
            painter.setPen(Qt.NoPen)
            painter.setBrush(QColor(60, 10, 10, 230))
            painter.drawRoundedRect(box, 5, 5)
            painter.setPen(QColor("#ffd0d0"))
            painter.drawText(box, Qt.AlignCenter, self.reason)
