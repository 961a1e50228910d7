"""The workflow graph model: nodes, links, groups.  Qt-free.

The editor is a view of this model: it subscribes with :meth:`Graph.subscribe`
and performs every edit through the methods here.  Node ids are strings and
never change once given; a link is stored on its destination input, so an input
has at most one link.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

MODES = ("normal", "muted", "bypassed")


@dataclass(frozen=True)
class Link:
    src: str
    slot: int
    dst: str
    input: str


@dataclass
class GraphNode:
    id: str
    type: str
    values: dict[str, Any] = field(default_factory=dict)
    links: dict[str, tuple[str, int]] = field(default_factory=dict)
    title: str | None = None
    pos: tuple[float, float] = (0.0, 0.0)
    size: tuple[float, float] | None = None
    mode: str = "normal"
    collapsed: bool = False
    color: str | None = None
    # Seed-like inputs: input name -> fixed | increment | decrement | randomize.
    controls: dict[str, str] = field(default_factory=dict)
    # Schema version the values were written with (migrated on load).
    version: int = 1
    # Data Loom does not interpret but must keep (placeholder sockets,
    # ComfyUI properties, raw widgets_values of unknown types ...).
    extra: dict[str, Any] = field(default_factory=dict)

    def display_title(self) -> str:
        return self.title or self.type


@dataclass
class Group:
    title: str
    bounding: tuple[float, float, float, float]
    color: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GraphEvent:
    """A change notification: kind is one of node_added, node_removed,
    link_added, link_removed, value_changed, node_changed, group_changed."""

    kind: str
    node_id: str | None = None
    data: Any = None


class Graph:
    def __init__(self):
        self.nodes: dict[str, GraphNode] = {}
        self.groups: list[Group] = []
        self.extra: dict[str, Any] = {}
        self._listeners: list[Callable[[GraphEvent], None]] = []

    # --- observation ----------------------------------------------------
    def subscribe(self, listener: Callable[[GraphEvent], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _emit(self, kind: str, node_id: str | None = None, data: Any = None) -> None:
        event = GraphEvent(kind, node_id, data)
        for listener in list(self._listeners):
            listener(event)

    # --- nodes ----------------------------------------------------------
    def new_id(self) -> str:
        numeric = [int(i) for i in self.nodes if i.isdigit()]
        return str(max(numeric, default=0) + 1)

    def add_node(self, type: str, values: dict | None = None, *, id: str | None = None, **attrs) -> GraphNode:
        node_id = str(id) if id is not None else self.new_id()
        if node_id in self.nodes:
            raise ValueError(f"node id {node_id!r} already exists")
        node = GraphNode(id=node_id, type=type, values=dict(values or {}), **attrs)
        self.nodes[node_id] = node
        self._emit("node_added", node_id, node)
        return node

    def insert_node(self, node: GraphNode) -> None:
        """Put back a node object as it was (undo of a delete); links included."""
        if node.id in self.nodes:
            raise ValueError(f"node id {node.id!r} already exists")
        self.nodes[node.id] = node
        self._emit("node_added", node.id, node)
        for name, (src, slot) in node.links.items():
            self._emit("link_added", node.id, Link(src, slot, node.id, name))

    def remove_node(self, node_id: str) -> tuple[GraphNode, list[Link]]:
        """Remove a node and every link touching it; returns both for undo."""
        removed = [l for l in self.links() if l.src == node_id and l.dst != node_id]
        for link in removed:
            self.disconnect(link.dst, link.input)
        node = self.nodes.pop(node_id)
        self._emit("node_removed", node_id, node)
        return node, removed

    def set_value(self, node_id: str, name: str, value: Any) -> Any:
        node = self.nodes[node_id]
        old = node.values.get(name)
        node.values[name] = value
        self._emit("value_changed", node_id, (name, value, old))
        return old

    def update_node(self, node_id: str, **attrs) -> dict[str, Any]:
        """Change title, pos, size, mode, collapsed, color or controls; returns old values."""
        node = self.nodes[node_id]
        old = {}
        for key, value in attrs.items():
            if key not in ("title", "pos", "size", "mode", "collapsed", "color", "controls"):
                raise AttributeError(f"cannot set {key!r} on a node")
            if key == "mode" and value not in MODES:
                raise ValueError(f"mode must be one of {MODES}, not {value!r}")
            old[key] = getattr(node, key)
            setattr(node, key, value)
        self._emit("node_changed", node_id, attrs)
        return old

    # --- links ----------------------------------------------------------
    def connect(self, src: str, slot: int, dst: str, input: str) -> Link | None:
        """Link ``src``'s output ``slot`` to ``dst.input``; returns the link it replaced."""
        if src not in self.nodes or dst not in self.nodes:
            raise KeyError(f"cannot link {src}->{dst}: unknown node")
        previous = self.disconnect(dst, input) if input in self.nodes[dst].links else None
        self.nodes[dst].links[input] = (src, int(slot))
        self._emit("link_added", dst, Link(src, int(slot), dst, input))
        return previous

    def disconnect(self, dst: str, input: str) -> Link | None:
        target = self.nodes[dst]
        if input not in target.links:
            return None
        src, slot = target.links.pop(input)
        link = Link(src, slot, dst, input)
        self._emit("link_removed", dst, link)
        return link

    def links(self) -> Iterator[Link]:
        for node in self.nodes.values():
            for name, (src, slot) in node.links.items():
                yield Link(src, slot, node.id, name)

    def consumers(self, node_id: str) -> list[Link]:
        return [l for l in self.links() if l.src == node_id]

    # --- groups ---------------------------------------------------------
    def add_group(self, group: Group) -> Group:
        self.groups.append(group)
        self._emit("group_changed", None, group)
        return group

    def update_group(self, group: Group, **attrs) -> dict[str, Any]:
        """Change a group's title, bounding or colour; returns the old values (for undo)."""
        old = {}
        for key, value in attrs.items():
            if key not in ("title", "bounding", "color"):
                raise AttributeError(f"cannot set {key!r} on a group")
            old[key] = getattr(group, key)
            setattr(group, key, value)
        self._emit("group_changed", None, group)
        return old

    def remove_group(self, group: Group) -> None:
        self.groups.remove(group)
        self._emit("group_changed", None, group)

    # --- whole-graph helpers ----------------------------------------------
    def copy(self) -> "Graph":
        other = Graph()
        other.nodes = copy.deepcopy(self.nodes)
        other.groups = copy.deepcopy(self.groups)
        other.extra = copy.deepcopy(self.extra)
        return other

    def subgraph(self, node_ids) -> "Graph":
        """A copy holding only ``node_ids`` and the links among them (copy/paste)."""
        keep = set(node_ids)
        other = Graph()
        for node_id in self.nodes:
            if node_id in keep:
                node = copy.deepcopy(self.nodes[node_id])
                node.links = {k: v for k, v in node.links.items() if v[0] in keep}
                other.nodes[node_id] = node
        return other

    def merge(self, other: "Graph", offset: tuple[float, float] = (0.0, 0.0)) -> dict[str, str]:
        """Add a copy of ``other``'s nodes with fresh ids (paste); returns old id -> new id."""
        mapping: dict[str, str] = {}
        for old_id, node in other.nodes.items():
            new = copy.deepcopy(node)
            new.id = self.new_id()
            new.links = {}
            new.pos = (node.pos[0] + offset[0], node.pos[1] + offset[1])
            mapping[old_id] = new.id
            self.nodes[new.id] = new
            self._emit("node_added", new.id, new)
        for old_id, node in other.nodes.items():
            for name, (src, slot) in node.links.items():
                if src in mapping:
                    self.connect(mapping[src], slot, mapping[old_id], name)
        return mapping

    def __eq__(self, other) -> bool:
        return (isinstance(other, Graph) and self.nodes == other.nodes
                and self.groups == other.groups and self.extra == other.extra)

    def __repr__(self) -> str:
        return f"Graph({len(self.nodes)} nodes, {sum(1 for _ in self.links())} links)"
