"""ComfyUI's UI workflow (litegraph serialisation, version 0.4): import and export.

Facts from comfyui.md §3.2-3.3 and ComfyUI's frontend:

- ``widgets_values`` is positional over the widget inputs in schema order, with
  implicit extra slots: a seed control (``fixed|increment|decrement|randomize``)
  after seed-like INT widgets, and the upload button's value after upload combos.
  Legacy files hold ``true``/``false`` in the control slot: the old toggle
  "Random seed after every gen" (``true`` = randomize, ``false`` = fixed).
- A widget converted to an input keeps its value slot; the link goes on the input.
- A link is ``[id, origin_id, origin_slot, target_id, target_slot, type]``; the
  target input's ``link`` field is authoritative (a table entry it does not
  name is stale and ignored, as the frontend ignores it).
- mode 2 = muted (never), 4 = bypassed; other modes run.
- Subgraph instances (``type`` = a definition's uuid) are flattened: inner nodes
  get ids ``"<instance>:<inner>"``, links through the boundary nodes (-10 in,
  -20 out) are joined, and the instance's promoted widget values are pushed into
  the inner widgets they feed (``ExecutableNodeDTO.resolveInput``).

Unknown node types become placeholders whose ``extra`` keeps the raw sockets,
``widgets_values``, ``order`` and everything else, so export writes them back.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

from ..errors import WorkflowFileError
from ..graph import Graph, GraphNode, Group
from ..registry import Registry
from ..schema import SEED_CONTROLS, Input, Node

MODE_FROM_UI = {0: "normal", 2: "muted", 4: "bypassed"}
MODE_TO_UI = {"normal": 0, "muted": 2, "bypassed": 4}
LEGACY_CONTROL = {True: "randomize", False: "fixed"}
DEFAULT_CONTROL = "randomize"  # what ComfyUI gives a new seed widget
SUBGRAPH_IN, SUBGRAPH_OUT = -10, -20
MAX_SUBGRAPH_DEPTH = 16
MAX_FLAT_NODES = 100_000  # subgraphs nesting instances of instances could otherwise expand without bound
LOOM_ID = "loom_id"  # properties key carrying a Loom id that is not an integer
NODE_KEYS = {"id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs",
             "properties", "widgets_values", "color", "bgcolor", "title"}
DOC_KEYS = {"nodes", "links", "groups", "definitions", "last_node_id", "last_link_id", "version"}


def is_ui(doc: Any) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("nodes"), list)


def has_control(inp: Input) -> bool:
    """Whether the frontend adds a control slot after this widget (``useIntWidget.ts``)."""
    return inp.type == "INT" and inp.is_widget and (inp.control_after_generate or inp.name in ("seed", "noise_seed"))


def widget_slots(cls: type[Node]) -> list[tuple[str, Input]]:
    """The layout of ``widgets_values``: (kind, input) with kind value | control | upload."""
    slots = []
    for inp in cls.widget_inputs():
        slots.append(("value", inp))
        if has_control(inp):
            slots.append(("control", inp))
        if inp.upload:
            slots.append(("upload", inp))
    return slots


def _vec2(value: Any) -> tuple[float, float] | None:
    """``[x, y]`` or the older ``{"0": x, "1": y}``; None if neither."""
    if isinstance(value, dict):
        value = [value.get("0"), value.get("1")]
    if (isinstance(value, list) and len(value) >= 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value[:2])):
        return float(value[0]), float(value[1])
    return None


def _slot(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _node_id(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return None
    return str(value)


def _dicts(value: Any) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    """An integer, or None (ids and modes must be hashable and not booleans)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- widgets_values <-> values -----------------------------------------------------------

def _read_control(value: Any) -> str | None:
    if isinstance(value, bool):
        return LEGACY_CONTROL[value]
    return value if value in SEED_CONTROLS else None


