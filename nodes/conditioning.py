"""Text encoding and conditioning nodes (ComfyUI's names, inputs and behaviour)."""
from __future__ import annotations

import torch

from engine.schema import Input, Node, Output

MAX_RESOLUTION = 16384


class CLIPTextEncode(Node):
    TYPE = "CLIPTextEncode"
    DISPLAY_NAME = "CLIP Text Encode (Prompt)"
    CATEGORY = "conditioning"
    DESCRIPTION = "Encodes a prompt. (word:1.2) weights a word, (word) is ×1.1, \\( escapes; embedding:name inserts an embedding."
    INPUTS = (Input("text", "STRING", default="", multiline=True, tooltip="the prompt"),
              Input("clip", "CLIP"))
    OUTPUTS = (Output("CONDITIONING", "CONDITIONING"),)

    def execute(self, text, clip):
        from engine.sd.conditioning import Cond

        if clip is None:
            raise ValueError("the checkpoint has no text encoder; load one with a CLIP loader")
        cond, pooled = clip.encode(text)
        return ([Cond(cond, pooled)],)


class CLIPTextEncodeSDXL(Node):
    TYPE = "CLIPTextEncodeSDXL"
    CATEGORY = "advanced/conditioning"
    DESCRIPTION = "SDXL prompt with explicit size and crop conditioning; text_g goes to bigG, text_l to CLIP-L."
    INPUTS = (Input("clip", "CLIP"),
              Input("width", "INT", default=1024, min=0, max=MAX_RESOLUTION),
              Input("height", "INT", default=1024, min=0, max=MAX_RESOLUTION),
              Input("crop_w", "INT", default=0, min=0, max=MAX_RESOLUTION),
              Input("crop_h", "INT", default=0, min=0, max=MAX_RESOLUTION),
              Input("target_width", "INT", default=1024, min=0, max=MAX_RESOLUTION),
              Input("target_height", "INT", default=1024, min=0, max=MAX_RESOLUTION),
              Input("text_g", "STRING", default="", multiline=True),
              Input("text_l", "STRING", default="", multiline=True))
    OUTPUTS = (Output("CONDITIONING", "CONDITIONING"),)

    def execute(self, clip, width, height, crop_w, crop_h, target_width, target_height, text_g, text_l):
        from engine.sd.conditioning import Cond

        cond, pooled = clip.encode_pair(g=text_g, l=text_l)
        size = dict(width=width, height=height, crop_w=crop_w, crop_h=crop_h,
                    target_width=target_width, target_height=target_height)
        return ([Cond(cond, pooled, size=size)],)


class CLIPTextEncodeSDXLRefiner(Node):
    TYPE = "CLIPTextEncodeSDXLRefiner"
    CATEGORY = "advanced/conditioning"
    DESCRIPTION = "SDXL refiner prompt with its aesthetic score (6 is ComfyUI's default for positives)."
    INPUTS = (Input("ascore", "FLOAT", default=6.0, min=0.0, max=1000.0, step=0.01),
              Input("width", "INT", default=1024, min=0, max=MAX_RESOLUTION),
              Input("height", "INT", default=1024, min=0, max=MAX_RESOLUTION),
              Input("text", "STRING", default="", multiline=True),
              Input("clip", "CLIP"))
    OUTPUTS = (Output("CONDITIONING", "CONDITIONING"),)

    def execute(self, ascore, width, height, text, clip):
        from engine.sd.conditioning import Cond

        cond, pooled = clip.encode(text)
        return ([Cond(cond, pooled, size=dict(aesthetic_score=ascore, width=width, height=height))],)


class CLIPSetLastLayer(Node):
    TYPE = "CLIPSetLastLayer"
    CATEGORY = "conditioning"
    DESCRIPTION = "Which CLIP layer the prompt is read from: -1 the last, -2 the one before (\"clip skip 2\")."
    INPUTS = (Input("clip", "CLIP"), Input("stop_at_clip_layer", "INT", default=-1, min=-24, max=-1, step=1))
    OUTPUTS = (Output("CLIP", "CLIP"),)

    def execute(self, clip, stop_at_clip_layer):
        return (clip.set_last_layer(stop_at_clip_layer),)


class ConditioningCombine(Node):
    TYPE = "ConditioningCombine"
    DISPLAY_NAME = "Conditioning (Combine)"
    CATEGORY = "conditioning"
    DESCRIPTION = "Both conditionings, each evaluated separately and averaged while sampling."
    INPUTS = (Input("conditioning_1", "CONDITIONING"), Input("conditioning_2", "CONDITIONING"))
    OUTPUTS = (Output("CONDITIONING", "CONDITIONING"),)

    def execute(self, conditioning_1, conditioning_2):
        return (conditioning_1 + conditioning_2,)


class ConditioningConcat(Node):
    TYPE = "ConditioningConcat"
    CATEGORY = "conditioning"
    DESCRIPTION = "Appends the tokens of conditioning_from (its first entry) to each entry of conditioning_to."
    INPUTS = (Input("conditioning_to", "CONDITIONING"), Input("conditioning_from", "CONDITIONING"))
    OUTPUTS = (Output("CONDITIONING", "CONDITIONING"),)

    def execute(self, conditioning_to, conditioning_from):
        source = conditioning_from[0].cross_attn
        return ([c.replace(cross_attn=torch.cat([c.cross_attn, source.to(c.cross_attn)], dim=1))
                 for c in conditioning_to],)


