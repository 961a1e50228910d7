"""Engine overhead on a 1,000-node graph of trivial nodes.

Run: python -m tests.bench.engine
Prints absolute times and ratios against a baseline measured in the same run
(calling the same node functions directly, with no executor).  Targets from
the engine issue: < 1 ms executor overhead per node, cached re-run < 50 ms,
validation < 100 ms; also the load time of the same graph as a ComfyUI UI file.
"""
from __future__ import annotations

import json
import random
import statistics
import time

import networkx as nx

from engine.cache import OutputCache
from engine.executor import Executor
from engine.graph import Graph
from engine.validation import validate
from engine.workflow import load_workflow
from engine.workflow.comfy_ui import to_ui
from engine.workflow.native import to_native
from tests import engine_nodes as tn

N = 1000


def build(n: int = N, seed: int = 0) -> Graph:
    """n nodes that all run: 100 constants, a chain of adders (each also fed by a random
    earlier node; the first hundred by one constant each), one output at the end."""
    rng = random.Random(seed)
    g = Graph()
    for i in range(100):
        g.add_node("TConst", {"value": i % 50}, id=str(i))
    for i in range(100, n - 1):
        g.add_node("TAdd", id=str(i))
        g.connect(str(i - 1), 0, str(i), "a")
        g.connect(str(i - 100) if i < 200 else str(rng.randrange(0, i - 1)), 0, str(i), "b")
    g.add_node("TOut", id=str(n - 1))
    g.connect(str(n - 2), 0, str(n - 1), "value")
    return g


def direct_baseline(graph: Graph, registry) -> float:
    """Call each node's execute in a precomputed order, no executor: the floor."""
    plan = validate(graph, registry)
    compiled = plan.compiled
    order = list(nx.topological_sort(plan.dag))
    start = time.perf_counter()
    values = {}
    for node_id in order:
        node = compiled[node_id]
        kwargs = {k: (values[v.src][v.slot] if hasattr(v, "src") else v) for k, v in node.inputs.items()}
        out = node.cls().execute(**kwargs)
        values[node_id] = out if isinstance(out, tuple) else out.values
    return time.perf_counter() - start


def timed(fn, repeat=5):
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    registry = tn.registry()
    graph = build()
    compiled, needed, problems = validate(graph, registry)
    assert not problems, problems[:3]
    n = len(needed)

    baseline = timed(lambda: direct_baseline(graph, registry))
    cold = timed(lambda: Executor(registry, OutputCache(), None).run(graph, use_cache=False, apply_seed_controls=False))
    executor = Executor(registry, OutputCache())
    executor.run(graph)
    cached = timed(lambda: executor.run(graph, apply_seed_controls=False))
    validation = timed(lambda: validate(graph, registry))

    print(f"graph: {n} nodes that run")
    print(f"direct calls (baseline):     {baseline * 1e3:8.1f} ms")
    print(f"executor, cache off:         {cold * 1e3:8.1f} ms  = {cold / baseline:5.1f}x baseline; "
          f"overhead {(cold - baseline) / n * 1e3:.3f} ms/node (target < 1)")
    print(f"executor, fully cached:      {cached * 1e3:8.1f} ms  = {cached / baseline:5.1f}x baseline (target < 50 ms)")
    print(f"validation:                  {validation * 1e3:8.1f} ms  (target < 100 ms)")
    ui_text = json.dumps(to_ui(graph, registry))
    load = timed(lambda: load_workflow(ui_text, registry))
    native_text = json.dumps(to_native(graph))
    load_native = timed(lambda: load_workflow(native_text, registry))
    print(f"load 1,000-node UI file:     {load * 1e3:8.1f} ms  ({len(ui_text) / 1e6:.2f} MB of JSON; "
          f"native format {load_native * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
