"""The MODEL value: a diffusion network with its noise schedule, prediction type and latent format.

It holds a :class:`~engine.memory.ModelRef`, not the weights, and an
``options`` dict of patches (CFG functions, denoise-mask functions) that node
such as RescaleCFG set on a clone, leaving the shared weights alone.  Weight
patches (LoRA) are a tuple of (PatchSet, strength) applied to the shared
network in place when it is fetched (:mod:`engine.sd.patching`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from ..memory import ModelRef
from ..models.unet import UNetConfig
from ..sampling.denoiser import PREDICTIONS
from .patching import PatchSet, Patches, apply_patches


@dataclass(frozen=True)
class LatentFormat:
    """How a VAE's latents are scaled for the diffusion model, and a cheap latent→RGB preview."""

    name: str
    scale_factor: float
    rgb_factors: tuple[tuple[float, float, float], ...]
    rgb_bias: tuple[float, float, float] = (0.0, 0.0, 0.0)
    channels: int = 4

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        return latent * self.scale_factor

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        return latent / self.scale_factor

    def preview(self, x0: torch.Tensor):
        """First image of a (scaled) latent batch as a small PIL image."""
        from PIL import Image

        factors = torch.tensor(self.rgb_factors, dtype=torch.float32)
        bias = torch.tensor(self.rgb_bias, dtype=torch.float32)
        rgb = torch.einsum("chw,cr->hwr", x0[0].float().cpu()[: factors.shape[0]], factors) + bias
        rgb = ((rgb + 1) / 2).clamp(0, 1).mul(255).byte().numpy()
        return Image.fromarray(rgb)


# Factors from ComfyUI's latent_formats.py (measured constants).
SD15_LATENT = LatentFormat("sd15", 0.18215, ((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350),
                                             (-0.2829, 0.1762, 0.2721), (-0.2120, -0.2616, -0.7177)))
SDXL_LATENT = LatentFormat("sdxl", 0.13025, ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068),
                                             (0.1076, 0.1111, -0.0362), (-0.3165, -0.2492, -0.2188)),
                           (0.1084, -0.0175, -0.0011))


@dataclass
class DiffusionModel:
    family: str  # sd1 | sd2 | sdxl | sdxl_refiner
    unet: ModelRef
    config: UNetConfig
    prediction_type: str  # eps | v | x0 | flow
    schedule: object  # engine.sampling.schedules.DiscreteSchedule
    latent_format: LatentFormat
    device: torch.device
    dtype: torch.dtype
    options: dict = field(default_factory=dict)
    patches: Patches = ()

    @property
    def prediction(self):
        return PREDICTIONS[self.prediction_type]

    @property
    def is_inpaint(self) -> bool:
        return self.config.in_channels > self.latent_format.channels

    def network(self):
        """The shared UNet holding exactly this handle's weight patches (runs are sequential)."""
        return apply_patches(self.unet.get(), self.patches)

    def with_patches(self, patch_set: PatchSet, strength: float) -> "DiffusionModel":
        clone = self.clone()
        clone.patches = self.patches + ((patch_set, float(strength)),)
        return clone

    def clone(self) -> "DiffusionModel":
        other = copy.copy(self)
        other.options = dict(self.options)
        return other

    def cache_nbytes(self) -> int:
        return 0

    def __repr__(self) -> str:
        return f"DiffusionModel({self.family}, {self.prediction_type}, {str(self.dtype).replace('torch.', '')})"
