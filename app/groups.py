"""Group frames: a titled rectangle that carries the nodes inside it when dragged."""
from __future__ import annotations

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QPainter, QPen
from PySide6.QtWidgets import QGraphicsItem

from engine.graph import Group

from . import theme

TITLE_H = 30.0
HANDLE = 16.0
MIN_SIZE = (120.0, 80.0)


def group_rect(group: Group) -> QRectF:
    x, y, w, h = group.bounding
    return QRectF(x, y, w, h)


class GroupItem(QGraphicsItem):
    def __init__(self, group: Group, on_drag_finished):
        super().__init__()
        self.group = group
        self._on_drag_finished = on_drag_finished  # (item, old bounding, new bounding, {node_id: (old, new)})
        self._drag: dict | None = None
        self.setFlag(QGraphicsItem.ItemIsSelectable)
        self.setZValue(-1.0)
        self.sync()

    def sync(self) -> None:
        self.prepareGeometryChange()
        x, y, _, _ = self.group.bounding
        self.setPos(x, y)
        self.update()

    def size(self) -> tuple[float, float]:
        return self.group.bounding[2], self.group.bounding[3]

    def boundingRect(self) -> QRectF:
        w, h = self._drag["size"] if self._drag else self.size()
        return QRectF(0, 0, w, h)

    def in_title(self, pos: QPointF) -> bool:
        return 0 <= pos.y() <= TITLE_H

    def in_handle(self, pos: QPointF) -> bool:
        r = self.boundingRect()
        return pos.x() > r.right() - HANDLE and pos.y() > r.bottom() - HANDLE

    def color(self) -> QColor:
        if self.group.color and QColor.isValidColorName(self.group.color):
            return QColor(self.group.color)
        return QColor(110, 130, 165)

    def paint(self, painter: QPainter, option, widget=None):
        rect = self.boundingRect()
        color = self.color()
        fill = QColor(color)
        fill.setAlpha(38)
        painter.setPen(QPen(theme.SELECT_COLOR if self.isSelected() else color, 1.5))
        painter.setBrush(fill)
        painter.drawRoundedRect(rect, 6, 6)
        title = QColor(color)
        title.setAlpha(110)
        painter.setPen(Qt.NoPen)
        painter.setBrush(title)
        painter.drawRoundedRect(QRectF(0, 0, rect.width(), TITLE_H), 6, 6)
        if option.levelOfDetailFromTransform(painter.worldTransform()) > theme.LOD_TEXT / 2:
            painter.setFont(theme.ui_font(12.0, bold=True))
            painter.setPen(theme.PALETTE.text)
            painter.drawText(QRectF(10, 0, rect.width() - 20, TITLE_H), Qt.AlignVCenter | Qt.AlignLeft, self.group.title)
        painter.setBrush(color)
        painter.drawPolygon([QPointF(rect.right(), rect.bottom() - HANDLE), QPointF(rect.right(), rect.bottom()),
                             QPointF(rect.right() - HANDLE, rect.bottom())])

    # --- dragging: the title moves the frame and its nodes, the corner resizes it -------------
    def mousePressEvent(self, event):
        pos = event.pos()
        if event.button() != Qt.LeftButton or not (self.in_title(pos) or self.in_handle(pos)):
            event.ignore()
            return
        if not event.modifiers() & Qt.ControlModifier:
            self.scene().clearSelection()
        self.setSelected(True)
        nodes = self.scene().nodes_in(self.sceneBoundingRect()) if self.in_title(pos) else []
        self._drag = {"resize": self.in_handle(pos), "start": event.scenePos(), "origin": self.pos(),
                      "size": self.size(), "nodes": {n: n.pos() for n in nodes}}
        event.accept()

    def mouseMoveEvent(self, event):
        if self._drag is None:
            return
        delta = event.scenePos() - self._drag["start"]
        if self._drag["resize"]:
            w, h = self.size()
            self.prepareGeometryChange()
            self._drag["size"] = (max(MIN_SIZE[0], w + delta.x()), max(MIN_SIZE[1], h + delta.y()))
            self.update()
            return
        self.setPos(self._drag["origin"] + delta)
        for item, start in self._drag["nodes"].items():
            item.setPos(start + delta)

    def mouseReleaseEvent(self, event):
        drag, self._drag = self._drag, None
        if drag is None:
            return
        self.prepareGeometryChange()
        new = (self.pos().x(), self.pos().y(), *drag["size"])
        moves = {item.node_id: ((start.x(), start.y()), (item.pos().x(), item.pos().y()))
                 for item, start in drag["nodes"].items() if item.pos() != start}
        if tuple(new) != tuple(self.group.bounding):
            self._on_drag_finished(self, tuple(self.group.bounding), new, moves)