def _widgets_from_list(node: GraphNode, cls: type[Node], raw: list, warnings: list[str], where: str) -> None:
    i = 0
    missing = 0
    for kind, inp in widget_slots(cls):
        present = i < len(raw)
        if kind == "value":
            node.values[inp.name] = raw[i] if present else inp.default_value()
        elif kind == "control":
            control = _read_control(raw[i]) if present else None
            node.controls[inp.name] = control or DEFAULT_CONTROL
            if raw[i:i + 1] != [None] and control is None:
                continue  # the file has no control slot here: do not consume a value
        elif present and not (raw[i] is None or raw[i] == inp.upload):
            continue  # no upload slot in this file
        missing += not present and kind == "value"
        i += 1
    if missing:
        warnings.append(f"{where}: {missing} widget value(s) missing (older file); filled with defaults")
    if i < len(raw):
        warnings.append(f"{where}: {len(raw) - i} extra widget value(s) ignored: {raw[i:]!r:.80}")


def _widgets_from_dict(node: GraphNode, cls: type[Node], raw: dict, warnings: list[str], where: str) -> None:
    for kind, inp in widget_slots(cls):
        if kind == "value":
            node.values[inp.name] = raw.get(inp.name, inp.default_value())
        elif kind == "control":
            node.controls[inp.name] = _read_control(raw.get("control_after_generate")) or DEFAULT_CONTROL
    unknown = set(raw) - {i.name for i in cls.widget_inputs()} - {"control_after_generate", "upload"}
    if unknown:
        warnings.append(f"{where}: unknown widget value(s) ignored: {', '.join(sorted(map(str, unknown)))}")


def _widgets_to_list(node: GraphNode, cls: type[Node]) -> list | None:
    slots = widget_slots(cls)
    if not slots:
        return None
    out = []
    for kind, inp in slots:
        if kind == "value":
            out.append(node.values.get(inp.name, inp.default_value()))
        elif kind == "control":
            out.append(node.controls.get(inp.name, DEFAULT_CONTROL))
        else:
            out.append(inp.upload)
    return out


def _primitive_from_list(node: GraphNode, raw: list) -> None:
    """PrimitiveNode: ``[value, control?, ...]``; a control only follows an INT value."""
    if not raw:
        return
    node.values["value"] = raw[0]
    rest = raw[1:]
    is_int = isinstance(raw[0], int) and not isinstance(raw[0], bool)
    if rest and (rest[0] in SEED_CONTROLS or (isinstance(rest[0], bool) and is_int)):
        node.controls["value"] = _read_control(rest[0])
        rest = rest[1:]
    if rest:
        node.extra["widgets_tail"] = rest


def _primitive_to_list(node: GraphNode) -> list:
    out = [node.values["value"]] if "value" in node.values else []
    if "value" in node.controls:
        out.append(node.controls["value"])
    tail = node.extra.get("widgets_tail")
    return out + (tail if isinstance(tail, list) else [])


def default_size(node: GraphNode, cls: type[Node] | None) -> tuple[float, float]:
    """A size for nodes that carry none: a row per socket pair and per widget."""
    if cls is not None:
        sockets = sum(1 for i in cls.INPUTS if not i.is_widget)
        rows = max(sockets, len(cls.OUTPUTS)) + len(cls.widget_inputs())
    else:
        raw = node.extra.get("widgets_values")
        widgets = len(raw) if isinstance(raw, (list, dict)) else 0
        rows = max(len(_dicts(node.extra.get("inputs"))), len(_dicts(node.extra.get("outputs")))) + widgets
    return 315.0, 30.0 + 24.0 * rows


# --- subgraph flattening -----------------------------------------------------------------

@dataclass
class _Link:
    id: Any
    src: Any  # node id (str) or a boundary junction ("in" | "out", instance id)
    slot: int
    dst: Any
    dst_slot: int
    parent: Any = None  # the native reroute the link passes through (root graph only)


