"""ComfyUI's API "prompt" format: ``{id: {"class_type", "inputs", "_meta"?}}`` (comfyui.md §3.1).

A link is exactly a 2-list ``[source_id: str, output_slot: int]``; a literal list
is wrapped as ``{"__value__": [...]}``.  There are no positions, no muted or
bypassed nodes and no frontend-only nodes.  Import lays the nodes out in
columns by depth; export compiles the graph the way ComfyUI's frontend does
before queueing (:func:`engine.validation.compile_graph`).
"""
from __future__ import annotations

from typing import Any

from ..errors import WorkflowFileError
from ..graph import Graph, GraphNode
from ..registry import Registry
from ..validation import Ref, compile_graph
from .native import need

COLUMN_WIDTH = 400.0
ROW_HEIGHT = 260.0
MAX_OUTPUTS = 256  # a link to a higher slot of an unknown node is taken as corrupt


def is_api(doc: Any) -> bool:
    return (isinstance(doc, dict) and bool(doc) and all(isinstance(v, dict) for v in doc.values())
            and any("class_type" in v for v in doc.values()))


def is_link(value: Any) -> bool:
    """ComfyUI's rule: a 2-list of a string node id and a numeric output slot."""
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], (int, float)) and not isinstance(value[1], bool)
            and float(value[1]).is_integer() and value[1] >= 0)


def unwrap(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"__value__"}:
        return value["__value__"]
    return value


def wrap(value: Any) -> Any:
    """A literal as the API carries it: lists boxed so they are not read as links."""
    return {"__value__": list(value)} if isinstance(value, (list, tuple)) else value


# --- import ------------------------------------------------------------------------------

def _node_from_api(node_id: str, spec: dict, registry: Registry, warnings: list[str]) -> GraphNode:
    where = f"node {node_id}"
    class_type = spec.get("class_type")
    if not isinstance(class_type, str) or not class_type:
        raise WorkflowFileError(f"{where} has no class_type")
    inputs = need(spec.get("inputs", {}), dict, f"{where}.inputs", "an object")
    meta = spec.get("_meta") if isinstance(spec.get("_meta"), dict) else {}
    cls = registry.get(class_type)
    declared = {i.name for i in cls.INPUTS} if cls else None
    node = GraphNode(id=node_id, type=class_type, version=cls.VERSION if cls else 1)
    if isinstance(meta.get("title"), str):
        node.title = meta["title"]
    kept = {k: v for k, v in spec.items() if k not in ("class_type", "inputs", "_meta")}
    if kept:
        node.extra["api"] = kept
    for name, value in inputs.items():
        if is_link(value):
            node.links[name] = (value[0], int(value[1]))
            continue
        if isinstance(value, list):
            warnings.append(f"{where}: input '{name}' is a list but not a link [node id, slot]; kept as a value")
        if declared is None or name in declared:
            node.values[name] = unwrap(value)
        else:  # ComfyUI ignores undeclared inputs; keep them so nothing is lost
            node.extra.setdefault("api_inputs", {})[name] = unwrap(value)
    if cls is None:
        warnings.append(f"{where}: type '{class_type}' is not installed; kept as a placeholder")
    return node


def _check_links(graph: Graph, registry: Registry, warnings: list[str]) -> None:
    """Drop links to missing nodes or outputs; give placeholders the sockets their links imply."""
    for node in graph.nodes.values():
        for name, (src, slot) in list(node.links.items()):
            source = graph.nodes.get(src)
            cls = registry.get(source.type) if source else None
            if source is None or slot >= (len(cls.OUTPUTS) if cls is not None else MAX_OUTPUTS):
                missing = f"node {src}" if source is None else f"output {slot} of node {src}"
                warnings.append(f"node {node.id}: input '{name}' links to {missing}, which does not exist; dropped")
                del node.links[name]
                continue
            out_type = cls.OUTPUTS[slot].type if cls else "*"
            if registry.get(node.type) is None:
                node.extra.setdefault("inputs", []).append({"name": name, "type": out_type})
            if cls is None:
                outputs = source.extra.setdefault("outputs", [])
                outputs.extend({"name": f"output {i}", "type": "*"} for i in range(len(outputs), slot + 1))
                in_cls = registry.get(node.type)
                declared = in_cls.input(name) if in_cls else None
                if declared is not None and outputs[slot]["type"] == "*":
                    outputs[slot]["type"] = declared.type


def layout_columns(graph: Graph) -> None:
    """Place nodes in columns by depth (longest path from a source), rows in id order.

    Depths come from a topological pass; nodes on a cycle keep the depth their
    other predecessors gave them.
    """
    depth = dict.fromkeys(graph.nodes, 0)
    consumers: dict[str, list[str]] = {node_id: [] for node_id in graph.nodes}
    indegree = dict.fromkeys(graph.nodes, 0)
    for link in graph.links():
        if link.src in consumers and link.src != link.dst:
            consumers[link.src].append(link.dst)
            indegree[link.dst] += 1
    ready = [node_id for node_id, d in indegree.items() if d == 0]
    while ready:
        node_id = ready.pop()
        for dst in consumers[node_id]:
            depth[dst] = max(depth[dst], depth[node_id] + 1)
            indegree[dst] -= 1
            if indegree[dst] == 0:
                ready.append(dst)
    rows: dict[int, int] = {}
    for node_id in sorted(graph.nodes, key=lambda i: (len(i), i)):
        column = depth[node_id]
        graph.nodes[node_id].pos = (column * COLUMN_WIDTH, rows.get(column, 0) * ROW_HEIGHT)
        rows[column] = rows.get(column, 0) + 1


def from_api(doc: Any, registry: Registry) -> tuple[Graph, list[str]]:
    """A Graph from a parsed API prompt; returns (graph, warnings)."""
    need(doc, dict, "prompt", "an object")
    graph, warnings = Graph(), []
    for node_id, spec in doc.items():
        need(spec, dict, f"node {node_id}", "an object")
        graph.nodes[node_id] = _node_from_api(node_id, spec, registry, warnings)
    _check_links(graph, registry, warnings)
    layout_columns(graph)
    return graph, warnings


# --- export ------------------------------------------------------------------------------

def to_api(graph: Graph, registry: Registry) -> dict:
    """The prompt ComfyUI would queue for ``graph``: muted, bypassed and virtual nodes resolved away."""
    prompt = {}
    for node in compile_graph(graph, registry).values():
        inputs = {name: [v.src, v.slot] if isinstance(v, Ref) else wrap(v) for name, v in node.inputs.items()}
        for name, value in graph.nodes[node.id].extra.get("api_inputs", {}).items():
            inputs.setdefault(name, wrap(value))
        cls = registry.get(node.type)
        title = graph.nodes[node.id].title or (cls.title() if cls else node.type)
        prompt[node.id] = {"inputs": inputs, "class_type": node.type, "_meta": {"title": title}}
    for spec in prompt.values():  # like graphToPrompt: drop inputs whose source did not make it
        for name, value in list(spec["inputs"].items()):
            if is_link(value) and value[0] not in prompt:
                del spec["inputs"][name]
    return prompt
