"""The Stable Diffusion UNet family (SD1.x, SD2.x, SDXL base/refiner, their inpainting variants).

The module tree mirrors the original LDM/SGM `openaimodel.UNetModel`, so `UNetModel.state_dict()`
has exactly the keys of a single-file checkpoint with `model.diffusion_model.` stripped and loads
one with `load_state_dict(strict=True)`, no conversion. Block layout (level = one resolution):

    input_blocks.0            conv_in
    input_blocks.k            ResBlock [+ SpatialTransformer]        (num_res_blocks per level)
                              or Downsample (`.0.op`) between levels
    middle_block              ResBlock, SpatialTransformer, ResBlock
    output_blocks.k           ResBlock on cat(h, skip) [+ SpatialTransformer] [+ Upsample (`.conv`)]
                              (num_res_blocks + 1 per level, deepest level first)
    out                       GroupNorm, SiLU, conv_out
"""

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .attention import GroupNorm32, SpatialTransformer

SDXL_SIZE_EMBED_DIM = 256


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of an SD UNet, in the vocabulary of ComfyUI's `detect_unet_config`.

    Transformer depths are per block, not per level, since distilled variants (SSD-1B, Vega)
    vary them inside a level: `transformer_depth[k]` belongs to the k-th res block of the
    input side (levels shallow to deep); `transformer_depth_output` likewise lists the output
    side's res blocks from the shallowest level to the deepest, i.e. `output_blocks` in
    reverse. `transformer_depth_middle = -1` means a middle block of one ResBlock only.
    Heads: `num_heads` fixed per layer (SD1) or, when `num_head_channels != -1`, as many
    heads as `channels // num_head_channels` (SD2, SDXL).
    """

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: tuple[int, ...] = (2, 2, 2, 2)
    transformer_depth: tuple[int, ...] = (1, 1, 1, 1, 1, 1, 0, 0)
    transformer_depth_output: tuple[int, ...] = (1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0)
    transformer_depth_middle: int = 1
    context_dim: int | None = 768
    num_heads: int = 8
    num_head_channels: int = -1
    use_linear_in_transformer: bool = False
    adm_in_channels: int | None = None

    def __post_init__(self):
        for f in fields(self):
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        levels = len(self.channel_mult)
        if len(self.num_res_blocks) != levels:
            raise ValueError(f"num_res_blocks {self.num_res_blocks} needs one entry per level ({levels})")
        if len(self.transformer_depth) != sum(self.num_res_blocks):
            raise ValueError(f"transformer_depth needs {sum(self.num_res_blocks)} entries, "
                             f"got {self.transformer_depth}")
        if len(self.transformer_depth_output) != sum(self.num_res_blocks) + levels:
            raise ValueError(f"transformer_depth_output needs {sum(self.num_res_blocks) + levels} entries, "
                             f"got {self.transformer_depth_output}")
        if (self.num_heads == -1) == (self.num_head_channels == -1):
            raise ValueError("set exactly one of num_heads and num_head_channels (the other -1)")

    def heads(self, channels):
        """(number of heads, channels per head) of a transformer on `channels` channels."""
        if self.num_head_channels == -1:
            return self.num_heads, channels // self.num_heads
        return channels // self.num_head_channels, self.num_head_channels

    @classmethod
    def from_level_depths(cls, level_depths, num_res_blocks, **kwargs):
        """A config whose res blocks of level i all carry a transformer of depth `level_depths[i]`
        (SGM's per-level `transformer_depth`; 0 = no attention at that level)."""
        return cls(
            num_res_blocks=tuple(num_res_blocks),
            transformer_depth=tuple(d for d, n in zip(level_depths, num_res_blocks) for _ in range(n)),
            transformer_depth_output=tuple(d for d, n in zip(level_depths, num_res_blocks)
                                           for _ in range(n + 1)),
            **kwargs)

    @classmethod
    def sd15(cls, in_channels=4):
        """SD1.x (eps); `in_channels=9` for the inpainting model."""
        return cls.from_level_depths((1, 1, 1, 0), (2, 2, 2, 2), in_channels=in_channels)

    @classmethod
    def sd21(cls, in_channels=4):
        """SD2.x, base (eps) and 768-v alike; `in_channels=9` for the inpainting model."""
        return cls.from_level_depths(
            (1, 1, 1, 0), (2, 2, 2, 2), in_channels=in_channels, context_dim=1024,
            num_heads=-1, num_head_channels=64, use_linear_in_transformer=True)

    @classmethod
    def sdxl(cls, in_channels=4):
        """SDXL base; `in_channels=9` for the inpainting model."""
        return cls.from_level_depths(
            (0, 2, 10), (2, 2, 2), in_channels=in_channels, channel_mult=(1, 2, 4),
            transformer_depth_middle=10, context_dim=2048, num_heads=-1, num_head_channels=64,
            use_linear_in_transformer=True, adm_in_channels=2816)

    @classmethod
    def sdxl_refiner(cls):
        return cls.from_level_depths(
            (0, 4, 4, 0), (2, 2, 2, 2), model_channels=384, transformer_depth_middle=4,
            context_dim=1280, num_heads=-1, num_head_channels=64, use_linear_in_transformer=True,
            adm_in_channels=2560)


def timestep_embedding(timesteps, dim, max_period=10000):
    """Sinusoidal embedding of SD: `[cos(t f_i), sin(t f_i)]`, f_i = max_period^(-i / (dim/2)), in fp32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                           device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(embedding, (0, dim % 2))


def _size_embedding(pooled, values):
    """`pooled` followed by the 256-dim timestep embedding of each size value, per batch row."""
    sizes = torch.tensor(values, dtype=torch.float32, device=pooled.device)
    flat = timestep_embedding(sizes, SDXL_SIZE_EMBED_DIM).flatten()
    return torch.cat([pooled, flat.expand(pooled.shape[0], -1)], dim=1)


def sdxl_adm(pooled, width, height, crop_w, crop_h, target_width, target_height):
    """SDXL base's `y`: pooled CLIP-G output then embeddings of (height, width, crop_h, crop_w,
    target_height, target_width), as SGM's size/crop/target conditioners concatenate them."""
    return _size_embedding(pooled, [height, width, crop_h, crop_w, target_height, target_width])


