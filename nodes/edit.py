"""Editing nodes in diffusion terms: SDEdit (strength t0) and DDIM inversion (latent <-> noise).

The maths is in :mod:`engine.sampling.inversion`; img2img with ComfyUI's ``denoise`` is
VAEEncode + KSampler and stays as ComfyUI has it.
"""
from __future__ import annotations

import torch

from engine.sampling import SAMPLERS
from engine.sampling.guidance import CFGDenoiser
from engine.sampling.inversion import ddim_invert, sdedit_levels, sdedit_sigmas
from engine.sampling.ksampler import sample_sigmas
from engine.sampling.schedulers import ksampler_sigmas
from engine.schema import Input, Node, Output

from .latent import _report
from .sampling import CFG, MODEL_IN, SAMPLER, SCHEDULER, STEPS, preview_callback, seed_input

POSITIVE, NEGATIVE = Input("positive", "CONDITIONING"), Input("negative", "CONDITIONING")
UNGUIDED_CFG = Input("cfg", "FLOAT", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01,
                     tooltip="guidance; above 1 inversion and sampling no longer mirror each other")


def preview_callback_k(ctx, model, total):
    """A sampler callback (k-diffusion's info dict) reporting progress with a preview."""
    preview = preview_callback(ctx, model)
    return lambda info: preview(info["i"], total, info["denoised"])


class SDEdit(Node):
    TYPE = "SDEdit"
    CATEGORY = "sampling/edit"
    DESCRIPTION = ("SDEdit (Meng et al. 2021): noise the image to diffusion time t0 = strength and denoise "
                   "it back in `steps` steps spent inside [0, t0]. 1 = a new image from the same noise as "
                   "txt2img; near 0 = the input.")
    INPUTS = (MODEL_IN, Input("vae", "VAE"), Input("image", "IMAGE"), POSITIVE, NEGATIVE, seed_input(), STEPS,
              CFG, SAMPLER, SCHEDULER,
              Input("strength", "FLOAT", default=0.6, min=0.0, max=1.0, step=0.01,
                    tooltip="diffusion time t0 the image is noised to; below 1/2000 the input is returned"))
    OUTPUTS = (Output("IMAGE", "IMAGE"), Output("LATENT", "LATENT"))

    def execute(self, model, vae, image, positive, negative, seed, steps, cfg, sampler_name, scheduler, strength):
        latent = vae.encode(image, report=_report(self.ctx))
        sigmas = sdedit_sigmas(model.schedule, scheduler, steps, sampler_name, strength)
        if len(sigmas) == 0:
            return image, {"samples": latent}
        # t0 = 1 starts from the prior, like txt2img: the guide is not added to the noise
        from_prior = sdedit_levels(model.schedule, strength) == len(model.schedule.sigmas)
        start = torch.zeros_like(latent) if from_prior else latent
        out, _ = sample_sigmas(model, {"samples": start}, positive, negative, cfg=cfg, sampler_name=sampler_name,
                               sigmas=sigmas, seed=seed, callback=preview_callback(self.ctx, model))
        return vae.decode(out["samples"], report=_report(self.ctx)), out


def _guided(model, positive, negative, cfg, latent):
    """The x0 denoiser KSampler would use for ``latent`` without a noise mask (an inpainting model then
    sees a blank image and a full mask, or what InpaintModelConditioning put in the conditioning)."""
    return CFGDenoiser(model, positive, negative, cfg, latent.shape)


class DDIMInversion(Node):
    TYPE = "DDIMInversion"
    DISPLAY_NAME = "DDIM Inversion (latent → noise)"
    CATEGORY = "sampling/edit"
    DESCRIPTION = ("Runs DDIM backwards: a latent becomes the noise that DDIM Sample (same model, prompt, steps, "
                   "scheduler) turns back into it. Sample with another prompt to edit. refine > 0 makes each "
                   "step an exact inverse (more model calls, closer reconstruction).")
    INPUTS = (MODEL_IN, POSITIVE, NEGATIVE, Input("latent_image", "LATENT"), STEPS, UNGUIDED_CFG, SCHEDULER,
              Input("refine", "INT", default=0, min=0, max=20,
                    tooltip="fixed-point iterations per step (0 = classic DDIM inversion)"))
    OUTPUTS = (Output("LATENT", "LATENT"),)

    def execute(self, model, positive, negative, latent_image, steps, cfg, scheduler, refine):
        latent = latent_image["samples"].float()
        sigmas = ksampler_sigmas(model.schedule, scheduler, steps, "euler").to(model.device)
        x0 = model.latent_format.process_in(latent).to(model.device)
        x = ddim_invert(_guided(model, positive, negative, cfg, latent), x0, sigmas, refine,
                        callback=preview_callback_k(self.ctx, model, len(sigmas) - 1))
        out = {k: v for k, v in latent_image.items() if k != "noise_mask"}
        out["samples"] = model.latent_format.process_out(x).float().cpu()
        return (out,)


class DDIMSample(Node):
    TYPE = "DDIMSample"
    DISPLAY_NAME = "DDIM Sample (noise → latent)"
    CATEGORY = "sampling/edit"
    DESCRIPTION = ("Deterministic DDIM from an inverted latent, adding no noise: the decode that matches DDIM "
                   "Inversion (use its steps and scheduler).")
    INPUTS = (MODEL_IN, POSITIVE, NEGATIVE, Input("latent_image", "LATENT"), STEPS, UNGUIDED_CFG, SCHEDULER)
    OUTPUTS = (Output("LATENT", "LATENT"),)

    def execute(self, model, positive, negative, latent_image, steps, cfg, scheduler):
        latent = latent_image["samples"].float()
        sigmas = ksampler_sigmas(model.schedule, scheduler, steps, "euler").to(model.device)
        x = model.latent_format.process_in(latent).to(model.device)
        x = SAMPLERS["euler"](_guided(model, positive, negative, cfg, latent), x, sigmas,
                              callback=preview_callback_k(self.ctx, model, len(sigmas) - 1))
        return ({**latent_image, "samples": model.latent_format.process_out(x).float().cpu()},)
