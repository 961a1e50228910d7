"""Sampling nodes (ComfyUI's names, inputs and results): KSampler and the custom-sampling pieces."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.sampling import SAMPLERS, SCHEDULERS, ksampler_sigmas
from engine.sampling.ksampler import sample
from engine.schema import Input, Node, Output

SEED_MAX = 0xFFFFFFFFFFFFFFFF


def seed_input(name="seed"):
    return Input(name, "INT", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                 tooltip="the random seed; the same seed gives the same image")


def preview_callback(ctx, model):
    """Per-step progress with a cheap latent→RGB preview of the current x0 estimate."""
    def callback(step, total, x0):
        ctx.progress((step + 1) / total, preview=model.latent_format.preview(x0))
    return callback


MODEL_IN = Input("model", "MODEL")
STEPS = Input("steps", "INT", default=20, min=1, max=10000)
CFG = Input("cfg", "FLOAT", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01,
            tooltip="classifier-free guidance scale; 1 skips the negative prompt")
SAMPLER = Input("sampler_name", "COMBO", options=tuple(SAMPLERS))
SCHEDULER = Input("scheduler", "COMBO", options=tuple(SCHEDULERS))


class KSampler(Node):
    TYPE = "KSampler"
    CATEGORY = "sampling"
    DESCRIPTION = "Denoises a latent with a model, guided by the positive and negative conditioning."
    INPUTS = (MODEL_IN, seed_input(), STEPS, CFG, SAMPLER, SCHEDULER,
              Input("positive", "CONDITIONING"), Input("negative", "CONDITIONING"),
              Input("latent_image", "LATENT"),
              Input("denoise", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01,
                    tooltip="below 1 keeps part of the input latent (img2img)"))
    OUTPUTS = (Output("LATENT", "LATENT"),)

    def execute(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                denoise=1.0):
        return (sample(model, latent_image, positive, negative, seed=seed, steps=steps, cfg=cfg,
                       sampler_name=sampler_name, scheduler=scheduler, denoise=denoise,
                       callback=preview_callback(self.ctx, model)),)


class KSamplerAdvanced(Node):
    TYPE = "KSamplerAdvanced"
    DISPLAY_NAME = "KSampler (Advanced)"
    CATEGORY = "sampling"
    DESCRIPTION = "KSampler over a step range, e.g. SDXL base for steps 0–32 then the refiner from 32."
    INPUTS = (MODEL_IN, Input("add_noise", "COMBO", options=("enable", "disable")), seed_input("noise_seed"),
              STEPS, CFG, SAMPLER, SCHEDULER,
              Input("positive", "CONDITIONING"), Input("negative", "CONDITIONING"),
              Input("latent_image", "LATENT"),
              Input("start_at_step", "INT", default=0, min=0, max=10000),
              Input("end_at_step", "INT", default=10000, min=0, max=10000),
              Input("return_with_leftover_noise", "COMBO", options=("disable", "enable")))
    OUTPUTS = (Output("LATENT", "LATENT"),)

    def execute(self, model, add_noise, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
                latent_image, start_at_step, end_at_step, return_with_leftover_noise):
        return (sample(model, latent_image, positive, negative, seed=noise_seed, steps=steps, cfg=cfg,
                       sampler_name=sampler_name, scheduler=scheduler, add_noise=add_noise == "enable",
                       start_step=start_at_step, last_step=end_at_step,
                       force_full_denoise=return_with_leftover_noise == "disable",
                       callback=preview_callback(self.ctx, model)),)


# --- custom sampling: noise × guider × sampler × sigmas ----------------------------------

@dataclass(frozen=True)
class Noise:
    """NOISE: a seed (or none) for the initial noise."""
    seed: int
    enabled: bool = True


@dataclass(frozen=True)
class Guider:
    """GUIDER: a model with its conditioning and CFG scale."""
    model: object
    positive: list
    negative: list
    cfg: float


@dataclass(frozen=True)
class Sampler:
    """SAMPLER: a sampler function's name."""
    name: str


