"""Fuzzing load_workflow: any input either loads or raises WorkflowFileError, quickly.

A graph that loads must also export to every format (SaveImage embeds them all in its PNGs).
The examples are the same on every run, so CI does not pass or fail by chance; ``LOOM_FUZZ_EXPLORE=1``
draws new ones (run it after changing the workflow code).
"""
import copy
import json
import os
import time
from pathlib import Path

import pytest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import WorkflowFileError
from engine.workflow import load_workflow, to_api, to_ui
from engine.workflow.native import dumps_native, to_native
from engine.workflow.png import PNG_SIGNATURE
from tests.fixtures.workflows.comfy_nodes import comfy_registry

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "workflows").glob("*.json"))
REGISTRY = comfy_registry()
DOCS = [json.loads(p.read_text()) for p in FIXTURES]
GRAPHS = [load_workflow(p, REGISTRY).graph for p in FIXTURES if p.name.startswith("ui_")]
DOCS += [to_native(g) for g in GRAPHS] + [to_api(g, REGISTRY) for g in GRAPHS if to_api(g, REGISTRY)]
FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow],
               derandomize=not os.environ.get("LOOM_FUZZ_EXPLORE"), database=None)

scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | \
    st.sampled_from([-20, -10, 0, 1, 2, 4, "", "0", "1", "KSampler", "Reroute", "PrimitiveNode", "*",
                     "fixed", "image", "loom-workflow", "5b0d3b52-8a8b-4b9e-9a47-0d7c1f2e3a41"]) | st.text(max_size=8)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6) |
                           st.dictionaries(st.text(max_size=6) | st.sampled_from(
                               ["id", "type", "nodes", "links", "inputs", "outputs", "widgets_values", "class_type",
                                "format", "format_version", "link", "widget", "name", "mode", "pos", "size",
                                "definitions", "subgraphs", "values", "extra", "reroutes", "linkExtensions"]),
                               inner, max_size=6), max_leaves=25)


def check(source) -> None:
    """Loading either succeeds (and the graph exports everywhere) or raises WorkflowFileError."""
    try:
        loaded = load_workflow(source, REGISTRY)
    except WorkflowFileError as exc:
        assert str(exc)
        return
    graph = loaded.graph
    json.dumps(to_api(graph, REGISTRY))
    ui = to_ui(graph, REGISTRY)
    json.dumps(ui)
    dumps_native(graph)
    load_workflow(json.dumps(ui).encode(), REGISTRY)


def containers(doc, path=()):
    """Every (path, container) inside a JSON document."""
    yield path, doc
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for key, value in items:
        if isinstance(value, (dict, list)):
            yield from containers(value, path + (key,))


def mutate(doc, data):
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, 4))):
        found = list(containers(doc))
        _, target = found[data.draw(st.integers(0, len(found) - 1))]
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        action = data.draw(st.sampled_from(["replace", "delete", "duplicate", "add"]))
        if action == "add" or not keys:
            if isinstance(target, dict):
                target[data.draw(st.text(max_size=6))] = data.draw(json_values)
            else:
                target.append(data.draw(json_values))
            continue
        key = keys[data.draw(st.integers(0, len(keys) - 1))]
        if action == "replace":
            target[key] = data.draw(json_values)
        elif action == "delete":
            del target[key]
        elif isinstance(target, list):
            target.insert(key, copy.deepcopy(target[key]))
    return doc


@FUZZ
@given(json_values)
def test_random_json(value):
    check(json.dumps(value).encode())


@FUZZ
@given(st.binary(max_size=200) | st.binary(max_size=200).map(lambda b: PNG_SIGNATURE + b))
def test_random_bytes(data):
    check(data)


@settings(FUZZ, max_examples=400)
@given(st.sampled_from(DOCS), st.data())
def test_mutated_fixtures(doc, data):
    check(json.dumps(mutate(doc, data)).encode())


def nested_subgraphs(fan_out: int, depth: int) -> dict:
    """Definition k holds ``fan_out`` instances of definition k+1: fan_out ** depth nodes once flattened."""
    ids = [f"00000000-0000-4000-8000-{k:012d}" for k in range(depth + 1)]
    definitions = [{"id": ids[k], "name": f"level {k}", "links": [],
                    "nodes": [{"id": i, "type": ids[k + 1]} for i in range(fan_out)]} for k in range(depth)]
    definitions.append({"id": ids[depth], "name": "leaf", "links": [],
                        "nodes": [{"id": 1, "type": "Note", "widgets_values": ["leaf"]}]})
    return {"nodes": [{"id": 1, "type": ids[0]}], "links": [], "definitions": {"subgraphs": definitions}}


@pytest.mark.parametrize("doc, message", [
    (nested_subgraphs(fan_out=10, depth=7), "subgraphs expand to more than 100000 nodes"),
    ({"1": {"class_type": "Unknown", "inputs": {}}, "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 10**15]}}},
     None),
])
def test_adversarial_inputs_end_quickly(doc, message):
    start = time.perf_counter()
    if message:
        with pytest.raises(WorkflowFileError, match=message):
            load_workflow(json.dumps(doc).encode(), REGISTRY)
    else:
        check(json.dumps(doc).encode())
    assert time.perf_counter() - start < 5


def test_long_reroute_chain_exports_to_ui():
    nodes = [{"id": i, "type": "Reroute", "inputs": [{"name": "", "type": "*", "link": i - 1 if i > 1 else None}]}
             for i in range(1, 3001)]
    links = [[i, i, 0, i + 1, 0, "*"] for i in range(1, 3000)]
    graph = load_workflow(json.dumps({"nodes": nodes, "links": links}).encode(), REGISTRY).graph
    assert len(list(graph.links())) == 2999
    ui = to_ui(graph, REGISTRY)
    assert len(ui["links"]) == 2999 and ui["nodes"][-1]["order"] == 2999