def _parse_links(raw_links: Any, warnings: list[str], where: str) -> list[tuple]:
    """Array links (0.4) or object links (subgraph definitions) as (id, origin, slot, target, slot, parent)."""
    out = []
    for i, link in enumerate(raw_links if isinstance(raw_links, list) else []):
        if isinstance(link, list) and len(link) >= 5:
            row = (link[0], link[1], link[2], link[3], link[4], None)
        elif isinstance(link, dict):
            row = tuple(link.get(k) for k in ("id", "origin_id", "origin_slot", "target_id", "target_slot", "parentId"))
        else:
            warnings.append(f"{where}links[{i}]: not a link; ignored")
            continue
        lid, origin, oslot, target, tslot, parent = row
        lid = lid if _int(lid) is not None or isinstance(lid, str) else None
        if _node_id(origin) is None or _node_id(target) is None or _slot(oslot) is None or _slot(tslot) is None:
            warnings.append(f"{where}links[{i}]: malformed link {link!r:.80}; ignored")
            continue
        out.append((lid, origin, _slot(oslot), target, _slot(tslot), _int(parent)))
    return out


class _Flattener:
    """Collects the nodes and links of the root graph and of every subgraph instance, flattened."""

    def __init__(self, definitions: dict[str, dict], registry: Registry, warnings: list[str]):
        self.definitions, self.registry, self.warnings = definitions, registry, warnings
        self.nodes: list[tuple[str, dict, str | None, tuple[float, float]]] = []  # id, raw, forced mode, offset
        self.links: list[_Link] = []
        self.widget_values: dict[str, dict[int, Any]] = {}  # instance id -> {input slot: value}

    def level(self, raw_nodes: list, raw_links: Any, prefix: str = "", forced: str | None = None,
              offset: tuple[float, float] = (0.0, 0.0), stack: tuple = (), parents: dict | None = None) -> None:
        where = f"subgraph {prefix[:-1]}: " if prefix else ""
        instances = {}
        for raw in _dicts(raw_nodes):
            sub = self.definitions.get(raw.get("type")) if isinstance(raw.get("type"), str) else None
            node_id = _node_id(raw.get("id"))
            if node_id is None:
                self.warnings.append(f"{where}a node without a valid id was skipped")
                continue
            if sub is not None and raw["type"] not in stack and len(stack) < MAX_SUBGRAPH_DEPTH:
                instances[node_id] = (raw, sub)
            else:
                self.nodes.append((prefix + node_id, raw, forced, offset))
                if len(self.nodes) > MAX_FLAT_NODES:
                    raise WorkflowFileError(f"subgraphs expand to more than {MAX_FLAT_NODES} nodes")
        for node_id, (raw, sub) in instances.items():
            self._instance(prefix + node_id, raw, sub, forced, offset, stack)

        def endpoint(value: Any, boundary: int, side: str, other_side: str) -> Any:
            """A node id, or the junction a link meets at a subgraph boundary."""
            if prefix and _int(value) == boundary:
                return other_side, prefix[:-1]  # this subgraph's own input or output node
            node_id = prefix + str(value)
            return (side, node_id) if str(value) in instances else node_id

        for lid, origin, oslot, target, tslot, parent in _parse_links(raw_links, self.warnings, where):
            if parents is not None:
                parent = parents.get(lid, parent)
            self.links.append(_Link(lid, endpoint(origin, SUBGRAPH_IN, "out", "in"), oslot,
                                    endpoint(target, SUBGRAPH_OUT, "in", "out"), tslot,
                                    parent if not prefix else None))

    def _instance(self, instance_id: str, raw: dict, sub: dict, forced: str | None,
                  offset: tuple[float, float], stack: tuple) -> None:
        mode = MODE_FROM_UI.get(_int(raw.get("mode")), "normal")
        if mode == "bypassed":
            self.warnings.append(f"subgraph node {instance_id} is bypassed: its inner nodes are bypassed one by one, "
                                 "which may not pass the same inputs through")
        forced = "muted" if "muted" in (forced, mode) else ("bypassed" if "bypassed" in (forced, mode) else None)
        inner = _dicts(sub.get("nodes"))
        placed = _vec2(raw.get("pos")) or (0.0, 0.0)
        corners = [p for p in (_vec2(n.get("pos")) for n in inner) if p is not None] or [(0.0, 0.0)]
        inner_offset = (placed[0] + offset[0] - min(p[0] for p in corners),
                        placed[1] + offset[1] - min(p[1] for p in corners))
        self.widget_values[instance_id] = self._promoted_values(raw, sub, inner)
        self.warnings.append(f"subgraph node {instance_id} ('{sub.get('name', '')}') flattened into "
                             f"{len(inner)} nodes with ids '{instance_id}:<inner id>'")
        self.level(inner, sub.get("links"), instance_id + ":", forced, inner_offset, stack + (raw["type"],))

    def _promoted_values(self, raw: dict, sub: dict, inner: list[dict]) -> dict[int, Any]:
        """The instance's widget values by subgraph input slot (one per input feeding an inner widget)."""
        by_id = {_node_id(n.get("id")): n for n in inner}
        promoted: dict[int, bool] = {}  # input slot -> whether its widget has a control slot
        for _lid, origin, oslot, target, tslot, _parent in _parse_links(sub.get("links"), [], ""):
            node = by_id.get(_node_id(target))
            inputs = node.get("inputs") if node else None
            entry = inputs[tslot] if isinstance(inputs, list) and tslot < len(inputs) else None
            if origin != SUBGRAPH_IN or not isinstance(entry, dict) or not isinstance(entry.get("widget"), dict):
                continue
            cls = self.registry.get(node.get("type")) if isinstance(node.get("type"), str) else None
            inp = cls.input(entry["widget"].get("name")) if cls else None
            promoted[oslot] = promoted.get(oslot, False) or bool(inp and has_control(inp))
        values = raw.get("widgets_values") if isinstance(raw.get("widgets_values"), list) else []
        legacy_controls = len(values) > len(promoted)  # old files kept a control slot after seeds
        out, i = {}, 0
        for slot in sorted(promoted):
            if i < len(values):
                out[slot] = values[i]
            i += 1 + (legacy_controls and promoted[slot])
        return out

    def resolved(self):
        """Links between real nodes, joined across subgraph boundaries.

        Yields ``(link, None)`` for a link, or ``(link, (value,))`` when the
        input is fed by an unlinked subgraph input's widget value instead.
        """
        into = {(l.dst, l.dst_slot): l for l in self.links if isinstance(l.dst, tuple)}
        for link in self.links:
            if isinstance(link.dst, tuple):
                continue
            src, slot, seen = link.src, link.slot, set()
            while isinstance(src, tuple) and (src, slot) in into and (src, slot) not in seen:
                seen.add((src, slot))
                hop = into[(src, slot)]
                src, slot = hop.src, hop.slot
            if isinstance(src, str):
                yield _Link(link.id, src, slot, link.dst, link.dst_slot, link.parent), None
            elif src[0] == "in" and slot in self.widget_values.get(src[1], {}):
                yield link, (self.widget_values[src[1]][slot],)


