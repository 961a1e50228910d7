"""ControlNet (Zhang et al. 2023) and T2I-Adapter (Mou et al. 2023) networks for the SD UNet family.

A ControlNet is a trainable copy of a UNet's input half and middle block. The hint image enters
through a small convolutional encoder (`input_hint_block`) added after the first convolution; a
1x1 "zero convolution" (initialised to zero, so training starts from the unchanged UNet) reads out
each input block (`zero_convs.k`) and the middle block (`middle_block_out`). Module names mirror the
original `cldm.ControlNet`, so `state_dict()` has the keys of a `control_*.safetensors` file with its
`control_model.` prefix stripped. The UNet building blocks are imported from `unet.py`.

Output: ComfyUI's control dict `{"output": [zc_0 .. zc_n], "middle": [m]}`, where `zc_k` belongs to
the skip connection of `input_blocks.k` (`UNetModel.forward` pops the lists from the end).

A T2I-Adapter is a separate small network on the pixel-unshuffled hint whose features are added to
the UNet's hidden states after chosen input blocks (`"input"`, and `"middle"` for SDXL adapters),
independent of the noisy latent and the timestep.
"""

from dataclasses import dataclass

import torch
from torch import nn

from .attention import SpatialTransformer
from .unet import Downsample, ResBlock, UNetBlock, UNetConfig, timestep_embedding

HINT_BLOCK_CHANNELS = (16, 32, 96, 256)  # the hint encoder of every released SD ControlNet


@dataclass(frozen=True)
class ControlNetConfig:
    """The UNet whose input half the ControlNet copies, and its hint encoder.

    The hint encoder is `conv_in` to `hint_block_channels[0]`, then per step a 3x3 convolution and a
    stride-2 one to the next width, then `conv_out` to `model_channels`, with SiLU in between: three
    halvings, so a hint at pixel size meets latents 8x smaller.
    """

    unet: UNetConfig
    hint_channels: int = 3
    hint_block_channels: tuple[int, ...] = HINT_BLOCK_CHANNELS


def zero_conv(channels):
    """A 1x1 convolution in a Sequential (`zero_convs.k.0`), zero at initialisation as in training."""
    conv = nn.Conv2d(channels, channels, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv)


def hint_encoder(in_channels, widths, out_channels):
    """`input_hint_block`: convolutions at the even indices, SiLU at the odd ones; the last one zero."""
    convs = [nn.Conv2d(in_channels, widths[0], 3, padding=1)]
    for width, wider in zip(widths, widths[1:]):
        convs += [nn.Conv2d(width, width, 3, padding=1), nn.Conv2d(width, wider, 3, padding=1, stride=2)]
    convs.append(nn.Conv2d(widths[-1], out_channels, 3, padding=1))
    nn.init.zeros_(convs[-1].weight)
    nn.init.zeros_(convs[-1].bias)
    layers = [convs[0]]
    for conv in convs[1:]:
        layers += [nn.SiLU(), conv]
    return nn.Sequential(*layers)


