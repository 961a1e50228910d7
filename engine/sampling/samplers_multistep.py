"""Multistep samplers: each step reuses the model outputs of earlier steps (see samplers.py for the
shared signature, conventions and references; DEIS and iPNDM are Zhang & Chen 2023, "Fast sampling of
diffusion models with exponential integrator", arXiv 2204.13902)."""

import numpy as np
import torch

from .samplers import report_step, half_log_snr, sde_setup, to_d


def linear_multistep_coeff(order, t, i, j):
    """Integral over [t_i, t_{i+1}] of the Lagrange basis polynomial through t_i, ..., t_{i-order+1}
    that is 1 at t_{i-j}. Computed exactly by Gauss-Legendre quadrature (k-diffusion uses
    scipy.integrate.quad, which agrees to its 1e-4 tolerance and in practice to ~1e-7)."""
    if order - 1 > i:
        raise ValueError(f"order {order} too high for step {i}")
    nodes, weights = np.polynomial.legendre.leggauss(max(order, 1))
    a, b = float(t[i]), float(t[i + 1])
    taus = 0.5 * (b - a) * nodes + 0.5 * (a + b)
    basis = np.ones_like(taus)
    for k in range(order):
        if k != j:
            basis *= (taus - float(t[i - k])) / (float(t[i - j]) - float(t[i - k]))
    return float(0.5 * (b - a) * np.sum(weights * basis))


