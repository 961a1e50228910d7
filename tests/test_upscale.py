"""Upscaling: bislerp and latent resizing, spandrel upscalers in tiles (with a simulated out-of-memory),
tiled diffusion upscaling, and the two example workflows, on small random models in the real layouts."""
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact
from spandrel.architectures.ESRGAN import ESRGAN

from engine import memory, upscale
from engine.errors import LoomError
from engine.executor import Executor
from engine.graph import Graph
from engine.loading.files import WeightsFileError
from engine.registry import Registry
from engine.schema import NodeContext
from engine.workflow import load_workflow
from nodes.upscale import (ImageScaleToTotalPixels, ImageUpscaleWithModel, LatentUpscale, LatentUpscaleBy,
                           UpscaleModelLoader)
from tests.sd_fixtures import make_checkpoint

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"


@pytest.fixture(scope="module")
def registry():
    r = Registry()
    r.load_builtin()
    return r


@pytest.fixture(autouse=True)
def fp32_cpu():
    memory.configure("cpu", "fp32")
    yield
    memory.model_manager().clear()


# --- bislerp ------------------------------------------------------------------------------------

def test_bislerp_hand_computed_cases():
    # width 2 -> 3 samples the source at 0, 0.5 and 1 (half-pixel centres, clamped at the edges).
    def widen(a, b):
        x = torch.tensor([a, b], dtype=torch.float32).T.reshape(1, len(a), 1, 2)
        return upscale.bislerp(x, 3, 1)[0, :, 0].T
    # orthogonal (1,0) and (0,2): the middle is the slerped direction (45°) with the lerped length 1.5
    mid = 1.5 / math.sqrt(2)
    assert torch.allclose(widen([1, 0], [0, 2]), torch.tensor([[1, 0], [mid, mid], [0, 2]]), atol=1e-6)
    # opposite vectors: plain lerp
    assert torch.allclose(widen([1, 0], [-3, 0]), torch.tensor([[1.0, 0], [-1, 0], [-3, 0]]), atol=1e-6)
    # a zero vector has direction 0: sin(45°)·(0,1) times the lerped length 1
    assert torch.allclose(widen([0, 0], [0, 2]), torch.tensor([[0, 0], [0, math.sqrt(0.5)], [0, 2]]), atol=1e-6)
    # parallel vectors (one channel, same sign) give the left tap itself, not a blend
    assert torch.equal(widen([1], [3]), torch.tensor([[1.0], [1.0], [3.0]]))


def _reference_bislerp(x, width, height):
    """bislerp from its definition, one output vector at a time: taps where bilinear resizing reads,
    slerp of the directions with the lerped length, the left tap for parallel vectors, lerp for opposite."""
    def taps(old, new):
        out = []
        for i in range(new):
            src = max(0.0, (i + 0.5) * old / new - 0.5)
            left = min(int(src), old - 1)
            out.append((left, min(left + 1, old - 1), 0.0 if left == old - 1 else src - left))
        return out

    def slerp(a, b, t):
        na, nb = a.norm(), b.norm()
        ua = a / na if na > 0 else torch.zeros_like(a)
        ub = b / nb if nb > 0 else torch.zeros_like(b)
        cos = float((ua * ub).sum())
        if cos > 1 - 1e-5:
            return a
        if cos < 1e-5 - 1:
            return a * (1 - t) + b * t
        omega = math.acos(cos)
        return (math.sin((1 - t) * omega) * ua + math.sin(t * omega) * ub) / math.sin(omega) * (na * (1 - t) + nb * t)

    n, c, h, w = x.shape
    wide = torch.zeros(n, c, h, width)
    for j, (l, r, t) in enumerate(taps(w, width)):
        for b in range(n):
            for y in range(h):
                wide[b, :, y, j] = slerp(x[b, :, y, l], x[b, :, y, r], t)
    out = torch.zeros(n, c, height, width)
    for i, (l, r, t) in enumerate(taps(h, height)):
        for b in range(n):
            for xx in range(width):
                out[b, :, i, xx] = slerp(wide[b, :, l, xx], wide[b, :, r, xx], t)
    return out


