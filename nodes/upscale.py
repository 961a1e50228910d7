"""Upscaling nodes: latent resizing, model upscalers (spandrel), and tiled diffusion upscaling.

``LatentUpscale``, ``LatentUpscaleBy``, ``ImageScaleToTotalPixels``, ``UpscaleModelLoader`` and
``ImageUpscaleWithModel`` are ComfyUI's nodes with its names, inputs and behaviour
(``ImageScale``/``ImageScaleBy`` live in :mod:`nodes.image`).  ``TiledDiffusionUpscale`` is Loom's own.
"""
from __future__ import annotations

from engine import imageops, upscale
from engine.schema import Input, Node, Output
from nodes.latent import _report
from nodes.loaders import _file_stamp, _files
from nodes.sampling import CFG, SAMPLER, SCHEDULER, STEPS, seed_input

MAX_RESOLUTION = 16384
LATENT_METHOD = Input("upscale_method", "COMBO", options=upscale.LATENT_UPSCALE_METHODS,
                      tooltip="bislerp slerps neighbouring latent vectors, keeping their length")


class LatentUpscale(Node):
    TYPE = "LatentUpscale"
    DISPLAY_NAME = "Upscale Latent"
    CATEGORY = "latent"
    DESCRIPTION = ("Resizes a latent to width × height pixels (÷8 in the latent); "
                   "0 in one side keeps the aspect ratio.")
    INPUTS = (Input("samples", "LATENT"), LATENT_METHOD,
              Input("width", "INT", default=512, min=0, max=MAX_RESOLUTION, step=8),
              Input("height", "INT", default=512, min=0, max=MAX_RESOLUTION, step=8),
              Input("crop", "COMBO", options=("disabled", "center")))
    OUTPUTS = (Output("LATENT", "LATENT"),)

    def execute(self, samples, upscale_method, width, height, crop):
        latents = samples["samples"]
        size = upscale.latent_upscale_size(*latents.shape[-2:], width, height)
        if size is None:
            return (samples,)
        return ({**samples, "samples": upscale.resize_latent(latents, size[1], size[0], upscale_method, crop)},)


class LatentUpscaleBy(Node):
    TYPE = "LatentUpscaleBy"
    DISPLAY_NAME = "Upscale Latent By"
    CATEGORY = "latent"
    INPUTS = (Input("samples", "LATENT"), LATENT_METHOD,
              Input("scale_by", "FLOAT", default=1.5, min=0.01, max=8.0, step=0.01))
    OUTPUTS = (Output("LATENT", "LATENT"),)

    def execute(self, samples, upscale_method, scale_by):
        latents = samples["samples"]
        width, height = round(latents.shape[-1] * scale_by), round(latents.shape[-2] * scale_by)
        return ({**samples, "samples": upscale.resize_latent(latents, width, height, upscale_method)},)


class ImageScaleToTotalPixels(Node):
    TYPE = "ImageScaleToTotalPixels"
    CATEGORY = "image/upscaling"
    DESCRIPTION = ("Resizes to about megapixels × 1024² pixels, keeping the aspect ratio; "
                   "sides rounded to resolution_steps.")
    INPUTS = (Input("image", "IMAGE"),
              Input("upscale_method", "COMBO", options=imageops.UPSCALE_METHODS),
              Input("megapixels", "FLOAT", default=1.0, min=0.01, max=16.0, step=0.01),
              Input("resolution_steps", "INT", default=1, min=1, max=256,
                    tooltip="both sides become multiples of this (e.g. 64 for latent-friendly sizes)"))
    OUTPUTS = (Output("IMAGE", "IMAGE"),)

    def execute(self, image, upscale_method, megapixels, resolution_steps=1):
        height, width = upscale.total_pixels_size(image.shape[1], image.shape[2], megapixels, resolution_steps)
        return (imageops.resize_bchw(image.movedim(-1, 1), width, height, upscale_method).movedim(1, -1),)


class UpscaleModelLoader(Node):
    TYPE = "UpscaleModelLoader"
    DISPLAY_NAME = "Load Upscale Model"
    CATEGORY = "loaders"
    DESCRIPTION = ("Loads a super-resolution model from models/upscale_models: every architecture spandrel "
                   "detects (ESRGAN, Real-ESRGAN compact, SwinIR, HAT, DAT, …).")
    INPUTS = (Input("model_name", "COMBO", options=_files("upscale_models"),
                    tooltip="a file in models/upscale_models"),)
    OUTPUTS = (Output("UPSCALE_MODEL", "UPSCALE_MODEL"),)

    def execute(self, model_name):
        return (upscale.load_upscale_model(self.ctx.paths.find_model("upscale_models", model_name)),)

    @classmethod
    def fingerprint(cls, model_name=None, **_):
        return _file_stamp("upscale_models", model_name)


