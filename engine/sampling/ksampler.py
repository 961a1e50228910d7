"""KSampler: from a latent, conditioning and a seed to a denoised latent, as ComfyUI does it.

1. noise from the seed on the CPU (comfyui.md §5.5), or zeros when noise is off;
2. sigmas from the scheduler, with the ``denoise < 1`` and step-range rules (§5.4);
3. the latent scaled into the model's space, noised to the first sigma;
4. the sampler runs on the guided denoiser; a noise mask re-imposes the
   original latent (re-noised to the current sigma) outside the mask at every call (§5.6);
5. the result scaled back.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from . import SAMPLERS
from .denoiser import is_max_denoise
from .guidance import CFGDenoiser
from .noise import inpaint_noise, prepare_noise
from .schedulers import ksampler_sigmas, step_range


class InpaintDenoiser:
    """Keeps the unmasked latent: before and after each model call, outside the mask, the
    original latent (noised to the current sigma with the run's noise) replaces the sample."""

    def __init__(self, inner, latent, noise, mask, sigmas, mask_function=None):
        self.inner_model = inner
        self.latent, self.noise, self.mask = latent, noise, mask
        self.sigmas = sigmas
        self.mask_function = mask_function

    def __call__(self, x, sigma, **kwargs):
        mask = self.mask
        if self.mask_function is not None:  # ComfyUI's denoise_mask_function(sigma, mask, extra_options)
            mask = self.mask_function(sigma, mask, {"model": self.inner_model, "sigmas": self.sigmas})
        keep = 1.0 - mask
        prediction = self.inner_model.prediction
        renoised = prediction.noise_scaling(sigma.reshape(-1), self.noise, self.latent)
        x = x * mask + renoised * keep
        out = self.inner_model(x, sigma, **kwargs)
        return out * mask + self.latent * keep


def prepare_mask(mask: torch.Tensor, shape) -> torch.Tensor:
    """A MASK resized to the latent (bilinear), repeated over channels and batch."""
    mask = mask.reshape(-1, 1, *mask.shape[-2:]).float()
    mask = F.interpolate(mask, size=tuple(shape[-2:]), mode="bilinear")
    mask = mask.expand(-1, shape[1], -1, -1)
    if mask.shape[0] < shape[0]:
        mask = mask.repeat(-(-shape[0] // mask.shape[0]), 1, 1, 1)
    return mask[: shape[0]]


def fix_latent_channels(model, samples: torch.Tensor) -> torch.Tensor:
    """An empty latent made for another model family gets this model's channel count."""
    channels = model.latent_format.channels
    if samples.shape[1] != channels and torch.count_nonzero(samples) == 0:
        return torch.zeros(samples.shape[0], channels, *samples.shape[2:], dtype=samples.dtype)
    return samples


def sample(model, latent: dict, positive, negative, *, seed: int, steps: int, cfg: float, sampler_name: str,
           scheduler: str, denoise: float = 1.0, add_noise: bool = True, start_step: int | None = None,
           last_step: int | None = None, force_full_denoise: bool = False,
           callback: Callable[[int, int, torch.Tensor], None] | None = None) -> dict:
    """Run one KSampler / KSamplerAdvanced; returns a new LATENT dict (noise_mask kept)."""
    sigmas = ksampler_sigmas(model.schedule, scheduler, steps, sampler_name, denoise)
    sigmas = step_range(sigmas, start_step, last_step, force_full_denoise)
    out, _ = sample_sigmas(model, latent, positive, negative, cfg=cfg, sampler_name=sampler_name, sigmas=sigmas,
                           seed=seed, add_noise=add_noise, callback=callback)
    return out


def sample_sigmas(model, latent: dict, positive, negative, *, cfg: float, sampler_name: str, sigmas: torch.Tensor,
                  seed: int, add_noise: bool = True, callback=None) -> tuple[dict, dict]:
    """Sample over explicit ``sigmas``; returns (output, last x0 estimate) as LATENT dicts."""
    latent_image = fix_latent_channels(model, latent["samples"]).float()
    noise = (prepare_noise(latent_image, seed, latent.get("batch_index")) if add_noise
             else torch.zeros_like(latent_image))
    out = dict(latent)
    if len(sigmas) == 0:  # nothing to sample: the latent is returned as it is
        out["samples"] = latent_image
        return out, dict(out)

    device = model.device
    latent_in = model.latent_format.process_in(latent_image).to(device)
    noise = noise.to(device)
    sigmas = sigmas.to(device)
    mask = latent.get("noise_mask")
    denoiser = CFGDenoiser(model, positive, negative, cfg, latent_image.shape,
                           concat_latent=latent_image if model.is_inpaint else None, concat_mask=mask)
    model_k = denoiser
    if mask is not None:
        mask = prepare_mask(mask, latent_image.shape).to(device)
        inpaint = inpaint_noise(noise, seed) if sampler_name == "ddim" else noise
        model_k = InpaintDenoiser(denoiser, latent_in, inpaint, mask, sigmas,
                                  model.options.get("denoise_mask_function"))

    x = model.prediction.noise_scaling(sigmas[0], noise, latent_in, is_max_denoise(model.schedule, sigmas))
    total = len(sigmas) - 1
    last_x0 = {}

    def k_callback(info):
        last_x0["x0"] = info["denoised"]
        if callback is not None:
            callback(info["i"], total, info["denoised"])

    samples = x if total == 0 else SAMPLERS[sampler_name](model_k, x, sigmas, extra_args={"seed": seed},
                                                          callback=k_callback)
    samples = model.prediction.inverse_noise_scaling(sigmas[-1], samples)
    out["samples"] = model.latent_format.process_out(samples).float().cpu()
    if mask is not None and "denoise_mask_function" not in model.options:
        # where the mask is 0 the input comes back exactly; the last step's arithmetic only nearly
        # returns it (to an ulp for Euler, ~1e-2 for uni_pc's corrector)
        out["samples"] = torch.where(mask.cpu() == 0, latent_image, out["samples"])
    denoised = dict(out)
    if "x0" in last_x0:
        denoised["samples"] = model.latent_format.process_out(last_x0["x0"]).float().cpu()
    return out, denoised
