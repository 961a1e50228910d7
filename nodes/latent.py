"""Latent nodes (ComfyUI's names): empty latents and the VAE between pixels and latents."""
from __future__ import annotations

import torch

from engine.schema import Input, Node, Output

MAX_RESOLUTION = 16384


class EmptyLatentImage(Node):
    TYPE = "EmptyLatentImage"
    DISPLAY_NAME = "Empty Latent Image"
    CATEGORY = "latent"
    DESCRIPTION = "A batch of blank latents to start text-to-image from (1/8 of the pixel size)."
    INPUTS = (Input("width", "INT", default=512, min=16, max=MAX_RESOLUTION, step=8),
              Input("height", "INT", default=512, min=16, max=MAX_RESOLUTION, step=8),
              Input("batch_size", "INT", default=1, min=1, max=4096))
    OUTPUTS = (Output("LATENT", "LATENT"),)

    def execute(self, width, height, batch_size):
        return ({"samples": torch.zeros(batch_size, 4, height // 8, width // 8)},)


def _report(ctx):
    return lambda message: ctx.progress(0.0, text=message)


class VAEDecode(Node):
    TYPE = "VAEDecode"
    DISPLAY_NAME = "VAE Decode"
    CATEGORY = "latent"
    DESCRIPTION = "Latents to pixels. Falls back to tiles (and says so) when memory runs out."
    INPUTS = (Input("samples", "LATENT"), Input("vae", "VAE"))
    OUTPUTS = (Output("IMAGE", "IMAGE"),)

    def execute(self, samples, vae):
        return (vae.decode(samples["samples"], report=_report(self.ctx)),)


class VAEEncode(Node):
    TYPE = "VAEEncode"
    DISPLAY_NAME = "VAE Encode"
    CATEGORY = "latent"
    INPUTS = (Input("pixels", "IMAGE"), Input("vae", "VAE"))
    OUTPUTS = (Output("LATENT", "LATENT"),)

    def execute(self, pixels, vae):
        return ({"samples": vae.encode(pixels, report=_report(self.ctx))},)


class VAEDecodeTiled(Node):
    TYPE = "VAEDecodeTiled"
    DISPLAY_NAME = "VAE Decode (Tiled)"
    CATEGORY = "_for_testing"
    INPUTS = (Input("samples", "LATENT"), Input("vae", "VAE"),
              Input("tile_size", "INT", default=512, min=64, max=4096, step=32),
              Input("overlap", "INT", default=64, min=0, max=4096, step=32),
              Input("temporal_size", "INT", default=64, min=8, max=4096, step=4, tooltip="video VAEs only"),
              Input("temporal_overlap", "INT", default=8, min=4, max=4096, step=4, tooltip="video VAEs only"))
    OUTPUTS = (Output("IMAGE", "IMAGE"),)

    def execute(self, samples, vae, tile_size, overlap, temporal_size=64, temporal_overlap=8):
        overlap = min(overlap, tile_size // 4)
        return (vae.decode_tiled(samples["samples"], tile_size, overlap, progress=self.ctx.progress),)


class VAEEncodeTiled(Node):
    TYPE = "VAEEncodeTiled"
    DISPLAY_NAME = "VAE Encode (Tiled)"
    CATEGORY = "_for_testing"
    INPUTS = (Input("pixels", "IMAGE"), Input("vae", "VAE"),
              Input("tile_size", "INT", default=512, min=64, max=4096, step=64),
              Input("overlap", "INT", default=64, min=0, max=4096, step=32),
              Input("temporal_size", "INT", default=64, min=8, max=4096, step=4, tooltip="video VAEs only"),
              Input("temporal_overlap", "INT", default=8, min=4, max=4096, step=4, tooltip="video VAEs only"))
    OUTPUTS = (Output("LATENT", "LATENT"),)

    def execute(self, pixels, vae, tile_size, overlap, temporal_size=64, temporal_overlap=8):
        return ({"samples": vae.encode_tiled(pixels, tile_size, overlap, progress=self.ctx.progress)},)


class SetLatentNoiseMask(Node):
    TYPE = "SetLatentNoiseMask"
    CATEGORY = "latent/inpaint"
    DESCRIPTION = "Only the white part of the mask is regenerated; the rest of the latent is kept exactly."
    INPUTS = (Input("samples", "LATENT"), Input("mask", "MASK"))
    OUTPUTS = (Output("LATENT", "LATENT"),)

    def execute(self, samples, mask):
        return ({**samples, "noise_mask": mask.reshape(-1, 1, *mask.shape[-2:])},)


class LatentFromBatch(Node):
    TYPE = "LatentFromBatch"
    CATEGORY = "latent/batch"
    DESCRIPTION = "Picks latents out of a batch; they keep the noise of their original batch position."
    INPUTS = (Input("samples", "LATENT"), Input("batch_index", "INT", default=0, min=0, max=63),
              Input("length", "INT", default=1, min=1, max=64))
    OUTPUTS = (Output("LATENT", "LATENT"),)

    def execute(self, samples, batch_index, length):
        latents = samples["samples"]
        start = min(latents.shape[0] - 1, batch_index)
        length = min(latents.shape[0] - start, length)
        out = {**samples, "samples": latents[start:start + length].clone()}
        if "noise_mask" in samples:
            masks = samples["noise_mask"]
            if masks.shape[0] > 1:
                masks = masks.repeat(-(-latents.shape[0] // masks.shape[0]), 1, 1, 1)[:latents.shape[0]]
                masks = masks[start:start + length]
            out["noise_mask"] = masks.clone()
        previous = samples.get("batch_index")
        out["batch_index"] = previous[start:start + length] if previous else list(range(start, start + length))
        return (out,)


class RepeatLatentBatch(Node):
    TYPE = "RepeatLatentBatch"
    CATEGORY = "latent/batch"
    INPUTS = (Input("samples", "LATENT"), Input("amount", "INT", default=1, min=1, max=64))
    OUTPUTS = (Output("LATENT", "LATENT"),)

    def execute(self, samples, amount):
        latents = samples["samples"]
        out = {**samples, "samples": latents.repeat(amount, *([1] * (latents.ndim - 1)))}
        mask = samples.get("noise_mask")
        if mask is not None and mask.shape[0] > 1:
            out["noise_mask"] = mask.repeat(amount, *([1] * (mask.ndim - 1)))
        if "batch_index" in samples:
            index = samples["batch_index"]
            offset = max(index) - min(index) + 1
            out["batch_index"] = index + [x + i * offset for i in range(1, amount) for x in index]
        return (out,)


class LatentComposite(Node):
    TYPE = "LatentComposite"
    CATEGORY = "latent"
    DESCRIPTION = "Pastes samples_from into samples_to at (x, y) px, with an optional feathered edge."
    INPUTS = (Input("samples_to", "LATENT"), Input("samples_from", "LATENT"),
              Input("x", "INT", default=0, min=0, max=MAX_RESOLUTION, step=8),
              Input("y", "INT", default=0, min=0, max=MAX_RESOLUTION, step=8),
              Input("feather", "INT", default=0, min=0, max=MAX_RESOLUTION, step=8))
    OUTPUTS = (Output("LATENT", "LATENT"),)

    def execute(self, samples_to, samples_from, x, y, feather):
        x, y, feather = x // 8, y // 8, feather // 8
        target = samples_to["samples"].clone()
        source = samples_from["samples"][:, :, :target.shape[2] - y, :target.shape[3] - x]
        mask = torch.ones_like(source)
        for t in range(feather):  # linear ramps on the edges that lie inside the target
            ramp = (t + 1) / feather
            if y != 0:
                mask[:, :, t] *= ramp
            if y + source.shape[2] < target.shape[2]:
                mask[:, :, -1 - t] *= ramp
            if x != 0:
                mask[:, :, :, t] *= ramp
            if x + source.shape[3] < target.shape[3]:
                mask[:, :, :, -1 - t] *= ramp
        region = target[:, :, y:y + source.shape[2], x:x + source.shape[3]]
        target[:, :, y:y + source.shape[2], x:x + source.shape[3]] = source * mask + region * (1 - mask)
        return ({**samples_to, "samples": target},)


class LatentBlend(Node):
    TYPE = "LatentBlend"
    CATEGORY = "_for_testing"
    INPUTS = (Input("samples1", "LATENT"), Input("samples2", "LATENT"),
              Input("blend_factor", "FLOAT", default=0.5, min=0.0, max=1.0, step=0.01))
    OUTPUTS = (Output("LATENT", "LATENT"),)

    def execute(self, samples1, samples2, blend_factor):
        from engine.imageops import resize_bchw

        a, b = samples1["samples"], samples2["samples"]
        if a.shape != b.shape:
            b = resize_bchw(b, a.shape[3], a.shape[2], "bicubic", "center")
        return ({**samples1, "samples": a * blend_factor + b * (1 - blend_factor)},)