def _definitions(doc: dict) -> dict[str, dict]:
    found, stack = {}, [doc]
    while stack:
        holder = stack.pop().get("definitions")
        subs = holder.get("subgraphs") if isinstance(holder, dict) else None
        for sub in _dicts(subs):
            if isinstance(sub.get("id"), str) and sub["id"] not in found:
                found[sub["id"]] = sub
                stack.append(sub)
    return found


# --- import ------------------------------------------------------------------------------

def _build_node(node_id: str, raw: dict, forced: str | None, offset: tuple[float, float],
                registry: Registry, warnings: list[str]) -> GraphNode | None:
    node_type = raw.get("type")
    if not isinstance(node_type, str) or not node_type:
        warnings.append(f"node {node_id}: no type; skipped")
        return None
    where = f"node {node_id} ({node_type})"
    cls = registry.get(node_type)
    flags = raw.get("flags") if isinstance(raw.get("flags"), dict) else {}
    pos = _vec2(raw.get("pos")) or (0.0, 0.0)
    node = GraphNode(id=node_id, type=node_type, version=cls.VERSION if cls else 1,
                     pos=(pos[0] + offset[0], pos[1] + offset[1]), collapsed=flags.get("collapsed") is True,
                     title=raw["title"] if isinstance(raw.get("title"), str) else None,
                     color=raw["color"] if isinstance(raw.get("color"), str) else None)
    mode = _int(raw.get("mode", 0))
    own = MODE_FROM_UI.get(mode, "normal")
    node.mode = forced if forced and own != "muted" else own
    extra = node.extra
    if mode is not None and mode not in MODE_FROM_UI:
        extra["mode"] = mode  # litegraph's ON_EVENT / ON_TRIGGER: they run, like ALWAYS
    if other_flags := {k: v for k, v in flags.items() if k != "collapsed"}:
        extra["flags"] = other_flags
    if "bgcolor" in raw:
        extra["bgcolor"] = raw["bgcolor"]
    if properties := {k: v for k, v in _mapping(raw.get("properties")).items() if k != LOOM_ID}:
        extra["properties"] = properties
    if ui := {k: v for k, v in raw.items() if k not in NODE_KEYS}:
        extra["ui"] = ui
    widgets = raw.get("widgets_values")
    if cls is None:
        warnings.append(f"{where}: type is not installed; kept as a placeholder")
        extra["inputs"] = [{k: v for k, v in e.items() if k != "link"} for e in _dicts(raw.get("inputs"))]
        extra["outputs"] = [{k: v for k, v in e.items() if k != "links"} for e in _dicts(raw.get("outputs"))]
        if "widgets_values" in raw:
            extra["widgets_values"] = widgets
        if "order" in raw:
            extra["order"] = raw["order"]
    elif node_type == "PrimitiveNode":
        _primitive_from_list(node, widgets if isinstance(widgets, list) else [])
    elif isinstance(widgets, dict):
        _widgets_from_dict(node, cls, widgets, warnings, where)
    else:
        _widgets_from_list(node, cls, widgets if isinstance(widgets, list) else [], warnings, where)
    node.size = _vec2(raw.get("size")) or default_size(node, cls)
    return node


