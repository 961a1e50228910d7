"""Every workflow in workflows/ loads, validates and runs (on tiny checkpoints named like the real ones)."""
from pathlib import Path

import pytest

import torch
from PIL import Image

from engine import memory
from engine.executor import Executor
from engine.registry import Registry
from engine.workflow import load_workflow
from tests.sd_fixtures import make_checkpoint

WORKFLOWS = sorted((Path(__file__).resolve().parents[1] / "workflows").glob("*.json"))
# Make each run small: value overrides per node type (sizes in pixels, steps).
SMALL = {"EmptyLatentImage": {"width": 64, "height": 64}, "KSampler": {"steps": 2},
         "LatentUpscale": {"width": 96, "height": 96}, "InpaintCrop": {"width": 64, "height": 64},
         "ImagePadForOutpaint": {"right": 16}, "SDEdit": {"steps": 2},
         "BasicScheduler": {"steps": 4}, "SplitSigmas": {"step": 2},
         "ConditioningSetArea": {"width": 64, "height": 64}}


def family_of(name: str) -> str:
    return "sdxl_refiner" if "refiner" in name else "sdxl" if "xl" in name else "sd1"


@pytest.fixture(scope="module")
def registry():
    r = Registry()
    r.load_builtin()
    return r


def folder(paths, kind):
    path = paths.base / "models" / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def provide_models(graph, paths):
    """Tiny files under every model and image name the workflow asks for (checkpoints first)."""
    from tests.test_controlnet import controlnet_weights, example_image, save_controlnet
    from tests.test_lora import write_example_lora
    from tests.test_upscale import realesrgan_state_dict

    unet = checkpoint = None
    for node in sorted(graph.nodes.values(), key=lambda n: "ckpt_name" not in n.values):
        values = node.values
        if "ckpt_name" in values:
            written = make_checkpoint(folder(paths, "checkpoints") / values["ckpt_name"], family_of(values["ckpt_name"]),
                                      inpaint="inpaint" in values["ckpt_name"])
            prefix = "model.diffusion_model."
            checkpoint = checkpoint or written
            unet = unet or {k[len(prefix):]: v for k, v in written.items() if k.startswith(prefix)}
        if "lora_name" in values:
            write_example_lora(folder(paths, "loras") / values["lora_name"], checkpoint)
        if "control_net_name" in values:
            save_controlnet(folder(paths, "controlnet") / values["control_net_name"], controlnet_weights(unet, seed=1))
        if "model_name" in values and node.type == "UpscaleModelLoader":
            torch.save(realesrgan_state_dict(), folder(paths, "upscale_models") / values["model_name"])
        if node.type in ("LoadImage", "LoadImageMask"):
            Image.fromarray(example_image()).save(paths.input_dir / values["image"])


def test_there_are_example_workflows():
    assert len(WORKFLOWS) >= 5


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_example_workflow_runs(path, registry, loom_paths):
    memory.configure("cpu", "fp32")
    graph = load_workflow(path, registry).graph
    provide_models(graph, loom_paths)
    for node in graph.nodes.values():
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
