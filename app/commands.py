"""Every edit is a ``QUndoCommand`` that calls the graph model's methods.

The canvas never changes its items directly for an edit: it pushes a
command, the command edits :class:`engine.graph.Graph`, and the scene
follows the model's events.  Continuous edits (a value dragged sideways, the
same text field committed twice) carry a ``merge_key`` and merge into one
undo step.  Undo touches only the model: previews, run states and the
output cache stay as they are.
"""
from __future__ import annotations

import copy
import itertools

from PySide6.QtGui import QUndoCommand

from engine.graph import Graph, GraphNode, Group, Link

SET_VALUE_ID = 1001
_sessions = itertools.count(1)


def new_merge_key() -> int:
    """A fresh key for one continuous edit (one drag of one value)."""
    return next(_sessions)


class AddNodes(QUndoCommand):
    """Insert prepared nodes (add, paste, duplicate) with their links among themselves and to the graph."""

    def __init__(self, graph: Graph, nodes: list[GraphNode], text: str = "Add node", extra_links=()):
        super().__init__(text)
        self.graph = graph
        self.nodes = [copy.deepcopy(n) for n in nodes]
        self.extra_links = list(extra_links)  # links from existing nodes into the new ones

    @property
    def ids(self) -> list[str]:
        return [n.id for n in self.nodes]

    def redo(self):
        for node in self.nodes:
            bare = copy.deepcopy(node)
            bare.links = {}
            self.graph.insert_node(bare)
        for node in self.nodes:
            for name, (src, slot) in node.links.items():
                if src in self.graph.nodes:
                    self.graph.connect(src, slot, node.id, name)
        for link in self.extra_links:
            self.graph.connect(link.src, link.slot, link.dst, link.input)

    def undo(self):
        for link in self.extra_links:
            self.graph.disconnect(link.dst, link.input)
        for node in reversed(self.nodes):
            self.graph.remove_node(node.id)


class RemoveNodes(QUndoCommand):
    """Delete nodes; with ``bridge`` each consumer is re-linked to the matching input's source."""

    def __init__(self, graph: Graph, ids, bridges: list[Link] = (), text: str = "Delete"):
        super().__init__(text)
        self.graph = graph
        self.ids = [i for i in ids if i in graph.nodes]
        self.bridges = list(bridges)
        self.removed: list[GraphNode] = []
        self.links: list[Link] = []

    def redo(self):
        gone = set(self.ids)
        self.links = [l for l in self.graph.links() if l.src in gone or l.dst in gone]
        self.removed = []
        for node_id in self.ids:
            node, _ = self.graph.remove_node(node_id)
            self.removed.append(node)
        for link in self.bridges:
            self.graph.connect(link.src, link.slot, link.dst, link.input)

    def undo(self):
        for link in self.bridges:
            self.graph.disconnect(link.dst, link.input)
        for node in self.removed:
            bare = copy.deepcopy(node)
            bare.links = {}
            self.graph.insert_node(bare)
        for link in self.links:
            self.graph.connect(link.src, link.slot, link.dst, link.input)


class Connect(QUndoCommand):
    def __init__(self, graph: Graph, src: str, slot: int, dst: str, input: str):
        super().__init__(f"Connect {input}")
        self.graph, self.link = graph, Link(src, slot, dst, input)
        self.previous: Link | None = None

    def redo(self):
        l = self.link
        self.previous = self.graph.connect(l.src, l.slot, l.dst, l.input)

    def undo(self):
        self.graph.disconnect(self.link.dst, self.link.input)
        if self.previous is not None:
            p = self.previous
            self.graph.connect(p.src, p.slot, p.dst, p.input)


class Disconnect(QUndoCommand):
    def __init__(self, graph: Graph, dst: str, input: str):
        super().__init__(f"Disconnect {input}")
        self.graph, self.dst, self.input = graph, dst, input
        self.link: Link | None = None

    def redo(self):
        self.link = self.graph.disconnect(self.dst, self.input)

    def undo(self):
        if self.link is not None:
            l = self.link
            self.graph.connect(l.src, l.slot, l.dst, l.input)


class SetValue(QUndoCommand):
    """Set one input's value; pushes with the same ``merge_key`` merge into one step."""

    def __init__(self, graph: Graph, node_id: str, name: str, value, merge_key: int | None = None):
        super().__init__(f"Set {name}")
        self.graph, self.node_id, self.name = graph, node_id, name
        self.old = graph.nodes[node_id].values.get(name)
        self.had = name in graph.nodes[node_id].values
        self.new = value
        self.merge_key = merge_key

    def id(self):
        return SET_VALUE_ID if self.merge_key is not None else -1

    def mergeWith(self, other):
        if (isinstance(other, SetValue) and other.merge_key == self.merge_key
                and (other.node_id, other.name) == (self.node_id, self.name)):
            self.new = other.new
            return True
        return False

    def redo(self):
        self.graph.set_value(self.node_id, self.name, self.new)

    def undo(self):
        self.graph.set_value(self.node_id, self.name, self.old)
        if not self.had:
            self.graph.nodes[self.node_id].values.pop(self.name, None)


class UpdateNodes(QUndoCommand):
    """Change attributes (mode, collapsed, title, colour, controls, size) of several nodes at once."""

    def __init__(self, graph: Graph, changes: dict[str, dict], text: str):
        super().__init__(text)
        self.graph = graph
        self.changes = {i: dict(a) for i, a in changes.items() if i in graph.nodes}
        self.old: dict[str, dict] = {}

    def redo(self):
        self.old = {i: self.graph.update_node(i, **copy.deepcopy(a)) for i, a in self.changes.items()}

    def undo(self):
        for node_id, attrs in self.old.items():
            self.graph.update_node(node_id, **attrs)


class MoveItems(QUndoCommand):
    """Node positions and group frames after a drag (one step for the whole drag)."""

    def __init__(self, graph: Graph, nodes: dict[str, tuple], groups=(), text: str = "Move"):
        super().__init__(text)
        self.graph = graph
        self.nodes = dict(nodes)            # id -> (old pos, new pos)
        self.groups = list(groups)          # (group, old bounding, new bounding)

    def _apply(self, which: int):
        for node_id, positions in self.nodes.items():
            if node_id in self.graph.nodes:
                self.graph.update_node(node_id, pos=positions[which])
        for group, *bounds in self.groups:
            set_group(self.graph, group, bounding=bounds[which])

    def redo(self):
        self._apply(1)

    def undo(self):
        self._apply(0)


def set_group(graph: Graph, group: Group, **attrs) -> dict:
    """Change a group's title, bounding or colour through the model (returns the old values)."""
    return graph.update_group(group, **attrs)


class AddGroup(QUndoCommand):
    def __init__(self, graph: Graph, group: Group):
        super().__init__("Add group")
        self.graph, self.group = graph, group

    def redo(self):
        self.graph.add_group(self.group)

    def undo(self):
        self.graph.remove_group(self.group)


class RemoveGroup(QUndoCommand):
    def __init__(self, graph: Graph, group: Group):
        super().__init__("Delete group")
        self.graph, self.group = graph, group

    def redo(self):
        self.graph.remove_group(self.group)

    def undo(self):
        self.graph.add_group(self.group)


class EditGroup(QUndoCommand):
    def __init__(self, graph: Graph, group: Group, text: str = "Edit group", **attrs):
        super().__init__(text)
        self.graph, self.group, self.attrs = graph, group, attrs
        self.old: dict = {}

    def redo(self):
        self.old = set_group(self.graph, self.group, **self.attrs)

    def undo(self):
        set_group(self.graph, self.group, **self.old)
