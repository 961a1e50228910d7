"""Inpainting and outpainting nodes.

ComfyUI's nodes keep ComfyUI's names, inputs and numbers (``nodes.py`` VAEEncodeForInpaint,
InpaintModelConditioning, ImagePadForOutpaint; ``nodes_differential_diffusion.py``).  InpaintCrop
and InpaintStitch inpaint only the masked region: crop around the mask with context, sample the
crop at the model's native resolution, paste it back through a feathered seam.

Image and mask stay separate tensors throughout: no node writes a mask into image data (the grey
fill of VAEEncodeForInpaint is applied to a copy that only the VAE sees).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine import imageops
from engine.sampling.denoiser import model_sampling_of
from engine.schema import Input, Node, Output

from .latent import _report
from .mask_ops import as_batch, morph_step

MAX_RESOLUTION = 16384


# --- VAE encodes with a mask (ComfyUI) ------------------------------------------------------------

def mask_at(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A MASK as ``[B,1,height,width]``, bilinearly resized when its size differs."""
    mask = mask.reshape(-1, 1, *mask.shape[-2:]).float()
    return F.interpolate(mask, size=(height, width), mode="bilinear")


def crop_to_multiple(pixels: torch.Tensor, mask: torch.Tensor, multiple: int):
    """Centre-crop pixels ``[B,H,W,C]`` and mask ``[B,1,H,W]`` to multiples of the VAE's downscale."""
    h, w = pixels.shape[1] // multiple * multiple, pixels.shape[2] // multiple * multiple
    dy, dx = (pixels.shape[1] % multiple) // 2, (pixels.shape[2] % multiple) // 2
    return pixels[:, dy:dy + h, dx:dx + w], mask[:, :, dy:dy + h, dx:dx + w]