def _placeholder_key(inputs: list, slot: int) -> str:
    """Links on a placeholder are keyed by input name, or ``#slot`` where names are blank or repeated."""
    name = inputs[slot].get("name") if isinstance(inputs[slot], dict) else None
    names = [e.get("name") for e in inputs if isinstance(e, dict)]
    return name if isinstance(name, str) and name and names.count(name) == 1 else f"#{slot}"


def _slot_entry(raw: dict, slot: int) -> Any:
    inputs = raw.get("inputs") if isinstance(raw.get("inputs"), list) else []
    return inputs[slot] if slot < len(inputs) else None


def _input_name(raw: dict, cls: type[Node] | None, slot: int) -> str | None:
    """The input a link lands on, by the node's ``inputs`` entry, else by position among sockets."""
    inputs = raw.get("inputs") if isinstance(raw.get("inputs"), list) else []
    entry = _slot_entry(raw, slot)
    if cls is None:
        return _placeholder_key(inputs, slot) if entry is not None else None
    if entry is None and inputs:
        return None
    widget = entry.get("widget") if isinstance(entry, dict) else None
    for name in ((widget or {}).get("name") if isinstance(widget, dict) else None,
                 entry.get("name") if isinstance(entry, dict) else None):
        if isinstance(name, str) and cls.input(name) is not None:
            return name
    if widget is not None:
        return None
    position = sum(1 for e in inputs[:slot] if not (isinstance(e, dict) and "widget" in e))
    sockets = [i.name for i in cls.INPUTS if not i.is_widget]
    return sockets[position] if position < len(sockets) else None


def _output_count(node: GraphNode, registry: Registry) -> int:
    cls = registry.get(node.type)
    return len(cls.OUTPUTS) if cls else len(node.extra.get("outputs", []))


