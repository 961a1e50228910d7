"""A node on the canvas, painted from its schema.

The item reads the model node it shows (values, links, mode) and never
changes it; the scene calls :meth:`NodeItem.relayout` or ``update()`` when
the model reports a change.  Run state (queued, running with a progress
fraction, cached, done with its wall time, failed) lives here because it is
a property of the view, not of the workflow: undo leaves it alone.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

from PySide6.QtCore import QLineF, QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QFont, QFontMetricsF, QImage, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QGraphicsItem, QStyleOptionGraphicsItem

from engine.events import NodeError
from engine.graph import GraphNode

from . import theme, widgets
from .layout import REROUTE, Layout, NodeSpec, Row, Socket, build_layout, socket_inputs

COLLAPSE_RECT = QRectF(6, 6, 14, 14)


@functools.cache
def _fonts() -> tuple[QFont, QFont, QFont]:
    return theme.ui_font(9.0, bold=True), theme.ui_font(8.5), theme.ui_font(7.5)


@dataclass
class RunState:
    """What the last (or current) run did to this node."""

    status: str = ""               # "" | queued | running | cached | done | error
    fraction: float = 0.0
    seconds: float | None = None
    error: NodeError | None = None
    images: list[QImage] = field(default_factory=list)   # outputs or a live preview, as thumbnails


class NodeItem(QGraphicsItem):
    def __init__(self, node: GraphNode, spec: NodeSpec):
        super().__init__()
        self.node = node
        self.spec = spec
        self.run = RunState()
        self.problems: dict[str | None, str] = {}   # input name (None: the node) -> message
        self.thumbnail: QImage | None = None         # LoadImage: the chosen file
        self.wires: set = set()
        self._set_layout()
        self.setFlags(QGraphicsItem.ItemIsMovable | QGraphicsItem.ItemIsSelectable
                      | QGraphicsItem.ItemSendsGeometryChanges)
        self.setCacheMode(QGraphicsItem.DeviceCoordinateCache)
        self.setAcceptHoverEvents(True)
        self.setZValue(1.0)
        self.setPos(QPointF(*node.pos))
        self.sync_mode()

    @property
    def node_id(self) -> str:
        return self.node.id

    def title(self) -> str:
        return self.node.title or self.spec.title

    # --- geometry ----------------------------------------------------------------
    def check_choices(self) -> None:
        """Find the choice rows whose value is not among the choices (a model file that is not there).

        Done when values or layout change, not per paint: choices may come from a folder listing.
        """
        self.missing = {row.input.name for row in self.layout.rows
                        if row.input.type == "COMBO" and not row.control and not self._linked(row.input.name)
                        and self.node.values.get(row.input.name) not in row.input.option_list()}

    def _set_layout(self) -> None:
        """Lay the node out again; bounds and hit shape are cached (Qt asks for them constantly)."""
        self.layout: Layout = build_layout(self.node, self.spec, has_images=bool(self.images()),
                                           has_error=self.run.error is not None)
        w, h = self.layout.width, self.layout.height
        self._bounds = QRectF(-8, -8, w + 16, h + 16)
        self._shape = QPainterPath()
        self._shape.addRect(QRectF(-theme.SOCKET_HIT, 0, w + 2 * theme.SOCKET_HIT, h))
        self.check_choices()

    def relayout(self) -> None:
        self.prepareGeometryChange()
        self._set_layout()
        self.update()
        for wire in list(self.wires):
            wire.update_path()

    def boundingRect(self) -> QRectF:
        return self._bounds

    def shape(self) -> QPainterPath:
        return self._shape

    def body_rect(self) -> QRectF:
        return QRectF(0, 0, self.layout.width, self.layout.height)

    def images(self) -> list[QImage]:
        if self.run.images:
            return self.run.images
        return [self.thumbnail] if self.thumbnail is not None else []

    # --- sockets and rows ----------------------------------------------------------
    def input_socket(self, name: str) -> Socket | None:
        for inp in self.spec.inputs:
            if inp.name == name:
                return Socket(self.node.id, False, inp.name, self.spec.inputs.index(inp), inp.type, inp.optional)
        if name in self.node.links:  # a link to an input the schema does not know (kept data)
            return Socket(self.node.id, False, name, -1, "*")
        return None

    def output_socket(self, slot: int) -> Socket | None:
        if 0 <= slot < len(self.spec.outputs):
            out = self.spec.outputs[slot]
            return Socket(self.node.id, True, out.name, slot, out.type)
        return None

    def socket_pos(self, socket: Socket) -> QPointF:
        """The socket's centre in scene coordinates."""
        if socket.is_output:
            points = self.layout.outputs
            local = points[socket.index] if socket.index < len(points) else QPointF(self.layout.width, 12)
        else:
            local = self.layout.inputs.get(socket.name, QPointF(0, 12))
        return self.mapToScene(local)

    def socket_at(self, pos: QPointF) -> Socket | None:
        """The socket under ``pos`` (item coordinates), within the hit radius."""
        best, best_d = None, theme.SOCKET_HIT
        for name, point in self.layout.inputs.items():
            d = QLineF(point, pos).length()
            if d < best_d:
                best, best_d = self.input_socket(name), d
        for slot, point in enumerate(self.layout.outputs):
            d = QLineF(point, pos).length()
            if d < best_d:
                best, best_d = self.output_socket(slot), d
        return best

    def row_at(self, pos: QPointF) -> Row | None:
        for row in self.layout.rows:
            if row.rect.contains(pos):
                return row
        return None

    def in_collapse_toggle(self, pos: QPointF) -> bool:
        return COLLAPSE_RECT.adjusted(-3, -3, 3, 3).contains(pos) and self.node.type != REROUTE

    def in_title(self, pos: QPointF) -> bool:
        return 0 <= pos.y() <= theme.TITLE_H and self.node.type != REROUTE

    def in_error(self, pos: QPointF) -> bool:
        return self.layout.error_rect is not None and self.layout.error_rect.contains(pos)

    # --- state -----------------------------------------------------------------------
    def sync_mode(self) -> None:
        self.setOpacity(0.45 if self.node.mode == "muted" else 1.0)
        self.update()

    def set_run(self, **changes) -> None:
        relayout = "images" in changes or "error" in changes
        for key, value in changes.items():
            setattr(self.run, key, value)
        self.relayout() if relayout else self.update()

    def itemChange(self, change, value):
        if change == QGraphicsItem.ItemPositionHasChanged:
            for wire in list(self.wires):
                wire.update_path()
        return super().itemChange(change, value)

    def hoverMoveEvent(self, event):
        self.setToolTip(self._tooltip(event.pos()))
        super().hoverMoveEvent(event)

    def _tooltip(self, pos: QPointF) -> str:
        socket = self.socket_at(pos)
        if socket is not None:
            inp = None if socket.is_output else next((i for i in self.spec.inputs if i.name == socket.name), None)
            out = self.spec.outputs[socket.index] if socket.is_output else None
            tip = (inp.tooltip if inp else out.tooltip if out else "")
            problem = self.problems.get(socket.name) if not socket.is_output else None
            return "\n".join(t for t in (f"{socket.name}: {socket.type}", tip, problem) if t)
        row = self.row_at(pos)
        if row is not None:
            problem = self.problems.get(row.input.name)
            if row.input.name in self.missing:
                problem = f"'{self.node.values.get(row.input.name)}' is not available; click to choose one that is"
            return "\n".join(t for t in (row.input.tooltip or row.input.name, problem) if t)
        if self.in_error(pos):
            return "Click for the full error and its traceback"
        return "\n".join(t for t in (self.spec.description, self.problems.get(None)) if t)

    # --- painting --------------------------------------------------------------------
    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget=None):
        lod = option.levelOfDetailFromTransform(painter.worldTransform())
        painter.setRenderHint(QPainter.Antialiasing, lod > theme.LOD_TEXT)
        if self.node.type == REROUTE:
            self._paint_reroute(painter)
            return
        body = self.body_rect()
        title_color = self._title_color()
        if lod < theme.LOD_TEXT:
            painter.setPen(self._outline_pen(lod) or Qt.NoPen)
            painter.setBrush(title_color)
            painter.drawRect(body)
            return
        title_font, row_font, small_font = _fonts()
        self._paint_body(painter, body, title_color)
        painter.setFont(title_font)
        self._paint_title(painter, body)
        if not self.node.collapsed:
            painter.setFont(row_font)
            self._paint_sockets(painter)
            self._paint_rows(painter, detail=lod >= theme.LOD_DETAIL)
            self._paint_images(painter)
            painter.setFont(small_font)
            self._paint_error(painter)
        else:
            self._paint_collapsed_sockets(painter)
        if self.node.mode == "bypassed":
            painter.setPen(Qt.NoPen)
            tint = QColor(theme.BYPASS_COLOR)
            tint.setAlpha(90)
            painter.setBrush(tint)
            painter.drawRoundedRect(body, theme.CORNER, theme.CORNER)
        pen = self._outline_pen(lod)
        if pen is not None:
            painter.setPen(pen)
            painter.setBrush(Qt.NoBrush)
            painter.drawRoundedRect(body.adjusted(-1.5, -1.5, 1.5, 1.5), theme.CORNER + 1, theme.CORNER + 1)

    def _title_color(self) -> QColor:
        if self.spec.placeholder:
            return QColor("#7a2a2a")
        if self.run.status == "error":
            return QColor("#9c2b2b")
        if self.node.color and QColor.isValidColorName(self.node.color):
            return QColor(self.node.color)
        return theme.category_color(self.spec.category)

    def _outline_pen(self, lod: float) -> QPen | None:
        width = 2.0 / max(lod, 0.2)
        if self.run.status == "error":
            return QPen(theme.ERROR_COLOR, width + 0.5)
        if self.run.status == "running":
            return QPen(theme.RUNNING_COLOR, width + 0.5)
        if self.isSelected():
            return QPen(theme.SELECT_COLOR, width)
        if self.problems:
            return QPen(theme.PROBLEM_COLOR, width)
        if self.spec.placeholder:
            return QPen(theme.ERROR_COLOR, 1.5, Qt.DashLine)
        return None

    def _paint_body(self, painter: QPainter, body: QRectF, title_color: QColor) -> None:
        pal = theme.PALETTE
        painter.setPen(QPen(pal.node_border, 1.0))
        painter.setBrush(QColor("#4a4630") if self.node.type in ("Note", "MarkdownNote") else pal.node_body)
        painter.drawRoundedRect(body, theme.CORNER, theme.CORNER)
        title = QPainterPath()
        title.setFillRule(Qt.WindingFill)
        title.addRoundedRect(QRectF(0, 0, body.width(), theme.TITLE_H), theme.CORNER, theme.CORNER)
        if not self.node.collapsed:
            title.addRect(QRectF(0, theme.TITLE_H - theme.CORNER, body.width(), theme.CORNER))
        painter.setPen(Qt.NoPen)
        painter.setBrush(title_color)
        painter.drawPath(title.simplified())

    def _paint_title(self, painter: QPainter, body: QRectF) -> None:
        pal = theme.PALETTE
        painter.setPen(QColor("#f2f2f2"))
        painter.setBrush(QColor("#f2f2f2"))
        c = COLLAPSE_RECT.center()
        arrow = ([QPointF(c.x() - 3, c.y() - 4), QPointF(c.x() + 4, c.y()), QPointF(c.x() - 3, c.y() + 4)]
                 if self.node.collapsed else
                 [QPointF(c.x() - 4, c.y() - 3), QPointF(c.x() + 4, c.y() - 3), QPointF(c.x(), c.y() + 4)])
        painter.drawPolygon(arrow)
        status = self._status_text()
        metrics = QFontMetricsF(painter.font())
        status_w = metrics.horizontalAdvance(status) + 10 if status else 0
        text_rect = QRectF(24, 0, body.width() - 30 - status_w, theme.TITLE_H)
        title = self.title()
        if self.spec.placeholder:
            title = f"⚠ {title} (missing)"
        painter.drawText(text_rect, Qt.AlignVCenter | Qt.AlignLeft, metrics.elidedText(title, Qt.ElideRight, text_rect.width()))
        if status:
            painter.setPen(theme.CACHED_COLOR if self.run.status == "cached" else pal.text)
            painter.drawText(QRectF(body.width() - status_w - 4, 0, status_w, theme.TITLE_H),
                             Qt.AlignVCenter | Qt.AlignRight, status)
        if self.run.status == "running":
            painter.setPen(Qt.NoPen)
            painter.setBrush(theme.RUNNING_COLOR)
            painter.drawRect(QRectF(0, theme.TITLE_H - 3, body.width() * self.run.fraction, 3))

    def _status_text(self) -> str:
        run = self.run
        if run.status == "running":
            return f"{int(run.fraction * 100)}%" if run.fraction > 0 else "running"
        if run.status == "queued":
            return "queued"
        if run.status == "cached":
            return "cached"
        if run.status == "done" and run.seconds is not None:
            return f"{run.seconds:.2f} s" if run.seconds < 10 else f"{run.seconds:.1f} s"
        if run.status == "error":
            return "error"
        return ""

    def _linked(self, name: str) -> bool:
        return name in self.node.links

    def _paint_socket(self, painter: QPainter, center: QPointF, type_name: str, filled: bool, radius: float) -> None:
        color = theme.type_color(type_name)
        painter.setPen(QPen(color.darker(160), 1.0))
        painter.setBrush(color if filled else theme.PALETTE.node_body)
        painter.drawEllipse(center, radius, radius)
        if not filled:
            painter.setPen(QPen(color, 1.6))
            painter.setBrush(Qt.NoBrush)
            painter.drawEllipse(center, radius - 1.2, radius - 1.2)

    def _paint_sockets(self, painter: QPainter) -> None:
        pal = theme.PALETTE
        for inp in socket_inputs(self.spec):
            point = self.layout.inputs[inp.name]
            self._paint_socket(painter, point, inp.type, self._linked(inp.name), theme.SOCKET_R)
            painter.setPen(pal.text_dim if inp.optional else pal.text)
            painter.drawText(QRectF(point.x() + 12, point.y() - 9, self.layout.width / 2 - 14, 18),
                             Qt.AlignVCenter | Qt.AlignLeft, inp.name)
        for slot, point in enumerate(self.layout.outputs):
            out = self.spec.outputs[slot]
            self._paint_socket(painter, point, out.type, True, theme.SOCKET_R)
            painter.setPen(pal.text)
            painter.drawText(QRectF(self.layout.width / 2, point.y() - 9, self.layout.width / 2 - 12, 18),
                             Qt.AlignVCenter | Qt.AlignRight, out.name)

    def _paint_collapsed_sockets(self, painter: QPainter) -> None:
        mid = theme.TITLE_H / 2
        if self.node.links:
            self._paint_socket(painter, QPointF(0, mid), "*", True, 3.5)
        if self.spec.outputs:
            self._paint_socket(painter, QPointF(self.layout.width, mid), self.spec.outputs[0].type, True, 3.5)

    def _paint_rows(self, painter: QPainter, detail: bool) -> None:
        for row in self.layout.rows:
            name = row.input.name
            if not row.control and name in self.layout.inputs:
                self._paint_socket(painter, self.layout.inputs[name], row.input.type, self._linked(name), 3.5)
            value = self.node.values.get(name, row.input.default_value())
            widgets.paint_row(
                painter, row.input, row.rect, value,
                control_value=widgets.control_text(self.node.controls, name) if row.control else None,
                linked=self._linked(name) and not row.control, problem=name in self.problems and not row.control,
                missing=name in self.missing, detail=detail)
        if self.spec.placeholder:
            self._paint_kept_values(painter)

    def _paint_kept_values(self, painter: QPainter) -> None:
        pal = theme.PALETTE
        y = theme.TITLE_H + 4 + theme.ROW_H * max(len(self.spec.inputs), len(self.spec.outputs))
        for name, value in list(self.node.values.items())[:6]:
            painter.setPen(pal.text_dim)
            rect = QRectF(theme.PAD + 4, y, self.layout.width - 2 * theme.PAD - 8, theme.ROW_H)
            text = QFontMetricsF(painter.font()).elidedText(f"{name}: {value!r}", Qt.ElideRight, rect.width())
            painter.drawText(rect, Qt.AlignVCenter | Qt.AlignLeft, text)
            y += theme.ROW_H

    def _paint_images(self, painter: QPainter) -> None:
        rect, images = self.layout.image_rect, self.images()
        if rect is None or not images:
            return
        image = images[0]
        size = image.size().toSizeF().scaled(rect.size(), Qt.KeepAspectRatio)
        target = QRectF(rect.center().x() - size.width() / 2, rect.center().y() - size.height() / 2,
                        size.width(), size.height())
        painter.setRenderHint(QPainter.SmoothPixmapTransform, True)
        painter.drawImage(target, image)
        if len(images) > 1:
            painter.setPen(theme.PALETTE.text)
            painter.drawText(rect.adjusted(4, 2, -4, -2), Qt.AlignTop | Qt.AlignRight, f"1 / {len(images)}")

    def _paint_error(self, painter: QPainter) -> None:
        rect, error = self.layout.error_rect, self.run.error
        if rect is None or error is None:
            return
        fill = QColor(theme.ERROR_COLOR)
        fill.setAlpha(45)
        painter.setPen(QPen(theme.ERROR_COLOR, 1.0))
        painter.setBrush(fill)
        painter.drawRoundedRect(rect, 4, 4)
        inputs = ", ".join(f"{k}={v}" for k, v in error.inputs.items())
        text = f"{error.exception_type}: {error.message}\n{inputs}\n▸ details (traceback)"
        painter.setPen(theme.PALETTE.text)
        painter.drawText(rect.adjusted(6, 3, -6, -3), Qt.AlignTop | Qt.AlignLeft | Qt.TextWordWrap, text)

    def _paint_reroute(self, painter: QPainter) -> None:
        painter.setRenderHint(QPainter.Antialiasing, True)
        incoming = next((w for w in self.wires if w.dst_item is self), None)
        color = theme.type_color(incoming.type_name if incoming else "*")
        painter.setPen(QPen(theme.SELECT_COLOR if self.isSelected() else theme.PALETTE.node_border, 1.5))
        painter.setBrush(theme.PALETTE.node_body)
        painter.drawRoundedRect(self.body_rect(), 11, 11)
        painter.setPen(Qt.NoPen)
        painter.setBrush(color)
        painter.drawEllipse(QPointF(22, 11), 5, 5)