def grey_out(pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A copy of the RGB pixels with the (rounded) masked area set to 0.5 grey: (p - 0.5)(1 - m) + 0.5."""
    keep = (1.0 - mask.round())[:, 0, :, :, None]
    out = pixels.clone()
    out[..., :3] = (out[..., :3] - 0.5) * keep + 0.5
    return out


def grow_for_inpaint(mask: torch.Tensor, grow_by: int) -> torch.Tensor:
    """ComfyUI's grow_mask_by: the rounded mask convolved with a ones(g×g) kernel, padding ceil((g-1)/2),
    clamped to 0..1 (for even g it reaches one pixel further down/right), cropped back to size, rounded."""
    h, w = mask.shape[-2:]
    if grow_by > 0:
        kernel = torch.ones(1, 1, grow_by, grow_by)
        mask = F.conv2d(mask.round(), kernel, padding=math.ceil((grow_by - 1) / 2)).clamp(0, 1)
    return mask[:, :, :h, :w].round()


class VAEEncodeForInpaint(Node):
    TYPE = "VAEEncodeForInpaint"
    DISPLAY_NAME = "VAE Encode (for Inpainting)"
    CATEGORY = "latent/inpaint"
    DESCRIPTION = ("Encodes the image with the masked area filled grey and sets the grown mask as noise mask; "
                   "meant for inpainting checkpoints at denoise 1.")
    INPUTS = (Input("pixels", "IMAGE"), Input("vae", "VAE"), Input("mask", "MASK"),
              Input("grow_mask_by", "INT", default=6, min=0, max=64, step=1))
    OUTPUTS = (Output("LATENT", "LATENT"),)

    def execute(self, pixels, vae, mask, grow_mask_by=6):
        mask = mask_at(mask, pixels.shape[1], pixels.shape[2])
        pixels, mask = crop_to_multiple(pixels, mask, vae.downscale)
        latent = vae.encode(grey_out(pixels, mask), report=_report(self.ctx))
        return ({"samples": latent, "noise_mask": grow_for_inpaint(mask, grow_mask_by)},)


class InpaintModelConditioning(Node):
    TYPE = "InpaintModelConditioning"
    CATEGORY = "conditioning/inpaint"
    DESCRIPTION = ("For inpainting checkpoints: the conditioning carries the mask and the grey-filled image's "
                   "latent; the latent is the untouched image's, with the mask as noise mask if asked.")
    INPUTS = (Input("positive", "CONDITIONING"), Input("negative", "CONDITIONING"), Input("vae", "VAE"),
              Input("pixels", "IMAGE"), Input("mask", "MASK"),
              Input("noise_mask", "BOOLEAN", default=True,
                    tooltip="also regenerate only inside the mask; may help or hurt depending on the model"))
    OUTPUTS = (Output("positive", "CONDITIONING"), Output("negative", "CONDITIONING"), Output("latent", "LATENT"))

    def execute(self, positive, negative, vae, pixels, mask, noise_mask=True):
        mask = mask_at(mask, pixels.shape[1], pixels.shape[2])
        cropped, mask = crop_to_multiple(pixels, mask, vae.downscale)
        concat_latent = vae.encode(grey_out(cropped, mask), report=_report(self.ctx))
        latent = {"samples": vae.encode(pixels, report=_report(self.ctx))}
        if noise_mask:
            latent["noise_mask"] = mask
        positive, negative = ([c.replace(concat_latent=concat_latent, concat_mask=mask) for c in conds]
                              for conds in (positive, negative))
        return positive, negative, latent


# --- soft masks ---------------------------------------------------------------------------------

def differential_mask(strength: float = 1.0):
    """Differential Diffusion's ``denoise_mask_function`` (Levin & Fried 2023, ComfyUI's rule).

    At each model call, in timestep units t: threshold = (t(sigma) - t_end) / (t_start - t_end), from
    1 at the first step to 0 at the last (t_end at sigma_min or the run's last sigma if higher); a
    pixel is regenerated once its mask value reaches the threshold.  strength < 1 blends that binary
    mask with the soft one.
    """
    def fn(sigma, mask, extra_options):
        schedule = model_sampling_of(extra_options["model"]).schedule
        sigmas = extra_options["sigmas"]
        sigma_end = sigmas[-1] if sigmas[-1] > schedule.sigma_min else schedule.sigma_min
        t_start, t_end = schedule.timestep(sigmas[0]), schedule.timestep(sigma_end)
        threshold = (schedule.timestep(sigma.reshape(-1)[0]) - t_end) / (t_start - t_end)
        binary = (mask >= threshold).to(mask.dtype)
        if strength and strength < 1:
            return strength * binary + (1 - strength) * mask
        return binary
    return fn


class DifferentialDiffusion(Node):
    TYPE = "DifferentialDiffusion"
    DISPLAY_NAME = "Differential Diffusion"
    CATEGORY = "_for_testing"
    DESCRIPTION = ("Soft inpainting: each pixel's mask value is its own strength (white changes from the first "
                   "step, mid-grey joins halfway, black never changes).")
    INPUTS = (Input("model", "MODEL"),
              Input("strength", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01, optional=True))
    OUTPUTS = (Output("MODEL", "MODEL"),)

    def execute(self, model, strength=1.0):
        clone = model.clone()
        clone.options["denoise_mask_function"] = differential_mask(strength)
        return (clone,)


# --- outpainting --------------------------------------------------------------------------------

def outpaint_mask(height: int, width: int, left: int, top: int, right: int, bottom: int,
                  feathering: int) -> torch.Tensor:
    """``[H',W']``: 1 on the new border; inside, ((f - d) / f)² within f px of a padded side, where d
    is the distance to the nearest padded side (ComfyUI; no feathering unless 2f < both sides)."""
    mask = torch.ones(height + top + bottom, width + left + right)
    inner = torch.zeros(height, width, dtype=torch.float64)
    if 0 < feathering and 2 * feathering < height and 2 * feathering < width:
        i = torch.arange(height, dtype=torch.float64)[:, None].expand(height, width)
        j = torch.arange(width, dtype=torch.float64)[None, :].expand(height, width)
        distances = [i if top else torch.full_like(i, height), height - i if bottom else torch.full_like(i, height),
                     j if left else torch.full_like(j, width), width - j if right else torch.full_like(j, width)]
        d = torch.stack(distances).amin(dim=0)
        inner = torch.where(d < feathering, ((feathering - d) / feathering) ** 2, inner)
    mask[top:top + height, left:left + width] = inner.float()
    return mask


class ImagePadForOutpaint(Node):
    TYPE = "ImagePadForOutpaint"
    DISPLAY_NAME = "Pad Image for Outpainting"
    CATEGORY = "image"
    DESCRIPTION = "Adds grey borders and returns a mask of them, feathered into the image by `feathering` px."
    INPUTS = (Input("image", "IMAGE"),
              Input("left", "INT", default=0, min=0, max=MAX_RESOLUTION, step=8),
              Input("top", "INT", default=0, min=0, max=MAX_RESOLUTION, step=8),
              Input("right", "INT", default=0, min=0, max=MAX_RESOLUTION, step=8),
              Input("bottom", "INT", default=0, min=0, max=MAX_RESOLUTION, step=8),
              Input("feathering", "INT", default=40, min=0, max=MAX_RESOLUTION, step=1))
    OUTPUTS = (Output("IMAGE", "IMAGE"), Output("MASK", "MASK"))

    def execute(self, image, left, top, right, bottom, feathering):
        b, h, w, c = image.shape
        padded = torch.full((b, h + top + bottom, w + left + right, c), 0.5, dtype=torch.float32)
        padded[:, top:top + h, left:left + w] = image
        return padded, outpaint_mask(h, w, left, top, right, bottom, feathering)[None]


# --- inpaint the masked region only -------------------------------------------------------------

@dataclass(frozen=True)
class Stitch:
    """What InpaintStitch needs to paste a processed crop back (socket type STITCH)."""

    image: torch.Tensor  # the original [B,H,W,C]
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 of the crop inside the image
    pad: tuple[int, int, int, int]  # left, top, right, bottom: replicated border around the box
    blend: torch.Tensor  # [B,h,w] weight of the processed pixels inside the box
    method: str


def mask_bounds(mask: torch.Tensor):
    """(x0, y0, x1, y1), ends exclusive, of the nonzero pixels of any mask in the batch; None if empty."""
    rows, cols = torch.nonzero(mask.amax(dim=0).amax(dim=1) > 0), torch.nonzero(mask.amax(dim=0).amax(dim=0) > 0)
    if len(rows) == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def fit_interval(lo: int, hi: int, size: int, limit: int) -> tuple[int, int]:
    """An interval of ``size`` around [lo, hi), shifted inside [0, limit) if it fits, else centred on it."""
    lo -= (size - (hi - lo)) // 2
    lo = min(max(lo, 0), limit - size) if size <= limit else -((size - limit) // 2)
    return lo, lo + size


def crop_box(bounds, context: int, width: int, height: int, image_w: int, image_h: int):
    """The crop around ``bounds`` + ``context`` with the aspect ratio width:height, as an in-image box and
    the padding (left, top, right, bottom) needed where the image is too small for that aspect ratio."""
    x0, y0, x1, y1 = bounds
    x0, y0 = max(0, x0 - context), max(0, y0 - context)
    x1, y1 = min(image_w, x1 + context), min(image_h, y1 + context)
    w, h = x1 - x0, y1 - y0
    if w * height < h * width:
        w = max(w, round(h * width / height))
    else:
        h = max(h, round(w * height / width))
    x0, x1 = fit_interval(x0, x1, w, image_w)
    y0, y1 = fit_interval(y0, y1, h, image_h)
    pad = (max(0, -x0), max(0, -y0), max(0, x1 - image_w), max(0, y1 - image_h))
    return (max(0, x0), max(0, y0), min(image_w, x1), min(image_h, y1)), pad


def seam_weights(mask: torch.Tensor, width: int) -> torch.Tensor:
    """The stitch's blend weight: 1 on the mask, falling linearly to 0 over ``width`` px around it
    (the mean of the mask dilated by 0..width square steps)."""
    total, grown = mask.clone(), mask
    for _ in range(width):
        grown = morph_step(grown, True, tapered_corners=False)
        total += grown
    return total / (width + 1)


def resize_image(image: torch.Tensor, width: int, height: int, method: str) -> torch.Tensor:
    if image.shape[1:3] == (height, width):
        return image
    return imageops.resize_bchw(image.movedim(-1, 1), width, height, method).movedim(1, -1).clamp(0, 1)


class InpaintCrop(Node):
    TYPE = "InpaintCrop"
    DISPLAY_NAME = "Inpaint Crop (masked area only)"
    CATEGORY = "image/inpaint"
    DESCRIPTION = ("Crops around the mask plus context and scales the crop to the model's resolution, so a small "
                   "area is inpainted at full detail. Encode, sample and decode the crop, then Inpaint Stitch.")
    INPUTS = (Input("image", "IMAGE"), Input("mask", "MASK"),
              Input("context", "INT", default=64, min=0, max=MAX_RESOLUTION, step=1,
                    tooltip="pixels of surrounding image around the mask the model sees"),
              Input("blend", "INT", default=16, min=0, max=MAX_RESOLUTION, step=1,
                    tooltip="width in pixels of the feathered seam around the mask (at most the context)"),
              Input("width", "INT", default=512, min=8, max=MAX_RESOLUTION, step=8,
                    tooltip="the model's native resolution"),
              Input("height", "INT", default=512, min=8, max=MAX_RESOLUTION, step=8),
              Input("upscale_method", "COMBO", default="bicubic", options=imageops.UPSCALE_METHODS))
    OUTPUTS = (Output("stitch", "STITCH"), Output("image", "IMAGE"), Output("mask", "MASK"))

    def execute(self, image, mask, context, blend, width, height, upscale_method):
        image_h, image_w = image.shape[1:3]
        mask = mask_at(mask, image_h, image_w)[:, 0]
        bounds = mask_bounds(mask) or (0, 0, image_w, image_h)
        (x0, y0, x1, y1), pad = crop_box(bounds, context, width, height, image_w, image_h)
        left, top, right, bottom = pad
        crop = F.pad(image[:, y0:y1, x0:x1].movedim(-1, 1), (left, right, top, bottom), mode="replicate")
        crop_mask = F.pad(mask[:, None, y0:y1, x0:x1], (left, right, top, bottom))
        stitch = Stitch(image, (x0, y0, x1, y1), pad, seam_weights(mask[:, y0:y1, x0:x1], min(blend, context)),
                        upscale_method)
        crop_mask = F.interpolate(crop_mask, size=(height, width), mode="bilinear")[:, 0]
        return stitch, resize_image(crop.movedim(1, -1), width, height, upscale_method), crop_mask


class InpaintStitch(Node):
    TYPE = "InpaintStitch"
    DISPLAY_NAME = "Inpaint Stitch"
    CATEGORY = "image/inpaint"
    DESCRIPTION = "Pastes the processed crop back into the original image; pixels outside the crop are untouched."
    INPUTS = (Input("stitch", "STITCH"), Input("image", "IMAGE", tooltip="the processed crop"))
    OUTPUTS = (Output("IMAGE", "IMAGE"),)

    def execute(self, stitch, image):
        x0, y0, x1, y1 = stitch.box
        left, top, right, bottom = stitch.pad
        h, w = y1 - y0, x1 - x0
        crop = resize_image(image, w + left + right, h + top + bottom, stitch.method)[:, top:top + h, left:left + w]
        out = imageops.repeat_to_batch(stitch.image, crop.shape[0]).clone()
        channels = min(crop.shape[-1], out.shape[-1])
        weight = imageops.repeat_to_batch(as_batch(stitch.blend), crop.shape[0])[..., None]
        region = out[:, y0:y1, x0:x1, :channels]
        # lerp is exact at both ends: weight 0 keeps the original, 1 takes the crop
        out[:, y0:y1, x0:x1, :channels] = torch.lerp(region, crop[..., :channels], weight.expand_as(region))
        return (out,)
