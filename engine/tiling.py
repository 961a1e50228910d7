"""Apply an image-to-image function tile by tile with feathered overlaps.

Used by the VAE's out-of-memory fallback and the tiled VAE nodes (and later by
model upscalers): each tile's output is weighted by a ramp that falls to zero
across the overlap, so seams blend instead of showing.
"""
from __future__ import annotations

import math
from typing import Callable

import torch


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    stride = tile - overlap
    count = math.ceil((size - tile) / stride) + 1
    return sorted({min(i * stride, size - tile) for i in range(count)})


def _ramp(length: int, fade: int, fade_start: bool, fade_end: bool) -> torch.Tensor:
    w = torch.ones(length)
    if fade > 0:
        ramp = torch.arange(1, fade + 1, dtype=torch.float32) / (fade + 1)
        if fade_start:
            w[:fade] = ramp
        if fade_end:
            w[-fade:] = torch.minimum(w[-fade:], ramp.flip(0))
    return w


def tiled_map(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int,
              scale: float, out_channels: int, progress: Callable[[float], None] | None = None) -> torch.Tensor:
    """``fn`` maps ``[B,C,h,w]`` to ``[B,out_channels,h·scale,w·scale]``; apply it in tiles of ``tile`` px."""
    overlap = max(0, min(overlap, tile // 2))
    batch, _, height, width = x.shape
    out_h, out_w = round(height * scale), round(width * scale)
    out = torch.zeros(batch, out_channels, out_h, out_w, dtype=torch.float32, device=x.device)
    weight = torch.zeros(1, 1, out_h, out_w, dtype=torch.float32, device=x.device)
    ys, xs = _starts(height, tile, overlap), _starts(width, tile, overlap)
    fade = round(overlap * scale)
    done, total = 0, len(ys) * len(xs)
    for y in ys:
        for x0 in xs:
            piece = fn(x[:, :, y:y + tile, x0:x0 + tile]).float()
            oy, ox = round(y * scale), round(x0 * scale)
            ph, pw = piece.shape[-2:]
            wy = _ramp(ph, fade, y > 0, y + tile < height).to(x.device)
            wx = _ramp(pw, fade, x0 > 0, x0 + tile < width).to(x.device)
            w = (wy[:, None] * wx[None, :])[None, None]
            out[:, :, oy:oy + ph, ox:ox + pw] += piece * w
            weight[:, :, oy:oy + ph, ox:ox + pw] += w
            done += 1
            if progress is not None:
                progress(done / total)
    return out / weight.clamp_min(1e-8)
