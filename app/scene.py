"""The scene: a projection of one :class:`engine.graph.Graph`.

It subscribes to the model's events and keeps one item per node, link and
group.  Edits come back through ``push`` (the undo stack); the scene itself
never edits the model.  Run events are applied to node items here too.
"""
from __future__ import annotations

from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QImage, QUndoStack
from PySide6.QtWidgets import QGraphicsScene

from engine.errors import LoomError
from engine.graph import Graph, GraphEvent, Link
from engine.paths import default_paths
from engine.registry import Registry

from . import commands as cmd
from .groups import GroupItem
from .layout import PRIMITIVE, REROUTE, spec_for
from .node_item import NodeItem
from .wires import WireItem

THUMB_SIZE = 512


def load_thumbnail(path, size: int = THUMB_SIZE) -> QImage | None:
    image = QImage(str(path))
    if image.isNull():
        return None
    if max(image.width(), image.height()) > size:
        image = image.scaled(size, size, Qt.KeepAspectRatio, Qt.SmoothTransformation)
    return image


class GraphScene(QGraphicsScene):
    error_clicked = Signal(str)          # node id whose error box was clicked
    graph_replaced = Signal()

    def __init__(self, registry: Registry, undo: QUndoStack, parent=None):
        super().__init__(parent)
        self.registry = registry
        self.undo = undo
        self.graph = Graph()
        self.node_items: dict[str, NodeItem] = {}
        self.wire_items: dict[tuple[str, str], WireItem] = {}
        self.group_items: dict[int, GroupItem] = {}
        self._retired: dict[str, tuple] = {}   # run state of deleted nodes, given back on undo
        self._unsubscribe = self.graph.subscribe(self._on_event)
        self.setItemIndexMethod(QGraphicsScene.BspTreeIndex)

    # --- the model ----------------------------------------------------------------------
    def set_graph(self, graph: Graph) -> None:
        """Show ``graph`` (a new or opened workflow); rebuilds every item."""
        self._unsubscribe()
        self.clear()
        self.node_items.clear()
        self.wire_items.clear()
        self.group_items.clear()
        self._retired.clear()
        self.graph = graph
        self._unsubscribe = graph.subscribe(self._on_event)
        for node_id in graph.nodes:
            self._add_node_item(node_id)
        for link in graph.links():
            self._add_wire(link)
        self._sync_groups()
        self.graph_replaced.emit()

    def push(self, command) -> None:
        self.undo.push(command)

    def _on_event(self, event: GraphEvent) -> None:
        kind = event.kind
        if kind == "node_added":
            self._add_node_item(event.node_id)
        elif kind == "node_removed":
            self._remove_node_item(event.node_id)
        elif kind == "link_added":
            self._add_wire(event.data)
            self._links_changed(event.data)
        elif kind == "link_removed":
            wire = self.wire_items.pop((event.data.dst, event.data.input), None)
            if wire is not None:
                self._detach(wire)
            self._links_changed(event.data)
        elif kind == "value_changed":
            self._value_changed(event.node_id, event.data[0])
        elif kind == "node_changed":
            self._node_changed(event.node_id, event.data)
        elif kind == "group_changed":
            self._sync_groups()

    def _add_node_item(self, node_id: str) -> NodeItem:
        node = self.graph.nodes[node_id]
        item = NodeItem(node, spec_for(node, self.registry, self.graph))
        self.node_items[node_id] = item
        self.addItem(item)
        item.run, item.problems = self._retired.pop(node_id, (item.run, item.problems))
        self._load_thumbnail(item)
        if item.images() or item.run.error:
            item.relayout()
        return item

    def refresh_thumbnail(self, node_id: str) -> None:
        """Re-read a LoadImage-like node's file (it changed on disk)."""
        item = self.node_items[node_id]
        self._load_thumbnail(item)
        item.relayout()

    def _remove_node_item(self, node_id: str) -> None:
        item = self.node_items.pop(node_id, None)
        if item is None:
            return
        self._retired[node_id] = (item.run, item.problems)
        for key in [k for k, w in self.wire_items.items() if item in (w.src_item, w.dst_item)]:
            self._detach(self.wire_items.pop(key))
        self.removeItem(item)

    def _add_wire(self, link: Link) -> None:
        src, dst = self.node_items.get(link.src), self.node_items.get(link.dst)
        if src is None or dst is None:
            return
        old = self.wire_items.pop((link.dst, link.input), None)
        if old is not None:
            self._detach(old)
        wire = WireItem(link, src, dst, self.output_type(link.src, link.slot))
        src.wires.add(wire)
        dst.wires.add(wire)
        self.wire_items[(link.dst, link.input)] = wire
        self.addItem(wire)
        src.update()
        dst.check_choices()
        dst.update()

    def _detach(self, wire: WireItem) -> None:
        wire.src_item.wires.discard(wire)
        wire.dst_item.wires.discard(wire)
        wire.src_item.update()
        wire.dst_item.check_choices()
        wire.dst_item.update()
        self.removeItem(wire)

    def _links_changed(self, link: Link) -> None:
        """Primitive widgets and reroute colours depend on what they are linked to."""
        for node_id in (link.src, link.dst):
            node = self.graph.nodes.get(node_id)
            if node is not None and node.type == PRIMITIVE:
                self._respec(node_id)
        if any(n.type == REROUTE for n in self.graph.nodes.values()):
            for wire in self.wire_items.values():
                wire.set_type(self.output_type(wire.link.src, wire.link.slot))

    def _respec(self, node_id: str) -> None:
        item = self.node_items[node_id]
        item.spec = spec_for(item.node, self.registry, self.graph)
        item.relayout()

    def _value_changed(self, node_id: str, name: str) -> None:
        item = self.node_items.get(node_id)
        if item is None:
            return
        inp = next((i for i in item.spec.inputs if i.name == name), None)
        if inp is not None and inp.upload:
            self._load_thumbnail(item)
            item.relayout()
        elif inp is not None and inp.type == "COMBO":
            item.check_choices()
        item.update()

    def _node_changed(self, node_id: str, attrs: dict) -> None:
        item = self.node_items.get(node_id)
        if item is None:
            return
        if "pos" in attrs:
            item.setPos(*item.node.pos)
        if {"collapsed", "size", "title"} & set(attrs):
            item.relayout()
        if "mode" in attrs:
            item.sync_mode()
            for wire in item.wires:
                wire.refresh_pen()
        item.update()

    def _sync_groups(self) -> None:
        present = {id(g): g for g in self.graph.groups}
        for key in [k for k in self.group_items if k not in present]:
            self.removeItem(self.group_items.pop(key))
        for key, group in present.items():
            item = self.group_items.get(key)
            if item is None:
                item = self.group_items[key] = GroupItem(group, self._group_dragged)
                self.addItem(item)
            item.sync()

    def _group_dragged(self, item: GroupItem, old, new, moves) -> None:
        resized = (old[2], old[3]) != (new[2], new[3])
        self.push(cmd.MoveItems(self.graph, moves, [(item.group, old, new)],
                                "Resize group" if resized else "Move group"))

    def _load_thumbnail(self, item: NodeItem) -> None:
        """LoadImage-like nodes (an upload input) show their file."""
        upload = next((i for i in item.spec.inputs if i.upload), None)
        if upload is None:
            return
        name = item.node.values.get(upload.name)
        try:
            item.thumbnail = load_thumbnail(default_paths().find_input(name)) if name else None
        except LoomError:
            item.thumbnail = None

    # --- queries ------------------------------------------------------------------------
    def output_type(self, node_id: str, slot: int, seen: tuple = ()) -> str:
        """An output's type; a reroute's is its source's."""
        node = self.graph.nodes.get(node_id)
        if node is None:
            return "*"
        if node.type == REROUTE:
            link = node.links.get("input")
            return self.output_type(*link, (*seen, node_id)) if link and node_id not in seen else "*"
        outputs = self.node_items[node_id].spec.outputs
        return outputs[slot].type if 0 <= slot < len(outputs) else "*"

    def selected_node_ids(self) -> list[str]:
        return [i.node_id for i in self.selectedItems() if isinstance(i, NodeItem)]

    def selected_groups(self) -> list:
        return [i.group for i in self.selectedItems() if isinstance(i, GroupItem)]

    def selected_wires(self) -> list[WireItem]:
        return [w for w in self.wire_items.values() if w.selected]

    def select_wire(self, wire: WireItem | None, add: bool = False) -> None:
        """Wires have their own selection (see ``WireItem``); None clears it."""
        for other in self.wire_items.values():
            if other.selected and other is not wire and not add:
                other.set_selected(False)
        if wire is not None:
            wire.set_selected(True)

    def nodes_in(self, rect: QRectF) -> list[NodeItem]:
        return [i for i in self.node_items.values() if rect.contains(i.sceneBoundingRect().adjusted(8, 8, -8, -8))]

    def moved_nodes(self) -> dict[str, tuple]:
        """Nodes whose item was dragged away from the model position: id -> (old, new)."""
        moves = {}
        for node_id, item in self.node_items.items():
            new = (item.pos().x(), item.pos().y())
            if tuple(item.node.pos) != new:
                moves[node_id] = (tuple(item.node.pos), new)
        return moves

    def graph_rect(self) -> QRectF:
        rect = QRectF()
        for item in [*self.node_items.values(), *self.group_items.values()]:
            rect = rect.united(item.sceneBoundingRect())
        return rect

    # --- run state ----------------------------------------------------------------------
    def clear_run_state(self) -> None:
        """Forget the last run's marks (a new run starts); images stay until replaced."""
        for item in self.node_items.values():
            item.set_run(status="", fraction=0.0, seconds=None, error=None)

    def set_problems(self, problems) -> None:
        """Show validation problems on their nodes (and clear the old ones)."""
        by_node: dict[str, dict] = {}
        for problem in problems:
            if problem.node_id in self.node_items:
                by_node.setdefault(problem.node_id, {})[problem.input] = problem.message
        for node_id, item in self.node_items.items():
            item.problems = by_node.get(node_id, {})
            item.update()
