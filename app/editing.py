"""Edit operations on the shown graph, each one undoable.

The canvas, the menus and the shortcuts all call these; each builds the
command(s) and pushes them on the undo stack (several commands in one macro
when an operation is one step for the user).
"""
from __future__ import annotations

import copy

from PySide6.QtCore import QPointF

from engine.graph import Graph, GraphNode, Group, Link
from engine.schema import types_compatible

from . import commands as cmd
from .layout import REROUTE, Socket, spec_for
from .scene import GraphScene
from .wires import check_connection

PASTE_OFFSET = 30.0


class Editor:
    def __init__(self, scene: GraphScene):
        self.scene = scene

    @property
    def graph(self) -> Graph:
        return self.scene.graph

    @property
    def undo(self):
        return self.scene.undo

    def push_all(self, text: str, commands) -> None:
        """Push ``commands`` as one undo step."""
        commands = [c for c in commands if c is not None]
        if len(commands) == 1:
            self.undo.push(commands[0])
            return
        self.undo.beginMacro(text)
        for command in commands:
            self.undo.push(command)
        self.undo.endMacro()

    def fresh_ids(self, n: int) -> list[str]:
        start = int(self.graph.new_id())
        return [str(start + i) for i in range(n)]

    # --- nodes ----------------------------------------------------------------------------
    def new_node(self, type_name: str, pos: QPointF, node_id: str | None = None) -> GraphNode:
        """A node of ``type_name`` with its schema's default values (not yet in the graph)."""
        cls = self.scene.registry.get(type_name)
        values, controls = {}, {}
        for inp in cls.widget_inputs() if cls else ():
            values[inp.name] = inp.default_value()
            if inp.control_after_generate:
                controls[inp.name] = "randomize" if "seed" in inp.name else "fixed"
        return GraphNode(id=node_id or self.graph.new_id(), type=type_name, values=values, controls=controls,
                         pos=(float(round(pos.x())), float(round(pos.y()))), version=cls.VERSION if cls else 1)

    def add_node(self, type_name: str, pos: QPointF, link_from: Socket | None = None) -> str:
        """Add a node; when it comes from a dropped wire, link its first fitting socket."""
        node = self.new_node(type_name, pos)
        commands = [cmd.AddNodes(self.graph, [node], f"Add {type_name}")]
        if link_from is not None:
            commands.append(self._link_new(node, link_from))
        self.push_all(f"Add {type_name}", commands)
        return node.id

    def _link_new(self, node: GraphNode, anchor: Socket):
        spec = spec_for(node, self.scene.registry, self.graph)
        if anchor.is_output:
            src_type = self.scene.output_type(anchor.node_id, anchor.index)
            for inp in spec.inputs:
                if types_compatible(src_type, inp.type):
                    return cmd.Connect(self.graph, anchor.node_id, anchor.index, node.id, inp.name)
        else:
            for slot, out in enumerate(spec.outputs):
                if types_compatible(out.type, anchor.type):
                    return cmd.Connect(self.graph, node.id, slot, anchor.node_id, anchor.name)
        return None

    def rename(self, node_id: str, title: str) -> None:
        title = title.strip() or None
        if title != self.graph.nodes[node_id].title:
            self.undo.push(cmd.UpdateNodes(self.graph, {node_id: {"title": title}}, "Rename"))

    def set_value(self, node_id: str, name: str, value, merge_key: int | None = None) -> None:
        if self.graph.nodes[node_id].values.get(name) != value or name not in self.graph.nodes[node_id].values:
            self.undo.push(cmd.SetValue(self.graph, node_id, name, value, merge_key))

    def set_control(self, node_id: str, name: str, control: str) -> None:
        controls = {**self.graph.nodes[node_id].controls, name: control}
        self.undo.push(cmd.UpdateNodes(self.graph, {node_id: {"controls": controls}}, "Seed control"))

    def toggle_mode(self, ids, mode: str) -> None:
        """Bypass or mute the nodes; if all already are, back to normal."""
        ids = [i for i in ids if i in self.graph.nodes]
        if not ids:
            return
        target = "normal" if all(self.graph.nodes[i].mode == mode for i in ids) else mode
        label = {"bypassed": "Bypass", "muted": "Mute"}.get(target, "Unbypass" if mode == "bypassed" else "Unmute")
        self.undo.push(cmd.UpdateNodes(self.graph, {i: {"mode": target} for i in ids}, label))

    def toggle_collapse(self, ids) -> None:
        ids = [i for i in ids if i in self.graph.nodes]
        if ids:
            collapse = not all(self.graph.nodes[i].collapsed for i in ids)
            self.undo.push(cmd.UpdateNodes(self.graph, {i: {"collapsed": collapse} for i in ids},
                                           "Collapse" if collapse else "Expand"))

    def commit_moves(self) -> None:
        moves = self.scene.moved_nodes()
        if moves:
            self.undo.push(cmd.MoveItems(self.graph, moves, text="Move" if len(moves) == 1 else f"Move {len(moves)} nodes"))

    # --- links ----------------------------------------------------------------------------
    def check(self, a: Socket, b: Socket) -> tuple[Socket, Socket] | str:
        """(output, input) when ``a`` and ``b`` (either order) may be linked, else the reason."""
        out = a if a.is_output else b
        return check_connection(self.graph, a, b, self.scene.output_type(out.node_id, out.index))

    def connect(self, a: Socket, b: Socket, lifted: Link | None = None) -> str | None:
        """Link two sockets (in either order); returns the reason when refused."""
        checked = self.check(a, b)
        if isinstance(checked, str):
            return checked
        out, inp = checked
        if inp.node_id in self.graph.nodes and self.graph.nodes[inp.node_id].links.get(inp.name) == (out.node_id, out.index):
            return None
        commands = [cmd.Connect(self.graph, out.node_id, out.index, inp.node_id, inp.name)]
        if lifted is not None and (lifted.dst, lifted.input) != (inp.node_id, inp.name):
            commands.insert(0, cmd.Disconnect(self.graph, lifted.dst, lifted.input))
        self.push_all("Move link" if lifted else "Connect", commands)
        return None

    def disconnect(self, dst: str, input: str) -> None:
        if input in self.graph.nodes[dst].links:
            self.undo.push(cmd.Disconnect(self.graph, dst, input))

    def insert_reroute(self, link: Link, pos: QPointF) -> str:
        node = self.new_node(REROUTE, pos - QPointF(22, 11))
        node.links = {"input": (link.src, link.slot)}
        self.push_all("Add reroute", [cmd.AddNodes(self.graph, [node], "Add reroute"),
                                    cmd.Connect(self.graph, node.id, 0, link.dst, link.input)])
        return node.id

    # --- delete, copy, paste ----------------------------------------------------------------------
    def delete(self, ids=(), groups=(), wires=(), bridge: bool = False) -> None:
        ids = [i for i in ids if i in self.graph.nodes]
        commands = [cmd.Disconnect(self.graph, w.link.dst, w.link.input) for w in wires
                    if w.link.dst not in ids and w.link.src not in ids]
        commands += [cmd.RemoveGroup(self.graph, g) for g in groups]
        if ids:
            commands.append(cmd.RemoveNodes(self.graph, ids, self._bridges(ids) if bridge else (),
                                            "Delete and reconnect" if bridge else "Delete"))
        if commands:
            self.push_all("Delete", commands)

    def _bridges(self, ids) -> list[Link]:
        """For each consumer of a deleted node, a link from the deleted node's matching source."""
        gone = set(ids)
        bridges = []
        for link in self.graph.links():
            if link.src in gone and link.dst not in gone:
                dst = self.scene.node_items[link.dst].input_socket(link.input)
                source = self._bridge_source(link.src, link.slot, dst.type if dst else "*", gone, set())
                if source is not None:
                    bridges.append(Link(source[0], source[1], link.dst, link.input))
        return bridges

    def _bridge_source(self, node_id: str, slot: int, wanted: str, gone: set, seen: set):
        """The source feeding ``node_id`` that can stand in for its output ``slot`` (through deleted nodes)."""
        if node_id in seen:
            return None
        seen.add(node_id)
        node, item = self.graph.nodes[node_id], self.scene.node_items[node_id]
        out_type = self.scene.output_type(node_id, slot)
        linked = sorted((i for i in item.spec.inputs if i.name in node.links), key=lambda i: i.type != out_type)
        for inp in linked:
            src, src_slot = node.links[inp.name]
            if src in gone:
                found = self._bridge_source(src, src_slot, wanted, gone, seen)
                if found is not None:
                    return found
            elif types_compatible(self.scene.output_type(src, src_slot), wanted):
                return src, src_slot
        return None

    def clipboard_graph(self, ids, groups=()) -> Graph:
        """The selection as a stand-alone graph: nodes, their inner links, selected groups."""
        sub = self.graph.subgraph(ids)
        sub.groups = [copy.deepcopy(g) for g in groups]
        return sub

    def paste(self, source: Graph, at: QPointF | None = None) -> list[str]:
        """Add a copy of ``source`` with fresh ids; its top-left lands at ``at`` (else offset)."""
        if not source.nodes and not source.groups:
            return []
        xs = [n.pos[0] for n in source.nodes.values()] + [g.bounding[0] for g in source.groups]
        ys = [n.pos[1] for n in source.nodes.values()] + [g.bounding[1] for g in source.groups]
        dx, dy = ((at.x() - min(xs), at.y() - min(ys)) if at is not None else (PASTE_OFFSET, PASTE_OFFSET))
        mapping = dict(zip(source.nodes, self.fresh_ids(len(source.nodes))))
        nodes = []
        for old_id, node in source.nodes.items():
            new = copy.deepcopy(node)
            new.id = mapping[old_id]
            new.pos = (float(round(node.pos[0] + dx)), float(round(node.pos[1] + dy)))
            new.links = {k: (mapping[s], slot) for k, (s, slot) in node.links.items() if s in mapping}
            nodes.append(new)
        commands = [cmd.AddNodes(self.graph, nodes, "Paste")] if nodes else []
        for group in source.groups:
            x, y, w, h = group.bounding
            commands.append(cmd.AddGroup(self.graph, Group(group.title, (x + dx, y + dy, w, h), group.color,
                                                           copy.deepcopy(group.extra))))
        self.push_all("Paste", commands)
        return [n.id for n in nodes]

    # --- groups and arrangement ---------------------------------------------------------------
    def group(self, ids, title: str = "Group", margin: float = 20.0) -> Group | None:
        items = [self.scene.node_items[i] for i in ids if i in self.scene.node_items]
        if not items:
            return None
        rect = items[0].sceneBoundingRect()
        for item in items[1:]:
            rect = rect.united(item.sceneBoundingRect())
        group = Group(title, (rect.x() - margin, rect.y() - margin - 30.0,
                              rect.width() + 2 * margin, rect.height() + 2 * margin + 30.0))
        self.undo.push(cmd.AddGroup(self.graph, group))
        return group

    def rename_group(self, group: Group, title: str) -> None:
        if title.strip() and title != group.title:
            self.undo.push(cmd.EditGroup(self.graph, group, "Rename group", title=title.strip()))

    def align(self, ids, edge: str) -> None:
        """Line up the nodes' left/right/top/bottom edges, or spread them evenly (h/v)."""
        items = [self.scene.node_items[i] for i in ids if i in self.scene.node_items]
        if len(items) < 2:
            return
        rects = {i.node_id: i.sceneBoundingRect().adjusted(8, 8, -8, -8) for i in items}
        target: dict[str, tuple[float, float]] = {}
        if edge in ("left", "right", "top", "bottom"):
            value = (min if edge in ("left", "top") else max)(getattr(r, edge)() for r in rects.values())
            for node_id, r in rects.items():
                x, y = r.x(), r.y()
                if edge == "left":
                    x = value
                elif edge == "right":
                    x = value - r.width()
                elif edge == "top":
                    y = value
                else:
                    y = value - r.height()
                target[node_id] = (x, y)
        else:
            axis = 0 if edge == "h" else 1
            order = sorted(rects, key=lambda n: (rects[n].x(), rects[n].y())[axis])
            first, last = rects[order[0]], rects[order[-1]]
            start, end = (first.center().x(), last.center().x()) if axis == 0 else (first.center().y(), last.center().y())
            for k, node_id in enumerate(order):
                r = rects[node_id]
                c = start + (end - start) * k / (len(order) - 1)
                target[node_id] = (c - r.width() / 2, r.y()) if axis == 0 else (r.x(), c - r.height() / 2)
        moves = {i: (tuple(self.graph.nodes[i].pos), (float(round(p[0])), float(round(p[1]))))
                 for i, p in target.items() if tuple(self.graph.nodes[i].pos) != (round(p[0]), round(p[1]))}
        if moves:
            self.undo.push(cmd.MoveItems(self.graph, moves, text="Align" if edge in ("left", "right", "top", "bottom")
                                         else "Distribute"))
