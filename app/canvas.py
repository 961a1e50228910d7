"""The canvas: a ``QGraphicsView`` over the graph scene.

Navigation: wheel zooms to the cursor, middle drag or space+drag pans,
``fit_view`` frames the graph.  Gestures: drag from a socket to connect
(refused wires turn red and say why; a wire dropped on empty canvas opens the
search filtered by its type; dragging from a linked input picks the wire up),
drag a number sideways to change it, click a row to edit it, rubber band to
select.  Every change goes through :class:`~app.editing.Editor`.
"""
from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QEvent, QPoint, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QPainter, QPen
from PySide6.QtWidgets import QFrame, QGraphicsView, QMenu

from engine.graph import Link
from engine.schema import SEED_CONTROLS

from . import commands as cmd
from . import search, theme, widgets
from .editing import Editor
from .editors import InlineEditor
from .groups import TITLE_H as GROUP_TITLE_H
from .groups import GroupItem
from .layout import Row, Socket
from .node_item import NodeItem
from .scene import GraphScene
from .wires import DragWire, WireItem

LONG_COMBO = 25  # more options than this open a searchable list


@dataclass
class WireDrag:
    anchor: Socket
    wire: DragWire
    src_type: str
    lifted: Link | None = None


@dataclass
class RowPress:
    item: NodeItem
    row: Row
    part: str
    start_x: float
    start_value: object
    merge_key: int
    dragging: bool = False


