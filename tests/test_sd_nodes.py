"""Diffusion nodes on a tiny SD1-layout checkpoint: batches, masks, areas, custom sampling, patches."""
import pytest
import torch

from engine import memory
from engine.executor import Executor
from engine.graph import Graph
from engine.registry import Registry
from tests.sd_fixtures import make_checkpoint


@pytest.fixture(scope="module")
def registry():
    r = Registry()
    r.load_builtin()
    return r


@pytest.fixture
def g(loom_paths, registry):
    """A graph with loader, prompts and an empty latent; returns (graph, run)."""
    memory.configure("cpu", "fp32")
    (loom_paths.base / "models" / "checkpoints").mkdir(parents=True)
    make_checkpoint(loom_paths.base / "models" / "checkpoints" / "tiny.safetensors", "sd1")
    graph = Graph()
    graph.add_node("CheckpointLoaderSimple", {"ckpt_name": "tiny.safetensors"}, id="ckpt")
    graph.add_node("CLIPTextEncode", {"text": "a red circle"}, id="pos")
    graph.add_node("CLIPTextEncode", {"text": "blurry"}, id="neg")
    graph.connect("ckpt", 1, "pos", "clip")
    graph.connect("ckpt", 1, "neg", "clip")
    graph.add_node("EmptyLatentImage", {"width": 64, "height": 64, "batch_size": 1}, id="empty")
    executor = Executor(registry, paths=loom_paths)

    def run(*targets):
        result = executor.run(graph, targets=list(targets))
        assert result.ok, (result.problems, result.error)
        return [result.values[t] for t in targets]
    yield graph, run
    memory.model_manager().clear()


def add_ksampler(graph, node_id, latent=("empty", 0), seed=3, steps=3, cfg=5.0, model=("ckpt", 0),
                 positive=("pos", 0), denoise=1.0, sampler="euler"):
    graph.add_node("KSampler", {"seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler,
                                "scheduler": "normal", "denoise": denoise}, id=node_id)
    graph.connect(*model, node_id, "model")
    graph.connect(*positive, node_id, "positive")
    graph.connect("neg", 0, node_id, "negative")
    graph.connect(*latent, node_id, "latent_image")


def test_latent_from_batch_keeps_the_noise_of_its_batch_position(g):
    graph, run = g
    graph.set_value("empty", "batch_size", 3)
    add_ksampler(graph, "all")
    graph.add_node("LatentFromBatch", {"batch_index": 1, "length": 1}, id="pick")
    graph.connect("empty", 0, "pick", "samples")
    add_ksampler(graph, "one", latent=("pick", 0))
    (batch,), (one,) = run("all", "one")
    assert batch["samples"].shape[0] == 3 and one["batch_index"] == [1]
    # equal up to batched-matmul rounding, which this random-weight net amplifies; other items are far off
    scale = batch["samples"].abs().max()
    assert (one["samples"][0] - batch["samples"][1]).abs().max() < 1e-3 * scale
    assert (one["samples"][0] - batch["samples"][0]).abs().max() > 1e-2 * scale


def test_noise_mask_keeps_the_unmasked_latent_exactly(g):
    graph, run = g
    add_ksampler(graph, "first")
    graph.add_node("SolidMask", {"value": 0.0, "width": 64, "height": 64}, id="zero")
    graph.add_node("SetLatentNoiseMask", id="masked")
    graph.connect("first", 0, "masked", "samples")
    graph.connect("zero", 0, "masked", "mask")
    add_ksampler(graph, "again", latent=("masked", 0), seed=99, denoise=0.8)
    (first,), (again,) = run("first", "again")
    assert torch.equal(again["samples"], first["samples"])  # mask 0 everywhere: nothing may change


def add_star_area(graph, x):
    """The positive prompt combined with "a blue star" in the 64 px square at ``x`` (node "both")."""
    graph.add_node("CLIPTextEncode", {"text": "a blue star"}, id="star")
    graph.connect("ckpt", 1, "star", "clip")
    graph.add_node("ConditioningSetArea", {"width": 64, "height": 64, "x": x, "y": 0, "strength": 1.0}, id="area")
    graph.connect("star", 0, "area", "conditioning")
    graph.add_node("ConditioningCombine", id="both")
    graph.connect("pos", 0, "both", "conditioning_1")
    graph.connect("area", 0, "both", "conditioning_2")


def test_area_conditioning_and_combine_change_only_what_they_cover(g):
    graph, run = g
    add_star_area(graph, x=0)
    add_ksampler(graph, "plain")
    add_ksampler(graph, "mixed", positive=("both", 0))
    (plain,), (mixed,) = run("plain", "mixed")
    assert not torch.allclose(plain["samples"], mixed["samples"])


