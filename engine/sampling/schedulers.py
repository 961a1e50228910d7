"""Schedulers: the decreasing list of sigmas a sampler walks, always ending in 0.

Each scheduler in `SCHEDULERS` is a function `(schedule, steps) -> float32 tensor of steps + 1
sigmas`, computed exactly as ComfyUI's `comfy/samplers.py` computes it (same float32 operations),
so that the same workflow walks the same noise levels. `ksampler_sigmas` and `step_range` add the
KSampler / KSamplerAdvanced rules on top (denoise < 1, start/end steps, leftover noise).
"""

import math

import numpy as np
import torch


def append_zero(x):
    return torch.cat([x, x.new_zeros([1])])


# --- schedules on a sigma range (k-diffusion) ---------------------------------------------------

def karras_sigmas(n, sigma_min, sigma_max, rho=7.0):
    """Karras et al. (2022) eq. 5: linear in sigma^(1/rho) from sigma_max to sigma_min, then 0."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential_sigmas(n, sigma_min, sigma_max):
    """Linear in log sigma from sigma_max to sigma_min, then 0."""
    return append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def kl_optimal_sigmas(n, sigma_min, sigma_max):
    """Linear in arctan(sigma) (A1111 PR 15608, from "Align Your Steps" appendix), then 0.

    ComfyUI divides by n - 1 and so returns NaN for one step; here one step is [sigma_max, 0].
    """
    if n == 1:
        return torch.tensor([sigma_max, 0.0])
    w = torch.arange(n, dtype=torch.float).div_(n - 1)
    sigmas = w.new_zeros(n + 1)
    sigmas[:-1] = (w * math.atan(sigma_min) + (1 - w) * math.atan(sigma_max)).tan_()
    return sigmas


# --- schedulers on a model's schedule -----------------------------------------------------------

def simple_scheduler(schedule, steps):
    """Every (n_table / steps)-th entry of the model's sigma table, from the top."""
    stride = len(schedule.sigmas) / steps
    sigmas = [float(schedule.sigmas[-(1 + int(i * stride))]) for i in range(steps)]
    return torch.FloatTensor(sigmas + [0.0])


def ddim_uniform_scheduler(schedule, steps):
    """DDIM's uniform timestep skipping: table entries 1, 1 + k, 1 + 2k, ... with k = n_table // steps,
    reversed, ending with 0 (unless the table's entry 1 is already ~0, then one more step)."""
    sigs = [0.0]
    if math.isclose(float(schedule.sigmas[1]), 0, abs_tol=0.00001):
        steps += 1
        sigs = []
    stride = max(len(schedule.sigmas) // steps, 1)
    sigs += [float(s) for s in schedule.sigmas[1::stride]]
    return torch.FloatTensor(sigs[::-1])


def normal_scheduler(schedule, steps, sgm=False):
    """Uniform in the model's timestep, from timestep(sigma_max) to timestep(sigma_min), then 0.

    With `sgm` (sgm_uniform) it takes steps + 1 points and drops the last, as SGM's sampler does.
    """
    start, end = schedule.timestep(schedule.sigma_max), schedule.timestep(schedule.sigma_min)
    append = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(schedule.sigma(end)), 0, abs_tol=0.00001):
            steps += 1
            append = False
        timesteps = torch.linspace(start, end, steps)
    # one timestep at a time, as ComfyUI does: vectorised exp/log may round differently
    sigmas = [float(schedule.sigma(t)) for t in timesteps]
    return torch.FloatTensor(sigmas + [0.0] if append else sigmas)


def sgm_uniform_scheduler(schedule, steps):
    return normal_scheduler(schedule, steps, sgm=True)


def karras_scheduler(schedule, steps):
    return karras_sigmas(steps, float(schedule.sigma_min), float(schedule.sigma_max))


def exponential_scheduler(schedule, steps):
    return exponential_sigmas(steps, float(schedule.sigma_min), float(schedule.sigma_max))


def kl_optimal_scheduler(schedule, steps):
    return kl_optimal_sigmas(steps, float(schedule.sigma_min), float(schedule.sigma_max))


def beta_scheduler(schedule, steps, alpha=0.6, beta=0.6):
    """Lee et al. (2024) "Beta sampling is all you need" (arXiv 2407.12173): table indices at the
    Beta(alpha, beta) quantiles of 1, 1 - 1/steps, ..., 1/steps, rounded half-to-even (numpy.rint)
    as ComfyUI does; repeated indices are kept once."""
    last_index = len(schedule.sigmas) - 1
    quantiles = 1 - np.linspace(0, 1, steps, endpoint=False)
    indices = np.rint(np.array([beta_ppf(q, alpha, beta) for q in quantiles]) * last_index)
    sigmas, previous = [], None
    for t in indices:
        if t != previous:
            sigmas.append(float(schedule.sigmas[int(t)]))
        previous = t
    return torch.FloatTensor(sigmas + [0.0])


