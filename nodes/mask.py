"""Mask nodes (ComfyUI's names and inputs).  A MASK is ``[B,H,W]`` float, 1 = change this pixel."""
from __future__ import annotations

import torch

from engine import imageops
from engine.errors import LoomError
from engine.schema import Input, Node, Output

from .image import MAX_RESOLUTION, _input_files, input_file_hash

CHANNELS = {"red": 0, "green": 1, "blue": 2, "alpha": 3}


class LoadImageMask(Node):
    TYPE = "LoadImageMask"
    DISPLAY_NAME = "Load Image (as Mask)"
    CATEGORY = "mask"
    DESCRIPTION = "One channel of an image file as a mask; for alpha, transparent pixels become 1."
    INPUTS = (Input("image", "COMBO", options=_input_files, upload="image"),
              Input("channel", "COMBO", options=("alpha", "red", "green", "blue")))
    OUTPUTS = (Output("MASK", "MASK"),)

    def execute(self, image, channel):
        return (imageops.load_image_channel(self.ctx.paths.find_input(image), channel[0].upper()),)

    @classmethod
    def fingerprint(cls, image=None, **_):
        return input_file_hash(image)


class SolidMask(Node):
    TYPE = "SolidMask"
    CATEGORY = "mask"
    INPUTS = (Input("value", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01),
              Input("width", "INT", default=512, min=1, max=MAX_RESOLUTION, step=1),
              Input("height", "INT", default=512, min=1, max=MAX_RESOLUTION, step=1))
    OUTPUTS = (Output("MASK", "MASK"),)

    def execute(self, value, width, height):
        return (torch.full((1, height, width), value, dtype=torch.float32),)


class InvertMask(Node):
    TYPE = "InvertMask"
    CATEGORY = "mask"
    INPUTS = (Input("mask", "MASK"),)
    OUTPUTS = (Output("MASK", "MASK"),)

    def execute(self, mask):
        return (1.0 - mask,)


class MaskToImage(Node):
    TYPE = "MaskToImage"
    DISPLAY_NAME = "Convert Mask to Image"
    CATEGORY = "mask"
    INPUTS = (Input("mask", "MASK"),)
    OUTPUTS = (Output("IMAGE", "IMAGE"),)

    def execute(self, mask):
        mask = mask.reshape(-1, *mask.shape[-2:])
        return (mask[..., None].expand(-1, -1, -1, 3).clone(),)


class ImageToMask(Node):
    TYPE = "ImageToMask"
    DISPLAY_NAME = "Convert Image to Mask"
    CATEGORY = "mask"
    INPUTS = (Input("image", "IMAGE"),
              Input("channel", "COMBO", options=("red", "green", "blue", "alpha")))
    OUTPUTS = (Output("MASK", "MASK"),)

    def execute(self, image, channel):
        index = CHANNELS[channel]
        if index >= image.shape[-1]:
            raise LoomError(f"the image has {image.shape[-1]} channels; it has no {channel} channel")
        return (image[..., index].clone(),)
