"""Single-step samplers, k-diffusion style, with ComfyUI's variants.

Every sampler has the signature

    sample_<name>(model, x, sigmas, extra_args=None, callback=None, disable=None, **options) -> x

- `model(x, sigma, **extra_args) -> x0` is a denoiser (see `denoiser.Denoiser`), sigma of shape [B];
- `x` is the first state, already noised to sigmas[0] (see `Prediction.noise_scaling`);
- `sigmas` is the decreasing float32 list from a scheduler, usually ending in 0;
- `extra_args["seed"]` seeds the noise of stochastic samplers;
- `callback({"i", "x", "sigma", "sigma_hat", "denoised"})` is called once per step before the
  update; it may raise to cancel sampling;
- `disable` (a progress-bar switch in k-diffusion) is accepted for signature compatibility.

Samplers work in k-diffusion's variance-exploding form x = x0 + sigma * eps. Flow models (x = (1 -
sigma) x0 + sigma eps) reach them through the same denoiser; ancestral and SDE samplers, whose noise
injection depends on the forward process, switch to ComfyUI's rectified-flow formulas for them.

References: Karras et al. 2022, "Elucidating the design space of diffusion-based generative models",
arXiv 2206.00364; Ho et al. 2020, DDPM, arXiv 2006.11239; Lu et al. 2022, DPM-Solver, arXiv 2206.00927;
Lu et al. 2022b, DPM-Solver++, arXiv 2211.01095; Song et al. 2023, Consistency models, arXiv 2303.01469;
Luo et al. 2023, Latent consistency models, arXiv 2310.04378.
"""

import torch

from .denoiser import is_flow, model_sampling_of
from .noise import BrownianTreeNoiseSampler, default_noise_sampler


# --- shared pieces ------------------------------------------------------------------------------

def to_d(x, sigma, denoised):
    """The probability-flow ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, eq. 3)."""
    return (x - denoised) / sigma.view(sigma.shape + (1,) * (x.ndim - sigma.ndim))


def get_ancestral_step(sigma_from, sigma_to, eta=1.0):
    """Split the step sigma_from -> sigma_to into a deterministic step down to sigma_down and fresh
    noise of std sigma_up, with sigma_down² + sigma_up² = sigma_to² (eta = 1: DDPM's ancestral step)."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def get_ancestral_step_rf(sigma_from, sigma_to, eta=1.0):
    """The rectified-flow ancestral step (ComfyUI): step down to sigma_down = sigma_to (1 + (sigma_to /
    sigma_from - 1) eta), then rescale by alpha_ratio = (1 - sigma_to) / (1 - sigma_down) and add noise
    of std renoise so that the marginal at sigma_to is (1 - sigma_to) x0 + sigma_to eps."""
    sigma_down = sigma_to * (1 + (sigma_to / sigma_from - 1) * eta)
    alpha_to, alpha_down = 1 - sigma_to, 1 - sigma_down
    renoise = (sigma_to ** 2 - sigma_down ** 2 * alpha_to ** 2 / alpha_down ** 2) ** 0.5
    return sigma_down, alpha_to / alpha_down, renoise


def half_log_snr(sigma, flow):
    """lambda = log(alpha / sigma_t): -log sigma for VE states, -logit(sigma) for flow states."""
    return sigma.logit().neg() if flow else sigma.log().neg()


def sigma_from_half_log_snr(lam, flow):
    return lam.neg().sigmoid() if flow else lam.neg().exp()


def offset_first_sigma_for_snr(sigmas, model, percent_offset=1e-4):
    """A flow schedule starting at sigma = 1 has lambda = -inf; start a hair below it instead."""
    if len(sigmas) > 1 and is_flow(model) and sigmas[0] >= 1:
        sigmas = sigmas.clone()
        sigmas[0] = model_sampling_of(model).schedule.percent_to_sigma(percent_offset)
    return sigmas


def sde_setup(model, x, sigmas, extra_args, noise_sampler):
    """What the SDE samplers share. Returns (extra_args, noise_sampler, flow, sigmas): the noise is a
    Brownian tree over [smallest nonzero sigma, largest sigma] unless one is given, `flow` tells the
    parameterisation of lambda, and a flow schedule's first sigma = 1 is moved off lambda = -inf."""
    extra_args = {} if extra_args is None else extra_args
    if noise_sampler is None:
        noise_sampler = BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=extra_args.get("seed"))
    return extra_args, noise_sampler, is_flow(model), offset_first_sigma_for_snr(sigmas, model)