def linear_quadratic_scheduler(schedule, steps, threshold_noise=0.025, linear_steps=None):
    """Genmo Mochi's schedule: the first half of the steps linear in sigma up to `threshold_noise`
    (as a fraction of sigma_max), the rest quadratic up to 1, flipped to run from the top."""
    if steps == 1:
        fractions = [1.0, 0.0]
    else:
        linear_steps = steps // 2 if linear_steps is None else linear_steps
        quadratic_steps = steps - linear_steps
        linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        step_diff = linear_steps - threshold_noise * steps
        quadratic_coef = step_diff / (linear_steps * quadratic_steps ** 2)
        linear_coef = threshold_noise / linear_steps - 2 * step_diff / (quadratic_steps ** 2)
        const = quadratic_coef * (linear_steps ** 2)
        quadratic = [quadratic_coef * (i ** 2) + linear_coef * i + const for i in range(linear_steps, steps)]
        fractions = [1.0 - f for f in linear + quadratic + [1.0]]
    return torch.FloatTensor(fractions) * schedule.sigma_max.cpu()


SCHEDULERS = {
    "simple": simple_scheduler,
    "sgm_uniform": sgm_uniform_scheduler,
    "karras": karras_scheduler,
    "exponential": exponential_scheduler,
    "ddim_uniform": ddim_uniform_scheduler,
    "beta": beta_scheduler,
    "normal": normal_scheduler,
    "linear_quadratic": linear_quadratic_scheduler,
    "kl_optimal": kl_optimal_scheduler,
}


def calculate_sigmas(schedule, name, steps):
    """The sigmas of scheduler `name` for `steps` steps on a model's schedule."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; expected one of {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name](schedule, steps)


# --- KSampler rules -----------------------------------------------------------------------------

# These samplers get one more step and drop the second-to-last sigma (their last step is a long one).
DISCARD_PENULTIMATE_SIGMA_SAMPLERS = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})


def _sampler_sigmas(schedule, scheduler, steps, sampler):
    if sampler in DISCARD_PENULTIMATE_SIGMA_SAMPLERS:
        sigmas = calculate_sigmas(schedule, scheduler, steps + 1)
        return torch.cat([sigmas[:-2], sigmas[-1:]])
    return calculate_sigmas(schedule, scheduler, steps)


def ksampler_sigmas(schedule, scheduler, steps, sampler=None, denoise=1.0):
    """KSampler's sigmas (ComfyUI `KSampler.set_steps`).

    With denoise < 1 (img2img), a schedule of int(steps / denoise) steps is computed and only its
    last steps + 1 sigmas are kept. denoise <= 0 gives an empty tensor: nothing to sample, the
    latent is returned unchanged.
    """
    if denoise is None or denoise > 0.9999:
        return _sampler_sigmas(schedule, scheduler, steps, sampler)
    if denoise <= 0.0:
        return torch.FloatTensor([])
    return _sampler_sigmas(schedule, scheduler, int(steps / denoise), sampler)[-(steps + 1):]


def step_range(sigmas, start_step=None, last_step=None, force_full_denoise=False):
    """KSamplerAdvanced's slicing (ComfyUI `KSampler.sample`): keep steps start_step..last_step.

    When the range ends early, `force_full_denoise` (return_with_leftover_noise = "disable") sets the
    last kept sigma to 0. A start at or past the last step gives an empty tensor (latent unchanged).
    """
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[:last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step >= len(sigmas) - 1:
            return sigmas[:0]
        sigmas = sigmas[start_step:]
    return sigmas


# --- the Beta distribution's quantile function, for the beta scheduler ---------------------------

def _betainc_continued_fraction(x, a, b):
    """Lentz's evaluation of the continued fraction for I_x(a, b) (DLMF 8.17.22); converges fast
    for x < (a + 1) / (a + b + 2)."""
    tiny, eps = 1e-300, 1e-16
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 1000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return result


def _log_beta(a, b):
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def betainc(x, a, b):
    """The regularised incomplete beta function I_x(a, b) = P(X <= x) for X ~ Beta(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - betainc(1.0 - x, b, a)
    log_front = a * math.log(x) + b * math.log1p(-x) - _log_beta(a, b)
    return math.exp(log_front) * _betainc_continued_fraction(x, a, b) / a


def beta_ppf(p, a, b):
    """The quantile function of Beta(a, b): the x with I_x(a, b) = p (to float64 precision).

    Exact closed forms where they exist (they are where a rounding tie like 499.5 can occur, so
    they must be exact, as scipy's are); otherwise Newton's method on I_x(a, b) - p, falling back
    to bisection whenever a step leaves the bracket.
    """
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    if a == b and p == 0.5:
        return 0.5
    if a == 1.0:
        return -math.expm1(math.log1p(-p) / b)
    if b == 1.0:
        return p ** (1.0 / a)
    lo, hi, x = 0.0, 1.0, 0.5
    log_norm = _log_beta(a, b)
    for _ in range(200):
        f = betainc(x, a, b) - p
        if f == 0.0:
            return x
        lo, hi = (x, hi) if f < 0 else (lo, x)
        log_density = (a - 1) * math.log(x) + (b - 1) * math.log1p(-x) - log_norm
        x_new = x - f * math.exp(-log_density)
        if not lo < x_new < hi:
            x_new = 0.5 * (lo + hi)
        if x_new in (lo, hi) or abs(x_new - x) <= 1e-16 * x:
            return x
        x = x_new
    return x