def run_custom(ctx, noise: Noise, guider: Guider, sampler: Sampler, sigmas: torch.Tensor, latent: dict):
    """Sample ``latent`` over explicit ``sigmas``; returns (output, denoised_output) LATENTs."""
    from engine.sampling.ksampler import sample_sigmas

    out, denoised = sample_sigmas(guider.model, latent, guider.positive, guider.negative, cfg=guider.cfg,
                                  sampler_name=sampler.name, sigmas=sigmas, seed=noise.seed,
                                  add_noise=noise.enabled, callback=preview_callback(ctx, guider.model))
    return out, denoised


class SamplerCustom(Node):
    TYPE = "SamplerCustom"
    CATEGORY = "sampling/custom_sampling"
    INPUTS = (MODEL_IN, Input("add_noise", "BOOLEAN", default=True), seed_input("noise_seed"), CFG,
              Input("positive", "CONDITIONING"), Input("negative", "CONDITIONING"),
              Input("sampler", "SAMPLER"), Input("sigmas", "SIGMAS"), Input("latent_image", "LATENT"))
    OUTPUTS = (Output("output", "LATENT"), Output("denoised_output", "LATENT"))

    def execute(self, model, add_noise, noise_seed, cfg, positive, negative, sampler, sigmas, latent_image):
        return run_custom(self.ctx, Noise(noise_seed, add_noise), Guider(model, positive, negative, cfg),
                          sampler, sigmas, latent_image)


class SamplerCustomAdvanced(Node):
    TYPE = "SamplerCustomAdvanced"
    CATEGORY = "sampling/custom_sampling"
    INPUTS = (Input("noise", "NOISE"), Input("guider", "GUIDER"), Input("sampler", "SAMPLER"),
              Input("sigmas", "SIGMAS"), Input("latent_image", "LATENT"))
    OUTPUTS = (Output("output", "LATENT"), Output("denoised_output", "LATENT"))

    def execute(self, noise, guider, sampler, sigmas, latent_image):
        return run_custom(self.ctx, noise, guider, sampler, sigmas, latent_image)


class KSamplerSelect(Node):
    TYPE = "KSamplerSelect"
    CATEGORY = "sampling/custom_sampling/samplers"
    INPUTS = (SAMPLER,)
    OUTPUTS = (Output("SAMPLER", "SAMPLER"),)

    def execute(self, sampler_name):
        return (Sampler(sampler_name),)


class BasicScheduler(Node):
    TYPE = "BasicScheduler"
    CATEGORY = "sampling/custom_sampling/schedulers"
    INPUTS = (MODEL_IN, SCHEDULER, STEPS, Input("denoise", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01))
    OUTPUTS = (Output("SIGMAS", "SIGMAS"),)

    def execute(self, model, scheduler, steps, denoise):
        return (ksampler_sigmas(model.schedule, scheduler, steps, None, denoise).cpu(),)


class KarrasScheduler(Node):
    TYPE = "KarrasScheduler"
    CATEGORY = "sampling/custom_sampling/schedulers"
    INPUTS = (STEPS, Input("sigma_max", "FLOAT", default=14.614642, min=0.0, max=5000.0, step=0.01, round=False),
              Input("sigma_min", "FLOAT", default=0.0291675, min=0.0, max=5000.0, step=0.01, round=False),
              Input("rho", "FLOAT", default=7.0, min=0.0, max=100.0, step=0.01, round=False))
    OUTPUTS = (Output("SIGMAS", "SIGMAS"),)

    def execute(self, steps, sigma_max, sigma_min, rho):
        from engine.sampling.schedulers import karras_sigmas
        return (karras_sigmas(steps, sigma_min, sigma_max, rho),)


class SplitSigmas(Node):
    TYPE = "SplitSigmas"
    CATEGORY = "sampling/custom_sampling/sigmas"
    DESCRIPTION = "high_sigmas = the first step+1 sigmas, low_sigmas = the rest from step on."
    INPUTS = (Input("sigmas", "SIGMAS"), Input("step", "INT", default=0, min=0, max=10000))
    OUTPUTS = (Output("high_sigmas", "SIGMAS"), Output("low_sigmas", "SIGMAS"))

    def execute(self, sigmas, step):
        return sigmas[:step + 1], sigmas[step:]