def _connect(graph: Graph, flat: _Flattener, raws: dict, rename: dict, registry: Registry,
             warnings: list[str]) -> None:
    for link, pushed in flat.resolved():
        dst = graph.nodes.get(rename.get(link.dst))
        if dst is None:
            warnings.append(f"link {link.id}: target node {link.dst} does not exist; dropped")
            continue
        cls = registry.get(dst.type)
        entry = _slot_entry(raws[link.dst], link.dst_slot)
        if not pushed and isinstance(entry, dict) and "link" in entry and entry["link"] != link.id:
            warnings.append(f"link {link.id}: stale (input slot {link.dst_slot} of node {dst.id} holds "
                            f"link {entry['link']}); dropped")
            continue
        name = _input_name(raws[link.dst], cls, link.dst_slot)
        if name is None:
            if not pushed:
                warnings.append(f"link {link.id}: node {dst.id} has no input slot {link.dst_slot} for it; dropped")
            continue
        if pushed:
            if cls is not None and cls.input(name) is not None and cls.input(name).is_widget:
                dst.values[name] = pushed[0]
            continue
        src = graph.nodes.get(rename.get(link.src))
        if src is None or link.slot >= _output_count(src, registry):
            missing = f"node {link.src}" if src is None else f"output {link.slot} of node {src.id}"
            warnings.append(f"link {link.id}: source {missing} does not exist; dropped")
            continue
        dst.links[name] = (src.id, link.slot)
        if link.parent is not None:
            dst.extra.setdefault("link_reroutes", {})[name] = link.parent


def _doc_extra(doc: dict) -> tuple[dict, dict]:
    """Top-level fields kept for export, and the native-reroute parent of each link id."""
    kept = {k: v for k, v in doc.items() if k not in DOC_KEYS}
    extra = dict(kept["extra"]) if isinstance(kept.get("extra"), dict) else None
    parents = {}
    if extra is not None:
        for ext in _dicts(extra.pop("linkExtensions", None)):
            if _int(ext.get("id")) is not None and _int(ext.get("parentId")) is not None:
                parents[ext["id"]] = ext["parentId"]
        if isinstance(extra.get("reroutes"), list):
            extra["reroutes"] = [{k: v for k, v in r.items() if k != "linkIds"} for r in _dicts(extra["reroutes"])]
        kept["extra"] = extra
    # empty config/extra are what export writes anyway; keeping them would only make Graph -> UI -> Graph differ
    return {k: v for k, v in kept.items() if not (k in ("config", "extra") and v == {})}, parents


def from_ui(doc: Any, registry: Registry) -> tuple[Graph, list[str]]:
    """A Graph from a parsed UI workflow; returns (graph, warnings)."""
    graph, warnings = Graph(), []
    if not is_ui(doc):
        raise WorkflowFileError("not a ComfyUI workflow: no 'nodes' list")
    kept, parents = _doc_extra(doc)
    flat = _Flattener(_definitions(doc), registry, warnings)
    flat.level(doc["nodes"], doc.get("links"), parents=parents)
    raws, rename = {}, {}
    for flat_id, raw, forced, offset in flat.nodes:
        loom_id = _mapping(raw.get("properties")).get(LOOM_ID)
        node_id = loom_id if isinstance(loom_id, str) and loom_id and ":" not in flat_id else flat_id
        if node_id in graph.nodes or flat_id in raws:
            warnings.append(f"node id {node_id} is used twice; the second node was skipped")
            continue
        node = _build_node(node_id, raw, forced, offset, registry, warnings)
        if node is not None:
            graph.nodes[node_id] = node
            raws[flat_id], rename[flat_id] = raw, node_id
    _connect(graph, flat, raws, rename, registry, warnings)
    for i, g in enumerate(_dicts(doc.get("groups"))):
        bounding = g.get("bounding")
        if not (isinstance(bounding, list) and len(bounding) == 4
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bounding)):
            warnings.append(f"groups[{i}]: no valid bounding box; skipped")
            continue
        graph.groups.append(Group(title=str(g.get("title", "")), bounding=tuple(float(v) for v in bounding),
                                  color=g["color"] if isinstance(g.get("color"), str) else None,
                                  extra={k: v for k, v in g.items() if k not in ("title", "bounding", "color")}))
    if kept:
        graph.extra["comfy_ui"] = kept
    return graph, warnings


# --- export ------------------------------------------------------------------------------

def _ui_ids(graph: Graph) -> dict[str, int]:
    """Integer ids for the frontend; ids that are not integers get fresh ones."""
    def is_int(s: str) -> bool:
        return s.isascii() and s.isdigit() and str(int(s)) == s

    ids = {i: int(i) for i in graph.nodes if is_int(i)}
    fresh = max(ids.values(), default=0) + 1
    for node_id in graph.nodes:
        if node_id not in ids:
            ids[node_id], fresh = fresh, fresh + 1
    return ids


