"""DPM-Solver, single-step, with a fixed (dpm_fast) or adaptive (dpm_adaptive) step size.

Lu et al. (2022), "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around
10 Steps", arXiv 2206.00927: Algorithms 1-2 (DPM-Solver-2/3 steps), 4 (DPM-Solver-fast) and 5
(adaptive step size, with k-diffusion's PID controller). Time is t = -log sigma, and the model is
seen through its noise prediction eps = (x - D(x, sigma)) / sigma.

As in ComfyUI these samplers integrate from sigmas[0] down to the smallest nonzero sigma and do not
take a final step to 0; they use only the first and last sigmas, not the schedule in between.
"""

import math

import torch

from .noise import default_noise_sampler
from .samplers import report_step, get_ancestral_step


def _t(sigma):
    return sigma.log().neg()


def _sigma(t):
    return t.neg().exp()


def _noise_predictor(model, extra_args):
    """eps(x, t) = (x - D(x, sigma(t))) / sigma(t)."""
    def eps_fn(x, t):
        sigma = _sigma(t)
        return (x - model(x, sigma * x.new_ones([x.shape[0]]), **extra_args)) / sigma
    return eps_fn


def dpm_solver_1_step(x, t, t_next, eps):
    """First order (= DDIM): x_next = x - sigma(t_next) (e^h - 1) eps."""
    return x - _sigma(t_next) * (t_next - t).expm1() * eps


def dpm_solver_2_step(eps_fn, x, t, t_next, eps, r1=1 / 2):
    """Second order, intermediate point at t + r1 h. Returns (x_next, eps at the intermediate point)."""
    h = t_next - t
    s1 = t + r1 * h
    u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
    eps_r1 = eps_fn(u1, s1)
    x_2 = x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)
    return x_2, eps_r1


def dpm_solver_3_step(eps_fn, x, t, t_next, eps, eps_r1=None, r1=1 / 3, r2=2 / 3):
    """Third order, intermediate points at t + r1 h and t + r2 h (eps_r1 may be given, already computed)."""
    h = t_next - t
    if eps_r1 is None:
        s1 = t + r1 * h
        eps_r1 = eps_fn(x - _sigma(s1) * (r1 * h).expm1() * eps, s1)
    s2 = t + r2 * h
    u2 = (x - _sigma(s2) * (r2 * h).expm1() * eps
          - _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps))
    eps_r2 = eps_fn(u2, s2)
    return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)


def _ancestral_target(t, t_next, t_end, eta):
    """With eta > 0, where the deterministic part of a step ends and how much noise is added back."""
    if not eta:
        return t_next, 0.0
    sigma_down, _ = get_ancestral_step(_sigma(t), _sigma(t_next), eta)
    t_down = torch.minimum(t_end, _t(sigma_down))
    return t_down, (_sigma(t_next) ** 2 - _sigma(t_down) ** 2) ** 0.5


def _setup(model, x, sigmas, extra_args, noise_sampler, eta):
    """Returns (t_start, t_end, eps_fn, noise_sampler). The solver runs from sigmas[0] to the last
    sigma, or to the one before it if that is 0 (as ComfyUI passes them)."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x, seed=extra_args.get("seed")) if noise_sampler is None else noise_sampler
    sigma_min, sigma_max = sigmas[-1] if sigmas[-1] != 0 else sigmas[-2], sigmas[0]
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    t_start, t_end = _t(sigma_max), _t(sigma_min)
    if not t_end > t_start and eta:
        raise ValueError("eta must be 0 for reverse sampling")
    return t_start, t_end, _noise_predictor(model, extra_args), noise_sampler


@torch.no_grad()
def sample_dpm_fast(model, x, sigmas, extra_args=None, callback=None, disable=None,
                    eta=0.0, s_noise=1.0, noise_sampler=None):
    """DPM-Solver-fast (Lu et al. 2022, Algorithm 4): len(sigmas) - 1 model evaluations spread over
    steps of order 3 (then 2 and 1) uniform in t = -log sigma."""
    if len(sigmas) <= 1:
        return x
    t_start, t_end, eps_fn, noise_sampler = _setup(model, x, sigmas, extra_args, noise_sampler, eta)
    nfe = len(sigmas) - 1
    m = math.floor(nfe / 3) + 1
    ts = torch.linspace(t_start, t_end, m + 1, device=x.device)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        t_down, sigma_up = _ancestral_target(t, t_next, t_end, eta)
        eps = eps_fn(x, t)
        report_step(callback, i, x, _sigma(t), x - _sigma(t) * eps)
        if order == 1:
            x = dpm_solver_1_step(x, t, t_down, eps)
        elif order == 2:
            x, _ = dpm_solver_2_step(eps_fn, x, t, t_down, eps)
        else:
            x = dpm_solver_3_step(eps_fn, x, t, t_down, eps)
        if eta:
            x = x + sigma_up * s_noise * noise_sampler(_sigma(t), _sigma(t_next))
    return x


class PIDStepSizeController:
    """A PID controller for the step size of an adaptive ODE solver (k-diffusion; Söderlind 2003)."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order=1, accept_safety=0.81, eps=1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errs = []

    def propose_step(self, error):
        """Scale h from the last three inverse errors; returns whether the step is accepted."""
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2] = self.errs[1]
            self.errs[1] = self.errs[0]
        self.h *= factor
        return accept


@torch.no_grad()
def sample_dpm_adaptive(model, x, sigmas, extra_args=None, callback=None, disable=None,
                        order=3, rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0.0, icoeff=1.0,
                        dcoeff=0.0, accept_safety=0.81, eta=0.0, s_noise=1.0, noise_sampler=None):
    """DPM-Solver-12 / 23 with adaptive step size (Lu et al. 2022, Algorithm 5): each step compares an
    order-(k-1) and an order-k solution and lets a PID controller pick the next step."""
    if len(sigmas) <= 1:
        return x
    if order not in {2, 3}:
        raise ValueError("order should be 2 or 3")
    t_start, t_end, eps_fn, noise_sampler = _setup(model, x, sigmas, extra_args, noise_sampler, eta)
    forward = t_end > t_start  # False for increasing sigmas (inversion)
    atol, rtol = torch.tensor(atol), torch.tensor(rtol)
    h_init = abs(h_init) * (1 if forward else -1)
    pid = PIDStepSizeController(h_init, pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    s, x_prev, steps = t_start, x, 0

    while s < t_end - 1e-5 if forward else s > t_end + 1e-5:
        t = torch.minimum(t_end, s + pid.h) if forward else torch.maximum(t_end, s + pid.h)
        t_down, sigma_up = _ancestral_target(s, t, t_end, eta)
        eps = eps_fn(x, s)
        denoised = x - _sigma(s) * eps
        if order == 2:
            x_low = dpm_solver_1_step(x, s, t_down, eps)
            x_high, _ = dpm_solver_2_step(eps_fn, x, s, t_down, eps)
        else:
            x_low, eps_r1 = dpm_solver_2_step(eps_fn, x, s, t_down, eps, r1=1 / 3)
            x_high = dpm_solver_3_step(eps_fn, x, s, t_down, eps, eps_r1=eps_r1)
        delta = torch.maximum(atol, rtol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose_step(error):
            x_prev = x_low
            x = x_high + sigma_up * s_noise * noise_sampler(_sigma(s), _sigma(t)) if eta else x_high
            s = t
        report_step(callback, steps, x, _sigma(s), denoised)
        steps += 1
    return x
