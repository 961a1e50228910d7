"""Random graphs through validation and the executor: clean results, never a crash or a hang."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.cache import OutputCache
from engine.executor import Executor
from engine.graph import Graph
from engine.registry import Registry
from engine.validation import validate
from tests import engine_nodes as tn

FULL = Registry()
FULL.load_builtin()
TEST = tn.registry()
SAFE_TYPES = ["TConst", "TAdd", "TSeeded", "TOut", "TSwitch", "TFail", "TVolatile", "Reroute", "PrimitiveNode",
              "Note", "NoSuchNode"]

values = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                   st.text(max_size=8), st.lists(st.integers(), max_size=3),
                   st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@st.composite
def graphs(draw, types):
    g = Graph()
    n = draw(st.integers(1, 12))
    for i in range(n):
        node_type = draw(st.sampled_from(types))
        cls = FULL.get(node_type) or TEST.get(node_type)
        names = [inp.name for inp in cls.INPUTS] if cls else ["x"]
        names += ["undeclared"]
        vals = {name: draw(values) for name in names if draw(st.booleans())}
        mode = draw(st.sampled_from(["normal", "normal", "normal", "muted", "bypassed"]))
        g.add_node(node_type, vals, id=str(i), mode=mode,
                   controls={"seed": draw(st.sampled_from(["fixed", "increment", "randomize", "bogus"]))})
    for _ in range(draw(st.integers(0, 2 * n))):
        src, dst = str(draw(st.integers(0, n - 1))), str(draw(st.integers(0, n - 1)))
        cls = FULL.get(g.nodes[dst].type) or TEST.get(g.nodes[dst].type)
        names = [inp.name for inp in cls.INPUTS] if cls and cls.INPUTS else ["x"]
        g.connect(src, draw(st.integers(-1, 3)), dst, draw(st.sampled_from(names + ["bogus"])))
    return g


@settings(max_examples=100, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(graphs(sorted(FULL.types) + ["NoSuchNode"]))
def test_validation_of_random_graphs_never_crashes(graph):
    plan = validate(graph, FULL)
    for problem in plan.problems:
        assert problem.kind and problem.message
        assert problem.node_id is None or problem.node_id in graph.nodes


@settings(max_examples=100, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
@given(graphs(SAFE_TYPES))
def test_running_random_graphs_gives_a_clean_status(graph):
    result = Executor(TEST, OutputCache(), None).run(graph)
    assert result.status in ("success", "error", "invalid")
    if result.status == "error":
        assert result.error.node_id in graph.nodes and result.error.message
    if result.status == "invalid":
        assert result.problems
