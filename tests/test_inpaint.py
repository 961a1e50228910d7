"""Inpainting and outpainting on tiny SD1 checkpoints: ComfyUI's numbers, exact keep-outs, example workflows.

``python -m tests.test_inpaint`` rewrites the example workflows this file builds.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine import memory
from engine import paths as paths_mod
from engine.executor import Executor
from engine.graph import Graph
from engine.registry import Registry
from engine.sampling.ksampler import sample
from engine.sampling.schedulers import ksampler_sigmas
from engine.workflow import dumps_native, load_workflow, save_workflow
from nodes.inpaint import (DifferentialDiffusion, ImagePadForOutpaint, InpaintModelConditioning, InpaintStitch,
                           VAEEncodeForInpaint, crop_box, differential_mask, grey_out, grow_for_inpaint)
from tests.sd_fixtures import make_checkpoint

CKPT, INPAINT_CKPT = "v1-5-pruned-emaonly.safetensors", "sd-v1-5-inpainting.safetensors"
WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
HOLE = (24, 16, 48, 40)  # x0, y0, x1, y1 of example.png's transparent (masked) block, on the 8-px latent grid


# --- a small studio: models, an input image, a registry and an executor ------------------------

def write_image(path, width=64, height=64, hole=HOLE, seed=0):
    """A random RGBA PNG, opaque except the ``hole`` box (LoadImage's mask is 1 there)."""
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    x0, y0, x1, y1 = hole
    rgba[y0:y1, x0:x1, 3] = 0
    Image.fromarray(rgba, "RGBA").save(path)


@dataclass
class Studio:
    paths: paths_mod.Paths
    registry: Registry

    def run(self, graph, *targets):
        result = Executor(self.registry, paths=self.paths).run(graph, targets=list(targets) or None)
        assert result.ok, (result.problems, result.error)
        return result if not targets else [result.values[t] for t in targets]


def open_studio(base: Path):
    """Yield a Studio rooted at ``base`` with both checkpoints and example.png; restores the defaults after."""
    memory.configure("cpu", "fp32")
    paths = paths_mod.Paths(base=base)
    for directory in (paths.input_dir, paths.output_dir, base / "models" / "checkpoints"):
        directory.mkdir(parents=True, exist_ok=True)
    make_checkpoint(base / "models" / "checkpoints" / CKPT, "sd1")
    make_checkpoint(base / "models" / "checkpoints" / INPAINT_CKPT, "sd1", inpaint=True)
    write_image(paths.input_dir / "example.png")
    previous = paths_mod._default
    paths_mod.set_default_paths(paths)
    registry = Registry()
    registry.load_builtin()
    yield Studio(paths, registry)
    memory.model_manager().clear()
    paths_mod._default = previous


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    yield from open_studio(tmp_path_factory.mktemp("inpaint"))


def sd_graph(ckpt=CKPT, image="example.png", positive="a red brick wall", negative="blurry"):
    """Loader, both prompts and a LoadImage: ids ckpt, pos, neg, image."""
    graph = Graph()
    graph.add_node("CheckpointLoaderSimple", {"ckpt_name": ckpt}, id="ckpt", pos=(20, 200))
    graph.add_node("CLIPTextEncode", {"text": positive}, id="pos", title="Positive", pos=(420, 40))
    graph.add_node("CLIPTextEncode", {"text": negative}, id="neg", title="Negative", pos=(420, 300))
    graph.connect("ckpt", 1, "pos", "clip")
    graph.connect("ckpt", 1, "neg", "clip")
    graph.add_node("LoadImage", {"image": image}, id="image", pos=(20, 520))
    return graph


def add_ksampler(graph, node_id, latent, positive=("pos", 0), negative=("neg", 0), model=("ckpt", 0),
                 pos=(1200, 200), randomize=False, **values):
    settings = {"seed": 3, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}
    graph.add_node("KSampler", {**settings, **values}, id=node_id, pos=pos,
                   controls={"seed": "randomize"} if randomize else {})
    for source, name in ((model, "model"), (positive, "positive"), (negative, "negative"), (latent, "latent_image")):
        graph.connect(*source, node_id, name)


def add_decode_save(graph, latent, prefix, pos=(1600, 200), vae=("ckpt", 2)):
    """VAEDecode ``latent`` (id decode) and SaveImage it (id save)."""
    graph.add_node("VAEDecode", id="decode", pos=pos)
    graph.connect(*latent, "decode", "samples")
    graph.connect(*vae, "decode", "vae")
    graph.add_node("SaveImage", {"filename_prefix": prefix}, id="save", pos=(pos[0] + 300, pos[1]))
    graph.connect("decode", 0, "save", "images")


def add_encode(graph, pixels=("image", 0), pos=(820, 520)):
    """VAEEncode ``pixels`` with the checkpoint's VAE (id encode)."""
    graph.add_node("VAEEncode", id="encode", pos=pos)
    graph.connect(*pixels, "encode", "pixels")
    graph.connect("ckpt", 2, "encode", "vae")


def add_masked_encode(graph, pixels=("image", 0), mask=("image", 1), pos=(820, 520)):
    """VAEEncode ``pixels`` (id encode) and SetLatentNoiseMask it with ``mask`` (id masked)."""
    add_encode(graph, pixels, pos)
    graph.add_node("SetLatentNoiseMask", id="masked", pos=(pos[0], pos[1] + 120))
    graph.connect("encode", 0, "masked", "samples")
    graph.connect(*mask, "masked", "mask")


def loaded(studio, ckpt=CKPT):
    """(model, clip, vae) of a checkpoint, through the loader node."""
    graph = Graph()
    graph.add_node("CheckpointLoaderSimple", {"ckpt_name": ckpt}, id="ckpt")
    return studio.run(graph, "ckpt")[0]


def latent_keep(hole=HOLE, shape=(1, 4, 8, 8)):
    """True on the latent pixels the example mask leaves alone."""
    keep = torch.ones(shape, dtype=torch.bool)
    x0, y0, x1, y1 = (v // 8 for v in hole)
    keep[..., y0:y1, x0:x1] = False
    return keep


# --- VAEEncodeForInpaint, InpaintModelConditioning ----------------------------------------------

def test_grow_mask_by_is_comfyui_box_dilation():
    dot = torch.zeros(1, 1, 20, 20)
    dot[..., 10, 10] = 1.0
    def box(lo, hi):
        out = torch.zeros(1, 1, 20, 20)
        out[..., lo:hi, lo:hi] = 1.0
        return out
    assert torch.equal(grow_for_inpaint(dot, 6), box(8, 14))  # even sizes reach one px further down/right
    assert torch.equal(grow_for_inpaint(dot, 5), box(8, 13))
    assert torch.equal(grow_for_inpaint(dot, 1), dot)
    assert torch.equal(grow_for_inpaint(dot, 0), dot)
    assert torch.equal(grow_for_inpaint(dot * 0.4, 6), torch.zeros_like(dot))  # the mask is rounded first
    edge = torch.zeros(1, 1, 20, 20)
    edge[..., 19, 19] = 1.0
    assert torch.equal(grow_for_inpaint(edge, 6), box(17, 20))


def test_grey_out_greys_only_the_mask_and_leaves_the_input_alone():
    torch.manual_seed(0)
    pixels = torch.rand(1, 8, 8, 3)
    before = pixels.clone()
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:5, 3:6] = 0.6  # rounds to 1
    out = grey_out(pixels, mask)
    assert torch.equal(pixels, before)
    assert out[0, 2:5, 3:6].eq(0.5).all()
    outside = mask[0, 0] == 0
    assert torch.allclose(out[0][outside], pixels[0][outside], atol=1e-7)


def test_vae_encode_for_inpaint_crops_to_8_greys_and_grows(studio):
    _, _, vae = loaded(studio)
    torch.manual_seed(1)
    pixels = torch.rand(1, 70, 67, 3)  # cropped to 64×64 at offset (3, 1), like ComfyUI
    mask = torch.zeros(1, 70, 67)
    mask[0, 20:30, 10:21] = 1.0
    out = VAEEncodeForInpaint().execute(pixels, vae, mask, 6)[0]
    expected_pixels = pixels[:, 3:67, 1:65].clone()
    expected_pixels[:, 17:27, 9:20] = 0.5
    assert torch.allclose(out["samples"], vae.encode(expected_pixels), atol=1e-4)
    expected_mask = torch.zeros(1, 1, 64, 64)
    expected_mask[..., 15:30, 7:23] = 1.0  # 2 up/left, 3 down/right
    assert torch.equal(out["noise_mask"], expected_mask)


def test_inpaint_model_conditioning_carries_mask_and_grey_latent(studio):
    _, clip, vae = loaded(studio, INPAINT_CKPT)
    from engine.sd.conditioning import Cond
    conds = [Cond(*clip.encode("a cat"))]
    torch.manual_seed(2)
    pixels = torch.rand(1, 64, 64, 3)
    mask = torch.zeros(1, 32, 32)
    mask[0, 8:16, 4:12] = 1.0  # half size: bilinearly resized to the image
    positive, negative, latent = InpaintModelConditioning().execute(conds, conds, vae, pixels, mask, True)
    full_mask = torch.nn.functional.interpolate(mask[:, None], size=(64, 64), mode="bilinear")
    for cond in positive + negative:
        assert torch.equal(cond.concat_mask, full_mask)
        assert torch.equal(cond.concat_latent, vae.encode(grey_out(pixels, full_mask)))
    assert torch.equal(latent["samples"], vae.encode(pixels)) and torch.equal(latent["noise_mask"], full_mask)
    assert "noise_mask" not in InpaintModelConditioning().execute(conds, conds, vae, pixels, mask, False)[2]


# --- noise-mask inpainting keeps the rest exactly -------------------------------------------------

def test_noise_mask_inpainting_leaves_the_unmasked_latent_bit_identical(studio):
    graph = sd_graph()
    add_masked_encode(graph)
    for sampler in ("euler", "dpmpp_2m"):
        add_ksampler(graph, sampler, ("masked", 0), sampler_name=sampler)
    (latent,), (euler,), (dpmpp,) = studio.run(graph, "encode", "euler", "dpmpp_2m")
    keep = latent_keep()
    for out in (euler["samples"], dpmpp["samples"]):
        assert torch.equal(out[keep], latent["samples"][keep])
        assert not torch.allclose(out[~keep], latent["samples"][~keep])


def test_inpainting_model_sees_the_grey_image_and_keeps_the_rest(studio):
    graph = sd_graph(INPAINT_CKPT)
    graph.add_node("InpaintModelConditioning", {"noise_mask": True}, id="cond")
    for source, name in ((("pos", 0), "positive"), (("neg", 0), "negative"), (("ckpt", 2), "vae"),
                         (("image", 0), "pixels"), (("image", 1), "mask")):
        graph.connect(*source, "cond", name)
    add_ksampler(graph, "model_inpaint", ("cond", 2), positive=("cond", 0), negative=("cond", 1))
    add_masked_encode(graph)
    add_ksampler(graph, "plain", ("masked", 0))  # concat = the mask and the original (not grey) latent
    (latent,), (model_inpaint,), (plain,) = studio.run(graph, "encode", "model_inpaint", "plain")
    keep = latent_keep()
    assert torch.equal(model_inpaint["samples"][keep], latent["samples"][keep])
    assert not torch.allclose(model_inpaint["samples"][~keep], plain["samples"][~keep])


# --- Differential Diffusion ----------------------------------------------------------------------

class _Sampling:
    """What a denoise mask function finds on extra_options["model"]: a prediction and a schedule."""
    prediction = None

    def __init__(self, schedule):
        self.schedule = schedule


def test_differential_diffusion_threshold_falls_from_1_to_0_in_timesteps(studio):
    model, _, _ = loaded(studio)
    sigmas = ksampler_sigmas(model.schedule, "normal", 4)  # timesteps 999, 666, 333, 0
    mask = torch.tensor([0.0, 0.3, 0.5, 0.7, 1.0])
    options = {"model": _Sampling(model.schedule), "sigmas": sigmas}
    fn = differential_mask()
    released = [fn(sigma.reshape(1), mask, options).tolist() for sigma in sigmas[:-1]]
    assert released == [[0, 0, 0, 0, 1], [0, 0, 0, 1, 1], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    half = differential_mask(0.5)(sigmas[1].reshape(1), mask, options)
    assert torch.allclose(half, torch.tensor([0.0, 0.15, 0.25, 0.85, 1.0]))
    clone = DifferentialDiffusion().execute(model)[0]
    assert "denoise_mask_function" in clone.options and "denoise_mask_function" not in model.options


def test_differential_diffusion_drives_the_sampler_mask(studio):
    """Needs InpaintDenoiser to call denoise_mask_function(sigma, mask, {"model", "sigmas"}) (ComfyUI's
    signature)."""
    model, clip, vae = loaded(studio)
    from engine.sd.conditioning import Cond
    conds = [Cond(*clip.encode("a wall"))]
    soft = torch.zeros(1, 64, 64)
    for i, value in enumerate((0.3, 0.5, 0.7, 1.0)):  # 8-px bands: exact after resizing to the latent
        soft[:, :, 16 * i:16 * i + 16] = value
    torch.manual_seed(3)
    latent = {"samples": vae.encode(torch.rand(1, 64, 64, 3)), "noise_mask": soft}
    patched = DifferentialDiffusion().execute(model)[0]
    inner, seen = patched.options["denoise_mask_function"], []

    def record(sigma, mask, extra_options):
        released = inner(sigma, mask, extra_options)
        seen.append(released[0, 0, 0, ::2].tolist())  # one latent column per band
        return released
    patched.options["denoise_mask_function"] = record
    sample(patched, latent, conds, conds, seed=1, steps=4, cfg=1.0, sampler_name="euler", scheduler="normal")
    assert seen == [[0, 0, 0, 1], [0, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]]


# --- outpainting --------------------------------------------------------------------------------

def test_image_pad_for_outpaint_mask_and_grey_border():
    image = torch.rand(1, 10, 12, 3)
    padded, mask = ImagePadForOutpaint().execute(image, 8, 0, 0, 8, 3)
    assert padded.shape == (1, 18, 20, 3) and mask.shape == (1, 18, 20)
    assert torch.equal(padded[:, :10, 8:], image) and padded[:, 10:].eq(0.5).all() and padded[:, :, :8].eq(0.5).all()
    assert mask[0, 10:].eq(1).all() and mask[0, :, :8].eq(1).all()
    inner = mask[0, :10, 8:]
    # distance d to the padded left/bottom sides, ((3 - d) / 3)² within 3 px
    assert inner[0, 0] == 1.0 and inner[0, 1] == torch.tensor(4 / 9) and inner[0, 2] == torch.tensor(1 / 9)
    assert inner[0, 3] == 0.0 and inner[9, 5] == torch.tensor(4 / 9) and inner[8, 5] == torch.tensor(1 / 9)
    assert inner[9, 0] == 1.0 and inner[:7, 3:].eq(0).all()
    no_feather = ImagePadForOutpaint().execute(image, 8, 0, 0, 8, 5)[1]  # 2·5 is not < 10: no feathering
    assert no_feather[0, :10, 8:].eq(0).all()


# --- inpaint the masked region only -------------------------------------------------------------

def test_crop_box_adds_context_keeps_the_aspect_ratio_and_stays_inside():
    assert crop_box((24, 16, 48, 40), 8, 512, 512, 64, 64) == ((16, 8, 56, 48), (0, 0, 0, 0))
    assert crop_box((0, 20, 10, 30), 4, 512, 512, 64, 64) == ((0, 16, 18, 34), (0, 0, 0, 0))  # shifted in
    assert crop_box((60, 0, 64, 4), 4, 64, 32, 64, 64) == ((48, 0, 64, 8), (0, 0, 0, 0))
    # wider than the image: centred on it, replicated borders on both sides
    assert crop_box((24, 16, 48, 40), 8, 1024, 512, 64, 64) == ((0, 8, 64, 48), (8, 0, 8, 0))


def test_masked_region_only_inpainting_keeps_pixels_outside_the_crop(studio):
    write_image(studio.paths.input_dir / "wide.png", width=96, height=72, hole=(60, 30, 70, 38), seed=5)
    graph = sd_graph(image="wide.png")
    graph.add_node("InpaintCrop", {"context": 12, "blend": 6, "width": 64, "height": 64,
                                   "upscale_method": "bicubic"}, id="crop")
    graph.connect("image", 0, "crop", "image")
    graph.connect("image", 1, "crop", "mask")
    add_masked_encode(graph, ("crop", 1), ("crop", 2))
    add_ksampler(graph, "sampler", ("masked", 0))
    add_decode_save(graph, ("sampler", 0), "crop")
    graph.add_node("InpaintStitch", id="stitch")
    graph.connect("crop", 0, "stitch", "stitch")
    graph.connect("decode", 0, "stitch", "image")
    (image, _), (stitch, crop, crop_mask), (out,) = studio.run(graph, "image", "crop", "stitch")
    assert crop.shape == (1, 64, 64, 3) and crop_mask.shape == (1, 64, 64)  # the model's resolution
    x0, y0, x1, y1 = stitch.box
    assert (x0, y0, x1, y1) == (48, 17, 82, 51) and stitch.pad == (0, 0, 0, 0)  # hole + 12 px, made square
    outside = torch.ones(72, 96, dtype=torch.bool)
    outside[y0:y1, x0:x1] = False
    assert out.shape == image.shape and torch.equal(out[0][outside], image[0][outside])
    untouched = stitch.blend[0] == 0  # beyond the 6 px seam inside the crop
    assert untouched.any() and torch.equal(out[0, y0:y1, x0:x1][untouched], image[0, y0:y1, x0:x1][untouched])
    assert not torch.allclose(out[0, 30:38, 60:70], image[0, 30:38, 60:70])


def test_stitching_an_unprocessed_native_size_crop_restores_the_image(studio):
    graph = sd_graph()
    graph.add_node("InpaintCrop", {"context": 8, "blend": 4, "width": 40, "height": 40, "upscale_method": "area"},
                   id="crop")
    graph.connect("image", 0, "crop", "image")
    graph.connect("image", 1, "crop", "mask")
    (image, _), (stitch, crop, _) = studio.run(graph, "image", "crop")
    assert stitch.box == (16, 8, 56, 48) and torch.equal(crop, image[:, 8:48, 16:56])
    assert torch.equal(InpaintStitch().execute(stitch, crop)[0], image)


# --- example workflows --------------------------------------------------------------------------

def build_inpaint_noise_mask() -> Graph:
    """Regular checkpoint, masked area only: crop at 512², noise-masked sampling, stitched back."""
    graph = sd_graph(positive="a red brick wall with ivy, photo", negative="blurry, low quality, watermark")
    graph.add_node("GrowMask", {"expand": 8, "tapered_corners": True}, id="grow", pos=(20, 800))
    graph.connect("image", 1, "grow", "mask")
    graph.add_node("InpaintCrop", {"context": 64, "blend": 16, "width": 512, "height": 512,
                                   "upscale_method": "bicubic"}, id="crop", pos=(420, 560))
    graph.connect("image", 0, "crop", "image")
    graph.connect("grow", 0, "crop", "mask")
    add_masked_encode(graph, ("crop", 1), ("crop", 2))
    add_ksampler(graph, "sampler", ("masked", 0), randomize=True, steps=20, cfg=7.0)
    graph.add_node("VAEDecode", id="decode", pos=(1600, 200))
    graph.connect("sampler", 0, "decode", "samples")
    graph.connect("ckpt", 2, "decode", "vae")
    graph.add_node("InpaintStitch", id="stitch", pos=(1600, 400))
    graph.connect("crop", 0, "stitch", "stitch")
    graph.connect("decode", 0, "stitch", "image")
    graph.add_node("SaveImage", {"filename_prefix": "inpaint"}, id="save", pos=(1900, 400))
    graph.connect("stitch", 0, "save", "images")
    return graph


def build_inpaint_model() -> Graph:
    """A 9-channel inpainting checkpoint with InpaintModelConditioning."""
    graph = sd_graph(INPAINT_CKPT, positive="a red brick wall with ivy, photo",
                     negative="blurry, low quality, watermark")
    graph.add_node("InpaintModelConditioning", {"noise_mask": True}, id="cond", pos=(820, 400))
    for source, name in ((("pos", 0), "positive"), (("neg", 0), "negative"), (("ckpt", 2), "vae"),
                         (("image", 0), "pixels"), (("image", 1), "mask")):
        graph.connect(*source, "cond", name)
    add_ksampler(graph, "sampler", ("cond", 2), positive=("cond", 0), negative=("cond", 1), randomize=True,
                 steps=20, cfg=7.0)
    add_decode_save(graph, ("sampler", 0), "inpaint_model")
    return graph


def build_outpaint() -> Graph:
    """Extend the image to the right with the inpainting checkpoint."""
    graph = sd_graph(INPAINT_CKPT, positive="a wide mountain landscape, photo",
                     negative="blurry, low quality, watermark")
    graph.add_node("ImagePadForOutpaint", {"left": 0, "top": 0, "right": 256, "bottom": 0, "feathering": 40},
                   id="pad", pos=(420, 560))
    graph.connect("image", 0, "pad", "image")
    graph.add_node("VAEEncodeForInpaint", {"grow_mask_by": 8}, id="encode", pos=(820, 520))
    graph.connect("pad", 0, "encode", "pixels")
    graph.connect("ckpt", 2, "encode", "vae")
    graph.connect("pad", 1, "encode", "mask")
    add_ksampler(graph, "sampler", ("encode", 0), randomize=True, steps=20, cfg=7.0)
    add_decode_save(graph, ("sampler", 0), "outpaint")
    return graph


BUILDERS = {"inpaint_noise_mask": build_inpaint_noise_mask, "inpaint_model": build_inpaint_model,
            "outpaint": build_outpaint}
SMALL = {"KSampler": {"steps": 2}, "InpaintCrop": {"width": 64, "height": 64, "context": 8, "blend": 4},
         "ImagePadForOutpaint": {"right": 16, "feathering": 4}, "SDEdit": {"steps": 3}}


def run_small(studio, path):
    """Load a workflow file, shrink it (sizes, steps) and run it; returns the saved files."""
    graph = load_workflow(path, studio.registry).graph
    for node in graph.nodes.values():
        for key, value in SMALL.get(node.type, {}).items():
            graph.set_value(node.id, key, value)
    result = studio.run(graph)
    return [Path(image["path"]) for ui in result.ui.values() for image in ui.get("images", [])]


def check_workflow(studio, build, name, module):
    """The file in workflows/ is what ``build`` makes, and it validates and runs end to end (shrunk)."""
    path = WORKFLOWS / f"{name}.json"
    assert path.read_text() == dumps_native(build()), f"stale: rerun python -m {module}"
    saved = run_small(studio, path)
    assert saved and all(p.is_file() for p in saved)


def write_workflows(builders):
    registry = Registry()
    registry.load_builtin()
    for name, build in builders.items():
        save_workflow(build(), WORKFLOWS / f"{name}.json", registry)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_example_workflow_is_current_and_runs(studio, name):
    check_workflow(studio, BUILDERS[name], name, "tests.test_inpaint")


if __name__ == "__main__":
    write_workflows(BUILDERS)
