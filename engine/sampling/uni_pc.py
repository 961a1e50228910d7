"""UniPC: a unified predictor-corrector framework for fast sampling (Zhao et al. 2023, arXiv 2302.04867).

Multistep UniP-p predictor with a UniC corrector (Algorithms 1-3 of the paper), data prediction,
B(h) = h ("bh1") or B(h) = e^h - 1 ("bh2"), order min(3, steps - 1) with lower orders at the end.
As in ComfyUI's `comfy/extra_samplers/uni_pc.py`, the solver runs on the variance-preserving state
x_vp = x / sqrt(1 + sigma²) with alpha_t = 1 / sqrt(1 + sigma²), sigma_t = sigma alpha_t and
lambda = log(alpha_t / sigma_t), the model is read through its noise prediction, a final sigma of 0
is replaced by 0.001, and the result is scaled back by 1 / alpha at that last sigma.
"""

import torch

from .samplers import report_step


def _log_alpha(sigma):
    return 0.5 * torch.log(1 / ((sigma * sigma) + 1))


def _alpha(sigma):
    return torch.exp(_log_alpha(sigma))


def _std(sigma):
    return torch.sqrt(1. - torch.exp(2. * _log_alpha(sigma)))


def _lambda(sigma):
    log_alpha = _log_alpha(sigma)
    return log_alpha - 0.5 * torch.log(1. - torch.exp(2. * log_alpha))


def _per_sample(v, ndim):
    return v[(...,) + (None,) * (ndim - 1)]


def _data_prediction(model, extra_args):
    """x0 from the VP state: eps = (x - D(x)) / sigma on the VE state x = x_vp sqrt(1 + sigma²),
    then x0 = (x_vp - sigma_t eps) / alpha_t."""
    def predict(x_vp, sigma):
        s = sigma.view(sigma.shape[:1] + (1,) * (x_vp.ndim - 1))
        x = x_vp * ((s ** 2 + 1.0) ** 0.5)
        eps = (x - model(x, sigma, **extra_args)) / s
        return (x_vp - _per_sample(_std(sigma), x_vp.ndim) * eps) / _per_sample(_alpha(sigma), x_vp.ndim)
    return predict


def _unipc_update(predict, x, model_prev, sigma_prev, sigma, order, variant, use_corrector):
    """One UniPC step from sigma_prev[-1] to `sigma` using the last `order` data predictions.

    Returns (x at sigma, the model's data prediction there if the corrector evaluated it, else None).
    """
    ndim = x.ndim
    lambda_prev_0, lambda_t = _lambda(sigma_prev[-1]), _lambda(sigma)
    model_prev_0 = model_prev[-1]
    sigma_prev_0, sigma_t = _std(sigma_prev[-1]), _std(sigma)
    alpha_t = torch.exp(_log_alpha(sigma))
    h = lambda_t - lambda_prev_0

    rks, D1s = [], []
    for i in range(1, order):
        rk = ((_lambda(sigma_prev[-(i + 1)]) - lambda_prev_0) / h)[0]
        rks.append(rk)
        D1s.append((model_prev[-(i + 1)] - model_prev_0) / rk)
    rks.append(1.)
    rks = torch.tensor(rks, dtype=x.dtype, device=x.device)

    hh = -h[0]
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    B_h = hh if variant == "bh1" else torch.expm1(hh)
    R, b, factorial_i = [], [], 1
    for i in range(1, order + 1):
        R.append(torch.pow(rks, i - 1))
        b.append(h_phi_k * factorial_i / B_h)
        factorial_i *= (i + 1)
        h_phi_k = h_phi_k / hh - 1 / factorial_i
    R = torch.stack(R)
    b = torch.tensor(b, dtype=x.dtype, device=x.device)

    x_t_ = _per_sample(sigma_t / sigma_prev_0, ndim) * x - _per_sample(alpha_t * h_phi_1, ndim) * model_prev_0
    D1s = torch.stack(D1s, dim=1) if D1s else None
    pred_res = 0
    if D1s is not None:  # predictor UniP-(order); order 2 uses the fixed rho = 1/2
        if order == 2:
            rhos_p = torch.tensor([0.5], dtype=x.dtype, device=x.device)
        else:
            rhos_p = torch.linalg.solve(R[:-1, :-1], b[:-1])
        pred_res = torch.tensordot(D1s, rhos_p, dims=([1], [0]))
    x_t = x_t_ - _per_sample(alpha_t * B_h, ndim) * pred_res
    if not use_corrector:
        return x_t, None

    # corrector UniC: refit with the new model output at sigma
    rhos_c = torch.tensor([0.5], dtype=x.dtype, device=x.device) if order == 1 else torch.linalg.solve(R, b)
    model_t = predict(x_t, sigma)
    corr_res = torch.tensordot(D1s, rhos_c[:-1], dims=([1], [0])) if D1s is not None else 0
    x_t = x_t_ - _per_sample(alpha_t * B_h, ndim) * (corr_res + rhos_c[-1] * (model_t - model_prev_0))
    return x_t, model_t


@torch.no_grad()
def sample_uni_pc(model, x, sigmas, extra_args=None, callback=None, disable=None, variant="bh1"):
    """UniPC-bh1 multistep sampler (Zhao et al. 2023), ComfyUI's `uni_pc`."""
    extra_args = {} if extra_args is None else extra_args
    sigmas = sigmas.clone()
    if sigmas[-1] == 0:
        sigmas[-1] = 0.001
    predict = _data_prediction(model, extra_args)
    steps = len(sigmas) - 1
    order = min(3, len(sigmas) - 2)
    batch = x.shape[0]
    x = x / torch.sqrt(1.0 + sigmas[0] ** 2.0)

    sigma_prev = [sigmas[0].expand(batch)]
    model_prev = [predict(x, sigma_prev[0])]
    report_step(callback, 0, x * (1.0 + sigmas[0] ** 2.0) ** 0.5, sigmas[0], model_prev[-1])
    for i in range(1, steps):
        if i < order:  # warm-up: lower-order steps, always with the corrector
            sigma = sigmas[i].expand(batch)
            x, model_x = _unipc_update(predict, x, model_prev, sigma_prev, sigma, i, variant, True)
            model_prev.append(predict(x, sigma) if model_x is None else model_x)
            sigma_prev.append(sigma)
        else:  # the last iteration also takes the final step, without the corrector
            for step in range(i, i + 1 + (i == steps - 1)):
                sigma = sigmas[step].expand(batch)
                step_order = min(order, steps + 1 - step)
                x, model_x = _unipc_update(predict, x, model_prev, sigma_prev, sigma, step_order, variant,
                                           use_corrector=step != steps)
                model_prev, sigma_prev = model_prev[1:] + model_prev[-1:], sigma_prev[1:] + [sigma]
                if step < steps:
                    model_prev[-1] = predict(x, sigma) if model_x is None else model_x
        report_step(callback, i, x * (1.0 + sigmas[i] ** 2.0) ** 0.5, sigmas[i], model_prev[-1])
    return x / _alpha(sigmas[-1])


@torch.no_grad()
def sample_uni_pc_bh2(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """UniPC with B(h) = e^h - 1 (the paper's bh2 variant), ComfyUI's `uni_pc_bh2`."""
    return sample_uni_pc(model, x, sigmas, extra_args, callback, disable, variant="bh2")