@pytest.mark.parametrize("size", [(7, 4), (3, 9)])
def test_bislerp_matches_its_definition(size):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 6)
    width, height = size
    assert torch.allclose(upscale.bislerp(x, width, height), _reference_bislerp(x, width, height), atol=1e-5)


# --- latent and image resizing nodes -------------------------------------------------------------

def test_latent_upscale_sizes_and_methods():
    torch.manual_seed(0)
    latent = {"samples": torch.randn(2, 4, 8, 12), "batch_index": [3, 4], "noise_mask": torch.ones(1, 1, 8, 8)}
    node = LatentUpscale()
    shape = lambda w, h, crop="disabled", m="bilinear": node.execute(latent, m, w, h, crop)[0]["samples"].shape  # noqa
    assert shape(192, 128) == (2, 4, 16, 24)
    assert shape(0, 128) == (2, 4, 16, 24)  # width from the aspect ratio: round(12 · 128 / 8) = 192 px
    assert shape(160, 0) == (2, 4, 13, 20)  # height round(8 · 160 / 12) = 107 px -> 13 latent px
    assert shape(16, 200) == (2, 4, 25, 8)  # each side at least 64 px
    assert shape(96, 96, "center", "bislerp") == (2, 4, 12, 12)
    assert node.execute(latent, "bilinear", 0, 0, "disabled")[0] is latent
    out = node.execute(latent, "nearest-exact", 192, 128, "disabled")[0]
    assert torch.equal(out["samples"], latent["samples"].repeat_interleave(2, -1).repeat_interleave(2, -2))
    assert out["batch_index"] == [3, 4] and out["noise_mask"] is latent["noise_mask"]
    centre = node.execute({"samples": torch.arange(16.0).reshape(1, 1, 2, 8)}, "nearest-exact", 128, 128, "center")
    assert torch.equal(centre[0]["samples"], torch.tensor([[3.0, 4.0], [11.0, 12.0]]).repeat_interleave(8, 0)
                       .repeat_interleave(8, 1)[None, None])
    by = LatentUpscaleBy().execute(latent, "bislerp", 1.5)[0]["samples"]
    assert by.shape == (2, 4, 12, 18)
    assert LatentUpscaleBy().execute(latent, "area", 0.3)[0]["samples"].shape == (2, 4, 2, 4)  # round(2.4), round(3.6)


def test_image_scale_to_total_pixels_sizes():
    image = torch.rand(1, 50, 100, 3)
    node = ImageScaleToTotalPixels()
    # 0.01 MP = 10485.76 px: scale sqrt(10485.76 / 5000) = 1.448 -> 145 × 72
    assert node.execute(image, "bilinear", 0.01, 1)[0].shape == (1, 72, 145, 3)
    # rounded to steps of 16: 144.8 / 16 = 9.05 -> 144, 72.4 / 16 = 4.53 -> 80
    assert node.execute(image, "area", 0.01, 16)[0].shape == (1, 80, 144, 3)
    assert node.execute(torch.rand(1, 64, 64, 3), "nearest-exact", 0.015625, 1)[0].shape == (1, 128, 128, 3)


# --- spandrel models --------------------------------------------------------------------------

def compact_state_dict(seed=0, feat=16, convs=4):
    """A Real-ESRGAN compact (SRVGGNetCompact) 4x model with PyTorch's default random init."""
    torch.manual_seed(seed)
    return Compact(num_in_ch=3, num_out_ch=3, num_feat=feat, num_conv=convs, upscale=4).state_dict()


def realesrgan_state_dict(seed=0, filters=8, blocks=1):
    """A random RRDB 4x model in the key layout of RealESRGAN_x4plus.pth (conv_first, body.N.rdbK, conv_up1…);
    the dense blocks scaled by 0.1 (as the residual scaling trained models learn) so activations stay finite."""
    torch.manual_seed(seed)
    old = ESRGAN(num_filters=filters, num_blocks=blocks, scale=4).state_dict()
    rename = {"model.0.": "conv_first.", f"model.1.sub.{blocks}.": "conv_body.", "model.3.": "conv_up1.",
              "model.6.": "conv_up2.", "model.8.": "conv_hr.", "model.10.": "conv_last."}
    out = {}
    for key, value in old.items():
        rdb = re.match(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)", key)
        if rdb:
            out["body.{}.rdb{}.conv{}.{}".format(*rdb.groups())] = value * 0.1
            continue
        prefix = next(p for p in rename if key.startswith(p))
        out[rename[prefix] + key[len(prefix):]] = value
    return out