class ControlNetModel(nn.Module):
    """A ControlNet: UNet input blocks and middle block, hint encoder, zero convolutions."""

    def __init__(self, config: ControlNetConfig):
        super().__init__()
        self.config = config
        c = config.unet
        emb_dim = 4 * c.model_channels
        self.time_embed = nn.Sequential(
            nn.Linear(c.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if c.adm_in_channels is not None:
            self.label_emb = nn.Sequential(nn.Sequential(
                nn.Linear(c.adm_in_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)))
        self.input_hint_block = hint_encoder(config.hint_channels, config.hint_block_channels, c.model_channels)

        self.input_blocks = nn.ModuleList([UNetBlock([nn.Conv2d(c.in_channels, c.model_channels, 3, padding=1)])])
        self.zero_convs = nn.ModuleList([zero_conv(c.model_channels)])
        ch = c.model_channels
        depths = iter(c.transformer_depth)
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks[level]):
                layers = [ResBlock(ch, emb_dim, mult * c.model_channels)]
                ch = mult * c.model_channels
                if depth := next(depths):
                    layers.append(self._transformer(ch, depth))
                self.input_blocks.append(UNetBlock(layers))
                self.zero_convs.append(zero_conv(ch))
            if level != len(c.channel_mult) - 1:
                self.input_blocks.append(UNetBlock([Downsample(ch)]))
                self.zero_convs.append(zero_conv(ch))

        middle = [ResBlock(ch, emb_dim, ch)]
        if c.transformer_depth_middle >= 0:
            middle += [self._transformer(ch, c.transformer_depth_middle), ResBlock(ch, emb_dim, ch)]
        self.middle_block = UNetBlock(middle)
        self.middle_block_out = zero_conv(ch)

    def _transformer(self, channels, depth):
        c = self.config.unet
        heads, dim_head = c.heads(channels)
        return SpatialTransformer(channels, heads, dim_head, depth, c.context_dim, c.use_linear_in_transformer)

    def forward(self, x, hint, timesteps, context, y=None):
        """Residuals for latents `x` [B,C,h,w] (already scaled by the prediction's `calculate_input`)
        at `timesteps`, from `hint` [B or 1, hint_channels, 8h, 8w] in 0..1; in the parameters' dtype."""
        dtype = self.time_embed[0].weight.dtype
        timesteps = torch.as_tensor(timesteps, device=x.device).reshape(-1).expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, self.config.unet.model_channels).to(dtype))
        if self.config.unet.adm_in_channels is not None:
            if y is None:
                raise ValueError(f"this ControlNet needs y [B, {self.config.unet.adm_in_channels}] (SDXL)")
            emb = emb + self.label_emb(y.to(dtype))
        context = context.to(dtype)
        guided_hint = self.input_hint_block(hint.to(dtype))

        h = x.to(dtype)
        outputs = []
        for k, (block, readout) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = block(h, emb, context)
            if k == 0:
                h = h + guided_hint
            outputs.append(readout(h))
        h = self.middle_block(h, emb, context)
        return {"output": outputs, "middle": [self.middle_block_out(h)]}


# --- T2I-Adapters ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class AdapterConfig:
    """A full T2I-Adapter (`conv_in`, `body.N.block1`...) in the original TencentARC layout.

    Four levels of `num_res_blocks` residual blocks each. `cin` is the channel count after pixel
    unshuffle (hint channels x 64, or x 256 for SDXL adapters, whose unshuffle is 16). `ksize` is the
    kernel of `block2` and `in_conv`; `conv_down` means strided convolutions (`down_opt.op`) instead
    of average pooling. (Released adapters all have the identity skip, TencentARC's `sk=True`.)
    """

    cin: int = 192
    channels: tuple[int, ...] = (320, 640, 1280, 1280)
    num_res_blocks: int = 2
    ksize: int = 1
    conv_down: bool = False
    xl: bool = False

    @property
    def unshuffle(self):
        return 16 if self.xl else 8


class PoolDown(nn.Module):
    """Halve by 2x2 average pooling, zero-padding odd sizes by one (counted in the mean)."""

    def forward(self, x):
        return nn.functional.avg_pool2d(x, 2, 2, padding=(x.shape[2] % 2, x.shape[3] % 2))


class AdapterBlock(nn.Module):
    """[downsample] [in_conv to the new width] then `x + block2(relu(block1(x)))`."""

    def __init__(self, in_c, out_c, down, config: AdapterConfig):
        super().__init__()
        pad = config.ksize // 2
        if down:
            self.down_opt = Downsample(in_c) if config.conv_down else PoolDown()
        self.in_conv = nn.Conv2d(in_c, out_c, config.ksize, padding=pad) if in_c != out_c else None
        self.block1 = nn.Conv2d(out_c, out_c, 3, padding=1)
        self.act = nn.ReLU()
        self.block2 = nn.Conv2d(out_c, out_c, config.ksize, padding=pad)
        self.down = down

    def forward(self, x):
        if self.down:
            x = self.down_opt(x)
        if self.in_conv is not None:
            x = self.in_conv(x)
        return x + self.block2(self.act(self.block1(x)))