class Churn:
    """EDM's stochastic "churn" (Karras et al. 2022, Algorithm 2 lines 4-6): raise the noise level to
    sigma_hat = sigma (1 + gamma) with fresh noise, gamma = min(s_churn / steps, sqrt 2 - 1) inside
    [s_tmin, s_tmax]. Off when s_churn = 0 (ComfyUI's default)."""

    def __init__(self, s_churn, s_tmin, s_tmax, s_noise, noise_sampler):
        self.s_churn, self.s_tmin, self.s_tmax, self.s_noise = s_churn, s_tmin, s_tmax, s_noise
        self.noise_sampler = noise_sampler

    def __call__(self, x, sigma, n_steps):
        """Returns (x, sigma_hat)."""
        if self.s_churn <= 0:
            return x, sigma
        gamma = min(self.s_churn / n_steps, 2 ** 0.5 - 1) if self.s_tmin <= sigma <= self.s_tmax else 0.0
        sigma_hat = sigma * (gamma + 1)
        if gamma > 0:
            x = x + self.noise_sampler(sigma, sigma_hat) * self.s_noise * (sigma_hat ** 2 - sigma ** 2) ** 0.5
        return x, sigma_hat


def report_step(callback, i, x, sigma, denoised, sigma_hat=None):
    if callback is not None:
        sigma_hat = sigma if sigma_hat is None else sigma_hat
        callback({"i": i, "x": x, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


# --- first- and second-order ODE samplers ------------------------------------------------------

def _karras_stage(model, x, sigmas, i, s_in, extra_args, callback, churn):
    """The first stage of a step in Karras et al.'s frame: churn to sigma_hat, denoise, report.
    Returns (x, sigma_hat, d = dx/dsigma at sigma_hat)."""
    x, sigma_hat = churn(x, sigmas[i], len(sigmas) - 1)
    denoised = model(x, sigma_hat * s_in, **extra_args)
    report_step(callback, i, x, sigmas[i], denoised, sigma_hat)
    return x, sigma_hat, to_d(x, sigma_hat, denoised)


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 2 with Euler steps).

    The churn noise, off by default, comes from a generator seeded with extra_args["seed"]
    (ComfyUI draws it from the unseeded global generator).
    """
    extra_args = {} if extra_args is None else extra_args
    churn = Churn(s_churn, s_tmin, s_tmax, s_noise, default_noise_sampler(x, seed=extra_args.get("seed")))
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat, d = _karras_stage(model, x, sigmas, i, s_in, extra_args, callback, churn)
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None,
                s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Heun's second-order method (Karras et al. 2022, Algorithm 2); the last step to sigma = 0 is Euler."""
    extra_args = {} if extra_args is None else extra_args
    churn = Churn(s_churn, s_tmin, s_tmax, s_noise, default_noise_sampler(x, seed=extra_args.get("seed")))
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat, d = _karras_stage(model, x, sigmas, i, s_in, extra_args, callback, churn)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in, **extra_args))
            x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_heunpp2(model, x, sigmas, extra_args=None, callback=None, disable=None,
                   s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """Heun++ (Carzit's sd-webui-samplers-scheduler, MIT): a three-stage Heun variant whose stage
    weights depend on sigma / sigma_0; two stages near the end and Euler for the last step."""
    extra_args = {} if extra_args is None else extra_args
    churn = Churn(s_churn, s_tmin, s_tmax, s_noise, default_noise_sampler(x, seed=extra_args.get("seed")))
    s_in = x.new_ones([x.shape[0]])
    s_end = sigmas[-1]
    for i in range(len(sigmas) - 1):
        x, sigma_hat, d = _karras_stage(model, x, sigmas, i, s_in, extra_args, callback, churn)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == s_end:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in, **extra_args))
        if sigmas[i + 2] == s_end:
            w2 = sigmas[i + 1] / (2 * sigmas[0])
            d_prime = d * (1 - w2) + d_2 * w2
        else:
            x_3 = x_2 + d_2 * (sigmas[i + 2] - sigmas[i + 1])
            d_3 = to_d(x_3, sigmas[i + 2], model(x_3, sigmas[i + 2] * s_in, **extra_args))
            w = 3 * sigmas[0]
            w2, w3 = sigmas[i + 1] / w, sigmas[i + 2] / w
            d_prime = (1 - w2 - w3) * d + w2 * d_2 + w3 * d_3
        x = x + d_prime * dt
    return x


def _dpm_2_step(model, x, sigma, sigma_next, d, s_in, extra_args):
    """DPM-Solver-2 in sigma (Lu et al. 2022, Algorithm 1 with r = 1/2): an Euler half step to the
    log-midpoint, then the full step with the midpoint's derivative."""
    sigma_mid = sigma.log().lerp(sigma_next.log(), 0.5).exp()
    x_2 = x + d * (sigma_mid - sigma)
    d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in, **extra_args))
    return x + d_2 * (sigma_next - sigma)