class Held:
    """A stand-in for a ModelRef holding a descriptor built in the test."""

    def __init__(self, descriptor):
        self.module = upscale._Loaded(descriptor)

    def get(self):
        return self.module


def compact_model(**kwargs):
    return upscale.UpscaleModel(Held(upscale.describe(compact_state_dict(**kwargs), "compact")), "compact")


def test_loader_reads_real_layouts_and_keeps_the_model_loaded(loom_paths):
    folder = loom_paths.base / "models" / "upscale_models"
    folder.mkdir(parents=True)
    torch.save(realesrgan_state_dict(), folder / "RealESRGAN_x4plus.pth")
    save_file({"module." + k: v for k, v in compact_state_dict().items()}, str(folder / "compact.safetensors"))
    ctx = NodeContext(paths=loom_paths)
    esrgan = UpscaleModelLoader(ctx).execute("RealESRGAN_x4plus.pth")[0]
    compact = UpscaleModelLoader(ctx).execute("compact.safetensors")[0]
    assert (esrgan.architecture, esrgan.scale) == ("ESRGAN", 4)
    assert (compact.architecture, compact.scale, compact.input_channels) == ("RealESRGAN Compact", 4, 3)
    loads = memory.model_manager().loads
    again = UpscaleModelLoader(ctx).execute("compact.safetensors")[0]
    assert memory.model_manager().loads == loads and again.descriptor is compact.descriptor
    out = ImageUpscaleWithModel(ctx).execute(esrgan, torch.rand(1, 20, 24, 3))[0]
    assert out.shape == (1, 80, 96, 3) and 0 <= out.min() and out.max() <= 1


def test_loader_errors_name_what_was_found(loom_paths, monkeypatch):
    folder = loom_paths.base / "models" / "upscale_models"
    folder.mkdir(parents=True)
    save_file({"encoder.weight": torch.zeros(2, 2)}, str(folder / "unknown.safetensors"))
    with pytest.raises(WeightsFileError, match="not an upscale model spandrel knows.*encoder.weight"):
        upscale.load_upscale_model(folder / "unknown.safetensors")

    from spandrel import MaskedImageModelDescriptor, ModelLoader
    from spandrel.architectures.LaMa import LaMaArch

    conv = torch.nn.Conv2d(4, 3, 1)
    inpainter = MaskedImageModelDescriptor(conv, conv.state_dict(), architecture=LaMaArch(), purpose="Inpainting",
                                           tags=[], supports_half=False, supports_bfloat16=False,
                                           input_channels=3, output_channels=3)
    monkeypatch.setattr(ModelLoader, "load_from_state_dict", lambda self, sd: inpainter)
    with pytest.raises(WeightsFileError, match="LaMa model for Inpainting.*not a single-image upscale model"):
        upscale.describe({}, "big-lama.pt")


def test_single_tile_is_one_untiled_call():
    model = compact_model()
    image = torch.rand(2, 40, 56, 3)
    expected = model.descriptor(image.movedim(-1, 1)).clamp(0, 1).movedim(1, -1)
    assert torch.equal(upscale.upscale_image(model, image), expected)


def test_tiled_equals_untiled_within_tolerance():
    torch.manual_seed(1)
    model = compact_model()
    image = torch.rand(1, 96, 80, 3) * 0.6 + 0.2
    whole = upscale.upscale_image(model, image, tile=96)
    calls = []
    net = model.descriptor.model
    original = net.forward
    net.forward = lambda x: (calls.append(tuple(x.shape[-2:])), original(x))[1]
    tiled = upscale.upscale_image(model, image, tile=48, overlap=16)
    del net.forward
    assert len(calls) == 6 and set(calls) == {(48, 48)}  # rows at 0, 32, 48; columns at 0, 32
    residual = whole - F.interpolate(image.movedim(-1, 1), scale_factor=4).movedim(1, -1)
    assert residual.std() > 0.03  # the network's own contribution is not negligible
    diff = (tiled - whole).abs()
    assert diff.max() < 1e-2 and diff.mean() < 2e-4, (diff.max(), diff.mean())


