"""Every workflow in workflows/ loads, validates and runs (on tiny checkpoints named like the real ones)."""
from pathlib import Path

import pytest

from engine import memory
from engine.executor import Executor
from engine.registry import Registry
from engine.workflow import load_workflow
from tests.sd_fixtures import make_checkpoint

WORKFLOWS = sorted((Path(__file__).resolve().parents[1] / "workflows").glob("*.json"))
# Make each run small: value overrides per node type (sizes in pixels, steps).
SMALL = {"EmptyLatentImage": {"width": 64, "height": 64}, "KSampler": {"steps": 2},
         "BasicScheduler": {"steps": 4}, "SplitSigmas": {"step": 2},
         "ConditioningSetArea": {"width": 64, "height": 64}}


def family_of(name: str) -> str:
    return "sdxl_refiner" if "refiner" in name else "sdxl" if "xl" in name else "sd1"


@pytest.fixture(scope="module")
def registry():
    r = Registry()
    r.load_builtin()
    return r


def test_there_are_example_workflows():
    assert len(WORKFLOWS) >= 5


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_workflow_runs(path, registry, loom_paths):
    memory.configure("cpu", "fp32")
    graph = load_workflow(path, registry).graph
    checkpoints = loom_paths.base / "models" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for node in graph.nodes.values():
        if "ckpt_name" in node.values:
            name = node.values["ckpt_name"]
            make_checkpoint(checkpoints / name, family_of(name))
        for key, value in SMALL.get(node.type, {}).items():
            graph.set_value(node.id, key, value)
        if node.type == "ConditioningSetArea":
            graph.set_value(node.id, "x", 0)
        if node.type == "KSamplerAdvanced":  # keep the base/refiner hand-off, in 4 steps
            graph.set_value(node.id, "steps", 4)
            if node.values["start_at_step"]:
                graph.set_value(node.id, "start_at_step", 3)
            else:
                graph.set_value(node.id, "end_at_step", 3)
    result = Executor(registry, paths=loom_paths).run(graph)
    assert result.ok, (result.problems, result.error)
    saved = [image for ui in result.ui.values() for image in ui.get("images", [])]
    assert saved and all(Path(image["path"]).is_file() for image in saved)
    memory.model_manager().clear()
