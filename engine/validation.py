"""From an edited graph to what runs: resolve bypass/mute/reroutes, then validate.

:func:`compile_graph` does what ComfyUI's frontend does when it queues a
workflow (comfyui.md §3.3 "UI→API conversion"): virtual nodes disappear,
links are followed through reroutes and bypassed nodes, muted nodes and their
links are dropped.  :func:`validate` then reports every problem at once, each
with a stable ``kind``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from .graph import Graph, GraphNode
from .registry import Registry
from .schema import Input, Node, types_compatible

# Stable problem kinds (tests, the CLI's --events json and the editor rely on these).
UNKNOWN_NODE_TYPE = "unknown_node_type"
MISSING_INPUT = "missing_input"
TYPE_MISMATCH = "type_mismatch"
OUT_OF_RANGE = "value_out_of_range"
NOT_IN_OPTIONS = "value_not_in_options"
INVALID_VALUE = "invalid_value"
CYCLE = "cycle"
BAD_OUTPUT_SLOT = "output_slot_out_of_range"
BAD_LINK = "bad_link"
CUSTOM = "custom_validation_failed"
NO_OUTPUTS = "no_outputs"


@dataclass(frozen=True)
class Ref:
    """A resolved link: output ``slot`` of compiled node ``src``."""

    src: str
    slot: int


@dataclass(frozen=True)
class Const:
    """A link that resolved to a literal (from a primitive node)."""

    value: Any


@dataclass
class CompiledNode:
    id: str
    type: str
    cls: type[Node] | None
    title: str
    inputs: dict[str, Any] = field(default_factory=dict)  # literal or Ref

    def refs(self):
        return [(name, v) for name, v in self.inputs.items() if isinstance(v, Ref)]


@dataclass(frozen=True)
class Problem:
    kind: str
    message: str
    node_id: str | None = None
    node_type: str | None = None
    title: str | None = None
    input: str | None = None

    def __str__(self) -> str:
        where = f"node {self.node_id} ({self.title or self.node_type})" if self.node_id else "workflow"
        field_ = f", input '{self.input}'" if self.input else ""
        return f"{where}{field_}: {self.message}"

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class ValidationFailed(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# --- compile ------------------------------------------------------------------------

def output_types(node: GraphNode, registry: Registry) -> list[str]:
    cls = registry.get(node.type)
    if cls is not None:
        return [o.type for o in cls.OUTPUTS]
    return [o.get("type", "*") for o in node.extra.get("outputs", [])]


def input_types(node: GraphNode, registry: Registry) -> dict[str, str]:
    cls = registry.get(node.type)
    if cls is not None:
        return {i.name: i.type for i in cls.INPUTS}
    return {i.get("name"): i.get("type", "*") for i in node.extra.get("inputs", [])}


def _resolve_source(graph: Graph, registry: Registry, src: str, slot: int) -> tuple[str, int] | Const | None:
    """Follow a link back through virtual and bypassed nodes; None if it leads nowhere.

    Iterative, so a chain of thousands of reroutes resolves without recursion.
    """
    seen = set()
    while True:
        node = graph.nodes.get(src)
        if node is None or node.mode == "muted" or src in seen:
            return None
        seen.add(src)
        cls = registry.get(node.type)
        if cls is not None and cls.VIRTUAL:
            resolved = cls.virtual_output(node, slot)
            if resolved is None:
                return None
            kind, target = resolved
            if kind == "value":
                return Const(target)
            src, slot = target
        elif node.mode == "bypassed":
            link = _bypass_input(node, slot, registry)
            if link is None:
                return None
            src, slot = link
        else:
            return src, slot


def _bypass_input(node: GraphNode, slot: int, registry: Registry) -> tuple[str, int] | None:
    """The input a bypassed node passes to output ``slot``: the input at the same position if its
    type matches, else the first linked input of that type (ComfyUI's frontend rule)."""
    outs = output_types(node, registry)
    wanted = outs[slot] if 0 <= slot < len(outs) else "*"
    ins = input_types(node, registry)
    names = list(ins)
    candidates = ([names[slot]] if 0 <= slot < len(names) else []) + names
    for name in candidates:
        if name in node.links and types_compatible(ins[name], wanted):
            return node.links[name]
    return None


def compile_graph(graph: Graph, registry: Registry) -> dict[str, CompiledNode]:
    """The executable view of ``graph``: one :class:`CompiledNode` per node that can run."""
    compiled: dict[str, CompiledNode] = {}
    for node in graph.nodes.values():
        cls = registry.get(node.type)
        if node.mode != "normal" or (cls is not None and cls.VIRTUAL):
            continue
        inputs: dict[str, Any] = {}
        declared = [i.name for i in cls.INPUTS] if cls else list(node.values) + list(node.links)
        for name in declared:
            if name in node.links:
                source = _resolve_source(graph, registry, *node.links[name])
                if isinstance(source, Const):
                    inputs[name] = source.value
                elif source is not None:
                    inputs[name] = Ref(*source)
            elif name in node.values and node.values[name] is not None:
                inputs[name] = node.values[name]
        compiled[node.id] = CompiledNode(node.id, node.type, cls, node.display_title(), inputs)
    return compiled


# --- validate -----------------------------------------------------------------------

def output_node_ids(compiled: dict[str, CompiledNode]) -> list[str]:
    return [n.id for n in compiled.values() if n.cls is not None and n.cls.OUTPUT_NODE]


def required_nodes(compiled: dict[str, CompiledNode], targets) -> list[str]:
    """``targets`` and all their ancestors (through lazy links too), targets' order first."""
    seen: dict[str, None] = {}
    stack = [t for t in targets if t in compiled]
    while stack:
        node_id = stack.pop()
        if node_id in seen:
            continue
        seen[node_id] = None
        stack.extend(ref.src for _, ref in compiled[node_id].refs() if ref.src in compiled)
    return list(seen)


def coerce(inp: Input, value: Any) -> tuple[Any, str | None, str | None]:
    """Return (value, problem kind, message) for a literal on input ``inp``."""
    t = inp.type
    try:
        if t == "INT":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                value = int(value)
            value = int(value)
        elif t == "FLOAT":
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
            if math.isnan(value):
                raise ValueError
        elif t == "BOOLEAN":
            if isinstance(value, str):
                if value.lower() not in ("true", "false"):
                    raise ValueError
                value = value.lower() == "true"
            elif value in (0, 1):
                value = bool(value)
            else:
                raise ValueError
        elif t in ("STRING", "COMBO"):
            if not isinstance(value, (str, int, float)) or isinstance(value, bool) and t == "STRING":
                raise ValueError
            value = str(value)
    except (ValueError, TypeError, OverflowError):
        return value, INVALID_VALUE, f"{value!r} is not a valid {t}"
    if t in ("INT", "FLOAT"):
        if inp.min is not None and value < inp.min:
            return value, OUT_OF_RANGE, f"{value} is below the minimum {inp.min}"
        if inp.max is not None and value > inp.max:
            return value, OUT_OF_RANGE, f"{value} is above the maximum {inp.max}"
    if t == "COMBO":
        options = inp.option_list()
        if value not in options:
            shown = ", ".join(options[:20]) + (f" … ({len(options)} in all)" if len(options) > 20 else "")
            return value, NOT_IN_OPTIONS, (f"{value!r} is not one of: {shown}" if options
                                           else f"{value!r} is not available: there are no choices "
                                                f"(model files go in models/<kind>/, input images in input/)")
    return value, None, None


@dataclass
class Plan:
    """What :func:`validate` found: the compiled nodes (literals coerced), the nodes
    that would run (targets first), every problem, and the dependency graph."""

    compiled: dict[str, CompiledNode]
    needed: list[str]
    problems: list[Problem]
    dag: nx.DiGraph

    def __iter__(self):  # compiled, needed, problems = validate(...)
        return iter((self.compiled, self.needed, self.problems))


def validate(graph: Graph, registry: Registry, targets=None) -> Plan:
    """Compile and validate ``graph``.

    ``targets`` defaults to every output node.  Only the nodes that would run
    are validated, so a half-built branch elsewhere does not block a run.
    """
    compiled = compile_graph(graph, registry)
    problems: list[Problem] = []
    targets = list(targets) if targets is not None else output_node_ids(compiled)
    unknown_targets = [t for t in targets if t not in compiled]
    for t in unknown_targets:
        node = graph.nodes.get(t)
        reason = "is muted or bypassed" if node is not None else "does not exist"
        problems.append(Problem(NO_OUTPUTS, f"requested node {reason}", t, node.type if node else None))
    if not targets:
        problems.append(Problem(NO_OUTPUTS, "the workflow has no output node (e.g. SaveImage or PreviewImage) to run"))
    needed = required_nodes(compiled, targets)

    for node_id in needed:
        problems.extend(_validate_node(compiled[node_id], compiled, graph))
    dag = dependency_graph(compiled, needed)
    problems.extend(_cycles(compiled, dag))
    return Plan(compiled, needed, problems, dag)


def _validate_node(node: CompiledNode, compiled, graph: Graph) -> list[Problem]:
    def problem(kind, message, input_name=None):
        return Problem(kind, message, node.id, node.type, node.title, input_name)

    cls = node.cls
    if cls is None:
        return [problem(UNKNOWN_NODE_TYPE, f"node type '{node.type}' is not installed; "
                                           "the node keeps its data but cannot run")]
    out: list[Problem] = []
    literals = {}
    for inp in cls.INPUTS:
        value = node.inputs.get(inp.name)
        if isinstance(value, Ref):
            src = compiled.get(value.src)
            if src is None:
                out.append(problem(BAD_LINK, f"linked to node {value.src}, which does not exist", inp.name))
                continue
            if src.cls is None:
                continue  # reported on the placeholder itself
            if not 0 <= value.slot < len(src.cls.OUTPUTS):
                out.append(problem(BAD_OUTPUT_SLOT, f"linked to output {value.slot} of {src.title}, "
                                                    f"which has {len(src.cls.OUTPUTS)} outputs", inp.name))
                continue
            src_type = src.cls.OUTPUTS[value.slot].type
            if not types_compatible(src_type, inp.type):
                out.append(problem(TYPE_MISMATCH, f"expects {inp.type} but is linked to {src_type} "
                                                  f"(output '{src.cls.OUTPUTS[value.slot].name}' of {src.title})",
                                   inp.name))
        elif value is None:
            if not inp.optional:
                gnode = graph.nodes.get(node.id)
                why = " (its link comes from a muted node)" if gnode and inp.name in gnode.links else ""
                out.append(problem(MISSING_INPUT, f"required input is not connected{why}"
                                   if not inp.is_widget else f"required value is missing{why}", inp.name))
        elif inp.type != "*":
            coerced, kind, message = coerce(inp, value)
            if kind:
                out.append(problem(kind, message, inp.name))
            else:
                node.inputs[inp.name] = coerced
                literals[inp.name] = coerced
    if not out:
        message = cls.validate(**literals)
        if message:
            out.append(problem(CUSTOM, message))
    return out


def dependency_graph(compiled: dict[str, CompiledNode], nodes) -> nx.DiGraph:
    """Edges from each producer to its consumers, over ``nodes``."""
    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    g.add_edges_from((ref.src, node_id) for node_id in nodes for _, ref in compiled[node_id].refs()
                     if ref.src in compiled)
    return g


def _cycles(compiled, g: nx.DiGraph) -> list[Problem]:
    if nx.is_directed_acyclic_graph(g):
        return []
    problems = []
    for component in nx.strongly_connected_components(g):
        if len(component) > 1 or any(g.has_edge(n, n) for n in component):
            ids = sorted(component, key=lambda s: (len(s), s))
            chain = " -> ".join(f"{i} ({compiled[i].title})" for i in ids)
            first = compiled[ids[0]]
            problems.append(Problem(CYCLE, f"the graph has a cycle: {chain}", first.id, first.type, first.title))
    return problems