def _oom_above(net, side, calls):
    original = net.forward

    def forward(x):
        calls.append(max(x.shape[-2:]))
        if max(x.shape[-2:]) > side:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return original(x)
    net.forward = forward


def test_out_of_memory_halves_the_tile_and_says_so():
    torch.manual_seed(2)
    model = compact_model(feat=8, convs=2)
    image = torch.rand(1, 260, 300, 3)
    whole = upscale.upscale_image(model, image)
    messages, fractions, calls = [], [], []
    ctx = NodeContext(report=lambda _id, fraction, _preview, text: (messages.append(text) if text
                                                                     else fractions.append(fraction)))
    _oom_above(model.descriptor.model, 200, calls)
    out = ImageUpscaleWithModel(ctx).execute(model, image)[0]
    del model.descriptor.model.forward
    assert calls[0] == 300 and set(calls[1:]) == {150}  # the whole image (300 px), then 150 px tiles
    assert messages == ["out of memory with 300 px tiles; halved the tile to 150 px"]
    assert len(fractions) == 6 and fractions[-1] == 1.0  # 2 × 3 tiles, progress after each
    assert out.shape == (1, 1040, 1200, 3)
    diff = (out - whole).abs()
    assert diff.max() < 1e-2 and diff.mean() < 2e-4, (diff.max(), diff.mean())


def test_out_of_memory_below_128_px_is_an_error():
    model = compact_model(feat=8, convs=2)
    calls = []
    _oom_above(model.descriptor.model, 64, calls)
    with pytest.raises(LoomError, match="out of memory .* even in 128 px tiles"):
        upscale.upscale_image(model, torch.rand(1, 256, 256, 3), tile=256)
    assert calls == [256, 128]


# --- tiled diffusion upscale ----------------------------------------------------------------------

@pytest.fixture
def sd_graph(loom_paths, registry):
    """Checkpoint, prompts and a 24×32 source image; returns (graph, run)."""
    folder = loom_paths.base / "models" / "checkpoints"
    folder.mkdir(parents=True)
    make_checkpoint(folder / "tiny.safetensors", "sd1")
    torch.manual_seed(3)
    Image.fromarray((torch.rand(24, 32, 3) * 255).byte().numpy()).save(loom_paths.input_dir / "source.png")
    graph = Graph()
    graph.add_node("CheckpointLoaderSimple", {"ckpt_name": "tiny.safetensors"}, id="ckpt")
    graph.add_node("CLIPTextEncode", {"text": "a red house"}, id="pos")
    graph.add_node("CLIPTextEncode", {"text": "blurry"}, id="neg")
    graph.add_node("LoadImage", {"image": "source.png"}, id="img")
    for node in ("pos", "neg"):
        graph.connect("ckpt", 1, node, "clip")
    executor = Executor(registry, paths=loom_paths)

    def run(*targets):
        result = executor.run(graph, targets=list(targets))
        assert result.ok, (result.problems, result.error)
        return [result.values[t][0] for t in targets]
    return graph, run


