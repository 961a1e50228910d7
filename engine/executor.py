"""Runs a graph: only the ancestors of its outputs, in topological order, with caching.

One run: resolve seed controls → compile and validate (every problem at once)
→ compute each node's content-addressed cache key → walk the nodes in
topological order, serving cached outputs and executing the rest, evaluating
lazy inputs only when a node asks for them → report events throughout.
A node error stops the run with a report naming the node; the executor stays
usable.  Cancellation is checked before every node and at every progress report.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import networkx as nx
import torch

from . import events as ev
from .cache import OutputCache
from .errors import Cancelled, CancelToken
from .graph import Graph
from .paths import Paths, default_paths
from .registry import Registry, default_registry
from .schema import NodeContext, NodeOutput
from .validation import CompiledNode, Problem, Ref, validate

SEED_MAX = 2**64 - 1


@dataclass
class RunResult:
    status: str  # success | error | cancelled | invalid
    problems: list[Problem] = field(default_factory=list)
    error: ev.NodeError | None = None
    ui: dict[str, dict] = field(default_factory=dict)
    values: dict[str, tuple] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    seeds: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "success"


def resolve_seeds(graph: Graph, rng: random.Random | None = None) -> dict[str, dict[str, int]]:
    """Apply each seed control before the run and write the value used into the graph.

    ``randomize`` draws a new value, ``increment``/``decrement`` step it,
    ``fixed`` keeps it.  The graph then holds exactly the seeds this run uses,
    so the saved workflow and the image metadata reproduce the image.
    """
    rng = rng or random.SystemRandom()
    resolved: dict[str, dict[str, int]] = {}
    for node in graph.nodes.values():
        if node.mode != "normal":
            continue
        for name, control in node.controls.items():
            value = node.values.get(name, 0)
            if not isinstance(value, int) or isinstance(value, bool):
                continue
            if control == "randomize":
                new = rng.randint(0, 2**50)  # ComfyUI's frontend draws below 2^50 too
            elif control == "increment":
                new = min(value + 1, SEED_MAX)
            elif control == "decrement":
                new = max(value - 1, 0)
            else:
                continue
            graph.set_value(node.id, name, new)
            resolved.setdefault(node.id, {})[name] = new
    return resolved


def summarize(value: Any, type_name: str = "") -> str:
    """A one-line description of an input value for error messages ("IMAGE 1x512x768x3")."""
    if isinstance(value, torch.Tensor):
        shape = "x".join(str(s) for s in value.shape)
        return f"{type_name or 'tensor'} {shape} {str(value.dtype).replace('torch.', '')}".strip()
    if isinstance(value, dict) and isinstance(value.get("samples"), torch.Tensor):
        extra = " +noise_mask" if value.get("noise_mask") is not None else ""
        return summarize(value["samples"], type_name or "LATENT") + extra
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, (int, float, bool)) or value is None:
        return repr(value)
    if isinstance(value, (list, tuple)):
        return f"{type_name or type(value).__name__} ({len(value)} items)"
    return f"{type_name or ''} {type(value).__name__}".strip()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr, separators=(",", ":"))


_default_cache: OutputCache | None = None


def default_cache() -> OutputCache:
    """The process-wide output cache: every run in this process (CLI or editor) shares it."""
    global _default_cache
    if _default_cache is None:
        _default_cache = OutputCache()
    return _default_cache


class Executor:
    """Runs graphs; keeps the output cache between runs and across workflows."""

    def __init__(self, registry: Registry | None = None, cache: OutputCache | None = None,
                 paths: Paths | None = None):
        self.registry = registry or default_registry()
        self.cache = cache if cache is not None else default_cache()
        self.paths = paths or default_paths()

    def run(self, graph: Graph, *, targets=None, on_event: Callable[[ev.Event], None] | None = None,
            cancel: CancelToken | None = None, force=(), use_cache: bool = True,
            apply_seed_controls: bool = True, run_info: dict | None = None) -> RunResult:
        """Run ``targets`` (default: every output node) and what they need.

        ``force`` names nodes that run even when cached (their descendants too);
        ``use_cache=False`` neither reads nor writes the cache.  ``run_info``
        reaches nodes through ``ctx.run_info`` (SaveImage embeds the workflow from it).
        """
        emit = on_event or (lambda e: None)
        cancel = cancel or CancelToken()
        start = time.perf_counter()
        result = RunResult(status="success")

        if apply_seed_controls:
            result.seeds = resolve_seeds(graph)
            if result.seeds:
                emit(ev.SeedsResolved(result.seeds))
        plan = validate(graph, self.registry, targets)
        compiled, needed, problems = plan
        if problems:
            result.status, result.problems = "invalid", problems
            result.seconds = time.perf_counter() - start
            emit(ev.RunFinished("invalid", result.seconds, [], []))
            return result

        targets = list(targets) if targets is not None else [n for n in needed if compiled[n].cls.OUTPUT_NODE]
        order = list(nx.topological_sort(plan.dag))
        keys, stable = self._cache_keys(compiled, order)
        dirty = _descendants_of(compiled, order, set(force))
        eager = _eager_nodes(compiled, targets, order)
        info = {"graph": graph, "registry": self.registry, **(run_info or {})}

        def from_cache(node_id):
            if not use_cache or node_id in dirty or not stable[node_id]:
                return None
            return self.cache.get(keys[node_id]) if keys[node_id] in self.cache else None

        emit(ev.RunStarted(nodes=eager, cached=[n for n in eager if use_cache and n not in dirty
                                                and stable[n] and keys[n] in self.cache]))
        outputs: dict[str, tuple] = {}
        current = None
        try:
            def evaluate(node_id: str) -> None:
                nonlocal current
                cancel.check()
                node = compiled[node_id]
                entry = from_cache(node_id)
                if entry is not None:
                    outputs[node_id] = entry.values
                    result.cached.append(node_id)
                    if entry.ui:
                        result.ui[node_id] = entry.ui
                    emit(ev.NodeCached(node_id, entry.ui))
                    return
                inputs = {name: (outputs[v.src][v.slot] if isinstance(v, Ref) else v)
                          for name, v in node.inputs.items() if not _is_lazy(node, name)}
                current = node_id
                emit(ev.NodeStarted(node_id, node.type, node.title))
                t0 = time.perf_counter()
                ctx = NodeContext(node_id, report=lambda nid, f, p, t: emit(ev.NodeProgress(nid, f, p, t)),
                                  cancel=cancel, paths=self.paths, run_info=info)
                instance = node.cls(ctx)
                self._resolve_lazy(node, instance, inputs, outputs, run_subgraph)
                current = node_id
                with torch.inference_mode():
                    returned = instance.execute(**inputs)
                values, ui = (returned.values, returned.ui) if isinstance(returned, NodeOutput) else (returned, {})
                values = tuple(values) if values is not None else ()
                seconds = time.perf_counter() - t0
                outputs[node_id] = values
                result.timings[node_id] = seconds
                result.executed.append(node_id)
                if ui:
                    result.ui[node_id] = ui
                if use_cache and stable[node_id]:
                    self.cache.put(keys[node_id], values, ui)
                emit(ev.NodeFinished(node_id, seconds, ui))
                current = None

            def run_subgraph(src: str) -> None:
                """Evaluate a lazily requested source and whatever it needs, in order."""
                wanted = nx.ancestors(plan.dag, src) | {src}
                for node_id in order:
                    if node_id in wanted and node_id not in outputs:
                        evaluate(node_id)

            for node_id in eager:
                if node_id not in outputs:
                    evaluate(node_id)
        except Cancelled:
            result.status = "cancelled"
        except Exception as exc:  # a node failed: report it, keep the engine usable
            node = compiled[current] if current else None
            result.status = "error"
            result.error = ev.NodeError(
                node_id=current or "", node_type=node.type if node else "", title=node.title if node else "",
                message=str(exc) or type(exc).__name__, exception_type=type(exc).__name__,
                inputs=self._summarize_inputs(node, outputs) if node else {},
                traceback=traceback.format_exc())
            emit(result.error)
        result.values = {t: outputs[t] for t in targets if t in outputs}
        result.seconds = time.perf_counter() - start
        emit(ev.RunFinished(result.status, result.seconds, list(result.executed), list(result.cached)))
        return result

    # --- helpers -----------------------------------------------------------
    def _resolve_lazy(self, node: CompiledNode, instance, inputs: dict, outputs: dict, run_subgraph) -> None:
        lazy = [i.name for i in node.cls.INPUTS if i.lazy and i.name in node.inputs]
        if not lazy:
            return
        for name in lazy:
            value = node.inputs[name]
            inputs[name] = None if isinstance(value, Ref) else value
        while True:
            wanted = [n for n in instance.check_lazy(**inputs) or []
                      if n in lazy and isinstance(node.inputs[n], Ref) and inputs[n] is None]
            if not wanted:
                return
            for name in wanted:
                ref = node.inputs[name]
                if ref.src not in outputs:
                    run_subgraph(ref.src)
                inputs[name] = outputs[ref.src][ref.slot]

    def _cache_keys(self, compiled: dict[str, CompiledNode], order: list[str]):
        keys: dict[str, str] = {}
        stable: dict[str, bool] = {}
        for node_id in order:
            node = compiled[node_id]
            cls = node.cls
            literals = {k: v for k, v in node.inputs.items() if not isinstance(v, Ref)}
            is_stable = all(stable[v.src] for _, v in node.refs())
            try:
                fingerprint = cls.fingerprint(**literals)
            except Exception:
                fingerprint, is_stable = None, False
            if isinstance(fingerprint, float) and math.isnan(fingerprint):
                is_stable = False
            parts = [cls.TYPE, cls.VERSION, node_id if cls.NOT_IDEMPOTENT else None, repr(fingerprint),
                     sorted((k, ["link", keys[v.src], v.slot] if isinstance(v, Ref) else ["value", v])
                            for k, v in node.inputs.items())]
            if not is_stable:
                parts.append(random.random())
            keys[node_id] = hashlib.sha256(_canonical(parts).encode()).hexdigest()
            stable[node_id] = is_stable
        return keys, stable

    def _summarize_inputs(self, node: CompiledNode, outputs: dict) -> dict[str, str]:
        summary = {}
        for inp in node.cls.INPUTS:
            value = node.inputs.get(inp.name)
            if isinstance(value, Ref):
                if value.src not in outputs:
                    summary[inp.name] = f"{inp.type} (not evaluated)"
                    continue
                value = outputs[value.src][value.slot]
            if inp.name in node.inputs:
                summary[inp.name] = summarize(value, inp.type if not inp.is_widget else "")
        return summary


def _is_lazy(node: CompiledNode, name: str) -> bool:
    inp = node.cls.input(name)
    return bool(inp and inp.lazy)


def _eager_nodes(compiled: dict[str, CompiledNode], targets: list[str], order: list[str]) -> list[str]:
    """Targets and the ancestors reachable through non-lazy inputs, in run order."""
    seen: set[str] = set()
    stack = list(targets)
    while stack:
        node_id = stack.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        node = compiled[node_id]
        stack.extend(ref.src for name, ref in node.refs() if not _is_lazy(node, name))
    return [n for n in order if n in seen]


def _descendants_of(compiled: dict[str, CompiledNode], order: list[str], roots: set[str]) -> set[str]:
    dirty = set(roots)
    for node_id in order:
        if any(ref.src in dirty for _, ref in compiled[node_id].refs()):
            dirty.add(node_id)
    return dirty
