"""Executor behaviour: partial re-execution, cache, lazy inputs, errors, cancellation, seeds."""
import threading

import pytest

from engine import events as ev
from engine.cache import OutputCache
from engine.errors import CancelToken
from engine.executor import Executor
from engine.graph import Graph
from engine import validation as V
from tests import engine_nodes as tn


@pytest.fixture
def registry():
    return tn.registry()


@pytest.fixture
def executor(registry, loom_paths):
    tn.RUNS.clear()
    return Executor(registry, OutputCache(), loom_paths)


def chain(a=1, b=2):
    """const(a), const(b) -> add -> out, plus an unrelated dangling const."""
    g = Graph()
    g.add_node("TConst", {"value": a}, id="1")
    g.add_node("TConst", {"value": b}, id="2")
    g.add_node("TAdd", id="3")
    g.connect("1", 0, "3", "a")
    g.connect("2", 0, "3", "b")
    g.add_node("TOut", id="4")
    g.connect("3", 0, "4", "value")
    g.add_node("TConst", {"value": 99}, id="5")  # not an ancestor of any output
    return g


def test_runs_only_ancestors_in_order(executor):
    result = executor.run(chain())
    assert result.ok
    assert result.ui["4"] == {"value": [3]}
    assert set(result.executed) == {"1", "2", "3", "4"}
    assert result.executed.index("3") > result.executed.index("1")
    assert tn.RUNS[("TConst", 99)] == 0


def test_changing_one_input_reruns_only_downstream(executor):
    g = chain()
    executor.run(g)
    g.set_value("2", "value", 5)
    result = executor.run(g)
    assert result.ui["4"] == {"value": [6]}
    assert set(result.executed) == {"2", "3", "4"}
    assert result.cached == ["1"]
    assert tn.RUNS[("TConst", 1)] == 1


def test_unchanged_rerun_is_fully_cached_and_reports_ui(executor):
    g = chain()
    executor.run(g)
    seen = []
    result = executor.run(g, on_event=seen.append)
    assert result.executed == []
    assert set(result.cached) == {"1", "2", "3", "4"}
    assert result.ui["4"] == {"value": [3]}
    started = next(e for e in seen if isinstance(e, ev.RunStarted))
    assert set(started.cached) == {"1", "2", "3", "4"}


def test_cache_shared_across_workflows_with_other_ids(executor):
    executor.run(chain())
    other = Graph()  # the same sub-graph, other ids, other layout
    other.add_node("TConst", {"value": 1}, id="a")
    other.add_node("TConst", {"value": 2}, id="b")
    other.add_node("TAdd", id="c", pos=(500, 0))
    other.connect("a", 0, "c", "a")
    other.connect("b", 0, "c", "b")
    other.add_node("TConst", {"value": 10}, id="d")
    other.add_node("TAdd", id="e")
    other.connect("c", 0, "e", "a")
    other.connect("d", 0, "e", "b")
    other.add_node("TOut", id="f")
    other.connect("e", 0, "f", "value")
    result = executor.run(other)
    assert result.ui["f"] == {"value": [13]}
    assert {"a", "b", "c"} <= set(result.cached)
    assert tn.RUNS[("TAdd", 1, 2)] == 1


def test_force_rerun_and_cache_off(executor):
    g = chain()
    executor.run(g)
    result = executor.run(g, force={"3"})
    assert set(result.executed) == {"3", "4"}
    assert tn.RUNS[("TAdd", 1, 2)] == 2
    result = executor.run(g, use_cache=False)
    assert set(result.executed) == {"1", "2", "3", "4"}


def test_cache_is_bounded_in_bytes_lru(registry, loom_paths):
    tn.RUNS.clear()
    one = 1 * 64 * 64 * 3 * 4
    executor = Executor(registry, OutputCache(max_bytes=int(2.5 * one)), loom_paths)

    def image_graph(size):
        g = Graph()
        g.add_node("TImage", {"size": size}, id="1")
        g.add_node("TOut", id="2")
        g.connect("1", 0, "2", "value")
        return g

    for _ in range(2):
        executor.run(image_graph(64))
    assert tn.RUNS[("TImage", 64)] == 1
    executor.run(image_graph(63))
    executor.run(image_graph(62))  # evicts the 64 entry (least recently used)
    assert executor.cache.bytes <= executor.cache.max_bytes
    executor.run(image_graph(64))
    assert tn.RUNS[("TImage", 64)] == 2