def _execution_order(graph: Graph) -> dict[str, int]:
    """Topological order (ties and cycles in graph order), as the frontend's ``order``."""
    position = {node_id: i for i, node_id in enumerate(graph.nodes)}
    consumers: dict[str, list[str]] = {n: [] for n in graph.nodes}
    indegree = dict.fromkeys(graph.nodes, 0)
    for link in graph.links():
        if link.src in consumers and link.src != link.dst:
            consumers[link.src].append(link.dst)
            indegree[link.dst] += 1
    ready = [(position[n], n) for n, d in indegree.items() if d == 0]
    heapq.heapify(ready)
    order: dict[str, int] = {}
    while ready:
        _, node_id = heapq.heappop(ready)
        order[node_id] = len(order)
        for dst in consumers[node_id]:
            indegree[dst] -= 1
            if indegree[dst] == 0:
                heapq.heappush(ready, (position[dst], dst))
    for node_id in graph.nodes:
        order.setdefault(node_id, len(order))
    return order


class _OutputTypes:
    """Concrete types for outputs where one can be found (reroutes and primitives declare ``*``).

    A ``*`` output is followed back through the node's first linked input,
    else typed by its first typed consumer.  Results are memoised along the
    walked path, so long reroute chains cost linear time.
    """

    def __init__(self, graph: Graph, registry: Registry):
        self.graph, self.registry, self.known = graph, registry, {}
        self.consumers: dict[str, list] = {}
        for link in graph.links():
            self.consumers.setdefault(link.src, []).append(link)

    def __call__(self, node_id: str, slot: int) -> str:
        path, result = {}, "*"  # an insertion-ordered set
        while (node_id, slot) not in self.known and node_id in self.graph.nodes and (node_id, slot) not in path:
            path[node_id, slot] = None
            node = self.graph.nodes[node_id]
            cls = self.registry.get(node.type)
            if cls is None:
                outputs = _dicts(node.extra.get("outputs"))
                result = outputs[slot].get("type", "*") if slot < len(outputs) else "*"
                break
            result = cls.OUTPUTS[slot].type if slot < len(cls.OUTPUTS) else "*"
            if result != "*":
                break
            if not node.links:
                result = next((t for t in map(self._consumer_type, self.consumers.get(node_id, ())) if t), "*")
                break
            node_id, slot = next(iter(node.links.values()))
        else:
            result = self.known.get((node_id, slot), "*")
        for key in path:
            self.known[key] = result
        return result

    def _consumer_type(self, link) -> str | None:
        target = self.registry.get(self.graph.nodes[link.dst].type)
        inp = target.input(link.input) if target else None
        return inp.type if inp is not None and inp.type != "*" else None


def _sockets(node: GraphNode, cls: type[Node] | None) -> tuple[list[dict], list[str]]:
    """The exported ``inputs`` entries and the link key of each."""
    if cls is None:
        entries = [dict(e) for e in _dicts(node.extra.get("inputs"))]
        keys = [_placeholder_key(entries, i) for i in range(len(entries))]
        for name in node.links:
            if name not in keys:
                entries.append({"name": name, "type": "*"})
                keys.append(name)
        return entries, keys
    entries = [{"name": i.name, "type": i.type} for i in cls.INPUTS if not i.is_widget]
    entries += [{"name": i.name, "type": i.type, "widget": {"name": i.name}}
                for i in cls.widget_inputs() if i.name in node.links]
    return entries, [e["name"] for e in entries]