class Canvas(QGraphicsView):
    message = Signal(str)
    files_dropped = Signal(list, QPointF)
    context_requested = Signal(QPointF, QPoint, object)
    error_clicked = Signal(str)
    escape_pressed = Signal()

    def __init__(self, scene: GraphScene, editor: Editor, parent=None):
        super().__init__(scene, parent)
        self.editor = editor
        self.inline = InlineEditor(self)
        self.popup = None            # the open search popup or value menu (kept referenced)
        self._wire: WireDrag | None = None
        self._row: RowPress | None = None
        self._pan: QPoint | None = None
        self._space = False
        self.setRenderHints(QPainter.Antialiasing | QPainter.TextAntialiasing | QPainter.SmoothPixmapTransform)
        self.setViewportUpdateMode(QGraphicsView.BoundingRectViewportUpdate)
        self.setCacheMode(QGraphicsView.CacheBackground)
        self.setOptimizationFlags(QGraphicsView.DontSavePainterState)
        self.setTransformationAnchor(QGraphicsView.NoAnchor)
        self.setResizeAnchor(QGraphicsView.AnchorViewCenter)
        self.setDragMode(QGraphicsView.RubberBandDrag)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.setFrameShape(QFrame.NoFrame)
        self.setAcceptDrops(True)
        self.viewport().setAcceptDrops(True)
        self.setFocusPolicy(Qt.StrongFocus)
        self.setMouseTracking(True)
        scene.graph_replaced.connect(self._reset_scene_rect)
        scene.undo.indexChanged.connect(lambda _: self.grow_scene_rect())
        self._reset_scene_rect()

    @property
    def graph_scene(self) -> GraphScene:
        return self.scene()

    # --- navigation ---------------------------------------------------------------------
    def zoom(self) -> float:
        return self.transform().m11()

    def zoom_by(self, factor: float, anchor: QPoint | None = None) -> None:
        """Zoom keeping the scene point under ``anchor`` (viewport pixels; default the cursor) still."""
        if anchor is None:
            anchor = self.mapFromScene(self.cursor_scene_pos())
        current = self.zoom()
        target = min(theme.ZOOM_MAX, max(theme.ZOOM_MIN, current * factor))
        self.inline.commit()
        fixed = self.mapToScene(anchor)
        self.scale(target / current, target / current)
        self.setRenderHint(QPainter.Antialiasing, target > theme.LOD_TEXT)  # far out, wires need no smoothing
        drift = self.mapFromScene(fixed) - anchor
        self.horizontalScrollBar().setValue(self.horizontalScrollBar().value() + drift.x())
        self.verticalScrollBar().setValue(self.verticalScrollBar().value() + drift.y())

    def fit_view(self, selection_only: bool = True) -> None:
        scene = self.graph_scene
        items = [i for i in scene.selectedItems()] if selection_only else []
        rect = QRectF()
        for item in items or [*scene.node_items.values(), *scene.group_items.values()]:
            rect = rect.united(item.sceneBoundingRect())
        if rect.isNull():
            return
        self.grow_scene_rect()
        self.fitInView(rect.adjusted(-40, -40, 40, 40), Qt.KeepAspectRatio)
        self.zoom_by(min(1.0, 1.5 / self.zoom()), self.viewport().rect().center())

    def _reset_scene_rect(self) -> None:
        self.setSceneRect(QRectF())
        self.grow_scene_rect()

    def grow_scene_rect(self) -> None:
        """The scrollable area: the graph's bounds plus room to pan; it never shrinks under the user."""
        rect = self.graph_scene.graph_rect()
        if rect.isNull():
            rect = QRectF(-500, -500, 1000, 1000)
        margin = 20000.0
        wanted = rect.adjusted(-margin, -margin, margin, margin)
        current = self.sceneRect()
        if not current.contains(wanted):
            self.setSceneRect(wanted.united(current) if current.width() > 0 else wanted)

    def wheelEvent(self, event):
        delta = event.angleDelta().y() or event.angleDelta().x()
        if delta:
            self.zoom_by(1.0015 ** delta, event.position().toPoint())

    def drawBackground(self, painter: QPainter, rect: QRectF):
        pal = theme.PALETTE
        painter.fillRect(rect, pal.background)
        zoom = self.zoom()
        for step, color in ((theme.GRID_MINOR, pal.grid_minor), (theme.GRID_MAJOR, pal.grid_major)):
            if step * zoom < 8:
                continue
            painter.setPen(QPen(color, 0))
            left, top = int(rect.left()) - int(rect.left()) % step, int(rect.top()) - int(rect.top()) % step
            for x in range(left, int(rect.right()) + 1, step):
                painter.drawLine(QPointF(x, rect.top()), QPointF(x, rect.bottom()))
            for y in range(top, int(rect.bottom()) + 1, step):
                painter.drawLine(QPointF(rect.left(), y), QPointF(rect.right(), y))

    # --- hit testing -------------------------------------------------------------------------
    def node_at(self, scene_pos: QPointF) -> tuple[NodeItem | None, QPointF]:
        for item in self.graph_scene.items(scene_pos):
            if isinstance(item, NodeItem):
                return item, item.mapFromScene(scene_pos)
        return None, scene_pos

    def wire_at(self, scene_pos: QPointF) -> WireItem | None:
        return next((i for i in self.graph_scene.items(scene_pos) if isinstance(i, WireItem) and i.isVisible()), None)

    def _scene_pos(self, event) -> QPointF:
        return self.mapToScene(event.position().toPoint())

    # --- mouse -----------------------------------------------------------------------------
    def mousePressEvent(self, event):
        pos = self._scene_pos(event)
        if event.button() == Qt.MiddleButton or (event.button() == Qt.LeftButton and self._space):
            self._pan = event.position().toPoint()
            self.viewport().setCursor(Qt.ClosedHandCursor)
            return
        if event.button() == Qt.LeftButton:
            if self._press_on_node(pos, event):
                return
            add = bool(event.modifiers() & Qt.ControlModifier)
            wire = None if self.node_at(pos)[0] else self.wire_at(pos)
            self.graph_scene.select_wire(wire, add)
            if wire is not None:
                if not add:
                    self.graph_scene.clearSelection()
                return
        super().mousePressEvent(event)

    def _press_on_node(self, pos: QPointF, event) -> bool:
        item, local = self.node_at(pos)
        if item is None:
            return False
        socket = item.socket_at(local)
        if socket is not None:
            self._start_wire(item, socket)
            return True
        if item.in_collapse_toggle(local):
            self.editor.toggle_collapse([item.node_id])
            return True
        if item.in_error(local):
            self.error_clicked.emit(item.node_id)
            return True
        row = None if item.node.collapsed else item.row_at(local)
        if row is None or (row.input.name in item.node.links and not row.control):
            return False
        if not event.modifiers() & Qt.ControlModifier:
            self.graph_scene.clearSelection()
        item.setSelected(True)
        value = item.node.values.get(row.input.name, row.input.default_value())
        self._row = RowPress(item, row, widgets.row_part(row.input, row.rect, local.x(), row.control),
                             event.position().x(), value, cmd.new_merge_key())
        return True

    def mouseMoveEvent(self, event):
        if self._pan is not None:
            delta = event.position().toPoint() - self._pan
            self._pan = event.position().toPoint()
            self.horizontalScrollBar().setValue(self.horizontalScrollBar().value() - delta.x())
            self.verticalScrollBar().setValue(self.verticalScrollBar().value() - delta.y())
            return
        if self._wire is not None:
            self._move_wire(self._scene_pos(event))
            return
        if self._row is not None:
            self._drag_row(event)
            return
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event):
        if self._pan is not None and event.button() in (Qt.MiddleButton, Qt.LeftButton):
            self._pan = None
            self.viewport().unsetCursor()
            return
        if self._wire is not None:
            self._finish_wire(self._scene_pos(event))
            return
        if self._row is not None:
            press, self._row = self._row, None
            if not press.dragging:
                self._click_row(press)
            return
        super().mouseReleaseEvent(event)
        if event.button() == Qt.LeftButton:
            self.editor.commit_moves()

    def mouseDoubleClickEvent(self, event):
        pos = self._scene_pos(event)
        item, local = self.node_at(pos)
        if item is not None and item.in_title(local):
            rect = item.mapRectToScene(QRectF(22, 2, item.layout.width - 26, 22))
            self.inline.open_line(rect, item.title(),
                                  lambda text, i=item.node_id: self.editor.rename(i, text))
            return
        group = next((g for g in self.graph_scene.items(pos) if isinstance(g, GroupItem)), None)
        if item is None and group is not None and group.in_title(group.mapFromScene(pos)):
            rect = group.mapRectToScene(QRectF(6, 2, group.boundingRect().width() - 12, GROUP_TITLE_H - 4))
            self.inline.open_line(rect, group.group.title, lambda t, g=group.group: self.editor.rename_group(g, t))
            return
        if item is None and self.wire_at(pos) is None:
            self.open_search(pos)
            return
        super().mouseDoubleClickEvent(event)

    # --- wires ----------------------------------------------------------------------------------
    def _start_wire(self, item: NodeItem, socket: Socket) -> None:
        scene = self.graph_scene
        lifted = None
        if not socket.is_output and socket.name in item.node.links:
            src, slot = item.node.links[socket.name]
            lifted = Link(src, slot, item.node_id, socket.name)
            scene.wire_items[(item.node_id, socket.name)].setVisible(False)
            source = scene.node_items[src]
            socket = source.output_socket(slot) or Socket(src, True, "", slot, "*")
            item = source
        src_type = scene.output_type(socket.node_id, socket.index) if socket.is_output else socket.type
        wire = DragWire(socket, item.socket_pos(socket), src_type)
        scene.addItem(wire)
        wire.move_to(item.socket_pos(socket))
        self._wire = WireDrag(socket, wire, src_type, lifted)

    def drop_target(self, pos: QPointF) -> tuple[Socket | None, str]:
        """The socket a wire released at ``pos`` would link to, or why it cannot link."""
        drag = self._wire
        item, local = self.node_at(pos)
        if item is None:
            return None, ""
        socket = item.socket_at(local)
        if socket is None and item.node_id == drag.anchor.node_id:
            return None, ""
        candidates = [socket] if socket is not None else self._sockets_facing(item, drag.anchor)
        reason = ""
        for candidate in candidates:
            checked = self.editor.check(drag.anchor, candidate)
            if not isinstance(checked, str):
                return candidate, ""
            reason = reason or checked
        if socket is None and candidates:
            what = "input" if drag.anchor.is_output else "output"
            reason = f"no {what} of {item.title()} fits {drag.src_type}"
        return None, reason

    @staticmethod
    def _sockets_facing(item: NodeItem, anchor: Socket) -> list[Socket]:
        """The sockets of ``item`` a wire from ``anchor`` could end on; free inputs first."""
        if anchor.is_output:
            inputs = sorted(item.spec.inputs, key=lambda i: i.name in item.node.links)
            return [item.input_socket(i.name) for i in inputs]
        return [item.output_socket(k) for k in range(len(item.spec.outputs))]

    def _move_wire(self, pos: QPointF) -> None:
        target, reason = self.drop_target(pos)
        end = self.graph_scene.node_items[target.node_id].socket_pos(target) if target else pos
        self._wire.wire.move_to(end, reason)

    def _finish_wire(self, pos: QPointF) -> None:
        target, reason = self.drop_target(pos)
        drag, self._wire = self._wire, None
        scene = self.graph_scene
        scene.removeItem(drag.wire)
        if drag.lifted is not None and (drag.lifted.dst, drag.lifted.input) in scene.wire_items:
            scene.wire_items[(drag.lifted.dst, drag.lifted.input)].setVisible(True)
        if target is not None:
            reason = self.editor.connect(drag.anchor, target, drag.lifted) or ""
        if reason:
            self.message.emit(f"Not connected: {reason}")
            return
        over_node = self.node_at(pos)[0] is not None
        if target is None and not over_node:
            if drag.lifted is not None:
                self.editor.disconnect(drag.lifted.dst, drag.lifted.input)
            else:
                self.open_search(pos, drag.anchor, drag.src_type)

    def cancel_drag(self) -> None:
        if self._wire is not None:
            drag, self._wire = self._wire, None
            self.graph_scene.removeItem(drag.wire)
            if drag.lifted is not None:
                self.graph_scene.wire_items[(drag.lifted.dst, drag.lifted.input)].setVisible(True)

    # --- parameter rows ------------------------------------------------------------------------
    def _drag_row(self, event) -> None:
        press = self._row
        inp = press.row.input
        dx = event.position().x() - press.start_x
        if press.row.control or inp.type not in ("INT", "FLOAT"):
            return
        if not press.dragging and abs(dx) < 4:
            return
        press.dragging = True
        steps = dx / widgets.DRAG_PIXELS_PER_STEP * (10 if event.modifiers() & Qt.ShiftModifier else 1)
        value = widgets.stepped(inp, press.start_value, steps)
        self.editor.set_value(press.item.node_id, inp.name, value, press.merge_key)

    def _click_row(self, press: RowPress) -> None:
        node_id, inp, row = press.item.node_id, press.row.input, press.row
        value = press.item.node.values.get(inp.name, inp.default_value())
        rect = press.item.mapRectToScene(row.rect)
        if row.control:
            self._menu_at(rect, list(SEED_CONTROLS),
                          widgets.control_text(press.item.node.controls, inp.name),
                          lambda c: self.editor.set_control(node_id, inp.name, c))
        elif inp.type in ("INT", "FLOAT") and press.part != "body":
            self.editor.set_value(node_id, inp.name, widgets.stepped(inp, value, -1 if press.part == "dec" else 1))
        elif inp.type in ("INT", "FLOAT"):
            self.inline.open_line(rect, widgets.format_value(inp, value), lambda t: self._typed(node_id, inp, t))
        elif inp.type == "COMBO" and press.part != "body":
            new = widgets.cycle_option(inp.option_list(), value, -1 if press.part == "dec" else 1)
            self.editor.set_value(node_id, inp.name, new)
        elif inp.type == "COMBO":
            self._menu_at(rect, inp.option_list(), value, lambda v: self.editor.set_value(node_id, inp.name, v))
        elif inp.type == "BOOLEAN":
            self.editor.set_value(node_id, inp.name, not bool(value))
        elif inp.multiline:
            key = cmd.new_merge_key()
            self.inline.open_text(rect, str(value or ""), lambda t: self.editor.set_value(node_id, inp.name, t, key))
        else:
            self.inline.open_line(rect, str(value or ""), lambda t: self.editor.set_value(node_id, inp.name, t))

    def _typed(self, node_id: str, inp, text: str) -> None:
        value, error = widgets.parse_value(inp, text)
        if error:
            self.message.emit(f"{inp.name}: {error}")
        elif node_id in self.graph_scene.graph.nodes:
            self.editor.set_value(node_id, inp.name, value)

    def _menu_at(self, scene_rect: QRectF, options: list[str], current, on_choose) -> None:
        """A non-blocking choice list under a row; a searchable one for long lists."""
        at = self.viewport().mapToGlobal(self.mapFromScene(scene_rect.bottomLeft()))
        if len(options) > LONG_COMBO:
            popup = search.SearchPopup([search.Entry(o, o, "", "") for o in options], self, "Filter…")
            popup.chosen.connect(on_choose)
            popup.open_at(at)
        else:
            popup = QMenu(self)
            for option in options:
                action = popup.addAction(str(option))
                action.setCheckable(True)
                action.setChecked(option == current)
                action.triggered.connect(lambda _=False, o=option: on_choose(o))
            if not options:
                popup.addAction("(no choices available)").setEnabled(False)
            popup.popup(at)
        self.popup = popup

    # --- search ------------------------------------------------------------------------------------
    def open_search(self, scene_pos: QPointF, socket: Socket | None = None, src_type: str | None = None):
        """The node search at ``scene_pos``; with ``socket``, only types that fit it, linked on choice."""
        items = search.entries(self.graph_scene.registry, socket, src_type)
        hint = f"Nodes that take {src_type or socket.type}…" if socket is not None else ""
        popup = search.SearchPopup(items, self, hint)
        popup.chosen.connect(lambda t: self.editor.add_node(t, scene_pos, socket))
        popup.open_at(self.viewport().mapToGlobal(self.mapFromScene(scene_pos)))
        self.popup = popup
        return popup

    def cursor_scene_pos(self) -> QPointF:
        local = self.viewport().mapFromGlobal(self.cursor().pos())
        if not self.viewport().rect().contains(local):
            local = self.viewport().rect().center()
        return self.mapToScene(local)

    # --- keyboard, context menu, drops ------------------------------------------------------------
    def event(self, event):
        if event.type() == QEvent.KeyPress and event.key() == Qt.Key_Tab and not self.inline.is_open:
            self.open_search(self.cursor_scene_pos())
            return True
        return super().event(event)

    def keyPressEvent(self, event):
        if event.key() == Qt.Key_Space and not event.isAutoRepeat():
            self._space = True
            return
        if event.key() == Qt.Key_Escape:
            if self._wire is not None:
                self.cancel_drag()
            else:
                self.escape_pressed.emit()
            return
        super().keyPressEvent(event)

    def keyReleaseEvent(self, event):
        if event.key() == Qt.Key_Space and not event.isAutoRepeat():
            self._space = False
            return
        super().keyReleaseEvent(event)

    def contextMenuEvent(self, event):
        pos = self.mapToScene(event.pos())
        item, _ = self.node_at(pos)
        wire = None if item else self.wire_at(pos)
        target = item or wire or next((i for i in self.graph_scene.items(pos) if isinstance(i, GroupItem)), None)
        if wire is not None:
            self.graph_scene.select_wire(wire)
        elif target is not None and not target.isSelected():
            self.graph_scene.clearSelection()
            target.setSelected(True)
        self.context_requested.emit(pos, event.globalPos(), target)

    def dragEnterEvent(self, event):
        if event.mimeData().hasUrls():
            event.acceptProposedAction()
        else:
            super().dragEnterEvent(event)

    def dragMoveEvent(self, event):
        if event.mimeData().hasUrls():
            event.acceptProposedAction()
        else:
            super().dragMoveEvent(event)

    def dropEvent(self, event):
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.files_dropped.emit(paths, self.mapToScene(event.position().toPoint()))
        else:
            super().dropEvent(event)