def test_volatile_fingerprint_always_reruns_with_descendants(executor):
    g = Graph()
    g.add_node("TConst", {"value": 4}, id="1")
    g.add_node("TVolatile", id="2")
    g.connect("1", 0, "2", "x")
    g.add_node("TOut", id="3")
    g.connect("2", 0, "3", "value")
    executor.run(g)
    result = executor.run(g)
    assert set(result.executed) == {"2", "3"}
    assert result.cached == ["1"]


def test_lazy_input_not_evaluated_when_unused(executor):
    g = Graph()
    g.add_node("TConst", {"value": 7}, id="1")
    g.add_node("TConst", {"value": 8}, id="2")
    g.add_node("TSwitch", {"use_a": True}, id="3")
    g.connect("1", 0, "3", "a")
    g.connect("2", 0, "3", "b")
    g.add_node("TOut", id="4")
    g.connect("3", 0, "4", "value")
    result = executor.run(g)
    assert result.ui["4"] == {"value": [7]}
    assert tn.RUNS[("TConst", 8)] == 0
    g.set_value("3", "use_a", False)
    result = executor.run(g)
    assert result.ui["4"] == {"value": [8]}
    assert tn.RUNS[("TConst", 8)] == 1 and tn.RUNS[("TConst", 7)] == 1


def test_error_names_node_and_engine_stays_usable(executor):
    g = Graph()
    g.add_node("TConst", {"value": 3}, id="1")
    g.add_node("TFail", id="2", title="Breaker")
    g.connect("1", 0, "2", "x")
    g.add_node("TOut", id="3")
    g.connect("2", 0, "3", "value")
    g.add_node("TConst", {"value": 1}, id="4")
    g.add_node("TOut", id="5")
    g.connect("4", 0, "5", "value")
    seen = []
    result = executor.run(g, on_event=seen.append)
    assert result.status == "error"
    err = result.error
    assert (err.node_id, err.node_type, err.title) == ("2", "TFail", "Breaker")
    assert "cannot handle 3" in err.message and err.inputs == {"x": "3"}
    assert "ValueError" in err.traceback
    assert "node 2 (Breaker, TFail)" in str(err)
    assert any(isinstance(e, ev.NodeError) for e in seen)
    assert isinstance(seen[-1], ev.RunFinished) and seen[-1].status == "error"
    assert executor.run(chain()).ok  # the engine still works


def test_validation_reports_every_problem_at_once(executor, registry):
    g = Graph()
    g.add_node("TConst", {"value": 5000}, id="1")          # out of range
    g.add_node("TAdd", id="2")                             # b missing
    g.connect("1", 0, "2", "a")
    g.add_node("TOut", id="3")
    g.connect("2", 0, "3", "value")
    g.add_node("SomeCustomNode", {"x": 1}, id="4")         # unknown type
    g.add_node("TOut", id="5")
    g.connect("4", 0, "5", "value")
    g.add_node("ImageScale", {"upscale_method": "magic", "width": 8, "height": 8, "crop": "disabled"}, id="6")
    g.add_node("TConst", {"value": 1}, id="7")
    g.connect("7", 0, "6", "image")                        # INT into IMAGE
    g.add_node("TOut", id="8")
    g.connect("6", 0, "8", "value")
    g.add_node("TAdd", id="9")
    g.connect("1", 3, "9", "a")                            # no output 3
    g.connect("1", 0, "9", "b")
    g.add_node("TOut", id="10")
    g.connect("9", 0, "10", "value")
    result = executor.run(g)
    assert result.status == "invalid" and not result.executed
    kinds = {(p.node_id, p.kind, p.input) for p in result.problems}
    assert kinds == {
        ("1", V.OUT_OF_RANGE, "value"),
        ("2", V.MISSING_INPUT, "b"),
        ("4", V.UNKNOWN_NODE_TYPE, None),
        ("6", V.NOT_IN_OPTIONS, "upscale_method"),
        ("6", V.TYPE_MISMATCH, "image"),
        ("9", V.BAD_OUTPUT_SLOT, "a"),
    }