def _reroutes(doc_extra: dict, link_parents: dict[int, Any]) -> dict:
    """Rebuild native reroutes' ``linkIds`` and ``linkExtensions`` from each link's parent reroute."""
    reroutes = [dict(r) for r in _dicts(doc_extra.get("reroutes"))]
    parent_of = {r["id"]: _int(r.get("parentId")) for r in reroutes if _int(r.get("id")) is not None}
    passing: dict[Any, list[int]] = {}
    for link_id, parent in link_parents.items():
        seen = set()
        while parent is not None and parent not in seen:
            seen.add(parent)
            passing.setdefault(parent, []).append(link_id)
            parent = parent_of.get(parent)
    for r in reroutes:
        if _int(r.get("id")) in passing:
            r["linkIds"] = passing[r["id"]]
    out = dict(doc_extra)
    if reroutes:
        out["reroutes"] = reroutes
    if link_parents:
        out["linkExtensions"] = [{"id": i, "parentId": p} for i, p in link_parents.items()]
    return out


def to_ui(graph: Graph, registry: Registry) -> dict:
    """ComfyUI's UI workflow for ``graph`` (version 0.4)."""
    ids, order, output_type = _ui_ids(graph), _execution_order(graph), _OutputTypes(graph, registry)
    sockets = {n.id: _sockets(n, registry.get(n.type)) for n in graph.nodes.values()}
    outputs = {}
    for node in graph.nodes.values():
        cls = registry.get(node.type)
        if cls is None:
            outputs[node.id] = [dict(o, links=[]) for o in _dicts(node.extra.get("outputs"))]
        else:
            outputs[node.id] = [{"name": o.name, "type": output_type(node.id, k),
                                 "links": [], "slot_index": k} for k, o in enumerate(cls.OUTPUTS)]
    links, link_parents = [], {}
    for node in graph.nodes.values():
        entries, keys = sockets[node.id]
        for index, key in enumerate(keys):
            entries[index]["link"] = None
            if key not in node.links:
                continue
            src, slot = node.links[key]
            if src not in graph.nodes or slot >= len(outputs[src]):
                continue
            link_id = len(links) + 1
            entries[index]["link"] = link_id
            outputs[src][slot]["links"].append(link_id)
            links.append([link_id, ids[src], slot, ids[node.id], index, outputs[src][slot].get("type", "*")])
            parent = _int(_mapping(node.extra.get("link_reroutes")).get(key))
            if parent is not None:
                link_parents[link_id] = parent
    kept = _mapping(graph.extra.get("comfy_ui"))
    doc = {"last_node_id": max(ids.values(), default=0), "last_link_id": len(links),
           "nodes": [_node_to_ui(n, registry, ids, order, sockets[n.id][0], outputs[n.id])
                     for n in graph.nodes.values()],
           "links": links,
           "groups": [{**g.extra, "title": g.title, "bounding": list(g.bounding),
                       **({"color": g.color} if g.color else {})} for g in graph.groups],
           "config": kept.get("config", {}),
           "extra": _reroutes(_mapping(kept.get("extra")), link_parents),
           "version": 0.4}
    return {**{k: v for k, v in kept.items() if k not in doc}, **doc}


def _node_to_ui(node: GraphNode, registry: Registry, ids: dict, order: dict, inputs: list, outputs: list) -> dict:
    cls = registry.get(node.type)
    extra = node.extra
    properties = dict(_mapping(extra.get("properties")))
    if str(ids[node.id]) != node.id:
        properties[LOOM_ID] = node.id
    flags = dict(_mapping(extra.get("flags")), **({"collapsed": True} if node.collapsed else {}))
    mode = MODE_TO_UI[node.mode] if node.mode != "normal" else extra.get("mode", 0)
    d = {"id": ids[node.id], "type": node.type, "pos": list(node.pos),
         "size": list(node.size or default_size(node, cls)), "flags": flags,
         "order": extra["order"] if cls is None and "order" in extra else order[node.id],
         "mode": mode, "inputs": inputs, "outputs": outputs, "properties": properties}
    if cls is None:
        if "widgets_values" in extra:
            d["widgets_values"] = extra["widgets_values"]
    else:
        widgets = _primitive_to_list(node) if node.type == "PrimitiveNode" else _widgets_to_list(node, cls)
        if widgets is not None:
            d["widgets_values"] = widgets
    if node.title:
        d["title"] = node.title
    if node.color:
        d["color"] = node.color
    if "bgcolor" in extra:
        d["bgcolor"] = extra["bgcolor"]
    return {**_mapping(extra.get("ui")), **d}
