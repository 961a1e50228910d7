"""Mask editing nodes with ComfyUI's names, inputs and numbers (``comfy_extras/nodes_mask.py``).

A MASK is ``[B,H,W]`` float, 1 = change this pixel; these nodes never touch image data.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.schema import Input, Node, Output

MAX_RESOLUTION = 16384


def px(name: str, default: int = 0, minimum: int = 0) -> Input:
    """A pixel count or coordinate input, as ComfyUI declares them on its mask nodes."""
    return Input(name, "INT", default=default, min=minimum, max=MAX_RESOLUTION, step=1)


def as_batch(mask: torch.Tensor) -> torch.Tensor:
    return mask.reshape(-1, *mask.shape[-2:])


def morph_step(mask: torch.Tensor, grow: bool, tapered_corners: bool) -> torch.Tensor:
    """One 3×3 grey dilation (max) or erosion (min) of ``[B,H,W]``; the footprint is a cross when
    ``tapered_corners`` (corners grow one step later), else the full square.  Borders see the
    nearest edge pixel, which for a 3×3 footprint is scipy.ndimage's default "reflect" mode."""
    h, w = mask.shape[-2:]
    padded = F.pad(mask[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    offsets = [(dy, dx) for dy in range(3) for dx in range(3)
               if not (tapered_corners and dy != 1 and dx != 1)]
    pick = torch.amax if grow else torch.amin
    return pick(torch.stack([padded[:, dy:dy + h, dx:dx + w] for dy, dx in offsets]), dim=0)


def grow_mask(mask: torch.Tensor, expand: int, tapered_corners: bool = True) -> torch.Tensor:
    """|expand| dilation steps (erosion when negative), one pixel each."""
    out = as_batch(mask).float()
    for _ in range(abs(expand)):
        out = morph_step(out, expand > 0, tapered_corners)
    return out


def _feather_edge(out: torch.Tensor, width: int, dim: int, from_end: bool) -> None:
    """Multiply the ``width`` lines nearest one edge by (k + 1) / width, k counted from the edge.

    ComfyUI indexes the far edges as ``-k``, so for k = 0 its right/bottom ramp scales line 0 (the
    left/top line) by 1/width and the far edge line itself gets 2/width; kept for identical masks.
    """
    if width == 0:
        return
    size = out.shape[dim]
    lines = torch.tensor([(-k) % size if from_end else k for k in range(width)])
    rates = torch.tensor([(k + 1) / width for k in range(width)], dtype=torch.float64).to(out.dtype)
    shape = [1] * out.ndim
    shape[dim] = width
    out.index_copy_(dim, lines, out.index_select(dim, lines) * rates.view(shape))


class GrowMask(Node):
    TYPE = "GrowMask"
    CATEGORY = "mask"
    DESCRIPTION = "Grows (or with a negative value shrinks) the mask by this many pixels."
    INPUTS = (Input("mask", "MASK"),
              px("expand", 0, -MAX_RESOLUTION),
              Input("tapered_corners", "BOOLEAN", default=True))
    OUTPUTS = (Output("MASK", "MASK"),)

    def execute(self, mask, expand, tapered_corners):
        return (grow_mask(mask, expand, tapered_corners),)


class FeatherMask(Node):
    TYPE = "FeatherMask"
    CATEGORY = "mask"
    DESCRIPTION = "Fades the mask linearly towards each image edge over the given number of pixels."
    INPUTS = (Input("mask", "MASK"), px("left"), px("top"), px("right"), px("bottom"))
    OUTPUTS = (Output("MASK", "MASK"),)

    def execute(self, mask, left, top, right, bottom):
        out = as_batch(mask).clone()
        h, w = out.shape[-2:]
        _feather_edge(out, min(left, w), 2, from_end=False)
        _feather_edge(out, min(right, w), 2, from_end=True)
        _feather_edge(out, min(top, h), 1, from_end=False)
        _feather_edge(out, min(bottom, h), 1, from_end=True)
        return (out,)


class ThresholdMask(Node):
    TYPE = "ThresholdMask"
    CATEGORY = "mask"
    DESCRIPTION = "1 where the mask is above the value, else 0."
    INPUTS = (Input("mask", "MASK"), Input("value", "FLOAT", default=0.5, min=0.0, max=1.0, step=0.01))
    OUTPUTS = (Output("MASK", "MASK"),)

    def execute(self, mask, value):
        return ((mask > value).float(),)


def _binary(op):
    return lambda a, b: op(a.round().bool(), b.round().bool()).float()


COMPOSITE_OPERATIONS = {
    "multiply": torch.mul,
    "add": torch.add,
    "subtract": torch.sub,
    "and": _binary(torch.logical_and),
    "or": _binary(torch.logical_or),
    "xor": _binary(torch.logical_xor),
}


class MaskComposite(Node):
    TYPE = "MaskComposite"
    CATEGORY = "mask"
    DESCRIPTION = ("Combines source into destination at (x, y); and/or/xor round both masks to 0/1 first. "
                   "The result is clamped to 0..1.")
    INPUTS = (Input("destination", "MASK"), Input("source", "MASK"), px("x"), px("y"),
              Input("operation", "COMBO", options=tuple(COMPOSITE_OPERATIONS)))
    OUTPUTS = (Output("MASK", "MASK"),)

    def execute(self, destination, source, x, y, operation):
        out = as_batch(destination).clone()
        source = as_batch(source)
        h = max(0, min(source.shape[-2], out.shape[-2] - y))
        w = max(0, min(source.shape[-1], out.shape[-1] - x))
        region = out[:, y:y + h, x:x + w]
        out[:, y:y + h, x:x + w] = COMPOSITE_OPERATIONS[operation](region, source[:, :h, :w].to(out))
        return (out.clamp(0.0, 1.0),)


class CropMask(Node):
    TYPE = "CropMask"
    CATEGORY = "mask"
    INPUTS = (Input("mask", "MASK"), px("x"), px("y"), px("width", 512, 1), px("height", 512, 1))
    OUTPUTS = (Output("MASK", "MASK"),)

    def execute(self, mask, x, y, width, height):
        return (as_batch(mask)[:, y:y + height, x:x + width],)