def _input_slots(features, xl):
    """ComfyUI's placement of the four level features in the UNet's control lists.

    SD1/SD2 (12 input blocks): after the last res block of each level (`input_blocks` 2, 5, 8, 11).
    SDXL (9 input blocks): level 0 after `input_blocks.3` (the first downsample), level 1 after
    block 5, level 2 after block 8, level 3 on the middle block. Lists are in pop order (last first).
    """
    if not xl:
        slots = [None] * 12
        for level, feature in enumerate(features):
            slots[3 * level + 2] = feature
        return {"input": slots[::-1]}
    slots = [None] * 10
    slots[3], slots[5], slots[8] = features[:3]
    return {"input": slots[::-1], "middle": [features[3]]}


class Adapter(nn.Module):
    """A full T2I-Adapter: pixel unshuffle, `conv_in`, four levels of AdapterBlocks (`body.N`)."""

    def __init__(self, config: AdapterConfig):
        super().__init__()
        self.config = config
        ch = config.channels
        self.unshuffle = nn.PixelUnshuffle(config.unshuffle)
        self.conv_in = nn.Conv2d(config.cin, ch[0], 3, padding=1)
        down_levels, widen_levels = ((2,), (1,)) if config.xl else ((1, 2, 3), ())
        body = []
        for level in range(len(ch)):
            for j in range(config.num_res_blocks):
                first = j == 0 and (level in down_levels or level in widen_levels)
                in_c = ch[level - 1] if first else ch[level]
                body.append(AdapterBlock(in_c, ch[level], j == 0 and level in down_levels, config))
        self.body = nn.ModuleList(body)

    @property
    def input_channels(self):
        return self.config.cin // self.config.unshuffle ** 2

    def forward(self, hint):
        x = self.conv_in(self.unshuffle(hint))
        features = []
        for level in range(len(self.config.channels)):
            for j in range(self.config.num_res_blocks):
                x = self.body[level * self.config.num_res_blocks + j](x)
            features.append(x)
        return _input_slots(features, self.config.xl)


@dataclass(frozen=True)
class LightAdapterConfig:
    """The light T2I-Adapter (`body.N.in_conv`, `body.N.body.M.block1`, `body.N.out_conv`)."""

    cin: int = 192
    channels: tuple[int, ...] = (320, 640, 1280, 1280)
    num_res_blocks: int = 4
    xl: bool = False
    unshuffle: int = 8


class LightResBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.block1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.ReLU()
        self.block2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.block2(self.act(self.block1(x)))


class LightExtractor(nn.Module):
    """[pool] 1x1 to a quarter width, residual blocks, 1x1 to the level width."""

    def __init__(self, in_c, inner_c, out_c, num_res_blocks, down):
        super().__init__()
        self.down = down
        if down:
            self.down_opt = PoolDown()
        self.in_conv = nn.Conv2d(in_c, inner_c, 1)
        self.body = nn.Sequential(*[LightResBlock(inner_c) for _ in range(num_res_blocks)])
        self.out_conv = nn.Conv2d(inner_c, out_c, 1)

    def forward(self, x):
        if self.down:
            x = self.down_opt(x)
        return self.out_conv(self.body(self.in_conv(x)))


class LightAdapter(nn.Module):
    def __init__(self, config: LightAdapterConfig):
        super().__init__()
        self.config = config
        ch = config.channels
        self.unshuffle = nn.PixelUnshuffle(config.unshuffle)
        self.body = nn.ModuleList(
            LightExtractor(config.cin if i == 0 else ch[i - 1], ch[i] // 4, ch[i], config.num_res_blocks, i > 0)
            for i in range(len(ch)))

    @property
    def input_channels(self):
        return self.config.cin // self.config.unshuffle ** 2

    def forward(self, hint):
        x = self.unshuffle(hint)
        features = []
        for block in self.body:
            x = block(x)
            features.append(x)
        return _input_slots(features, xl=False)
