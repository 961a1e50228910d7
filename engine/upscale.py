"""Upscaling: latent resizing (bislerp included), model upscalers through spandrel, tiled diffusion.

Three ways to make an image bigger, as ComfyUI users know them (comfyui.md §4, §6.6):

- resize a latent (``LatentUpscale``) with torch's interpolation modes or *bislerp*, and
  let a second KSampler pass at denoise ~0.5 put the detail back ("hires fix");
- run a super-resolution network (ESRGAN, Real-ESRGAN compact, SwinIR, HAT, DAT… every
  architecture spandrel detects) over the image in feathered tiles, halving the tile when
  memory runs out;
- upscale, then img2img tile by tile at the model's native size (:func:`tiled_img2img`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from . import memory
from .errors import LoomError
from .imageops import center_crop_to_aspect
from .loading.files import WeightsFileError, load_state_dict
from .sd.vae import is_oom
from .tiling import _starts, tiled_map

LATENT_UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")
MIN_TILE = 128  # px: the out-of-memory fallback stops halving here (ComfyUI's floor)
DEFAULT_TILE = 512  # px: the tile off CUDA, and ComfyUI's fixed tile
OVERLAP = 32  # px of input overlap between model tiles (ComfyUI's value)
# ComfyUI's estimate of an upscaler's working memory: 384 bytes per input value per unit of scale.
ACTIVATION_BYTES_PER_VALUE = 384


# --- bislerp and latent resizing --------------------------------------------------------------

def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of the rows of ``a`` and ``b`` (``[N,C]``) by ``t`` (``[N,1]``), ComfyUI's variant.

    Directions are slerped and the length is the lerp of the two lengths.  Rows
    pointing the same way (cos > 1 − 1e-5) give ``a`` itself, opposite rows the
    plain lerp; a zero row counts as direction 0.
    """
    norm_a, norm_b = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    unit_a = torch.where(norm_a == 0, 0.0, a / norm_a)
    unit_b = torch.where(norm_b == 0, 0.0, b / norm_b)
    cos = (unit_a * unit_b).sum(-1, keepdim=True)
    omega = torch.acos(cos)
    sin_omega = torch.sin(omega)
    out = (torch.sin((1 - t) * omega) / sin_omega) * unit_a + (torch.sin(t * omega) / sin_omega) * unit_b
    out = out * (norm_a * (1 - t) + norm_b * t)
    out = torch.where(cos < 1e-5 - 1, a * (1 - t) + b * t, out)
    return torch.where(cos > 1 - 1e-5, a, out)