@torch.no_grad()
def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4):
    """Linear multistep (Adams-Bashforth in sigma with variable steps; k-diffusion, after Karras et
    al. 2022's discussion of LMS): the derivative is extrapolated by a polynomial through the last
    `order` derivatives and integrated exactly over the step."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    sigmas_cpu = sigmas.detach().cpu().numpy()
    ds = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        ds = (ds + [to_d(x, sigmas[i], denoised)])[-order:]
        report_step(callback, i, x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            cur_order = min(i + 1, order)
            coeffs = [linear_multistep_coeff(cur_order, sigmas_cpu, i, j) for j in range(cur_order)]
            x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds)))
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): second-order multistep exponential integrator
    in the data prediction, with time t = -log sigma; the first and last steps are first order."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report_step(callback, i, x, sigmas[i], denoised)
        t, t_next = sigmas[i].log().neg(), sigmas[i + 1].log().neg()
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * denoised
        else:
            r = (t - sigmas[i - 1].log().neg()) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


def _sde_first_order_step(x, denoised, sigma, sigma_next, flow, eta):
    """The first-order DPM-Solver++ SDE step from sigma to sigma_next in lambda = log(alpha / sigma):
    x_t = sigma_t / sigma_s e^(-eta h) x_s + alpha_t (1 - e^(-(1 + eta) h)) D. Returns (x, h, h_eta, alpha_t)."""
    lambda_s, lambda_t = half_log_snr(sigma, flow), half_log_snr(sigma_next, flow)
    h = lambda_t - lambda_s
    h_eta = h * (eta + 1)
    alpha_t = sigma_next * lambda_t.exp()
    x = sigma_next / sigma * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
    return x, h, h_eta, alpha_t


def _add_sde_noise(x, noise_sampler, sigma, sigma_next, h, eta, s_noise):
    """The step's Brownian increment, of std sigma_t sqrt(1 - e^(-2 eta h))."""
    if eta > 0 and s_noise > 0:
        noise = noise_sampler(sigma, sigma_next)
        x = x + noise * sigma_next * (-2 * h * eta).expm1().neg().sqrt() * s_noise
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None,
                        eta=1.0, s_noise=1.0, noise_sampler=None, solver_type="midpoint"):
    """DPM-Solver++(2M) SDE (Lu et al. 2022b, appendix; k-diffusion): the 2M update for the SDE with
    stochasticity eta, noise from a Brownian tree; `solver_type` "midpoint" or "heun" picks the
    second-order correction. Written for any alpha_t (VE or flow) as ComfyUI does."""
    if len(sigmas) <= 1:
        return x
    if solver_type not in {"heun", "midpoint"}:
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    extra_args, noise_sampler, flow, sigmas = sde_setup(model, x, sigmas, extra_args, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    old_denoised, h, h_last = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report_step(callback, i, x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x, h, h_eta, alpha_t = _sde_first_order_step(x, denoised, sigmas[i], sigmas[i + 1], flow, eta)
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + alpha_t * ((-h_eta).expm1().neg() / (-h_eta) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (denoised - old_denoised)
            x = _add_sde_noise(x, noise_sampler, sigmas[i], sigmas[i + 1], h, eta, s_noise)
        old_denoised, h_last = denoised, h
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde_heun(model, x, sigmas, extra_args=None, callback=None, disable=None,
                             eta=1.0, s_noise=1.0, noise_sampler=None):
    """DPM-Solver++(2M) SDE with the Heun-type second-order correction."""
    return sample_dpmpp_2m_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler, "heun")


@torch.no_grad()
def sample_dpmpp_3m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None,
                        eta=1.0, s_noise=1.0, noise_sampler=None):
    """DPM-Solver++(3M) SDE (k-diffusion): third-order multistep in lambda with phi_2, phi_3
    exponential-integrator weights, Brownian-tree noise; lower order for the first two steps."""
    if len(sigmas) <= 1:
        return x
    extra_args, noise_sampler, flow, sigmas = sde_setup(model, x, sigmas, extra_args, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    denoised_1, denoised_2 = None, None
    h, h_1, h_2 = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report_step(callback, i, x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x, h, h_eta, alpha_t = _sde_first_order_step(x, denoised, sigmas[i], sigmas[i + 1], flow, eta)
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + (alpha_t * phi_2) * d1 - (alpha_t * phi_3) * d2
            elif h_1 is not None:
                d = (denoised - denoised_1) / (h_1 / h)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + (alpha_t * phi_2) * d
            x = _add_sde_noise(x, noise_sampler, sigmas[i], sigmas[i + 1], h, eta, s_noise)
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


def _push(buffer, d, max_len):
    """Keep the last `max_len` derivatives, oldest first."""
    return (buffer + [d])[-max_len:] if max_len > 0 else []


@torch.no_grad()
def sample_ipndm(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=4):
    """Improved PNDM (Zhang & Chen 2023, "Fast sampling of diffusion models with exponential
    integrator", iPNDM): Adams-Bashforth of orders 1-4 in sigma with fixed-step coefficients,
    warming up through lower orders; the step to sigma = 0 returns D."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    buffer = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, t_cur * s_in, **extra_args)
        report_step(callback, i, x, t_cur, denoised)
        d_cur = (x - denoised) / t_cur
        order = min(max_order, i + 1)
        dt = t_next - t_cur
        if t_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + dt * d_cur
        elif order == 2:
            x_next = x + dt * (3 * d_cur - buffer[-1]) / 2
        elif order == 3:
            x_next = x + dt * (23 * d_cur - 16 * buffer[-1] + 5 * buffer[-2]) / 12
        else:
            x_next = x + dt * (55 * d_cur - 59 * buffer[-1] + 37 * buffer[-2] - 9 * buffer[-3]) / 24
        buffer = _push(buffer, d_cur, max_order - 1)
        x = x_next
    return x


def _edm_sigma_to_vp_time(sigmas, eps_s=1e-3, sigma_min=0.002, sigma_max=80):
    """DEIS's change of variable: the time t of a VP SDE with linear beta(t) = beta_0 + t (beta_1 -
    beta_0) whose noise level at t is sigma; beta_0 and beta_1 are fitted to EDM's sigma range
    (0.002 .. 80 at t = eps_s .. 1), whatever the model's range. Returns (t, beta_0, beta_1).

    The constants are rounded as in ComfyUI: log(sigma_min² + 1) in float32, log(sigma_max² + 1) and
    the betas in float64, the times in the sigmas' float32."""
    log_min = torch.tensor(np.log(np.float32(sigma_min) ** 2 + np.float32(1)))
    log_max = torch.tensor(np.log(np.float64(sigma_max) ** 2 + 1))
    beta_d = 2 * (log_min / eps_s - log_max) / (eps_s - 1)
    beta_0 = log_max - 0.5 * beta_d
    t = ((beta_0 ** 2 + 2 * beta_d * (sigmas.cpu() ** 2 + 1).log()).sqrt() - beta_0) / beta_d
    return t, beta_0, beta_d + beta_0


def _deis_integrand(beta_0, beta_1, taus):
    """The exponential-integrator weight -1/2 d(log alpha)/dtau / sqrt(alpha (1 - alpha)) of the VP SDE,
    alpha(tau) = exp(-tau²/2 (beta_1 - beta_0) - tau beta_0)."""
    alpha = torch.exp(-0.5 * taus ** 2 * (beta_1 - beta_0) - taus * beta_0)
    # d(log alpha)/dtau by the chain rule in the order autograd applies it (ComfyUI differentiates
    # with autograd), so the weights round the same: log' = 1/alpha, exp' = alpha, then the polynomial
    g = (1 / alpha) * alpha
    d_log_alpha = g * (beta_1 - beta_0) * -0.5 * (2 * taus) + (-g) * beta_0
    return -0.5 * d_log_alpha / torch.sqrt(alpha * (1 - alpha))


def _lagrange_basis(nodes, j, taus):
    poly = torch.ones_like(taus)
    for k in range(nodes.shape[0]):
        if k != j:
            poly = poly * ((taus - nodes[k]) / (nodes[j] - nodes[k]))
    return poly


def deis_coefficients(sigmas, max_order, n=10000):
    """DEIS "tAB" coefficients (Zhang & Chen 2023, eq. 14): for each step, the integral over the step of
    the exponential-integrator weight times each Lagrange basis polynomial through the last `order`
    times, by a left Riemann sum on n points (as ComfyUI, after zju-pi/diff-sampler, computes it).
    Steps that end at sigma = 0 are first order and get no coefficients."""
    t_steps, beta_0, beta_1 = _edm_sigma_to_vp_time(sigmas)
    coefficients = []
    for i in range(len(t_steps) - 1):
        order = min(i + 1, max_order)
        if order == 1 or sigmas[i + 1] <= 0:
            coefficients.append([])
            continue
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        taus = torch.linspace(t_cur, t_next, n)
        dtau = (t_next - t_cur) / n
        nodes = t_steps[[i - k for k in range(order)]]
        integrand = _deis_integrand(beta_0, beta_1, taus)
        coefficients.append([torch.sum(integrand * _lagrange_basis(nodes, j, taus)) * dtau for j in range(order)])
    return coefficients


@torch.no_grad()
def sample_deis(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=3):
    """DEIS, diffusion exponential integrator sampler (Zhang & Chen 2023), tAB variant of order up to
    `max_order`: x_next = x + sum_k C_k d_{i-k}, with d = (x - D) / sigma and `deis_coefficients`."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    coefficients = deis_coefficients(sigmas, max_order)
    buffer = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, t_cur * s_in, **extra_args)
        report_step(callback, i, x, t_cur, denoised)
        d_cur = (x - denoised) / t_cur
        order = min(max_order, i + 1) if t_next > 0 else 1
        if order == 1:
            x_next = x + (t_next - t_cur) * d_cur
        else:
            coeff_cur, *coeff_prev = coefficients[i]
            x_next = x + coeff_cur * d_cur
            for coeff, d in zip(coeff_prev, reversed(buffer)):
                x_next = x_next + coeff * d
        buffer = _push(buffer, d_cur, max_order - 1)
        x = x_next
    return x
