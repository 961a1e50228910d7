"""Noise schedules: how a model's noise level sigma relates to the timestep it was trained on.

Every schedule exposes the same small surface (ComfyUI calls it `model_sampling`):

- `sigmas`: an ascending float32 table of the model's noise levels (its training grid);
- `sigma_min`, `sigma_max`: the ends of that table, as 0-d tensors;
- `timestep(sigma)`: the time value the network expects as input for a noise level;
- `sigma(t)`: the inverse map;
- `percent_to_sigma(p)`: sampling progress p in [0, 1] -> sigma, used for ControlNet and
  conditioning start/end percents.

Discrete schedules (SD1, SD2, SDXL) work in variance-exploding form, x = x0 + sigma * eps, with
sigma = sqrt((1 - alphā) / alphā) of the DDPM forward process (Ho et al. 2020). Flow schedules
(SD3-class rectified flow) use x = (1 - sigma) * x0 + sigma * eps with sigma in [0, 1].
The tables are built in float64 and stored in float32 as ComfyUI does, so the same scheduler gives
the same sigmas bit for bit.
"""

import math

import torch

NUM_TIMESTEPS = 1000


def make_betas(kind, n=NUM_TIMESTEPS, linear_start=0.00085, linear_end=0.012, cosine_s=8e-3):
    """The per-step variances beta_1..beta_n (float64), named as in LDM/ComfyUI configs.

    - "linear": LDM's default, linear in sqrt(beta) ("scaled linear" in diffusers); SD1/SD2/SDXL
      use it with linear_start 0.00085, linear_end 0.012.
    - "sqrt_linear": linear in beta (the original DDPM schedule, typically 1e-4 .. 0.02).
    - "cosine": Nichol & Dhariwal (2021) eq. 17, alphā(t) = f(t)/f(0), f(t) = cos²((t/n + s)/(1 + s) π/2),
      betas clipped to 0.999 (so alphā at the last step is the cumprod of clipped betas).
    """
    if kind == "linear":
        return torch.linspace(linear_start ** 0.5, linear_end ** 0.5, n, dtype=torch.float64) ** 2
    if kind == "sqrt_linear":
        return torch.linspace(linear_start, linear_end, n, dtype=torch.float64)
    if kind == "cosine":
        t = torch.arange(n + 1, dtype=torch.float64) / n + cosine_s
        f = torch.cos(t / (1 + cosine_s) * math.pi / 2).pow(2)
        alphas_bar = f / f[0]
        return torch.clamp(1 - alphas_bar[1:] / alphas_bar[:-1], min=0, max=0.999)
    raise ValueError(f"unknown beta schedule {kind!r} (expected 'linear', 'sqrt_linear' or 'cosine')")


def alphas_cumprod(betas):
    """alphā_t = prod_{s<=t} (1 - beta_s)."""
    return torch.cumprod(1.0 - betas, dim=0)


def sigmas_from_alphas_cumprod(alphas_bar):
    """The variance-exploding noise level of each step: sigma = sqrt((1 - alphā) / alphā)."""
    return ((1 - alphas_bar) / alphas_bar) ** 0.5


# ComfyUI pins the last alphā after the rescale to this value instead of 0, so that sigma_max
# stays finite (sigma_max ~ 4518.9 for SD's schedule).
ZSNR_TERMINAL_ALPHA_BAR = 4.8973451890853435e-08


def rescale_zero_terminal_snr(sigmas):
    """Lin et al. (2024) "Common diffusion noise schedules and sample steps are flawed", Algorithm 1.

    Shift and scale sqrt(alphā) so the last step has zero signal while the first keeps its value,
    then return the new sigmas. The last alphā is set to a tiny positive constant (ComfyUI's choice).
    """
    sqrt_alphas_bar = (1 / (sigmas * sigmas + 1)).sqrt()
    first, last = sqrt_alphas_bar[0].clone(), sqrt_alphas_bar[-1].clone()
    sqrt_alphas_bar = (sqrt_alphas_bar - last) * (first / (first - last))
    alphas_bar = sqrt_alphas_bar ** 2
    alphas_bar[-1] = ZSNR_TERMINAL_ALPHA_BAR
    return ((1 - alphas_bar) / alphas_bar) ** 0.5


class SigmaTable:
    """A schedule's ascending float32 table of noise levels, `sigmas`, and its ends."""

    sigmas: torch.Tensor

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]


class DiscreteSchedule(SigmaTable):
    """A DDPM-trained model's 1000 noise levels (ComfyUI `ModelSamplingDiscrete`).

    `timestep(sigma)` is the index of the nearest table entry in log-sigma; `sigma(t)` interpolates
    log-sigma linearly between the two neighbouring entries.
    """

    def __init__(self, beta_schedule="linear", linear_start=0.00085, linear_end=0.012,
                 timesteps=NUM_TIMESTEPS, zsnr=False):
        betas = make_betas(beta_schedule, timesteps, linear_start, linear_end)
        sigmas = sigmas_from_alphas_cumprod(alphas_cumprod(betas))
        if zsnr:
            sigmas = rescale_zero_terminal_snr(sigmas)
        self.sigmas = sigmas.float()
        self.log_sigmas = sigmas.log().float()

    def timestep(self, sigma):
        """Nearest table index in log-sigma, shaped like `sigma` (an integer-valued tensor)."""
        dists = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep):
        """log-linear interpolation of the table at fractional timestep(s), clamped to [0, n-1]."""
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]
        return log_sigma.exp().to(timestep.device)

    def percent_to_sigma(self, percent):
        """sigma at sampling progress `percent`: timestep (1 - p) * 999; p <= 0 -> 999999999.9."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()


def time_snr_shift(shift, t):
    """The SD3 resolution shift t' = s t / (1 + (s - 1) t) (Esser et al. 2024, eq. 23)."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


class FlowSchedule(SigmaTable):
    """Rectified-flow noise levels (ComfyUI `ModelSamplingDiscreteFlow`): sigma = shift(t / multiplier).

    The network takes `timestep = sigma * multiplier` (1000 for SD3-class models). The table holds
    sigma at t = multiplier * k / n for k = 1..n, so sigma_max = 1 and sigma_min = shift(1/n).
    """

    def __init__(self, shift=1.0, multiplier=1000, timesteps=NUM_TIMESTEPS):
        self.shift = shift
        self.multiplier = multiplier
        self.sigmas = self.sigma((torch.arange(1, timesteps + 1, 1) / timesteps) * multiplier)

    def timestep(self, sigma):
        return sigma * self.multiplier

    def sigma(self, timestep):
        return time_snr_shift(self.shift, timestep / self.multiplier)

    def percent_to_sigma(self, percent):
        """shift(1 - p); p <= 0 -> 1.0, p >= 1 -> 0.0."""
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return time_snr_shift(self.shift, 1.0 - percent)