class ImageUpscaleWithModel(Node):
    TYPE = "ImageUpscaleWithModel"
    DISPLAY_NAME = "Upscale Image (using Model)"
    CATEGORY = "image/upscaling"
    DESCRIPTION = ("Runs an upscale model over the image in overlapping, feathered tiles sized from free memory; "
                   "on out-of-memory the tile is halved (down to 128 px) and the node says so.")
    INPUTS = (Input("upscale_model", "UPSCALE_MODEL"), Input("image", "IMAGE"))
    OUTPUTS = (Output("IMAGE", "IMAGE"),)

    def execute(self, upscale_model, image):
        return (upscale.upscale_image(upscale_model, image, progress=self.ctx.progress, report=_report(self.ctx)),)


class TiledDiffusionUpscale(Node):
    """Upscale, then img2img tile by tile at the model's native size, seams feathered.

    Why this shape:

    - A diffusion model draws well only near the size it was trained at; a 4×
      image sampled in one piece repeats subjects and needs memory that grows
      with the area.  Tiles of the native size (512 px SD1, 768 px SD2-v,
      1024 px SDXL) keep both in check.
    - The tiles are blended in *latent* space: the image is encoded once and
      decoded once (the VAE tiles itself on out-of-memory), instead of a lossy
      encode/decode round trip per tile.
    - The noise is drawn once for the whole latent from the seed; each tile gets
      its slice, so overlapping tiles start from identical values, agree where
      they are feathered together, and no noise pattern repeats across tiles.
    - Tiles are independent (the result does not depend on their order) and each
      is an ordinary KSampler run; with a single tile the node equals (to fp32 rounding)
      upscale → VAEEncode → KSampler(denoise) → VAEDecode.
    - A low denoise (0.2–0.4) adds detail while keeping the composition; the
      optional upscale model makes the starting image sharper than resizing.
    """

    TYPE = "TiledDiffusionUpscale"
    DISPLAY_NAME = "Tiled Diffusion Upscale"
    CATEGORY = "image/upscaling"
    DESCRIPTION = ("Upscales the image (with a model if given), then re-draws it tile by tile with the diffusion "
                   "model at its native size, blending the seams: detail at resolutions the model cannot do at once.")
    INPUTS = (Input("image", "IMAGE"), Input("model", "MODEL"),
              Input("positive", "CONDITIONING"), Input("negative", "CONDITIONING"), Input("vae", "VAE"),
              Input("upscale_by", "FLOAT", default=2.0, min=1.0, max=8.0, step=0.05),
              Input("upscale_method", "COMBO", options=imageops.UPSCALE_METHODS, default="lanczos",
                    tooltip="how the image is resized (after the upscale model, when one is connected)"),
              seed_input(), STEPS, CFG, SAMPLER, SCHEDULER,
              Input("denoise", "FLOAT", default=0.35, min=0.0, max=1.0, step=0.01,
                    tooltip="how much each tile is re-drawn; 0.2–0.4 adds detail and keeps the picture"),
              Input("tile_size", "INT", default=0, min=0, max=4096, step=8,
                    tooltip="tile side in pixels; 0 = the model's native size"),
              Input("tile_overlap", "INT", default=64, min=0, max=1024, step=8,
                    tooltip="pixels shared by neighbouring tiles, feathered together"),
              Input("upscale_model", "UPSCALE_MODEL", optional=True))
    OUTPUTS = (Output("IMAGE", "IMAGE"),)

    def execute(self, image, model, positive, negative, vae, upscale_by, upscale_method, seed, steps, cfg,
                sampler_name, scheduler, denoise, tile_size, tile_overlap, upscale_model=None):
        report = _report(self.ctx)
        pixels = self._upscaled(image, upscale_by, upscale_method, vae.downscale, upscale_model, report)
        latent = vae.encode(pixels, report=report)
        tile = (tile_size or upscale.native_tile_px(model)) // vae.downscale
        samples = upscale.tiled_img2img(
            model, latent, positive, negative, seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name,
            scheduler=scheduler, denoise=denoise, tile=max(tile, 8), overlap=tile_overlap // vae.downscale,
            progress=lambda f, text: self.ctx.progress(f, text=text))
        return (vae.decode(samples, report=report),)

    def _upscaled(self, image, upscale_by, method, multiple, upscale_model, report):
        """The image at ``upscale_by`` × its size, sides rounded to a multiple of the VAE's factor."""
        height = max(multiple, round(image.shape[1] * upscale_by / multiple) * multiple)
        width = max(multiple, round(image.shape[2] * upscale_by / multiple) * multiple)
        if upscale_model is not None:
            image = upscale.upscale_image(upscale_model, image, report=report)
        return imageops.scale_image(image, width, height, method)
