"""ShapeScene: an image of the procedural shapes world the shipped demo models were trained on.

It gives the example workflows their input pictures (img2img, SDEdit, inpainting, ControlNet) without
any file, and users a quick way to sketch a layout by writing it.
"""
from __future__ import annotations

import numpy as np
import torch

from engine.schema import Input, Node, Output
from engine.shapes.scene import KINDS, render, scene_from_caption, shape_masks


class ShapeScene(Node):
    TYPE = "ShapeScene"
    DISPLAY_NAME = "Shape Scene"
    CATEGORY = "image/shapes"
    DESCRIPTION = ("Renders shapes described in words, e.g. 'a large red circle on the left and a small blue star, "
                   f"yellow background' (kinds: {', '.join(KINDS)}). What the text leaves out comes from the seed. "
                   "MASK covers the shapes.")
    INPUTS = (Input("description", "STRING", default="a large red circle in the center, yellow background",
                    multiline=True),
              Input("seed", "INT", default=0, min=0, max=2 ** 32 - 1),
              Input("size", "INT", default=128, min=32, max=2048, step=8),
              Input("texture", "COMBO", options=("none", "stripes")))
    OUTPUTS = (Output("IMAGE", "IMAGE"), Output("MASK", "MASK"))

    def execute(self, description, seed, size, texture):
        scene = scene_from_caption(description, np.random.default_rng(seed))
        image = torch.from_numpy(render(scene, size, texture=None if texture == "none" else texture)).float() / 255.0
        masks = shape_masks(scene, size)
        mask = torch.from_numpy(masks.any(axis=0) if len(masks) else np.zeros((size, size), bool)).float()
        return image[None], mask[None]
