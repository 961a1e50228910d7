"""Loom's sampling core: noise schedules, prediction types, schedulers, samplers and seeded noise,
numerically matching ComfyUI (see the module docstrings for the conventions)."""

from .denoiser import PREDICTIONS, Denoiser, is_max_denoise
from .dpm_solver import sample_dpm_adaptive, sample_dpm_fast
from .noise import BrownianTreeNoiseSampler, default_noise_sampler, inpaint_noise, prepare_noise
from .samplers import (sample_ddpm, sample_dpm_2, sample_dpm_2_ancestral, sample_dpmpp_2s_ancestral,
                       sample_dpmpp_sde, sample_euler, sample_euler_ancestral, sample_heun, sample_heunpp2,
                       sample_lcm)
from .samplers_multistep import (sample_deis, sample_dpmpp_2m, sample_dpmpp_2m_sde, sample_dpmpp_2m_sde_heun,
                                 sample_dpmpp_3m_sde, sample_ipndm, sample_lms)
from .schedulers import DISCARD_PENULTIMATE_SIGMA_SAMPLERS, SCHEDULERS, calculate_sigmas, ksampler_sigmas, step_range
from .schedules import DiscreteSchedule, FlowSchedule
from .uni_pc import sample_uni_pc, sample_uni_pc_bh2

# ComfyUI's sampler names, in its UI order, for the samplers Loom implements. The *_gpu names are
# ComfyUI's variants with the Brownian tree on the GPU; Loom's tree is device-independent, so they
# are the same functions. "ddim" is Euler (its difference, fresh inpainting noise, is `inpaint_noise`).
SAMPLERS = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "heunpp2": sample_heunpp2,
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "lms": sample_lms,
    "dpm_fast": sample_dpm_fast,
    "dpm_adaptive": sample_dpm_adaptive,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_sde_gpu": sample_dpmpp_sde,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_gpu": sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_heun": sample_dpmpp_2m_sde_heun,
    "dpmpp_2m_sde_heun_gpu": sample_dpmpp_2m_sde_heun,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "dpmpp_3m_sde_gpu": sample_dpmpp_3m_sde,
    "ddpm": sample_ddpm,
    "lcm": sample_lcm,
    "ipndm": sample_ipndm,
    "deis": sample_deis,
    "ddim": sample_euler,
    "uni_pc": sample_uni_pc,
    "uni_pc_bh2": sample_uni_pc_bh2,
}

__all__ = [
    "SAMPLERS", "SCHEDULERS", "PREDICTIONS", "DISCARD_PENULTIMATE_SIGMA_SAMPLERS",
    "Denoiser", "DiscreteSchedule", "FlowSchedule", "BrownianTreeNoiseSampler",
    "calculate_sigmas", "ksampler_sigmas", "step_range", "is_max_denoise",
    "prepare_noise", "default_noise_sampler", "inpaint_noise",
]