def sdxl_refiner_adm(pooled, width, height, crop_w, crop_h, aesthetic_score):
    """SDXL refiner's `y`: pooled output then embeddings of (height, width, crop_h, crop_w, aesthetic score).
    ComfyUI's default scores: 6 for positive prompts, 2.5 for negative ones."""
    return _size_embedding(pooled, [height, width, crop_h, crop_w, aesthetic_score])


class ResBlock(nn.Module):
    """Two 3x3 convolutions with the time embedding added in between, plus a (projected) skip."""

    def __init__(self, channels, emb_channels, out_channels):
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm32(32, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(32, out_channels), nn.SiLU(), nn.Identity(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x, emb):
        h = self.in_layers(x) + self.emb_layers(emb).to(x.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    """Strided 3x3 convolution halving height and width (rounding up)."""

    def __init__(self, channels):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 (or to `size`, the next skip's, for odd inputs) then a 3x3 convolution."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x, size=None):
        size = tuple(size) if size is not None else (2 * x.shape[-2], 2 * x.shape[-1])
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class UNetBlock(nn.ModuleList):
    """One numbered block of the UNet: its layers in order, each fed what it needs."""

    def forward(self, h, emb, context, size=None):
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, SpatialTransformer):
                h = layer(h, context)
            elif isinstance(layer, Upsample):
                h = layer(h, size)
            else:
                h = layer(h)
        return h


def _add_control(h, pending, name):
    """Add the next residual of `pending[name]` to `h`, taking it from the END of the list as
    ComfyUI's `apply_control` pops it; None entries and exhausted lists add nothing."""
    residuals = pending.get(name)
    if not residuals:
        return h
    residual = residuals.pop()
    return h if residual is None else h + residual.to(h.dtype)


class UNetModel(nn.Module):
    """The SD UNet of `config`, laid out as the module docstring shows."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        c = config
        emb_dim = 4 * c.model_channels
        self.time_embed = nn.Sequential(
            nn.Linear(c.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if c.adm_in_channels is not None:
            self.label_emb = nn.Sequential(nn.Sequential(
                nn.Linear(c.adm_in_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)))

        conv_in = nn.Conv2d(c.in_channels, c.model_channels, 3, padding=1)
        self.input_blocks = nn.ModuleList([UNetBlock([conv_in])])
        skip_channels = [c.model_channels]
        ch = c.model_channels
        depths = iter(c.transformer_depth)
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks[level]):
                layers = [ResBlock(ch, emb_dim, mult * c.model_channels)]
                ch = mult * c.model_channels
                if depth := next(depths):
                    layers.append(self._transformer(ch, depth))
                self.input_blocks.append(UNetBlock(layers))
                skip_channels.append(ch)
            if level != len(c.channel_mult) - 1:
                self.input_blocks.append(UNetBlock([Downsample(ch)]))
                skip_channels.append(ch)

        middle = [ResBlock(ch, emb_dim, ch)]
        if c.transformer_depth_middle >= 0:
            middle += [self._transformer(ch, c.transformer_depth_middle), ResBlock(ch, emb_dim, ch)]
        self.middle_block = UNetBlock(middle)

        self.output_blocks = nn.ModuleList()
        depths_output = list(c.transformer_depth_output)
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks[level] + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, mult * c.model_channels)]
                ch = mult * c.model_channels
                if depth := depths_output.pop():
                    layers.append(self._transformer(ch, depth))
                if level and i == c.num_res_blocks[level]:
                    layers.append(Upsample(ch))
                self.output_blocks.append(UNetBlock(layers))

        self.out = nn.Sequential(GroupNorm32(32, ch), nn.SiLU(), nn.Conv2d(ch, c.out_channels, 3, padding=1))

    def _transformer(self, channels, depth):
        heads, dim_head = self.config.heads(channels)
        return SpatialTransformer(channels, heads, dim_head, depth, self.config.context_dim,
                                  self.config.use_linear_in_transformer)

    def forward(self, x, timesteps, context, y=None, control=None):
        """Predict (eps or v) for latents `x` [B,C,H,W] at `timesteps` (scalar or [B], 0..999),
        cross-attending to `context` [B,T,context_dim]. `y` [B,adm_in_channels] for SDXL.

        `control` is ComfyUI's dict of residual lists, each consumed from its end (`pop()`):
        "input": added to h after each input block (T2I-Adapter; None entries skip a block);
        "middle": added after the middle block; "output": added to each skip connection as the
        output blocks pop it, so `control["output"][k]` meets the skip of `input_blocks.k`.
        The caller's lists are not modified. Computes in the parameters' dtype, returns x's.
        """
        dtype = self.time_embed[0].weight.dtype
        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(dtype))
        if self.config.adm_in_channels is not None:
            if y is None:
                raise ValueError(f"this UNet needs y [B, {self.config.adm_in_channels}] (e.g. from sdxl_adm)")
            emb = emb + self.label_emb(y.to(dtype))
        context = context.to(dtype)
        pending = {name: list(residuals) for name, residuals in (control or {}).items() if residuals}

        h = x.to(dtype)
        skips = []
        for block in self.input_blocks:
            h = _add_control(block(h, emb, context), pending, "input")
            skips.append(h)
        h = _add_control(self.middle_block(h, emb, context), pending, "middle")
        for block in self.output_blocks:
            skip = _add_control(skips.pop(), pending, "output")
            size = skips[-1].shape[-2:] if skips else None
            h = block(torch.cat([h, skip], dim=1), emb, context, size)
        return self.out(h).to(x.dtype)


def count_children(keys, stem: str) -> int:
    """How many numbered children `stem{n}.` exist among `keys`."""
    return len({k[len(stem):].split(".", 1)[0] for k in keys if k.startswith(stem)})


def detect_input_side(keys, shape):
    """The input half of a UNet-layout state dict (a UNet's or a ControlNet's): model and input
    channels, res blocks and channel multiplier per level, transformer depth per res block.
    `shape(key)` gives a tensor's shape."""
    model_channels, in_channels = shape("input_blocks.0.0.weight")[:2]
    num_res_blocks, channel_mult, transformer_depth = [], [], []
    blocks_in_level = mult = 0
    for k in range(1, count_children(keys, "input_blocks.")):
        if f"input_blocks.{k}.0.op.weight" in keys:  # a downsampler closes the level
            num_res_blocks.append(blocks_in_level)
            channel_mult.append(mult)
            blocks_in_level = 0
        else:
            blocks_in_level += 1
            mult = shape(f"input_blocks.{k}.0.out_layers.3.weight")[0] // model_channels
            transformer_depth.append(count_children(keys, f"input_blocks.{k}.1.transformer_blocks."))
    num_res_blocks.append(blocks_in_level)
    channel_mult.append(mult)
    return model_channels, in_channels, num_res_blocks, channel_mult, transformer_depth


def detect_unet_config(state_dict, prefix=""):
    """Derive the UNetConfig of an SD-family UNet state dict from key names and tensor shapes.

    Heads leave no trace in shapes, so they follow ComfyUI's model classes: 1x1-conv
    projections (SD1 layout) get 8 heads, linear projections (SD2, SDXL) 64 channels per head.
    """
    keys = {k[len(prefix):] for k in state_dict if k.startswith(prefix)}
    if "input_blocks.0.0.weight" not in keys:
        raise ValueError(f"not an SD UNet state dict: no '{prefix}input_blocks.0.0.weight'")

    def shape(key):
        return tuple(state_dict[prefix + key].shape)

    def count(stem):
        return count_children(keys, stem)

    def depth(block):
        return count(f"{block}.1.transformer_blocks.")

    model_channels, in_channels, num_res_blocks, channel_mult, transformer_depth = detect_input_side(keys, shape)
    num_output_blocks = count("output_blocks.")
    transformer_depth_output = [depth(f"output_blocks.{k}") for k in reversed(range(num_output_blocks))]

    to_k = next((k for k in keys if k.endswith("attn2.to_k.weight")), None)
    proj_in = next((k for k in keys if k.endswith("proj_in.weight")), None)
    use_linear = proj_in is not None and len(shape(proj_in)) == 2
    return UNetConfig(
        in_channels=in_channels,
        out_channels=shape("out.2.weight")[0],
        model_channels=model_channels,
        channel_mult=tuple(channel_mult),
        num_res_blocks=tuple(num_res_blocks),
        transformer_depth=tuple(transformer_depth),
        transformer_depth_output=tuple(transformer_depth_output),
        transformer_depth_middle=depth("middle_block") if "middle_block.1.proj_in.weight" in keys else -1,
        context_dim=shape(to_k)[1] if to_k else None,
        num_heads=-1 if use_linear else 8,
        num_head_channels=64 if use_linear else -1,
        use_linear_in_transformer=use_linear,
        adm_in_channels=shape("label_emb.0.0.weight")[1] if "label_emb.0.0.weight" in keys else None,
    )
