"""ControlNet / T2I-Adapter nodes (ComfyUI's names and inputs) and OpenCV hint preprocessors.

The preprocessors need no model download: ``Canny`` (ComfyUI's node), ``EdgesLineart`` (XDoG line
drawing), ``EdgesScribble`` (thick binary strokes) and ``EdgesSoft`` (multi-scale gradient
magnitude, a stand-in for HED/PiDiNet soft edges). Each returns white lines on black as a
3-channel IMAGE in 0..1, what the canny/lineart/scribble/softedge ControlNets were trained on.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from engine.imageops import canny_edges, luma
from engine.loading.controlnet import load_controlnet
from engine.schema import Input, Node, Output
from nodes.loaders import _file_stamp, _files



# --- loaders and apply nodes -------------------------------------------------------------------------

class ControlNetLoader(Node):
    TYPE = "ControlNetLoader"
    DISPLAY_NAME = "Load ControlNet Model"
    CATEGORY = "loaders"
    DESCRIPTION = ("Loads a ControlNet (original or diffusers layout; SD1.x, SD2.x, SDXL) or a T2I-Adapter; "
                   "the kind is detected from the weights.")
    INPUTS = (Input("control_net_name", "COMBO", options=_files("controlnet"), tooltip="a file in models/controlnet"),)
    OUTPUTS = (Output("CONTROL_NET", "CONTROL_NET"),)

    def execute(self, control_net_name):
        return (load_controlnet(self.ctx.paths.find_model("controlnet", control_net_name)),)

    @classmethod
    def fingerprint(cls, control_net_name=None, **_):
        return _file_stamp("controlnet", control_net_name)


class DiffControlNetLoader(Node):
    TYPE = "DiffControlNetLoader"
    DISPLAY_NAME = "Load ControlNet Model (diff)"
    CATEGORY = "loaders"
    DESCRIPTION = ("Loads a ControlNet; a difference ControlNet (weights relative to its UNet) gets the model's "
                   "weights added.")
    INPUTS = (Input("model", "MODEL"),
              Input("control_net_name", "COMBO", options=_files("controlnet"), tooltip="a file in models/controlnet"))
    OUTPUTS = (Output("CONTROL_NET", "CONTROL_NET"),)

    def execute(self, model, control_net_name):
        return (load_controlnet(self.ctx.paths.find_model("controlnet", control_net_name), model),)

    @classmethod
    def fingerprint(cls, control_net_name=None, **_):
        return _file_stamp("controlnet", control_net_name)


STRENGTH = Input("strength", "FLOAT", default=1.0, min=0.0, max=10.0, step=0.01,
                 tooltip="multiplies the residuals the ControlNet adds to the UNet")


class ControlNetApply(Node):
    TYPE = "ControlNetApply"
    DISPLAY_NAME = "Apply ControlNet (OLD)"
    CATEGORY = "conditioning/controlnet"
    DESCRIPTION = ("Old form of Apply ControlNet: the hint acts on the whole run, and sampling also gives it to "
                   "the negative prompt (ComfyUI's control_apply_to_uncond).")
    INPUTS = (Input("conditioning", "CONDITIONING"), Input("control_net", "CONTROL_NET"),
              Input("image", "IMAGE", tooltip="the hint (edges, depth, pose...), resized to the latent x 8"), STRENGTH)
    OUTPUTS = (Output("CONDITIONING", "CONDITIONING"),)

    def execute(self, conditioning, control_net, image, strength):
        if strength == 0:
            return (conditioning,)
        hint = image.movedim(-1, 1)
        return ([c.replace(control=control_net.applied(hint, strength, previous=c.control, apply_to_uncond=True))
                 for c in conditioning],)


class ControlNetApplyAdvanced(Node):
    TYPE = "ControlNetApplyAdvanced"
    DISPLAY_NAME = "Apply ControlNet"
    CATEGORY = "conditioning/controlnet"
    DESCRIPTION = ("Adds a ControlNet to the positive and negative conditioning, acting from start_percent to "
                   "end_percent of the sampling run. Chain several to stack them: their residuals add up.")
    INPUTS = (Input("positive", "CONDITIONING"), Input("negative", "CONDITIONING"),
              Input("control_net", "CONTROL_NET"),
              Input("image", "IMAGE", tooltip="the hint (edges, depth, pose...), resized to the latent x 8"), STRENGTH,
              Input("start_percent", "FLOAT", default=0.0, min=0.0, max=1.0, step=0.001,
                    tooltip="fraction of the run after which the ControlNet starts acting"),
              Input("end_percent", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.001,
                    tooltip="fraction of the run after which it stops"),
              Input("vae", "VAE", optional=True, tooltip="only for ControlNets that read a latent hint"))
    OUTPUTS = (Output("positive", "CONDITIONING"), Output("negative", "CONDITIONING"))

    def execute(self, positive, negative, control_net, image, strength, start_percent, end_percent, vae=None):
        if strength == 0:
            return positive, negative
        hint = image.movedim(-1, 1)
        links = {}  # one new link per previous chain, shared by the entries of both sides

        def link_after(previous):
            if id(previous) not in links:
                links[id(previous)] = control_net.applied(hint, strength, (start_percent, end_percent),
                                                          previous=previous, vae=vae)
            return links[id(previous)]

        return tuple([c.replace(control=link_after(c.control)) for c in side] for side in (positive, negative))


# --- preprocessors -----------------------------------------------------------------------------------

def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(x, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)


def _per_image(fn, image: torch.Tensor) -> torch.Tensor:
    """Apply `fn` ([H,W,C] float32 -> [H,W] in 0..1) to each image of a batch; a 3-channel IMAGE back."""
    arrays = image.detach().float().cpu().numpy()
    out = np.stack([fn(np.ascontiguousarray(a)) for a in arrays]).astype(np.float32)
    return torch.from_numpy(out)[..., None].expand(-1, -1, -1, 3).contiguous()


def xdog_lines(image: np.ndarray, sigma: float, threshold: float, sharpness: float, k: float = 1.6) -> np.ndarray:
    """Line drawing by the extended difference of Gaussians (Winnemöller et al. 2012): where the
    luma blurred at `sigma` is darker than at `k * sigma` by more than `threshold`, a line, with a
    tanh ramp of slope `sharpness` (anti-aliased lines instead of a hard cut)."""
    gray = luma(image)
    dog = _blur(gray, sigma) - _blur(gray, k * sigma)
    return np.clip(np.tanh(sharpness * (-dog - threshold)), 0.0, 1.0)


def scribble_lines(image: np.ndarray, sigma: float, threshold: float, thickness: int) -> np.ndarray:
    """Binary strokes `thickness` pixels wide along the XDoG lines, like a quick hand scribble."""
    lines = (xdog_lines(image, sigma, threshold, sharpness=1e4) > 0.5).astype(np.uint8)
    if thickness > 1:
        disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (thickness, thickness))
        lines = cv2.dilate(lines, disk)
    return lines.astype(np.float32)


def soft_edges(image: np.ndarray, sigma: float, threshold: float) -> np.ndarray:
    """Soft boundaries: the largest colour gradient magnitude at scales sigma and 2 sigma
    (scale-normalised, so both count alike), divided by its 99.5th percentile; values below
    `threshold` are cut and the rest stretched back to 0..1."""
    rgb = image[..., :3] if image.shape[-1] >= 3 else image[..., :1]
    magnitude = np.zeros(rgb.shape[:2], np.float32)
    for scale in (sigma, 2.0 * sigma):
        blurred = _blur(np.ascontiguousarray(rgb), scale).reshape(*rgb.shape[:2], -1)
        gx = cv2.Sobel(blurred, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT_101)
        gy = cv2.Sobel(blurred, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT_101)
        norm = np.sqrt(gx * gx + gy * gy).reshape(*rgb.shape[:2], -1).max(axis=-1)
        magnitude = np.maximum(magnitude, norm * scale)
    top = np.percentile(magnitude, 99.5)
    if top <= 1e-6:
        return np.zeros_like(magnitude)
    edges = np.clip(magnitude / top, 0.0, 1.0)
    return np.clip((edges - threshold) / (1.0 - threshold), 0.0, 1.0)


class Canny(Node):
    TYPE = "Canny"
    CATEGORY = "image/preprocessors"
    DESCRIPTION = ("Canny edges (white on black) for canny ControlNets. Thresholds on the gradient of the 0..1 "
                   "image, as ComfyUI's kornia-based node; computed with OpenCV, so rare edge pixels may differ.")
    INPUTS = (Input("image", "IMAGE"),
              Input("low_threshold", "FLOAT", default=0.4, min=0.01, max=0.99, step=0.01,
                    tooltip="weak edges: kept where connected to a strong one"),
              Input("high_threshold", "FLOAT", default=0.8, min=0.01, max=0.99, step=0.01,
                    tooltip="strong edges: always kept"))
    OUTPUTS = (Output("IMAGE", "IMAGE"),)

    @classmethod
    def validate(cls, low_threshold=None, high_threshold=None, **_):
        if low_threshold is not None and high_threshold is not None and low_threshold > high_threshold:
            return f"low_threshold ({low_threshold}) must not exceed high_threshold ({high_threshold})"
        return None

    def execute(self, image, low_threshold, high_threshold):
        if low_threshold > high_threshold:
            raise ValueError(self.validate(low_threshold=low_threshold, high_threshold=high_threshold))
        return (_per_image(lambda a: canny_edges(a, low_threshold, high_threshold), image),)


class EdgesLineart(Node):
    TYPE = "EdgesLineart"
    DISPLAY_NAME = "Lineart Edges (XDoG)"
    CATEGORY = "image/preprocessors"
    DESCRIPTION = ("A line drawing of the image (white lines on black) by the extended difference of Gaussians, "
                   "for lineart ControlNets; no model download.")
    INPUTS = (Input("image", "IMAGE"),
              Input("sigma", "FLOAT", default=1.0, min=0.3, max=10.0, step=0.1, tooltip="line width, in pixels"),
              Input("threshold", "FLOAT", default=0.005, min=0.0, max=0.2, step=0.001,
                    tooltip="darkening needed for a line: higher, fewer lines"),
              Input("sharpness", "FLOAT", default=100.0, min=1.0, max=1000.0, step=1.0,
                    tooltip="how hard the line edges are"))
    OUTPUTS = (Output("IMAGE", "IMAGE"),)

    def execute(self, image, sigma, threshold, sharpness):
        return (_per_image(lambda a: xdog_lines(a, sigma, threshold, sharpness), image),)


class EdgesScribble(Node):
    TYPE = "EdgesScribble"
    DISPLAY_NAME = "Scribble Edges"
    CATEGORY = "image/preprocessors"
    DESCRIPTION = "Thick binary strokes along the main lines (white on black), for scribble ControlNets."
    INPUTS = (Input("image", "IMAGE"),
              Input("sigma", "FLOAT", default=2.0, min=0.3, max=10.0, step=0.1, tooltip="scale of the lines kept"),
              Input("threshold", "FLOAT", default=0.01, min=0.0, max=0.2, step=0.001,
                    tooltip="darkening needed for a stroke: higher, fewer strokes"),
              Input("thickness", "INT", default=3, min=1, max=32, step=1, tooltip="stroke width in pixels"))
    OUTPUTS = (Output("IMAGE", "IMAGE"),)

    def execute(self, image, sigma, threshold, thickness):
        return (_per_image(lambda a: scribble_lines(a, sigma, threshold, thickness), image),)


class EdgesSoft(Node):
    TYPE = "EdgesSoft"
    DISPLAY_NAME = "Soft Edges"
    CATEGORY = "image/preprocessors"
    DESCRIPTION = ("Soft boundaries (white on black, graded by contrast) from multi-scale colour gradients, "
                   "for softedge/HED ControlNets; no model download.")
    INPUTS = (Input("image", "IMAGE"),
              Input("sigma", "FLOAT", default=1.5, min=0.5, max=10.0, step=0.1, tooltip="smallest scale, in pixels"),
              Input("threshold", "FLOAT", default=0.1, min=0.0, max=0.95, step=0.01,
                    tooltip="edges weaker than this (relative to the strongest) are dropped"))
    OUTPUTS = (Output("IMAGE", "IMAGE"),)

    def execute(self, image, sigma, threshold):
        return (_per_image(lambda a: soft_edges(a, sigma, threshold), image),)