def _bilinear_taps(old: int, new: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where bilinear resizing (half-pixel centres) reads an axis of ``old`` samples for ``new`` outputs.

    Returns the left tap, the right tap (clamped to the last sample) and the
    fraction between them; the positions are found by bilinearly resizing the
    index ramp itself, which is how ComfyUI's bislerp defines them.
    """
    ramp = torch.arange(old, dtype=torch.float32, device=device).reshape(1, 1, 1, old)
    position = F.interpolate(ramp, size=(1, new), mode="bilinear").flatten()
    right = ramp + 1
    right[..., -1] -= 1
    right = F.interpolate(right, size=(1, new), mode="bilinear").flatten()
    return position.to(torch.int64), right.to(torch.int64), position - position.floor()


def _bislerp_axis(x: torch.Tensor, new: int, dim: int) -> torch.Tensor:
    """Resize ``[N,C,H,W]`` along ``dim`` (2 or 3), slerping the channel vectors of neighbouring taps."""
    left, right, t = _bilinear_taps(x.shape[dim], new, x.device)
    a, b = x.index_select(dim, left), x.index_select(dim, right)
    t_shape = [1, 1, 1, 1]
    t_shape[dim] = new
    t = t.reshape(t_shape).expand(a.shape[0], 1, *a.shape[2:])
    out = slerp(_rows(a), _rows(b), _rows(t))
    return out.reshape(a.movedim(1, -1).shape).movedim(-1, 1)


def _rows(v: torch.Tensor) -> torch.Tensor:
    """``[N,C,H,W]`` as rows of channel vectors ``[N·H·W, C]``."""
    return v.movedim(1, -1).reshape(-1, v.shape[1])


def bislerp(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """ComfyUI's bislerp: resize ``[N,C,H,W]`` to ``height × width``, first along the width, then the height.

    Each output vector is the :func:`slerp` of its two bilinear taps, so latent
    vectors keep their length instead of shrinking towards zero as a lerp does.
    """
    dtype = x.dtype
    x = _bislerp_axis(x.float(), width, 3)
    return _bislerp_axis(x, height, 2).to(dtype)


def resize_latent(samples: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """``[B,C,h,w]`` latents to ``height × width`` latent pixels (ComfyUI's ``common_upscale``)."""
    if method not in LATENT_UPSCALE_METHODS:
        raise LoomError(f"unknown latent upscale method {method!r}; one of {', '.join(LATENT_UPSCALE_METHODS)}")
    if crop == "center":
        samples = center_crop_to_aspect(samples, width, height)
    if method == "bislerp":
        return bislerp(samples, width, height)
    return F.interpolate(samples, size=(height, width), mode=method)


def latent_upscale_size(latent_h: int, latent_w: int, width: int, height: int) -> tuple[int, int] | None:
    """LatentUpscale's target in latent pixels for a pixel ``width × height`` (None: leave it alone).

    A 0 side keeps the aspect ratio; each side is at least 64 px (ComfyUI's rule).
    """
    if width == 0 and height == 0:
        return None
    if width == 0:
        height = max(64, height)
        width = max(64, round(latent_w * height / latent_h))
    elif height == 0:
        width = max(64, width)
        height = max(64, round(latent_h * width / latent_w))
    else:
        width, height = max(64, width), max(64, height)
    return height // 8, width // 8


def total_pixels_size(height: int, width: int, megapixels: float, steps: int = 1) -> tuple[int, int]:
    """ImageScaleToTotalPixels' target ``(height, width)``: the aspect ratio kept, about
    ``megapixels × 2²⁰`` pixels, each side rounded to a multiple of ``steps``."""
    scale = math.sqrt(megapixels * 1024 * 1024 / (width * height))
    return (max(steps, round(height * scale / steps) * steps), max(steps, round(width * scale / steps) * steps))


# --- model upscalers (spandrel) ---------------------------------------------------------------

class _Loaded(torch.nn.Module):
    """What the model manager keeps: the spandrel network (counted for memory) and its descriptor."""

    def __init__(self, descriptor):
        super().__init__()
        self.net = descriptor.model
        self.descriptor = descriptor


class UpscaleModel:
    """UPSCALE_MODEL: a handle on a spandrel ``ImageModelDescriptor`` kept by :mod:`engine.memory`."""

    def __init__(self, ref: memory.ModelRef, name: str):
        self.ref = ref
        self.name = name
        d = self.descriptor
        self.architecture, self.scale = d.architecture.name, d.scale
        self.input_channels, self.output_channels = d.input_channels, d.output_channels

    @property
    def descriptor(self):
        return self.ref.get().descriptor

    def cache_nbytes(self) -> int:
        return 0

    def __repr__(self) -> str:
        return f"UpscaleModel({self.name}: {self.architecture} {self.scale}x)"


def _upscaler_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors, with a DataParallel ``module.`` prefix removed (some SwinIR dumps have it)."""
    sd = load_state_dict(path)
    return {(k[len("module."):] if k.startswith("module.") else k): sd[k] for k in sd}


def describe(state_dict: dict[str, torch.Tensor], name: str):
    """The spandrel descriptor of ``state_dict``; a clear error for anything but a single-image model."""
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    try:
        descriptor = ModelLoader().load_from_state_dict(state_dict)
    except UnsupportedModelError:
        keys = ", ".join(list(state_dict)[:5])
        raise WeightsFileError(f"{name} is not an upscale model spandrel knows (first keys: {keys})") from None
    if not isinstance(descriptor, ImageModelDescriptor):
        raise WeightsFileError(
            f"{name} is a {descriptor.architecture.name} model for {descriptor.purpose} "
            f"({type(descriptor).__name__}), not a single-image upscale model")
    return descriptor.eval()


def _run_dtype(descriptor, dtype: torch.dtype) -> torch.dtype:
    """The policy's dtype where the architecture supports it, else float32."""
    if (dtype == torch.float16 and not descriptor.supports_half) or \
            (dtype == torch.bfloat16 and not descriptor.supports_bfloat16):
        return torch.float32
    return dtype


def load_upscale_model(path) -> UpscaleModel:
    """Open an upscaler file (``.pth`` read with ``weights_only``, or ``.safetensors``) and load it once."""
    path = Path(path)
    policy = memory.policy()
    stat = path.stat()
    key = (f"{path.name}:upscaler", str(path), stat.st_size, stat.st_mtime_ns, str(policy.dtype), str(policy.device))

    def load():
        descriptor = describe(_upscaler_state_dict(path), path.name)
        descriptor.to(policy.device, _run_dtype(descriptor, policy.dtype))
        return _Loaded(descriptor).requires_grad_(False)

    return UpscaleModel(memory.ModelRef(key, load), path.name)


def choose_tile(descriptor, height: int, width: int) -> int:
    """The first tile side to try: the whole image for models that advise against tiling; on CUDA
    the largest multiple of 64 whose estimated working memory fits in 80 % of free memory; else 512."""
    from spandrel import ModelTiling

    whole = max(height, width)
    if descriptor.tiling is not ModelTiling.SUPPORTED:
        return whole
    if descriptor.device.type != "cuda":
        return min(DEFAULT_TILE, whole)
    free, _ = torch.cuda.mem_get_info(descriptor.device)
    per_pixel = descriptor.input_channels * descriptor.dtype.itemsize * max(descriptor.scale, 1) \
        * ACTIVATION_BYTES_PER_VALUE
    tile = int(math.sqrt(0.8 * free / per_pixel)) // 64 * 64
    return min(max(tile, MIN_TILE), whole)


def _upscale_tiles(descriptor, x: torch.Tensor, tile: int, overlap: int, progress) -> torch.Tensor:
    """``[B,C,H,W]`` (CPU) through the network in tiles, one image at a time; the result stays on the CPU."""
    def run(piece):
        return descriptor(piece.to(descriptor.device, descriptor.dtype)).float().cpu()

    batch = x.shape[0]
    out = []
    for i in range(batch):
        report = None if progress is None else (lambda f, i=i: progress((i + f) / batch))
        out.append(tiled_map(run, x[i:i + 1], tile, overlap, descriptor.scale, descriptor.output_channels, report))
    return torch.cat(out)


@torch.no_grad()
def upscale_image(model: UpscaleModel, image: torch.Tensor, tile: int | None = None, overlap: int = OVERLAP,
                  progress: Callable[[float], None] | None = None,
                  report: Callable[[str], None] | None = None) -> torch.Tensor:
    """IMAGE ``[B,H,W,C]`` → IMAGE ``[B,H·s,W·s,C]`` in 0..1, in feathered tiles.

    ``tile`` defaults to :func:`choose_tile`.  On out-of-memory the tile is
    halved (down to 128 px) and ``report`` says so; ``progress`` gets the
    fraction done after every tile.
    """
    descriptor = model.descriptor
    if image.shape[-1] != descriptor.input_channels:
        raise LoomError(f"{model.name} takes {descriptor.input_channels}-channel images, "
                        f"this image has {image.shape[-1]} channels")
    x = image.movedim(-1, 1).float().cpu()
    tile = tile or choose_tile(descriptor, *x.shape[-2:])
    while True:
        try:
            out = _upscale_tiles(descriptor, x, tile, overlap, progress)
            break
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not is_oom(exc):
                raise
            if tile // 2 < MIN_TILE:
                raise LoomError(f"out of memory upscaling with {model.name} even in {tile} px tiles") from exc
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if report is not None:
                report(f"out of memory with {tile} px tiles; halved the tile to {tile // 2} px")
            tile //= 2
    return out.clamp(0, 1).movedim(1, -1)


# --- tiled diffusion upscale ------------------------------------------------------------------

def native_tile_px(model) -> int:
    """The side a diffusion model was trained at: 1024 px for SDXL, 768 for SD2 v-models, else 512."""
    if model.family.startswith("sdxl"):
        return 1024
    if model.family == "sd2" and model.prediction_type == "v":
        return 768
    return 512


def tile_count(height: int, width: int, tile: int, overlap: int) -> int:
    """How many tiles :func:`engine.tiling.tiled_map` makes of a ``height × width`` input."""
    overlap = max(0, min(overlap, tile // 2))
    return len(_starts(height, tile, overlap)) * len(_starts(width, tile, overlap))


def _noised(model, latent: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor, max_denoise: bool) -> torch.Tensor:
    """The latent noised to ``sigma`` with ``noise``, in the LATENT's own scale, such that the KSampler
    started on it with ``add_noise=False`` begins exactly at ``noise_scaling(sigma, noise, latent)``.

    (With zero noise the sampler's first state is ``noise_scaling(sigma, 0, latent)``, which is the
    latent times a constant; dividing by that constant makes the hand-off exact for every prediction type.)
    """
    fmt, prediction = model.latent_format, model.prediction
    x = prediction.noise_scaling(sigma, noise, fmt.process_in(latent), max_denoise)
    gain = prediction.noise_scaling(sigma, torch.zeros(()), torch.ones(()))
    return fmt.process_out(x / gain)


def tiled_img2img(model, latent: torch.Tensor, positive, negative, *, seed: int, steps: int, cfg: float,
                  sampler_name: str, scheduler: str, denoise: float, tile: int, overlap: int,
                  progress: Callable[[float, str], None] | None = None) -> torch.Tensor:
    """img2img of ``latent`` ``[B,C,h,w]`` tile by tile (``tile``/``overlap`` in latent pixels), seams feathered.

    The noise is drawn once from ``seed`` for the whole latent, as the KSampler
    would, and each tile is noised with its own slice of it: overlapping tiles
    start from the same values there, so they agree where they are blended, and
    no noise pattern repeats from tile to tile.  Each tile is then denoised by
    the ordinary :func:`engine.sampling.ksampler.sample` (``add_noise=False``;
    tile ``k`` uses ``seed + k`` for a sampler's own per-step noise).  With one
    tile this is ``KSampler(denoise)`` on the whole latent, to fp32 rounding.
    """
    from .sampling.denoiser import is_max_denoise
    from .sampling.ksampler import sample
    from .sampling.noise import prepare_noise
    from .sampling.schedulers import ksampler_sigmas

    if model.is_inpaint:
        raise LoomError("tiled upscaling needs a regular checkpoint, not an inpainting (9-channel) one")
    sigmas = ksampler_sigmas(model.schedule, scheduler, steps, sampler_name, denoise)
    if len(sigmas) == 0:
        return latent
    noised = _noised(model, latent.float(), prepare_noise(latent.float(), seed), sigmas[0].cpu(),
                     is_max_denoise(model.schedule, sigmas))
    total = tile_count(*latent.shape[-2:], tile, overlap)
    done = [0]

    def denoise_tile(piece: torch.Tensor) -> torch.Tensor:
        k = done[0]

        def step(i, n, _x0):
            if progress is not None:
                progress((k + (i + 1) / n) / total, f"tile {k + 1}/{total}")
        out = sample(model, {"samples": piece}, positive, negative, seed=seed + k, steps=steps, cfg=cfg,
                     sampler_name=sampler_name, scheduler=scheduler, denoise=denoise, add_noise=False,
                     callback=step)
        done[0] += 1
        return out["samples"]

    return tiled_map(denoise_tile, noised, tile, overlap, 1, latent.shape[1])
