"""The VAE value: pixels ↔ latents, falling back to tiles when memory runs out.

Latents in a LATENT are the VAE's own (unscaled); the diffusion model's
scale factor is applied only inside sampling, as in ComfyUI.
"""
from __future__ import annotations

import torch

from ..memory import ModelRef
from ..tiling import tiled_map


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


class VAE:
    def __init__(self, ref: ModelRef, device: torch.device, dtype: torch.dtype, downscale: int = 8,
                 latent_channels: int = 4):
        self.ref = ref
        self.device = device
        self.dtype = dtype
        self.downscale = downscale
        self.latent_channels = latent_channels

    def cache_nbytes(self) -> int:
        return 0

    # --- decode ------------------------------------------------------------
    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        net = self.ref.get()
        return net.decode(z.to(self.device, self.dtype)).float()

    def decode(self, samples: torch.Tensor, report=None) -> torch.Tensor:
        """Latents ``[B,C,h,w]`` → IMAGE ``[B,H,W,3]`` in 0..1; tiled if the whole batch does not fit."""
        try:
            pixels = self._decode(samples)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not is_oom(exc):
                raise
            pixels = self._decode_in_smaller_tiles(samples, report)
        return ((pixels + 1.0) / 2.0).clamp(0, 1).movedim(1, -1).cpu()

    def _decode_in_smaller_tiles(self, samples, report) -> torch.Tensor:
        tile = 64
        while True:
            if report:
                report(f"out of memory decoding in one piece; decoding in {tile * self.downscale} px tiles instead")
            try:
                return self._tiled_decode(samples, tile, tile // 4)
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                if not is_oom(exc) or tile <= 8:
                    raise
                tile //= 2

    def _tiled_decode(self, samples, tile: int = 64, overlap: int = 16, progress=None) -> torch.Tensor:
        return tiled_map(self._decode, samples, tile, overlap, self.downscale, 3, progress)

    def decode_tiled(self, samples: torch.Tensor, tile_px: int = 512, overlap_px: int = 64, progress=None):
        tile = max(8, tile_px // self.downscale)
        pixels = self._tiled_decode(samples, tile, overlap_px // self.downscale, progress)
        return ((pixels + 1.0) / 2.0).clamp(0, 1).movedim(1, -1).cpu()

    # --- encode ------------------------------------------------------------
    def crop_to_multiple(self, pixels: torch.Tensor) -> torch.Tensor:
        """Centre-crop an IMAGE so both sides are multiples of the downscale factor (ComfyUI's rule)."""
        h, w = pixels.shape[1:3]
        nh, nw = h // self.downscale * self.downscale, w // self.downscale * self.downscale
        if (nh, nw) == (h, w):
            return pixels
        y, x = (h % self.downscale) // 2, (w % self.downscale) // 2
        return pixels[:, y:y + nh, x:x + nw, :]

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        net = self.ref.get()
        return net.encode(x.to(self.device, self.dtype)).float()

    def _to_input(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.crop_to_multiple(pixels)[..., :3].movedim(-1, 1) * 2.0 - 1.0

    def encode(self, pixels: torch.Tensor, report=None) -> torch.Tensor:
        """IMAGE ``[B,H,W,C]`` → latents ``[B,4,H/8,W/8]`` (the distribution's mean, deterministic)."""
        x = self._to_input(pixels)
        try:
            return self._encode(x).cpu()
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not is_oom(exc):
                raise
            if report:
                report("out of memory encoding in one piece; encoding in tiles instead")
            return tiled_map(self._encode, x, 512, 64, 1 / self.downscale, self.latent_channels).cpu()

    def encode_tiled(self, pixels: torch.Tensor, tile_px: int = 512, overlap_px: int = 64, progress=None):
        x = self._to_input(pixels)
        return tiled_map(self._encode, x, tile_px, overlap_px, 1 / self.downscale, self.latent_channels,
                         progress).cpu()