@torch.no_grad()
def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None,
                 s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    """DPM-Solver-2 steps in Karras et al.'s sampler frame (k-diffusion); Euler for the last step."""
    extra_args = {} if extra_args is None else extra_args
    churn = Churn(s_churn, s_tmin, s_tmax, s_noise, default_noise_sampler(x, seed=extra_args.get("seed")))
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat, d = _karras_stage(model, x, sigmas, i, s_in, extra_args, callback, churn)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            x = _dpm_2_step(model, x, sigma_hat, sigmas[i + 1], d, s_in, extra_args)
    return x


# --- ancestral samplers -------------------------------------------------------------------------

@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None,
                           eta=1.0, s_noise=1.0, noise_sampler=None):
    """Ancestral sampling with Euler steps (k-diffusion): each step is an Euler step of the
    probability-flow ODE down to sigma_down plus fresh noise of std sigma_up, the ODE form of DDPM's
    ancestral sampling (Ho et al. 2020, Algorithm 2) for eta = 1. Flow models use the rectified-flow
    ancestral step (`get_ancestral_step_rf`)."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x, seed=extra_args.get("seed")) if noise_sampler is None else noise_sampler
    flow = is_flow(model)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        report_step(callback, i, x, sigma, denoised)
        if flow:
            if sigma_next == 0:
                x = denoised
                continue
            sigma_down, alpha_ratio, renoise = get_ancestral_step_rf(sigma, sigma_next, eta)
            ratio = sigma_down / sigma
            x = ratio * x + (1 - ratio) * denoised
            if eta > 0:
                x = alpha_ratio * x + noise_sampler(sigma, sigma_next) * s_noise * renoise
            continue
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta=eta)
        if sigma_down == 0:
            x = denoised
        else:
            d = to_d(x, sigma, denoised)
            x = x + d * (sigma_down - sigma) + noise_sampler(sigma, sigma_next) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None,
                           eta=1.0, s_noise=1.0, noise_sampler=None):
    """Ancestral sampling with DPM-Solver-2 steps (k-diffusion); flow models use the
    rectified-flow ancestral step."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x, seed=extra_args.get("seed")) if noise_sampler is None else noise_sampler
    flow = is_flow(model)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        if flow:
            sigma_down, alpha_ratio, sigma_up = get_ancestral_step_rf(sigma, sigma_next, eta)
        else:
            sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta=eta)
        report_step(callback, i, x, sigma, denoised)
        d = to_d(x, sigma, denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigma)
            continue
        x = _dpm_2_step(model, x, sigma, sigma_down, d, s_in, extra_args)
        if flow and eta == 0:  # ComfyUI adds 0 * sqrt(rounding error < 0) here, i.e. NaN
            continue
        noise = noise_sampler(sigma, sigma_next) * s_noise * sigma_up
        x = alpha_ratio * x + noise if flow else x + noise
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None,
                              eta=1.0, s_noise=1.0, noise_sampler=None):
    """Ancestral sampling with DPM-Solver++(2S) steps (Lu et al. 2022b, Algorithm 1, single-step
    second order in the data prediction); flow models use ComfyUI's rectified-flow version."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x, seed=extra_args.get("seed")) if noise_sampler is None else noise_sampler
    if is_flow(model):
        return _dpmpp_2s_ancestral_rf(model, x, sigmas, extra_args, callback, eta, s_noise, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigma, sigma_next, eta=eta)
        report_step(callback, i, x, sigma, denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        else:
            t, t_next = sigma.log().neg(), sigma_down.log().neg()
            h = t_next - t
            s = t + h / 2
            x_2 = (s.neg().exp() / t.neg().exp()) * x - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, s.neg().exp() * s_in, **extra_args)
            x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * denoised_2
        if sigma_next > 0:
            x = x + noise_sampler(sigma, sigma_next) * s_noise * sigma_up
    return x


def _dpmpp_2s_ancestral_rf(model, x, sigmas, extra_args, callback, eta, s_noise, noise_sampler):
    """DPM-Solver++(2S) ancestral for flow models: the half step is taken at the midpoint in
    lambda = log((1 - sigma) / sigma) and both sub-steps interpolate between x and D linearly."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        sigma_down, alpha_ratio, renoise = get_ancestral_step_rf(sigma, sigma_next, eta)
        report_step(callback, i, x, sigma, denoised)
        if sigma_next == 0:
            x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        else:
            if sigma == 1.0:
                sigma_s = 0.9999
            else:
                lam, lam_down = ((1 - sigma) / sigma).log(), ((1 - sigma_down) / sigma_down).log()
                sigma_s = ((lam + (lam_down - lam) / 2).exp() + 1) ** -1
            ratio_s = sigma_s / sigma
            denoised_2 = model(ratio_s * x + (1 - ratio_s) * denoised, sigma_s * s_in, **extra_args)
            ratio_down = sigma_down / sigma
            x = ratio_down * x + (1 - ratio_down) * denoised_2
        if sigma_next > 0 and eta > 0:
            x = alpha_ratio * x + noise_sampler(sigma, sigma_next) * s_noise * renoise
    return x