def test_an_area_is_guided_against_the_negative_on_its_own_crop(g, monkeypatch):
    """ComfyUI gives an area an opposite of the same area: the negative prompt is evaluated on the area's crop
    too, so CFG compares the crop's two predictions (against the whole latent's negative alone, CFG amplified
    the difference between a crop and the whole picture, and the area filled with noise)."""
    from engine.models.unet import UNetModel
    graph, run = g
    add_star_area(graph, x=64)
    graph.add_node("EmptyLatentImage", {"width": 128, "height": 64, "batch_size": 1}, id="wide")
    add_ksampler(graph, "mixed", latent=("wide", 0), positive=("both", 0), steps=2)
    calls, forward = [], UNetModel.forward

    def recording(self, x, timesteps, context, *args, **kwargs):
        calls.append((tuple(x.shape), context))
        return forward(self, x, timesteps, context, *args, **kwargs)

    monkeypatch.setattr(UNetModel, "forward", recording)
    run("mixed")
    assert [shape for shape, _ in calls] == [(2, 4, 8, 16), (2, 4, 8, 8)] * 2  # whole latent, then the area's crop
    whole, crop = calls[0][1], calls[1][1]
    assert torch.equal(crop[1], whole[1]) and not torch.equal(crop[0], whole[0])  # negative prompt on the crop


def test_sampler_custom_advanced_equals_ksampler_and_split_sigmas_compose(g):
    graph, run = g
    add_ksampler(graph, "ks", steps=4)
    graph.add_node("BasicScheduler", {"scheduler": "normal", "steps": 4, "denoise": 1.0}, id="sched")
    graph.connect("ckpt", 0, "sched", "model")
    graph.add_node("KSamplerSelect", {"sampler_name": "euler"}, id="sel")
    graph.add_node("RandomNoise", {"noise_seed": 3}, id="noise")
    graph.add_node("CFGGuider", {"cfg": 5.0}, id="guide")
    graph.connect("ckpt", 0, "guide", "model")
    graph.connect("pos", 0, "guide", "positive")
    graph.connect("neg", 0, "guide", "negative")
    graph.add_node("SamplerCustomAdvanced", id="custom")
    for src, name in (("noise", "noise"), ("guide", "guider"), ("sel", "sampler"), ("sched", "sigmas"),
                      ("empty", "latent_image")):
        graph.connect(src, 0, "custom", name)
    graph.add_node("SplitSigmas", {"step": 2}, id="split")
    graph.connect("sched", 0, "split", "sigmas")
    graph.add_node("SamplerCustomAdvanced", id="high")
    for src, slot, name in (("noise", 0, "noise"), ("guide", 0, "guider"), ("sel", 0, "sampler"),
                            ("split", 0, "sigmas"), ("empty", 0, "latent_image")):
        graph.connect(src, slot, "high", name)
    graph.add_node("DisableNoise", id="nonoise")
    graph.add_node("SamplerCustomAdvanced", id="low")
    for src, slot, name in (("nonoise", 0, "noise"), ("guide", 0, "guider"), ("sel", 0, "sampler"),
                            ("split", 1, "sigmas"), ("high", 0, "latent_image")):
        graph.connect(src, slot, "low", name)
    (ks,), (custom_out, custom_denoised), (low, _) = run("ks", "custom", "low")
    assert torch.allclose(custom_out["samples"], ks["samples"], atol=1e-6)
    assert torch.allclose(low["samples"], ks["samples"], atol=1e-4)
    assert custom_denoised["samples"].shape == custom_out["samples"].shape


def test_rescale_cfg_and_zero_out_patch_the_result(g):
    graph, run = g
    graph.add_node("RescaleCFG", {"multiplier": 0.7}, id="rescale")
    graph.connect("ckpt", 0, "rescale", "model")
    add_ksampler(graph, "plain", cfg=9.0)
    add_ksampler(graph, "rescaled", cfg=9.0, model=("rescale", 0))
    graph.add_node("ConditioningZeroOut", id="zero")
    graph.connect("pos", 0, "zero", "conditioning")
    add_ksampler(graph, "zeroed", positive=("zero", 0))
    (plain,), (rescaled,), (zeroed,) = run("plain", "rescaled", "zeroed")
    assert not torch.allclose(plain["samples"], rescaled["samples"])
    assert not torch.allclose(plain["samples"], zeroed["samples"])