SAMPLING = {"seed": 5, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal"}


def add_tiled(graph, node_id, **values):
    graph.add_node("TiledDiffusionUpscale", {"upscale_by": 2.0, "upscale_method": "bilinear", "denoise": 0.5,
                                             "tile_size": 0, "tile_overlap": 16, **SAMPLING, **values}, id=node_id)
    for name, src in (("image", ("img", 0)), ("model", ("ckpt", 0)), ("positive", ("pos", 0)),
                      ("negative", ("neg", 0)), ("vae", ("ckpt", 2))):
        graph.connect(*src, node_id, name)


def test_one_tile_is_upscale_encode_ksampler_decode(sd_graph):
    graph, run = sd_graph
    add_tiled(graph, "tiled")  # 48×64 px fits in one 512 px tile
    graph.add_node("ImageScaleBy", {"upscale_method": "bilinear", "scale_by": 2.0}, id="big")
    graph.connect("img", 0, "big", "image")
    graph.add_node("VAEEncode", {}, id="enc")
    graph.connect("big", 0, "enc", "pixels")
    graph.connect("ckpt", 2, "enc", "vae")
    graph.add_node("KSampler", {**SAMPLING, "denoise": 0.5}, id="ks")
    for name, src in (("model", ("ckpt", 0)), ("positive", ("pos", 0)), ("negative", ("neg", 0)),
                      ("latent_image", ("enc", 0))):
        graph.connect(*src, "ks", name)
    graph.add_node("VAEDecode", {}, id="dec")
    graph.connect("ks", 0, "dec", "samples")
    graph.connect("ckpt", 2, "dec", "vae")
    tiled, plain = run("tiled", "dec")
    assert tiled.shape == plain.shape == (1, 48, 64, 3)
    assert (tiled - plain).abs().max() < 5e-5  # fp32 rounding of the latent's scale round trip


def test_tiles_are_independent_ksampler_runs_blended_at_the_seams(sd_graph):
    from engine.sampling.ksampler import sample
    from engine.sampling.noise import prepare_noise
    from engine.sampling.schedulers import ksampler_sigmas

    _, run = sd_graph
    model, pos, neg = run("ckpt", "pos", "neg")
    latent = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(4))
    progress = []
    out = upscale.tiled_img2img(model, latent, pos, neg, **SAMPLING, denoise=0.6, tile=8, overlap=2,
                                progress=lambda f, text: progress.append(text))
    assert out.shape == latent.shape
    assert upscale.tile_count(8, 12, 8, 2) == 2 and progress[-1] == "tile 2/2"  # columns 0-7 and 4-11
    # the first tile alone, noised with its slice of the whole latent's noise, as KSampler would run it
    sigma = ksampler_sigmas(model.schedule, "normal", 2, "euler", 0.6)[0]
    start = latent + prepare_noise(latent, SAMPLING["seed"]) * sigma / model.latent_format.scale_factor
    first = sample(model, {"samples": start[..., :8]}, pos, neg, **SAMPLING, denoise=0.6,
                   add_noise=False)["samples"]
    # the columns only the first tile covers (0-3) are its result, up to fp32 rounding (relative to the
    # random network's large outputs); the shared ones are blended with the second tile
    assert (out[..., :4] - first[..., :4]).abs().max() < 1e-5 * first.abs().max()
    assert not torch.allclose(out[..., 4:8], first[..., 4:8], atol=1e-3)
    assert upscale.tiled_img2img(model, latent, pos, neg, **SAMPLING, denoise=0.0, tile=8, overlap=2) is latent


# --- example workflows ---------------------------------------------------------------------------

def test_example_workflows_run(loom_paths, registry):
    checkpoints = loom_paths.base / "models" / "checkpoints"
    upscalers = loom_paths.base / "models" / "upscale_models"
    checkpoints.mkdir(parents=True)
    upscalers.mkdir(parents=True)
    make_checkpoint(checkpoints / "v1-5-pruned-emaonly.safetensors", "sd1")
    torch.save(realesrgan_state_dict(), upscalers / "RealESRGAN_x4plus.pth")
    Image.new("RGB", (24, 16), (200, 120, 40)).save(loom_paths.input_dir / "example.png")
    sizes = {}
    for name in ("hires_fix", "esrgan_upscale"):
        graph = load_workflow(WORKFLOWS / f"{name}.json", registry).graph
        for node in graph.nodes.values():
            small = {"EmptyLatentImage": {"width": 32, "height": 32}, "KSampler": {"steps": 2},
                     "LatentUpscale": {"width": 64, "height": 64}}.get(node.type, {})
            for key, value in small.items():
                graph.set_value(node.id, key, value)
        result = Executor(registry, paths=loom_paths).run(graph)
        assert result.ok, (result.problems, result.error)
        saved = [image for ui in result.ui.values() for image in ui.get("images", [])]
        assert len(saved) == 1
        with Image.open(saved[0]["path"]) as img:
            sizes[name] = img.size
    assert sizes == {"hires_fix": (64, 64), "esrgan_upscale": (96, 64)}