class CFGGuider(Node):
    TYPE = "CFGGuider"
    CATEGORY = "sampling/custom_sampling/guiders"
    INPUTS = (MODEL_IN, Input("positive", "CONDITIONING"), Input("negative", "CONDITIONING"), CFG)
    OUTPUTS = (Output("GUIDER", "GUIDER"),)

    def execute(self, model, positive, negative, cfg):
        return (Guider(model, positive, negative, cfg),)


class BasicGuider(Node):
    TYPE = "BasicGuider"
    CATEGORY = "sampling/custom_sampling/guiders"
    INPUTS = (MODEL_IN, Input("conditioning", "CONDITIONING"))
    OUTPUTS = (Output("GUIDER", "GUIDER"),)

    def execute(self, model, conditioning):
        return (Guider(model, conditioning, [], 1.0),)


class RandomNoise(Node):
    TYPE = "RandomNoise"
    CATEGORY = "sampling/custom_sampling/noise"
    INPUTS = (seed_input("noise_seed"),)
    OUTPUTS = (Output("NOISE", "NOISE"),)

    def execute(self, noise_seed):
        return (Noise(noise_seed),)


class DisableNoise(Node):
    TYPE = "DisableNoise"
    CATEGORY = "sampling/custom_sampling/noise"
    OUTPUTS = (Output("NOISE", "NOISE"),)

    def execute(self):
        return (Noise(0, enabled=False),)


# --- model patches ----------------------------------------------------------------------

class ModelSamplingDiscrete(Node):
    TYPE = "ModelSamplingDiscrete"
    CATEGORY = "advanced/model"
    DESCRIPTION = "Override the prediction type (eps, v_prediction, lcm, x0) and zero-terminal-SNR."
    INPUTS = (MODEL_IN, Input("sampling", "COMBO", options=("eps", "v_prediction", "lcm", "x0")),
              Input("zsnr", "BOOLEAN", default=False))
    OUTPUTS = (Output("MODEL", "MODEL"),)

    def execute(self, model, sampling, zsnr):
        from engine.sampling.schedules import DiscreteSchedule

        clone = model.clone()
        clone.prediction_type = {"eps": "eps", "v_prediction": "v", "lcm": "x0", "x0": "x0"}[sampling]
        if sampling == "lcm":
            raise ValueError("lcm model sampling is not supported yet; use eps or v_prediction")
        clone.schedule = DiscreteSchedule(zsnr=zsnr)
        return (clone,)


class RescaleCFG(Node):
    TYPE = "RescaleCFG"
    CATEGORY = "advanced/model"
    DESCRIPTION = ("Rescales the guided prediction's spread towards the conditional one (Lin et al. 2023, "
                   "'Common Diffusion Noise Schedules and Sample Steps are Flawed', §3.4).")
    INPUTS = (MODEL_IN, Input("multiplier", "FLOAT", default=0.7, min=0.0, max=1.0, step=0.01))
    OUTPUTS = (Output("MODEL", "MODEL"),)

    def execute(self, model, multiplier):
        clone = model.clone()
        clone.options["sampler_cfg_function"] = rescale_cfg(model, multiplier)
        return (clone,)


def rescale_cfg(model, multiplier):
    """CFG computed on v-predictions whose spread is matched to the conditional one, blended with
    plain CFG by ``multiplier`` (Lin et al. 2023 §3.4; ComfyUI's RescaleCFG formulas, in which the
    input is scaled by 1/(σ²+1) before converting).  ``cond``/``uncond`` arrive as x − x0."""
    def fn(args):
        x_in, scale = args["input"], args["cond_scale"]
        sigma = args["sigma"].reshape(-1, *([1] * (x_in.ndim - 1)))
        norm = (sigma ** 2 + 1.0) ** 0.5
        x = x_in / (sigma ** 2 + 1.0)
        v_cond = (x - x_in + args["cond"]) * norm / sigma
        v_uncond = (x - x_in + args["uncond"]) * norm / sigma
        v_cfg = v_uncond + scale * (v_cond - v_uncond)
        dims = tuple(range(1, x_in.ndim))
        rescaled = v_cfg * (v_cond.std(dim=dims, keepdim=True) / v_cfg.std(dim=dims, keepdim=True))
        v_final = multiplier * rescaled + (1.0 - multiplier) * v_cfg
        return x_in - (x - v_final * sigma / norm)
    return fn