class ConditioningAverage(Node):
    TYPE = "ConditioningAverage"
    CATEGORY = "conditioning"
    DESCRIPTION = "Blends conditioning_to with the first entry of conditioning_from (strength 1 keeps 'to')."
    INPUTS = (Input("conditioning_to", "CONDITIONING"), Input("conditioning_from", "CONDITIONING"),
              Input("conditioning_to_strength", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01))
    OUTPUTS = (Output("CONDITIONING", "CONDITIONING"),)

    def execute(self, conditioning_to, conditioning_from, conditioning_to_strength):
        w = conditioning_to_strength
        source, pooled_from = conditioning_from[0].cross_attn, conditioning_from[0].pooled
        out = []
        for c in conditioning_to:
            t1 = c.cross_attn
            t0 = source[:, :t1.shape[1]]
            if t0.shape[1] < t1.shape[1]:  # shorter source: zero tokens fill the rest
                t0 = torch.cat([t0, torch.zeros(1, t1.shape[1] - t0.shape[1], t1.shape[2])], dim=1)
            pooled = c.pooled if c.pooled is not None else pooled_from
            if pooled_from is not None and pooled is not None:
                pooled = pooled * w + pooled_from * (1.0 - w)
            out.append(c.replace(cross_attn=t1 * w + t0 * (1.0 - w), pooled=pooled))
        return (out,)


class ConditioningZeroOut(Node):
    TYPE = "ConditioningZeroOut"
    CATEGORY = "advanced/conditioning"
    INPUTS = (Input("conditioning", "CONDITIONING"),)
    OUTPUTS = (Output("CONDITIONING", "CONDITIONING"),)

    def execute(self, conditioning):
        return ([c.replace(cross_attn=torch.zeros_like(c.cross_attn),
                           pooled=None if c.pooled is None else torch.zeros_like(c.pooled))
                 for c in conditioning],)


class ConditioningSetArea(Node):
    TYPE = "ConditioningSetArea"
    CATEGORY = "conditioning"
    DESCRIPTION = "Applies the conditioning to a rectangle of the image (in pixels, multiples of 8)."
    INPUTS = (Input("conditioning", "CONDITIONING"),
              Input("width", "INT", default=64, min=64, max=MAX_RESOLUTION, step=8),
              Input("height", "INT", default=64, min=64, max=MAX_RESOLUTION, step=8),
              Input("x", "INT", default=0, min=0, max=MAX_RESOLUTION, step=8),
              Input("y", "INT", default=0, min=0, max=MAX_RESOLUTION, step=8),
              Input("strength", "FLOAT", default=1.0, min=0.0, max=10.0, step=0.01))
    OUTPUTS = (Output("CONDITIONING", "CONDITIONING"),)

    def execute(self, conditioning, width, height, x, y, strength):
        area = (height // 8, width // 8, y // 8, x // 8)
        return ([c.replace(area=area, strength=strength, set_area_to_bounds=False) for c in conditioning],)


class ConditioningSetAreaPercentage(Node):
    TYPE = "ConditioningSetAreaPercentage"
    CATEGORY = "conditioning"
    DESCRIPTION = "Like ConditioningSetArea, in fractions of the image size."
    INPUTS = (Input("conditioning", "CONDITIONING"),
              Input("width", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01),
              Input("height", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01),
              Input("x", "FLOAT", default=0.0, min=0.0, max=1.0, step=0.01),
              Input("y", "FLOAT", default=0.0, min=0.0, max=1.0, step=0.01),
              Input("strength", "FLOAT", default=1.0, min=0.0, max=10.0, step=0.01))
    OUTPUTS = (Output("CONDITIONING", "CONDITIONING"),)

    def execute(self, conditioning, width, height, x, y, strength):
        area = ("percentage", height, width, y, x)
        return ([c.replace(area=area, strength=strength, set_area_to_bounds=False) for c in conditioning],)


class ConditioningSetMask(Node):
    TYPE = "ConditioningSetMask"
    CATEGORY = "conditioning"
    INPUTS = (Input("conditioning", "CONDITIONING"), Input("mask", "MASK"),
              Input("strength", "FLOAT", default=1.0, min=0.0, max=10.0, step=0.01),
              Input("set_cond_area", "COMBO", options=("default", "mask bounds")))
    OUTPUTS = (Output("CONDITIONING", "CONDITIONING"),)

    def execute(self, conditioning, mask, strength, set_cond_area):
        mask = mask.reshape(-1, *mask.shape[-2:])
        return ([c.replace(mask=mask, mask_strength=strength, set_area_to_bounds=set_cond_area != "default")
                 for c in conditioning],)


class ConditioningSetTimestepRange(Node):
    TYPE = "ConditioningSetTimestepRange"
    CATEGORY = "advanced/conditioning"
    DESCRIPTION = "Use the conditioning only between start and end (fractions of the sampling run)."
    INPUTS = (Input("conditioning", "CONDITIONING"),
              Input("start", "FLOAT", default=0.0, min=0.0, max=1.0, step=0.001),
              Input("end", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.001))
    OUTPUTS = (Output("CONDITIONING", "CONDITIONING"),)

    def execute(self, conditioning, start, end):
        return ([c.replace(start_percent=start, end_percent=end) for c in conditioning],)
