"""Editing by running the diffusion part of the way up and back down: SDEdit and DDIM inversion.

**SDEdit** (Meng et al. 2021, arXiv 2108.01073, Algorithm 1). A strength t0 in (0, 1] is a diffusion
time. The guide latent is noised to t0, x_t0 = alpha(t0) x_g + sigma_t(t0) z, which in the samplers'
variance-exploding form is x_g + sigma(t0) z, and the reverse process runs from t0 to 0 in the
requested number of steps. On a discrete model the diffusion times are its noise levels: level i of
its n-entry table (ascending, n = 1000 for SD) is time (i + 1) / n, so t0 keeps the first
m = round(t0 n) levels. The scheduler is run on that restricted table, which makes every scheduler
spend all its steps inside [0, t0] (with "normal" that is SDEdit's own uniform grid on [0, t0]):

- t0 = 1 keeps the whole table: the sigmas are exactly txt2img's; SDEdit then starts from the
  reverse process's prior (pure noise, as txt2img does), the t0 = 1 case of the paper ("synthesis
  from scratch"). The guide's residual weight alpha(1) = sqrt(alphā_n) ~ 0.068 on SD is dropped.
- m = 0 (t0 < 1 / (2n)) keeps nothing: nothing is noised, the input is the output.

This differs from ComfyUI's ``denoise`` (KSampler runs the last ``steps`` of an int(steps/denoise)-step
schedule, comfyui.md §5.4), which remains available as is.

**DDIM inversion** (Song et al. 2021, DDIM §5 / Dhariwal & Nichol 2021 App. F; Mokady et al. 2023).
DDIM with eta = 0 is Euler's method on the probability-flow ODE in sigma (to_d in samplers.py):
x_s = x_t + (s - t) (x_t - D(x_t, t)) / t. Inversion walks the same sigmas upwards and solves each
step for its start point: x_t = x_s + (t - s) d(x_t, t). The classic inversion evaluates d at the
known point, d(x_s, t); ``refine`` fixed-point iterations x_t <- x_s + (t - s) d(x_t, t) make the
step the exact inverse of the Euler step (Pan et al. 2023, "Effective real image editing with
accelerated iterative diffusion inversion"), so sampling back reconstructs the input more closely.
"""
from __future__ import annotations

import copy
import math

import torch

from .samplers import report_step, to_d
from .schedulers import ksampler_sigmas

_TABLES = ("sigmas", "log_sigmas")  # per-level tables a schedule may hold (DiscreteSchedule has both)


def sdedit_levels(schedule, strength: float) -> int:
    """How many of the model's noise levels lie in (0, t0]: m = round(t0 n), half up."""
    return min(len(schedule.sigmas), math.floor(strength * len(schedule.sigmas) + 0.5))


def first_levels(schedule, m: int):
    """A view of ``schedule`` restricted to its m lowest noise levels (same sigma <-> timestep map)."""
    view = copy.copy(schedule)
    for name in _TABLES:
        if hasattr(schedule, name):
            setattr(view, name, getattr(schedule, name)[:m])
    return view


def sdedit_sigmas(schedule, scheduler: str, steps: int, sampler: str | None, strength: float) -> torch.Tensor:
    """The sigmas SDEdit walks at strength t0: ``scheduler`` on the levels in (0, t0], ending in 0.

    Empty when t0 holds no level.  Repeated levels (more steps than levels) are merged, so a step
    never has zero length.
    """
    m = sdedit_levels(schedule, strength)
    if m == 0:
        return torch.FloatTensor([])
    if m == 1:  # one level: one step, whatever the scheduler
        return torch.FloatTensor([float(schedule.sigmas[0]), 0.0])
    return torch.unique_consecutive(ksampler_sigmas(first_levels(schedule, m), scheduler, steps, sampler))


@torch.no_grad()
def ddim_invert(model, x, sigmas, refine: int = 0, callback=None, extra_args=None):
    """Run DDIM (Euler on the probability-flow ODE) backwards: x at sigmas[-1] (= 0) -> x at sigmas[0].

    ``sigmas`` is the decreasing list a sampler walks; ``sample_euler`` over the same sigmas maps the
    result back to x.  ``refine`` extra denoiser calls per step solve each step for its exact inverse.
    """
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    rising = sigmas.flip(0)
    for i in range(len(rising) - 1):
        sigma, sigma_next = rising[i], rising[i + 1]
        x_next = x
        for _ in range(1 + refine):
            denoised = model(x_next, sigma_next * s_in, **extra_args)
            x_next = x + to_d(x_next, sigma_next * s_in, denoised) * (sigma_next - sigma)
        report_step(callback, i, x_next, sigma_next, denoised)
        x = x_next
    return x
