"""Text-to-image end to end on a tiny checkpoint in the real SD1 layout."""
import json

import pytest
import torch

from engine import memory
from engine.cli import main
from engine.executor import Executor
from engine.models.unet import UNetModel
from engine.registry import Registry
from engine.workflow import load_workflow
from tests.sd_fixtures import make_checkpoint


def txt2img_api(prompt="a red circle", seed=42, steps=4, cfg=7.0, sampler="euler", scheduler="normal", size=64):
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler,
                                                   "scheduler": scheduler, "denoise": 1.0, "model": ["4", 0],
                                                   "positive": ["6", 0], "negative": ["7", 0],
                                                   "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "t2i", "images": ["8", 0]}},
    }


@pytest.fixture
def setup(loom_paths):
    memory.configure("cpu", "fp32")
    memory.model_manager().clear()
    (loom_paths.base / "models" / "checkpoints").mkdir(parents=True)
    make_checkpoint(loom_paths.base / "models" / "checkpoints" / "tiny.safetensors", "sd1")
    registry = Registry()
    registry.load_builtin()
    yield registry, Executor(registry, paths=loom_paths)
    memory.model_manager().clear()


def run_api(registry, executor, api, **kw):
    graph = load_workflow(json.dumps(api), registry).graph
    result = executor.run(graph, targets=["8"], **kw)
    assert result.ok, (result.problems, result.error)
    return result.values["8"][0]


def test_image_depends_on_prompt_and_seed_and_is_reproducible(setup):
    registry, executor = setup
    a = run_api(registry, executor, txt2img_api())
    assert a.shape == (1, 64, 64, 3) and torch.isfinite(a).all()
    again = run_api(registry, executor, txt2img_api(), use_cache=False)
    assert torch.equal(a, again)
    other_seed = run_api(registry, executor, txt2img_api(seed=43))
    other_prompt = run_api(registry, executor, txt2img_api(prompt="a blue star"))
    assert (a - other_seed).abs().mean() > 1e-3
    assert (a - other_prompt).abs().mean() > 1e-4


@pytest.mark.parametrize("sampler,scheduler", [("euler_ancestral", "karras"), ("dpmpp_2m", "simple"),
                                               ("heun", "sgm_uniform"), ("dpmpp_2m_sde", "exponential"),
                                               ("uni_pc", "normal"), ("ddim", "ddim_uniform")])
def test_samplers_and_schedulers_run_through_the_node(setup, sampler, scheduler):
    registry, executor = setup
    image = run_api(registry, executor, txt2img_api(sampler=sampler, scheduler=scheduler, steps=3))
    assert torch.isfinite(image).all()


def test_cfg_one_skips_the_negative_prompt(setup, monkeypatch):
    registry, executor = setup
    batches = []
    forward = UNetModel.forward

    def counting(self, x, *args, **kwargs):
        batches.append(x.shape[0])
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(UNetModel, "forward", counting)
    run_api(registry, executor, txt2img_api(cfg=7.0, steps=2))
    assert batches == [2, 2]  # cond and uncond in one forward
    batches.clear()
    run_api(registry, executor, txt2img_api(cfg=1.0, steps=2, seed=5))
    assert batches == [1, 1]


def test_cli_txt2img_and_seed_change_reruns_only_sampler_and_after(setup, loom_paths, tmp_path, capsys):
    path = tmp_path / "t2i.json"
    path.write_text(json.dumps(txt2img_api()))
    out = tmp_path / "out"
    assert main(["run", str(path), "--precision", "fp32", "--device", "cpu", "--output", str(out)]) == 0
    assert len(list(out.glob("t2i_*.png"))) == 1
    capsys.readouterr()
    # the same process keeps its cache: change only the seed
    path.write_text(json.dumps(txt2img_api(seed=8)))
    assert main(["run", str(path), "--precision", "fp32", "--output", str(out), "--events", "json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    ran = {e["node_id"] for e in events if e["event"] == "node_finished"}
    cached = {e["node_id"] for e in events if e["event"] == "node_cached"}
    assert ran == {"3", "8", "9"}
    assert cached == {"4", "5", "6", "7"}
    assert len(list(out.glob("t2i_*.png"))) == 2
