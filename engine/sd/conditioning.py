"""CONDITIONING: a list of :class:`Cond` entries, each evaluated separately and averaged in sampling.

Units follow ComfyUI: ``area`` is ``(height, width, y, x)`` in latent pixels,
``start_percent``/``end_percent`` are fractions of the sampling run, a mask is
``[B,H,W]`` in 0..1.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch


@dataclass(frozen=True)
class Cond:
    cross_attn: torch.Tensor  # [B, tokens, dim]
    pooled: torch.Tensor | None = None  # [B, dim] (SDXL's adm input)
    area: tuple[int, int, int, int] | None = None
    strength: float = 1.0
    mask: torch.Tensor | None = None
    mask_strength: float = 1.0
    set_area_to_bounds: bool = False
    start_percent: float = 0.0
    end_percent: float = 1.0
    control: Any = None  # a ControlNet chain (see nodes/control.py)
    concat_latent: torch.Tensor | None = None  # inpainting models' extra input
    concat_mask: torch.Tensor | None = None
    size: dict = field(default_factory=dict)  # SDXL: width, height, crop_w, crop_h, target_*, aesthetic_score

    def replace(self, **changes) -> "Cond":
        return replace(self, **changes)

    def cache_nbytes(self) -> int:
        from ..cache import nbytes
        return sum(nbytes(v) for v in (self.cross_attn, self.pooled, self.mask, self.concat_latent, self.concat_mask))


Conditioning = list[Cond]