def test_cycle_detected(executor):
    g = Graph()
    g.add_node("TAdd", id="1")
    g.add_node("TAdd", id="2")
    g.add_node("TConst", {"value": 1}, id="3")
    g.connect("1", 0, "2", "a")
    g.connect("2", 0, "1", "a")
    g.connect("3", 0, "1", "b")
    g.connect("3", 0, "2", "b")
    g.add_node("TOut", id="4")
    g.connect("2", 0, "4", "value")
    result = executor.run(g)
    cycles = [p for p in result.problems if p.kind == V.CYCLE]
    assert len(cycles) == 1 and "1 (TAdd) -> 2 (TAdd)" in cycles[0].message


def test_no_output_nodes(executor):
    g = Graph()
    g.add_node("TConst", {"value": 1})
    result = executor.run(g)
    assert [p.kind for p in result.problems] == [V.NO_OUTPUTS]


def test_cancel_mid_run_stops_at_next_progress(executor):
    g = Graph()
    g.add_node("TConst", {"value": 1}, id="1")
    g.add_node("TSlow", {"steps": 500}, id="2")
    g.connect("1", 0, "2", "x")
    g.add_node("TSlow", {"steps": 5}, id="3")
    g.connect("2", 0, "3", "x")
    g.add_node("TOut", id="4")
    g.connect("3", 0, "4", "value")
    token = CancelToken()
    progress = []

    def on_event(e):
        if isinstance(e, ev.NodeProgress):
            progress.append(e.fraction)
            if len(progress) == 3:
                threading.Timer(0.0, token.cancel).start()

    result = executor.run(g, on_event=on_event, cancel=token)
    assert result.status == "cancelled"
    assert len(progress) < 50
    assert "3" not in result.executed and "4" not in result.executed
    assert executor.run(chain()).ok


def test_seed_controls_resolved_before_run_and_saved_in_graph(executor):
    g = Graph()
    g.add_node("TConst", {"value": 2}, id="1")
    g.add_node("TSeeded", {"seed": 10}, id="2", controls={"seed": "increment"})
    g.connect("1", 0, "2", "x")
    g.add_node("TOut", id="3")
    g.connect("2", 0, "3", "value")
    seen = []
    result = executor.run(g, on_event=seen.append)
    assert result.seeds == {"2": {"seed": 11}}
    assert g.nodes["2"].values["seed"] == 11
    assert result.ui["3"] == {"value": [2011]}
    assert isinstance(seen[0], ev.SeedsResolved)
    g.update_node("2", controls={"seed": "randomize"})
    result = executor.run(g)
    used = g.nodes["2"].values["seed"]
    assert result.ui["3"] == {"value": [2000 + used % 1000]}
    g.update_node("2", controls={"seed": "fixed"})
    assert executor.run(g).seeds == {}


def test_bypassed_node_passes_input_through_and_muted_output_does_not_run(executor):
    g = chain()
    g.add_node("TFail", id="6")
    g.connect("3", 0, "6", "x")
    g.add_node("TOut", id="7")
    g.connect("6", 0, "7", "value")
    g.update_node("6", mode="bypassed")
    result = executor.run(g)
    assert result.ok and result.ui["7"] == {"value": [3]}
    g.update_node("7", mode="muted")
    result = executor.run(g, force={"1"})
    assert "7" not in result.executed


def test_reroute_and_primitive_resolve(executor):
    g = Graph()
    g.add_node("PrimitiveNode", {"value": 4}, id="1")
    g.add_node("TConst", id="2")
    g.connect("1", 0, "2", "value")
    g.add_node("Reroute", id="3")
    g.connect("2", 0, "3", "input")
    g.add_node("TOut", id="4")
    g.connect("3", 0, "4", "value")
    result = executor.run(g)
    assert result.ok and result.ui["4"] == {"value": [4]}


def test_progress_events_carry_fraction(executor):
    g = Graph()
    g.add_node("TConst", {"value": 1}, id="1")
    g.add_node("TSlow", {"steps": 4}, id="2")
    g.connect("1", 0, "2", "x")
    g.add_node("TOut", id="3")
    g.connect("2", 0, "3", "value")
    seen = []
    executor.run(g, on_event=seen.append)
    fractions = [e.fraction for e in seen if isinstance(e, ev.NodeProgress)]
    assert fractions == [0.25, 0.5, 0.75, 1.0]
    finished = {e.node_id: e.seconds for e in seen if isinstance(e, ev.NodeFinished)}
    assert finished["2"] >= 0.04