@torch.no_grad()
def sample_dpmpp_sde(model, x, sigmas, extra_args=None, callback=None, disable=None,
                     eta=1.0, s_noise=1.0, noise_sampler=None, r=1 / 2):
    """DPM-Solver++ (stochastic), k-diffusion's SDE form of DPM-Solver++(2S) (Lu et al. 2022b):
    two stages per step, each an ancestral exponential-integrator step in lambda, with Brownian-tree
    noise. Written for any alpha_t (VE or flow) as ComfyUI does; the last step returns D."""
    if len(sigmas) <= 1:
        return x
    extra_args, noise_sampler, flow, sigmas = sde_setup(model, x, sigmas, extra_args, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        report_step(callback, i, x, sigma, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        lambda_s, lambda_t = half_log_snr(sigma, flow), half_log_snr(sigma_next, flow)
        h = lambda_t - lambda_s
        lambda_s_1 = lambda_s + r * h
        fac = 1 / (2 * r)
        sigma_s_1 = sigma_from_half_log_snr(lambda_s_1, flow)
        alpha_s = sigma * lambda_s.exp()
        alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
        alpha_t = sigma_next * lambda_t.exp()

        # stage 1: to lambda_s_1
        sd, su = get_ancestral_step(lambda_s.neg().exp(), lambda_s_1.neg().exp(), eta)
        h_ = sd.log().neg() - lambda_s
        x_2 = (alpha_s_1 / alpha_s) * (-h_).exp() * x - alpha_s_1 * (-h_).expm1() * denoised
        if eta > 0 and s_noise > 0:
            x_2 = x_2 + alpha_s_1 * noise_sampler(sigma, sigma_s_1) * s_noise * su
        denoised_2 = model(x_2, sigma_s_1 * s_in, **extra_args)

        # stage 2: to lambda_t, with the combined data prediction
        sd, su = get_ancestral_step(lambda_s.neg().exp(), lambda_t.neg().exp(), eta)
        h_ = sd.log().neg() - lambda_s
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (alpha_t / alpha_s) * (-h_).exp() * x - alpha_t * (-h_).expm1() * denoised_d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * noise_sampler(sigma, sigma_next) * s_noise * su
    return x


# --- discrete-time and consistency samplers ----------------------------------------------------

@torch.no_grad()
def sample_ddpm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) between arbitrary noise levels: the state
    is moved to VP scale x / sqrt(1 + sigma²), stepped with the posterior mean and std, and moved back."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x, seed=extra_args.get("seed")) if noise_sampler is None else noise_sampler
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma, sigma_prev = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        report_step(callback, i, x, sigma, denoised)
        eps = (x - denoised) / sigma
        alpha_bar = 1 / ((sigma * sigma) + 1)
        alpha_bar_prev = 1 / ((sigma_prev * sigma_prev) + 1)
        alpha = alpha_bar / alpha_bar_prev
        x = (1.0 / alpha).sqrt() * (x / torch.sqrt(1.0 + sigma ** 2.0) - (1 - alpha) * eps / (1 - alpha_bar).sqrt())
        if sigma_prev > 0:
            std = ((1 - alpha) * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)).sqrt()
            x = x + std * noise_sampler(sigma, sigma_prev)
        if sigma_prev != 0:
            x = x * torch.sqrt(1.0 + sigma_prev ** 2.0)
    return x


@torch.no_grad()
def sample_lcm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1; Luo et al. 2023 for LCM):
    jump to D(x), then re-noise it to the next sigma with fresh noise, through the model's own
    `noise_scaling`."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x, seed=extra_args.get("seed")) if noise_sampler is None else noise_sampler
    sampling = model_sampling_of(model)
    if sampling is None:
        raise ValueError("sample_lcm needs a model that exposes `prediction` (a Denoiser, or a wrapper "
                         "with it as `inner_model`)")
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report_step(callback, i, x, sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = sampling.prediction.noise_scaling(sigmas[i + 1], noise_sampler(sigmas[i], sigmas[i + 1]), x)
    return x
