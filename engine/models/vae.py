"""The KL autoencoder ("VAE") of Stable Diffusion 1/2/XL.

Parameter names are exactly those of the original single-file checkpoints with the
`first_stage_model.` prefix removed (`encoder.down.0.block.0.norm1.weight`,
`decoder.mid.attn_1.q.weight`, `post_quant_conv.bias`, ...), so a checkpoint's VAE loads with
`load_state_dict` after stripping the prefix. Standalone VAE files in the diffusers layout go through
`vae_from_diffusers_keys` first.

Pixels are NCHW in [-1, 1]. Latents are the raw autoencoder latents: the latent scale factor
(0.18215 for SD1/SD2, 0.13025 for SDXL) is applied by the caller, not here. `decode` does not clamp.
"""

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


@dataclass(frozen=True)
class VAEConfig:
    """Shape of an LDM KL autoencoder (the `ddconfig` of the original YAML files).

    `ch_mult[i]` multiplies `ch` at resolution level i; the encoder halves the resolution between
    levels. The only attention block sits in the middle, at the lowest resolution
    (`mid_attention`). `double_z` means the encoder predicts a mean and a log-variance.
    """

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    in_channels: int = 3
    out_channels: int = 3
    z_channels: int = 4
    embed_dim: int = 4
    double_z: bool = True
    mid_attention: bool = True

    @classmethod
    def sd(cls) -> "VAEConfig":
        """The VAE shared by SD1, SD2 and SDXL (8x downsampling, 4 latent channels)."""
        return cls()


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """norm-swish-conv twice, plus a 1x1 `nin_shortcut` when the channel count changes."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels; q, k, v and proj_out are 1x1 convolutions."""

    projections = ("q", "k", "v", "proj_out")

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        height = h.shape[2]
        q, k, v = (rearrange(f(h), "b c h w -> b 1 (h w) c") for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = rearrange(out, "b 1 (h w) c -> b c h w", h=height)
        return x + self.proj_out(out)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Accept projections stored as Linear weights [C, C] (some converted files) as 1x1 convs."""
        for name in self.projections:
            key = f"{prefix}{name}.weight"
            if key in state_dict and state_dict[key].ndim == 2:
                state_dict[key] = state_dict[key][:, :, None, None]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one pixel on the right and bottom only (as the original)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: ResnetBlocks (`block`), then a `downsample` or `upsample` if asked."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, resample: str | None = None):
        super().__init__()
        channels = [in_channels] + [out_channels] * num_blocks
        self.block = nn.ModuleList(ResnetBlock(a, b) for a, b in zip(channels, channels[1:]))
        self.downsample = Downsample(out_channels) if resample == "down" else None
        self.upsample = Upsample(out_channels) if resample == "up" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        for resample in (self.downsample, self.upsample):
            if resample is not None:
                x = resample(x)
        return x


class Mid(nn.Module):
    """ResnetBlock, attention, ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int, attention: bool):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels) if attention else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        widths = [c.ch * m for m in c.ch_mult]
        last = len(widths) - 1
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1)
        self.down = nn.ModuleList(
            Level(w_in, w, c.num_res_blocks, "down" if i != last else None)
            for i, (w_in, w) in enumerate(zip([c.ch] + widths, widths))
        )
        self.mid = Mid(widths[-1], c.mid_attention)
        self.norm_out = group_norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], (1 + c.double_z) * c.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.down:
            x = level(x)
        x = self.mid(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    """Mirror of the encoder. `up[i]` works at the resolution of `down[i]`; it runs from the last level
    to the first, each level with one more ResnetBlock than the encoder's."""

    def __init__(self, c: VAEConfig):
        super().__init__()
        widths = [c.ch * m for m in c.ch_mult]
        self.conv_in = nn.Conv2d(c.z_channels, widths[-1], 3, padding=1)
        self.mid = Mid(widths[-1], c.mid_attention)
        inputs = widths[1:] + widths[-1:]  # level i receives the output of level i + 1
        self.up = nn.ModuleList(
            Level(w_in, w, c.num_res_blocks + 1, "up" if i != 0 else None)
            for i, (w_in, w) in enumerate(zip(inputs, widths))
        )
        self.norm_out = group_norm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], c.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class AutoencoderKL(nn.Module):
    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        moments = 1 + config.double_z
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(moments * config.z_channels, moments * config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)

    @property
    def downscale(self) -> int:
        """Pixels per latent pixel along each side (8 for SD)."""
        return 2 ** (len(self.config.ch_mult) - 1)

    def encode(self, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Latent of `pixels` ([-1, 1], NCHW): the mean of q(z|x), or with `generator` a sample of it
        (mean + std * N(0, 1), log-variance clamped to [-30, 20] as in the original)."""
        moments = self.quant_conv(self.encoder(pixels))
        if not self.config.double_z:
            return moments
        mean, logvar = moments.chunk(2, dim=1)
        if generator is None:
            return mean
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + std * noise

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Pixels (about [-1, 1], not clamped) of an unscaled latent."""
        return self.decoder(self.post_quant_conv(latent))


def _count(state_dict: dict, pattern: str) -> int:
    """Number of distinct indices N in keys matching `pattern` (a regex with one `(\\d+)` group)."""
    found = {int(m.group(1)) for k in state_dict if (m := re.match(pattern, k))}
    return len(found)


def detect_vae_config(state_dict: dict) -> VAEConfig:
    """Config of a KL-VAE state dict in the original layout (prefix stripped), from key names and
    tensor shapes only, so scaled-down models are recognised too."""
    conv_in = state_dict["encoder.conv_in.weight"]
    ch = conv_in.shape[0]
    levels = _count(state_dict, r"encoder\.down\.(\d+)\.")
    z_channels = state_dict["decoder.conv_in.weight"].shape[1]
    return VAEConfig(
        ch=ch,
        ch_mult=tuple(state_dict[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels)),
        num_res_blocks=_count(state_dict, r"encoder\.down\.0\.block\.(\d+)\."),
        in_channels=conv_in.shape[1],
        out_channels=state_dict["decoder.conv_out.weight"].shape[0],
        z_channels=z_channels,
        embed_dim=state_dict["post_quant_conv.weight"].shape[1],
        double_z=state_dict["encoder.conv_out.weight"].shape[0] == 2 * z_channels,
        mid_attention="encoder.mid.attn_1.q.weight" in state_dict,
    )


_DIFFUSERS_RENAMES = [  # (diffusers, original); applied in order to every key
    (r"\.conv_norm_out\.", ".norm_out."),
    (r"\.conv_shortcut\.", ".nin_shortcut."),
    (r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block."),
    (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
    (r"\.mid_block\.resnets\.0\.", ".mid.block_1."),
    (r"\.mid_block\.resnets\.1\.", ".mid.block_2."),
    (r"\.mid_block\.attentions\.0\.", ".mid.attn_1."),
    (r"\.attn_1\.group_norm\.", ".attn_1.norm."),
    (r"\.attn_1\.(?:to_q|query)\.", ".attn_1.q."),
    (r"\.attn_1\.(?:to_k|key)\.", ".attn_1.k."),
    (r"\.attn_1\.(?:to_v|value)\.", ".attn_1.v."),
    (r"\.attn_1\.(?:to_out\.0|proj_attn)\.", ".attn_1.proj_out."),
]


def vae_from_diffusers_keys(state_dict: dict) -> dict:
    """Rename a diffusers-layout VAE state dict (`encoder.down_blocks.0.resnets.0.norm1.weight`,
    `decoder.up_blocks...`, `mid_block.attentions.0.to_q`) to the original layout.

    diffusers numbers decoder levels from the lowest resolution (`up_blocks.0`), the original from
    the highest (`up.0`); its attention projections are Linear [C, C] and become 1x1 convs."""
    num_up = _count(state_dict, r"decoder\.up_blocks\.(\d+)\.")
    out = {}
    for key, value in state_dict.items():
        for pattern, replacement in _DIFFUSERS_RENAMES:
            key = re.sub(pattern, replacement, key)
        if m := re.match(r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers\.0)\.(.*)", key):
            part = "block" if m.group(2) == "resnets" else "upsample"
            key = f"decoder.up.{num_up - 1 - int(m.group(1))}.{part}.{m.group(3)}"
        if re.search(r"\.attn_1\.(q|k|v|proj_out)\.weight$", key) and value.ndim == 2:
            value = value[:, :, None, None]
        out[key] = value
    return out
