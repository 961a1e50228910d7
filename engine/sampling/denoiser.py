"""Prediction types and the denoiser D(x, sigma) -> x0 that every sampler sees.

A network is trained to predict one target (the noise eps, the velocity v, the clean sample x0, or
the flow velocity noise - x0). A prediction type converts between the sampler's view, where the
state is x = x0 + sigma * eps (variance exploding, Karras et al. 2022), and the network's own input
and output, as ComfyUI's `comfy/model_sampling.py` does:

- `calculate_input(sigma, x)`: what the network is fed;
- `calculate_denoised(sigma, out, x)`: its output turned into an x0 estimate;
- `noise_scaling(sigma, noise, latent, max_denoise)`: the first sampler state from a latent and noise;
- `inverse_noise_scaling(sigma, x)`: the sampler's last state turned back into a latent.
"""

import math

import torch


def _per_sample(sigma, ndim):
    """A scalar sigma stays a scalar; a batch of sigmas [B] is shaped [B, 1, ...] to broadcast."""
    sigma = torch.as_tensor(sigma)
    if sigma.nelement() == 1:
        return sigma.view(())
    return sigma.view(sigma.shape[:1] + (1,) * (ndim - 1))


class Epsilon:
    """eps-prediction (DDPM, SD1/SDXL): x0 = x - sigma * eps, input scaled to unit variance."""

    sigma_data = 1.0

    def calculate_input(self, sigma, x):
        sigma = _per_sample(sigma, x.ndim)
        return x / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma, out, x):
        sigma = _per_sample(sigma, out.ndim)
        return x - out * sigma

    def noise_scaling(self, sigma, noise, latent, max_denoise=False):
        """latent + sigma * noise; from sigma_max ("max_denoise") the noise gets sqrt(1 + sigma²),
        the std of a VP sample rescaled to VE (ComfyUI's rule)."""
        sigma = _per_sample(sigma, noise.ndim)
        scale = torch.sqrt(1.0 + sigma ** 2.0) if max_denoise else sigma
        return noise * scale + latent

    def inverse_noise_scaling(self, sigma, x):
        return x


class VPrediction(Epsilon):
    """v-prediction (Salimans & Ho 2022; SD2-768): v = alpha eps - sigma_t x0, which in VE terms gives
    x0 = x sigma_d² / (sigma² + sigma_d²) - v sigma sigma_d / sqrt(sigma² + sigma_d²)."""

    def calculate_denoised(self, sigma, out, x):
        sigma = _per_sample(sigma, out.ndim)
        var = sigma ** 2 + self.sigma_data ** 2
        return x * self.sigma_data ** 2 / var - out * sigma * self.sigma_data / var ** 0.5


class X0Prediction(Epsilon):
    """The network predicts x0 directly."""

    def calculate_denoised(self, sigma, out, x):
        return out


class FlowPrediction:
    """Rectified flow (ComfyUI CONST; SD3/Flux): x = (1 - sigma) x0 + sigma eps and the network
    predicts the velocity v = eps - x0, so x0 = x - sigma v. The input is fed unscaled."""

    def calculate_input(self, sigma, x):
        return x

    def calculate_denoised(self, sigma, out, x):
        sigma = _per_sample(sigma, out.ndim)
        return x - out * sigma

    def noise_scaling(self, sigma, noise, latent, max_denoise=False):
        sigma = _per_sample(sigma, noise.ndim)
        return sigma * noise + (1.0 - sigma) * latent

    def inverse_noise_scaling(self, sigma, x):
        sigma = _per_sample(sigma, x.ndim)
        return x / (1.0 - sigma)


PREDICTIONS = {"eps": Epsilon(), "v": VPrediction(), "x0": X0Prediction(), "flow": FlowPrediction()}


def is_max_denoise(schedule, sigmas):
    """True when sampling starts at (or above) the model's sigma_max: the noise then gets the
    sqrt(1 + sigma²) scale in `Epsilon.noise_scaling` (ComfyUI `Sampler.max_denoise`)."""
    sigma_max, sigma = float(schedule.sigma_max), float(sigmas[0])
    return math.isclose(sigma_max, sigma, rel_tol=1e-05) or sigma > sigma_max


class Denoiser:
    """Wraps a raw network `net(x_in, t, **cond) -> out` into `D(x, sigma, **cond) -> x0`.

    `sigma` is a tensor of shape [B] (or a scalar tensor). `dtype` is the dtype the network computes
    in (None: leave the input as is); its output is brought back to float32, as ComfyUI does.
    `seed`, which samplers pass in extra_args for their noise, is accepted and ignored here.
    Samplers that behave differently for flow models look up `prediction` and `schedule` on the
    model they are given (see `model_sampling_of`), so wrappers around a Denoiser (guidance,
    inpainting) should expose it as `inner_model`.
    """

    def __init__(self, net, prediction, schedule, dtype=None):
        self.net = net
        self.prediction = prediction
        self.schedule = schedule
        self.dtype = dtype

    def __call__(self, x, sigma, seed=None, **cond):
        x_in = self.prediction.calculate_input(sigma, x)
        if self.dtype is not None:
            x_in = x_in.to(self.dtype)
        t = self.schedule.timestep(sigma).float()
        out = self.net(x_in, t, **cond).float()
        return self.prediction.calculate_denoised(sigma, out, x)


def model_sampling_of(model):
    """The object carrying `prediction` and `schedule` for a sampler's model: the model itself or
    the first one down its chain of `inner_model` attributes; None if there is none."""
    while model is not None:
        if hasattr(model, "prediction") and hasattr(model, "schedule"):
            return model
        model = getattr(model, "inner_model", None)
    return None


def is_flow(model):
    """Whether the sampler's model is a rectified-flow (CONST) model."""
    sampling = model_sampling_of(model)
    return sampling is not None and isinstance(sampling.prediction, FlowPrediction)
