"""A learned fourth latent channel for the shipped autoencoder, carried by a narrow slice of its encoder.

The hand-set block-mean code (:func:`.checkpoint.block_code_init`) fills latent channels 0-2 with the mean colour
of each 8x8 block and leaves channel 3 at zero. Eight pixels per latent are too coarse for the small shapes: a
small star's points average away, and the decoder can only draw a blob. :class:`ShapeCode` learns what channel 3
should say about each block (trained with the decoder, which learns to read it), and :func:`embed` writes it
into ``CODE_CHANNELS`` spare channels of the SD-layout encoder, so the shipped file computes it like any SD1
encoder computes its latents.

``ShapeCode`` is the encoder's own architecture at width ``len(CODE_CHANNELS)``: ``conv_in``, one ResnetBlock
per level with the stride-2 downsample between levels, the middle block's two ResnetBlocks, ``norm_out``, SiLU,
``conv_out``. In the full encoder its channels form whole GroupNorm groups that read only each other, and the
middle attention adds nothing to them (its ``proj_out`` rows are zero), so the full encoder's channel 3 equals
``ShapeCode``'s output exactly; trainers compute latents with ``ShapeCode`` because it is 16 times narrower.
Its output is in scaled-latent units (``LATENT_SCALE`` x latent), calibrated to zero mean and unit variance.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ...models.vae import AutoencoderKL
from .common import LATENT_SCALE

CODE_CHANNELS = slice(9, 33)  # after the three (u, -u, K) signal groups: eight whole GroupNorm groups of 3
GROUP = 3  # channels per GroupNorm group of the 96-channel encoder (96 / 32)
CODE_NOISE = 0.1  # posterior standard deviation of channel 3, in scaled-latent units (its values have std 1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(channels // GROUP, channels, eps=1e-6)


class _Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(c), nn.Conv2d(c, c, 3, padding=1)
        self.norm2, self.conv2 = _norm(c), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))


class ShapeCode(nn.Module):
    """Pixels [-1, 1] [N, 3, H, W] -> channel 3 of the scaled latent [N, 1, H/8, W/8]."""

    def __init__(self, width: int = CODE_CHANNELS.stop - CODE_CHANNELS.start, levels: int = 4):
        super().__init__()
        self.conv_in = nn.Conv2d(3, width, 3, padding=1)
        self.blocks = nn.ModuleList(_Block(width) for _ in range(levels))
        self.downsample = nn.ModuleList(nn.Conv2d(width, width, 3, stride=2) for _ in range(levels - 1))
        self.mid = nn.ModuleList(_Block(width) for _ in range(2))
        self.norm_out = _norm(width)
        self.conv_out = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i < len(self.downsample):
                x = self.downsample[i](F.pad(x, (0, 1, 0, 1)))
        for block in self.mid:
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))

    @torch.no_grad()
    def normalise(self, mean: float, std: float) -> None:
        """Make the output ``(output - mean) / std``."""
        self.conv_out.weight /= std
        self.conv_out.bias.sub_(mean).div_(std)


def _pairs(vae: AutoencoderKL, code: ShapeCode):
    """(encoder module, ShapeCode module) for every layer the code runs through."""
    enc = vae.encoder
    blocks = [level.block[0] for level in enc.down] + [enc.mid.block_1, enc.mid.block_2]
    yield enc.conv_in, code.conv_in
    for big, small in zip(blocks, list(code.blocks) + list(code.mid)):
        for name in ("norm1", "conv1", "norm2", "conv2"):
            yield getattr(big, name), getattr(small, name)
    for level, small in zip(enc.down, code.downsample):
        yield level.downsample.conv, small
    yield enc.norm_out, code.norm_out


@torch.no_grad()
def embed(vae: AutoencoderKL, code: ShapeCode) -> None:
    """Write ``code`` into ``vae``'s encoder so that its latent channel 3 is ``code(x) / LATENT_SCALE`` (mean)
    with posterior standard deviation ``CODE_NOISE / LATENT_SCALE``. Channels 0-2 are untouched."""
    c = CODE_CHANNELS
    assert len(vae.encoder.down) == len(code.blocks) and all(len(level.block) == 1 for level in vae.encoder.down)
    for big, small in _pairs(vae, code):
        if isinstance(big, nn.GroupNorm):
            big.weight[c], big.bias[c] = small.weight, small.bias
            continue
        big.weight[c] = 0.0
        big.weight[c, c if big.in_channels > 3 else slice(None)] = small.weight
        big.bias[c] = small.bias
    vae.encoder.mid.attn_1.proj_out.weight[c] = 0.0
    vae.encoder.mid.attn_1.proj_out.bias[c] = 0.0
    dim = vae.config.embed_dim
    out = vae.encoder.conv_out
    out.weight[[3, dim + 3]] = 0.0
    out.bias[[3, dim + 3]] = 0.0
    out.weight[3, c] = code.conv_out.weight[0]
    out.bias[3] = code.conv_out.bias[0]
    quant = vae.quant_conv
    quant.weight[[3, dim + 3]] = 0.0
    quant.weight[3, 3] = 1.0 / LATENT_SCALE
    quant.bias[3] = 0.0
    quant.bias[dim + 3] = 2 * math.log(CODE_NOISE / LATENT_SCALE)


def fingerprint(code: ShapeCode) -> str:
    """A short hash of the code's weights (names cached latents)."""
    import hashlib
    digest = hashlib.sha256()
    for name, value in sorted(code.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:12]


def has_code(vae: AutoencoderKL) -> bool:
    return bool(vae.encoder.conv_out.weight[3].abs().sum() > 0)


@torch.no_grad()
def extract(vae: AutoencoderKL) -> ShapeCode:
    """The :class:`ShapeCode` embedded in ``vae`` (inverse of :func:`embed`)."""
    c = CODE_CHANNELS
    code = ShapeCode().to(vae.encoder.conv_out.weight.device)
    for big, small in _pairs(vae, code):
        if isinstance(big, nn.GroupNorm):
            small.weight.copy_(big.weight[c])
            small.bias.copy_(big.bias[c])
            continue
        small.weight.copy_(big.weight[c, c if big.in_channels > 3 else slice(None)])
        small.bias.copy_(big.bias[c])
    code.conv_out.weight[0] = vae.encoder.conv_out.weight[3, c]
    code.conv_out.bias[0] = vae.encoder.conv_out.bias[3]
    return code
