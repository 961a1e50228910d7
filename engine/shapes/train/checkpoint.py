"""The shipped text-to-image checkpoint: a KL autoencoder, then a UNet and a CLIP text encoder trained together.

Everything is Loom's own network classes in scaled-down SD1 configs, so the saved file has the SD1
single-file layout (``first_stage_model.``, ``model.diffusion_model.``, ``cond_stage_model.transformer.``)
and loads through :func:`engine.loading.checkpoint.load_checkpoint` like any SD1.5 file.

Stage ``vae``: L1 + image-gradient L1 on crops of renders (a quarter of them striped, so the LoRA's texture
can be decoded), the posterior kept narrow. Trained from random weights this architecture needs far more than a
CPU-hour to learn even flat colours, so it starts from weights set by hand (:func:`block_code_init`) that already
make it an 8x8 block-average encoder and nearest-neighbour decoder; training then only learns a correction from
the other channels (sharp edges where the blocks only say how much of each colour they hold). The encoder is
calibrated so that latents times SD1's 0.18215 have unit variance: the mean half of ``quant_conv`` is scaled by
``s`` and ``post_quant_conv``'s weight by ``1/s`` (decoding is unchanged; the log-variance moves by ``2 log s``).
Eight pixels a latent are too coarse for small shapes (a small star's points average away), so the last run
(``shape_code``) also learns latent channel 3, which the block code leaves at zero: a narrow slice of the encoder
(:mod:`.latent_code`) trained with the decoder, calibrated to zero mean and unit variance.

Stage ``t2i``: epsilon prediction on SD1's scaled-linear 1000-step schedule (min-SNR-5 loss weights in the first
run only), 10% empty captions (classifier-free guidance), captions with sizes, positions and backgrounds randomly
left out, the text encoder read as SD1 reads CLIP-L (last layer, final LayerNorm, padded with the end
token), offset noise in the last runs (so the prompt, not the starting noise, sets the background), scenes with the
kinds it drew worst seen more often in the last four (``focus``), a quarter of the steps of the last two on
256-pixel renders (``hires``), EMA weights saved.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ... import memory
from ...models.clip import CLIPTextConfig, CLIPTextModel
from ...models.unet import UNetConfig, UNetModel
from ...models.vae import AutoencoderKL, VAEConfig
from ...sampling.schedules import DiscreteSchedule
from ...text import CLIPTokenizer, tokenize_with_weights
from ..scene import scene_at
from . import common, latent_code
from .common import ASSETS, LATENT_SCALE, TRAIN_SEED, Log
from .latent_code import ShapeCode

# Every GroupNorm has 32 groups, and a group of one or two channels is normalised to a constant over a flat
# region: the decoder's last norm (at full resolution) then cannot say which colour a plain background has, and
# training stalls at the mean image. 96 channels (3 per group) is the narrowest width that keeps colour; the
# 32-pixel crops keep full-resolution convolutions at that width affordable on a CPU.
VAE_CONFIG = VAEConfig(ch=96, ch_mult=(1, 1, 1, 1), num_res_blocks=1)
UNET_CONFIG = UNetConfig.from_level_depths((0, 1, 1), (1, 1, 1), model_channels=32, channel_mult=(1, 2, 4),
                                           context_dim=64, num_heads=8)
CLIP_CONFIG = CLIPTextConfig(width=64, layers=2, heads=1, mlp_width=256)
CHECKPOINT = ASSETS / "checkpoints" / "loom-shapes.safetensors"
PAD_TOKEN = 49407  # SD1 pads CLIP-L with the end token


@dataclass(frozen=True)
class VAETraining:
    steps: int = 3000
    batch: int = 4
    crop: int = 64  # 8x8 latents: context enough for a shape, a quarter of the cost of whole renders
    lr: float = 5e-4
    # autocast (the fp32 master weights are what is saved): half the time of fp32 on a CPU that runs bf16 natively
    # (AVX512-BF16/AMX), several times fp32's on one that emulates it (AVX2), so None: where it is native
    bf16: bool | None = None
    striped_fraction: float = 0.25
    eval_images: int = 64
    seed: int = 0
    resume: bool = False  # go on from the last decoder (build/shapes/vae.safetensors) instead of the hand-set one
    shape_code: bool = False  # also learn latent channel 3 (latent_code.ShapeCode), and the decoder to read it
    code_moment_weight: float = 0.1  # pulls the mean square of channel 3 towards 1 (the scale the UNet expects)


@dataclass(frozen=True)
class T2ITraining:
    images: int = 6000
    steps: int = 4000
    batch: int = 32
    lr: float = 5e-4
    p_uncond: float = 0.1
    p_drop_words: float = 0.3
    min_snr: float | None = 5.0
    ema: float = 0.999
    seed: int = 0
    resume: bool = False  # start from the previous run's weights (build/shapes/t2i.safetensors) instead of random
    shape_code: bool = False  # latents with the autoencoder's learned channel 3 (else zero there, as before it had one)
    offset_noise: float = 0.0  # see noised(): without it the starting noise, not the prompt, sets the background
    focus: tuple[str, ...] = ()  # shape kinds drawn more often: a scene with one of them is seen focus_repeats times a pass
    focus_repeats: int = 2
    hires: float = 0.0  # fraction of steps on renders at twice the size (see hires_steps())
    hires_images: int = 4000


# The runs that made the shipped autoencoder, each resuming the one before: the decoder alone (the second at a lower
# rate), then the learned channel 3 with the decoder.
VAE_RUNS = (dict(), dict(steps=4000, lr=3e-4, resume=True), dict(steps=3000, lr=4e-4, resume=True, shape_code=True))

# The runs that made the shipped UNet and text encoder, each resuming the one before: the first with min-SNR-5
# weights; the second with the plain epsilon loss (min-SNR weighting starves the low-noise steps, whose errors
# the decoder shows as blotches); the third longer, on four times the renders, at a lower rate; the fourth on
# twice those renders again; the fifth to seventh on the latents with the autoencoder's learned channel 3; the
# eighth with offset noise 0.1, on a noise stream of its own (seed 9: the others all replayed seed 0's); the ninth
# and tenth with offset noise 0.5, which is what makes the background follow the prompt (see noised()); the
# eleventh longer, at offset 0.5 too; the twelfth to fifteenth with scenes holding a star or a square drawn twice
# as often (after eleven runs those were the kinds the model drew worst: stars 6 of 18 samples, squares 8 of 16,
# the rest 96 of 110); the last two also with a quarter of their steps on 256-pixel renders (hires_steps():
# before them a hires-fix second pass at 256 pixels turned a circle into lumps). Not a shorter way there: one hour
# from random weights (8000 steps at 8e-4 with min-SNR-5, then 3000 at 2e-4 without, 16000 images, all the last
# runs' options from the start) drew colour and kind in 18% of 144 samples, colour alone in 88%; nor 7000 steps of
# batch 16 with half the scenes holding one shape (15% of 48). The README's training paragraph has the arithmetic.
T2I_RUNS = (dict(), dict(steps=3000, lr=3e-4, min_snr=None, resume=True),
            dict(images=24000, steps=10000, lr=2e-4, min_snr=None, resume=True),
            dict(images=48000, steps=12000, lr=2e-4, min_snr=None, resume=True),
            dict(images=48000, steps=6000, lr=2e-4, min_snr=None, resume=True, shape_code=True),
            dict(images=48000, steps=5000, lr=1.5e-4, min_snr=None, resume=True, shape_code=True),
            dict(images=48000, steps=12000, lr=1.5e-4, min_snr=None, resume=True, shape_code=True),
            dict(images=48000, steps=6000, lr=1e-4, min_snr=None, resume=True, shape_code=True, offset_noise=0.1, seed=9),
            dict(images=48000, steps=1500, lr=1e-4, min_snr=None, resume=True, shape_code=True, offset_noise=0.5, seed=11),
            dict(images=48000, steps=3000, lr=1e-4, min_snr=None, resume=True, shape_code=True, offset_noise=0.5, seed=12),
            dict(images=48000, steps=10000, lr=1e-4, min_snr=None, resume=True, shape_code=True, offset_noise=0.5, seed=13),
            dict(images=48000, steps=9000, lr=1e-4, min_snr=None, resume=True, shape_code=True, offset_noise=0.5, seed=14,
                 focus=("star", "square")),
            dict(images=48000, steps=9000, lr=1e-4, min_snr=None, resume=True, shape_code=True, offset_noise=0.5, seed=15,
                 focus=("star", "square")),
            dict(images=48000, steps=9000, lr=1e-4, min_snr=None, resume=True, shape_code=True, offset_noise=0.5, seed=16,
                 focus=("star", "square"), hires=0.25),
            dict(images=48000, steps=9000, lr=1e-4, min_snr=None, resume=True, shape_code=True, offset_noise=0.5, seed=17,
                 focus=("star", "square"), hires=0.25))


# --- VAE ---------------------------------------------------------------------------------------------------
CALIBRATION_IMAGES = 512


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def block_means(x: torch.Tensor) -> torch.Tensor:
    """What the fixed encoder computes (before calibration): the mean colour of each 8x8 block in channels
    0-2 and zero in channel 3. Computed directly because it is 200 times cheaper than running the
    full-resolution encoder; ``tests/test_shapes_training.py`` checks the two agree."""
    means = torch.nn.functional.avg_pool2d(x, 8)
    return torch.cat([means, torch.zeros_like(means[:, :1])], dim=1)


def latent_scale() -> float:
    """``s`` such that ``LATENT_SCALE * s * block_means`` has unit standard deviation on the calibration renders."""
    x = common.to_tensor(common.render_set(TRAIN_SEED, range(CALIBRATION_IMAGES)))
    return 1.0 / (LATENT_SCALE * block_means(x).std().item())


def fixed_encoder_vae(seed: int = 0) -> AutoencoderKL:
    """The shipped autoencoder before decoder training: the hand-set block-mean code, calibrated."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(VAE_CONFIG)
    block_code_init(vae)
    rescale_latents(vae, latent_scale())
    return vae.eval()


def vae_batch(step: int, cfg: VAETraining, rng: np.random.Generator) -> tuple[torch.Tensor, tuple[slice, slice]]:
    """Whole renders and the crop of them the decoder trains on (``(rows, columns)`` on the latents' 8-pixel grid)."""
    from ..scene import render
    indices = range(step * cfg.batch, (step + 1) * cfg.batch)
    striped = rng.random(cfg.batch) < cfg.striped_fraction
    x = common.to_tensor(np.stack([render(scene_at(TRAIN_SEED + 100, i), 128, texture="stripes" if s else None)
                                   for i, s in zip(indices, striped)]))
    ys, xs = rng.integers(0, (128 - cfg.crop) // 8 + 1, size=2) * 8
    return x, (slice(ys, ys + cfg.crop), slice(xs, xs + cfg.crop))


def fast_latents(x: torch.Tensor, scale: float, code: ShapeCode | None) -> torch.Tensor:
    """What the shipped encoder computes (raw latents, before ``LATENT_SCALE``), the cheap way: the block
    means times ``scale`` in channels 0-2 and the learned code (or zero) in channel 3."""
    z = block_means(x) * scale
    if code is not None:
        z[:, 3:] = code(x) / LATENT_SCALE
    return z


def on_grid(crop: tuple[slice, slice], factor: int = 8) -> tuple[slice, slice]:
    return tuple(slice(s.start // factor, s.stop // factor) for s in crop)


def vae_file() -> Path:
    """Where stage ``vae`` leaves the trained autoencoder for the checkpoint."""
    return common.WORK / "vae.safetensors"


def train_vae(cfg: VAETraining, device: torch.device, out: Path | None = None, checkpoint: Path = CHECKPOINT,
              measure_quality: bool = True) -> AutoencoderKL:
    """Train the decoder of the block-mean code (the encoder stays as set, so the latents every other stage
    trains on do not depend on this one) to reconstruct sharp renders from posterior samples."""
    out = out or vae_file()
    if cfg.bf16 is None:
        cfg = replace(cfg, bf16=memory.supports_bf16(device))
    common.seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    vae = fixed_encoder_vae(cfg.seed)
    previous = None
    if cfg.resume:
        previous = common.metadata_of(out)
        vae.load_state_dict(load_vae(out).state_dict())
    vae = vae.to(device)
    scale = vae.quant_conv.weight[0, 0, 0, 0].item()
    logvar = vae.quant_conv.bias[VAE_CONFIG.embed_dim:].to(device)
    vae.requires_grad_(False)
    trained = list(vae.decoder.parameters())
    code = None
    if cfg.shape_code:
        code = (latent_code.extract(vae) if latent_code.has_code(vae) else latent_code.ShapeCode()).to(device)
        trained += list(code.parameters())
    for p in trained:
        p.requires_grad_(True)
    frozen = base_path(vae.decoder)
    opt = common.adamw(trained, cfg.lr)
    log = Log("vae", out.with_suffix(".log.jsonl"), cfg.steps, {"training": cfg, "vae": VAE_CONFIG})
    gen = torch.Generator(device).manual_seed(cfg.seed)
    held_out = common.to_tensor(common.render_set(common.EVAL_SEED, range(16))).to(device)
    for step in range(cfg.steps):
        common.set_lr(opt, common.lr_at(step, cfg.steps, cfg.lr, warmup=200))
        whole, crop = vae_batch(step, cfg, rng)
        whole = whole.to(device)
        x = whole[(..., *crop)]
        mean = block_means(x) * scale
        z = mean + torch.exp(0.5 * logvar).view(1, -1, 1, 1) * torch.randn(mean.shape, generator=gen, device=device)
        moment = torch.zeros((), device=device)
        if code is not None:  # the code sees the whole render (as at use), the decoder decodes the crop
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                z3 = code(whole).float()
            moment = cfg.code_moment_weight * (z3.pow(2).mean() - 1).pow(2)
            noise = latent_code.CODE_NOISE * z3.std().detach()
            z3 = z3 + noise * torch.randn(z3.shape, generator=gen, device=device)
            z = torch.cat([z[:, :3], z3[(..., *on_grid(crop))] / LATENT_SCALE], dim=1)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            y = vae.decode(z).float()
        l1 = (y - x).abs().mean()
        grad = sum((a - b).abs().mean() for a, b in zip(image_gradients(y), image_gradients(x)))
        loss = l1 + grad + moment
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for param, index in frozen:
            param.grad[index] = 0.0
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        if step % 50 == 0 or step == cfg.steps - 1:
            extra = {}
            if step % 250 == 0 or step == cfg.steps - 1:
                extra["held_out_psnr"] = _psnr(vae, held_out, lambda chunk: fast_latents(chunk, scale, code))
            log.step(step + 1, l1=l1.item(), grad=grad.item(), moment=moment.item(), **extra)
    vae.eval()
    encoder = "fixed block-mean code (block_code_init), not trained"
    if code is not None:
        code.eval()
        calibrate_code(vae, code)
        latent_code.embed(vae, code)
        encoder = ("fixed block-mean code (block_code_init) in channels 0-2; channel 3 learned with the decoder "
                   "(latent_code.ShapeCode)")
    runs, minutes = common.run_record(previous, cfg, log.minutes,
                                      previous and previous.get("metrics", {}).get("train_minutes"))
    metrics = {"psnr_db": vae_psnr(vae, device, cfg.eval_images), "latent_scale_applied": scale,
               "train_minutes": minutes}
    log.close(**metrics)
    common.save(out, vae.state_dict(), {"config": VAE_CONFIG, "training": runs, "metrics": metrics,
                                        "encoder": encoder}, dtype=torch.float32)
    assemble_if_ready(checkpoint, measure_quality, vae_path=out)
    return vae


_CONSTANT = 300.0  # the value of each group's constant channel (see block_code_init)


@torch.no_grad()
def block_code_init(vae: AutoencoderKL) -> None:
    """Set ``vae`` (random weights, any ``ch`` >= 9) to encode the mean colour of each 8x8 block into latent
    channels 0-2 and to decode it back by nearest-neighbour upsampling, exactly enough that training starts
    at the reconstruction error of that code instead of at the mean image.

    Colour ``c`` travels in GroupNorm group ``c`` as three channels ``(u, -u, K)``: with the constant ``K``
    much larger than ``u`` a group's statistics hardly depend on the image, so GroupNorm is affine, and
    its scale and bias undo the normalisation; ``silu(u) - silu(-u)`` is exactly ``u``, in any precision. No ResnetBlock's ``conv2`` nor the attention's ``proj_out`` writes to the signal
    groups; the other channels keep their random weights, except that none reads a constant channel
    (whose value would drown the signal in every later GroupNorm), and they feed the decoder's
    ``conv_out`` through weights that start nearly at zero. Downsampling averages each 2x2 block;
    upsampling copies (a smoothing kernel would shrink ``K`` at the zero-padded border and shift every
    group's statistics). The posterior starts narrow (log-variance -8)."""
    config = vae.config
    assert config.ch // 32 >= 3 and config.z_channels == config.embed_dim >= 3
    center = torch.zeros(3, 3)
    center[1, 1] = 1.0
    average = torch.zeros(3, 3)
    average[:2, :2] = 0.25  # a stride-2 conv over the right/bottom-padded input: taps 0 and 1 are 2i, 2i+1
    groups = [(3 * c, 3 * c + 1, 3 * c + 2) for c in range(3)]

    for module in vae.modules():  # blocks add nothing to the signal groups
        for name in ("conv2", "proj_out"):
            if hasattr(module, name) and isinstance(getattr(module, name), torch.nn.Conv2d):
                getattr(module, name).weight[:9] = 0.0
                getattr(module, name).bias[:9] = 0.0

    def split(conv: torch.nn.Conv2d) -> None:  # input channel c -> (u, -u, K) in group c
        for c, (u, v, k) in enumerate(groups):
            conv.weight[[u, v, k]] = 0.0
            conv.weight[u, c], conv.weight[v, c] = center, -center
            conv.bias[[u, v, k]] = torch.tensor([0.0, 0.0, _CONSTANT])

    def carry(conv: torch.nn.Conv2d, taps: torch.Tensor) -> None:  # each signal channel maps to itself
        for channel in (ch for group in groups for ch in group):
            conv.weight[channel] = 0.0
            conv.weight[channel, channel] = taps
            conv.bias[channel] = 0.0

    def merge(norm: torch.nn.GroupNorm, conv: torch.nn.Conv2d) -> None:  # group c -> output channel c
        std = (2.0 / 9.0) ** 0.5 * _CONSTANT  # of (u, -u, K) for small u; the group's mean is K / 3
        conv.weight.zero_()
        conv.bias.zero_()
        for c, (u, v, k) in enumerate(groups):
            norm.weight[[u, v, k]] = torch.tensor([std, std, 0.0])
            norm.bias[[u, v, k]] = torch.tensor([_CONSTANT / 3] * 2 + [0.0])
            conv.weight[c, u], conv.weight[c, v] = center, -center

    encoder, decoder = vae.encoder, vae.decoder
    split(encoder.conv_in)
    for level in encoder.down:
        if level.downsample is not None:
            carry(level.downsample.conv, average)
    merge(encoder.norm_out, encoder.conv_out)
    split(decoder.conv_in)
    for level in decoder.up:
        if level.upsample is not None:
            carry(level.upsample.conv, center)
    merge(decoder.norm_out, decoder.conv_out)
    for conv in _group_structured_convs(vae):  # the other channels read the signal, not the constants
        conv.weight[9:, _CONSTANTS] = 0.0
    decoder.conv_out.weight[:, 9:].normal_(0.0, 1e-4)  # not zero, so that training reaches the other channels
    dim = config.embed_dim
    for conv in (vae.quant_conv, vae.post_quant_conv):
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[:dim, :dim, 0, 0] = torch.eye(dim)
    vae.quant_conv.bias[dim:] = -8.0


_CONSTANTS = [2, 5, 8]


def _group_structured_convs(module: torch.nn.Module) -> list[torch.nn.Conv2d]:
    """The 3x3/1x1 convolutions whose input channels are laid out in the (u, -u, K) groups."""
    return [m for m in module.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels >= 9
            and m.out_channels >= 9]


def base_path(decoder) -> list[tuple[torch.nn.Parameter, tuple]]:
    """(parameter, index) of every weight the decoder's block-mean path runs through: what writes to the
    signal groups and what reads them into the output. Training leaves these as set (Adam moves every
    weight of a 96x3x3 convolution at the same rate, which shifts the constant channels and with them
    every group's normalisation within a hundred steps) and learns the rest, a correction added to the
    nearest-neighbour picture from the other channels."""
    signal = slice(0, 9)
    out = [(decoder.norm_out.weight, (signal,)), (decoder.norm_out.bias, (signal,)),
           (decoder.conv_out.weight, (slice(None), signal))]
    out += [(conv.weight, (slice(9, None), _CONSTANTS)) for conv in _group_structured_convs(decoder)]
    for module in decoder.modules():
        for name in ("conv_in", "conv2", "proj_out", "conv"):
            conv = getattr(module, name, None)
            if isinstance(conv, torch.nn.Conv2d) and conv is not decoder.conv_out:
                out += [(conv.weight, (signal,)), (conv.bias, (signal,))]
    return out


@torch.no_grad()
def rescale_latents(vae: AutoencoderKL, s: float) -> float:
    """Multiply the latent space by ``s`` without changing what decodes: the mean half of ``quant_conv`` is
    scaled by ``s``, ``post_quant_conv``'s weight by ``1/s``, the log-variance moves by ``2 log s``."""
    c = vae.config.embed_dim
    vae.quant_conv.weight[:c] *= s
    vae.quant_conv.bias[:c] *= s
    vae.quant_conv.bias[c:] += 2 * np.log(s)
    vae.post_quant_conv.weight /= s
    return s


@torch.no_grad()
def vae_psnr(vae: AutoencoderKL, device: torch.device, n: int = 256) -> float:
    """Reconstruction PSNR (dB) on held-out renders at 128 pixels, through the encoder and the decoder."""
    x = common.to_tensor(common.render_set(common.EVAL_SEED, range(n))).to(device)
    return _psnr(vae, x, vae.encode)


@torch.no_grad()
def calibrate_code(vae: AutoencoderKL, code: ShapeCode) -> None:
    """Shift and scale channel 3 to zero mean and unit variance on the calibration renders; ``post_quant_conv``
    undoes it, so the decoder reads what it was trained on."""
    device = vae.post_quant_conv.weight.device
    x = common.to_tensor(common.render_set(TRAIN_SEED, range(CALIBRATION_IMAGES)))
    z3 = torch.cat([code(chunk.to(device)) for chunk in x.split(64)])
    mean, std = z3.mean().item(), z3.std().item()
    code.normalise(mean, std)
    post = vae.post_quant_conv
    post.bias[3] += post.weight[3, 3, 0, 0] * mean / LATENT_SCALE
    post.weight[3, 3] *= std


@torch.no_grad()
def _psnr(vae: AutoencoderKL, x: torch.Tensor, encode) -> float:
    y = torch.cat([vae.decode(encode(chunk)).clamp(-1, 1) for chunk in x.split(16)])
    mse = ((y - x) / 2).pow(2).mean().item()
    return round(10 * np.log10(1 / mse), 2)


def load_vae(path: Path | None = None, device="cpu") -> AutoencoderKL:
    """The autoencoder in stage ``vae``'s file (default) or in an assembled checkpoint."""
    from safetensors.torch import load_file
    weights = load_file(str(path or vae_file()))
    if any(k.startswith("first_stage_model.") for k in weights):
        weights = _unprefixed(weights, "first_stage_model.")
    vae = AutoencoderKL(VAE_CONFIG)
    vae.load_state_dict({k: v.float() for k, v in weights.items()})
    return vae.to(device).eval().requires_grad_(False)


# --- text encoder + UNet -------------------------------------------------------------------------------------
class Captions:
    """Caption -> token ids of its first 77-token chunk, exactly as Loom's TextEncoder tokenizes SD1 prompts.

    A caption is plain words (no weights, no embeddings), and CLIP's tokenizer splits text into pieces within
    words, so its tokens are each word's tokens in turn: those are cached per word, which makes a batch of
    captions fifteen times cheaper than tokenizing each (training draws new ones every step)."""

    def __init__(self):
        self.tokenizer = CLIPTokenizer.default()
        self.words: dict[str, list[int]] = {}

    def ids(self, text: str) -> list[int]:
        ids = [self.tokenizer.bos_id]
        for word in text.split():
            if word not in self.words:
                self.words[word] = self.tokenizer.encode(word)
            ids += self.words[word]
        if len(ids) > 76 or any(c in text for c in "()[]:\\"):  # longer than a chunk, or weight syntax
            return [t for t, _ in tokenize_with_weights(text, self.tokenizer, pad_token=PAD_TOKEN)[0]]
        return ids + [self.tokenizer.eos_id] + [PAD_TOKEN] * (76 - len(ids))

    def batch(self, texts: list[str], device) -> torch.Tensor:
        return torch.tensor([self.ids(t) for t in texts], device=device)


def encode_text(clip: CLIPTextModel, ids: torch.Tensor) -> torch.Tensor:
    """SD1's reading of CLIP: last layer through the final LayerNorm."""
    return clip.encode(ids, layer="last", final_layer_norm=True)[0]


@torch.no_grad()
def encode_latents(seed: int, n: int, device, texture: str | None = None, shape_code: bool = False,
                   size: int = 128) -> torch.Tensor:
    """Scaled latents (``LATENT_SCALE`` applied) of ``size``-pixel renders 0..n-1 of the set ``seed``: what the
    encoder of the autoencoder in use (:func:`autoencoder_file`) gives them, with channel 3 at zero unless
    ``shape_code`` (the runs before the autoencoder learned channel 3 saw it so, and reproduce only so). With the
    learned channel 3 they cost about 25 ms a 128-pixel render on a CPU core (four times that at 256), so they are
    kept in ``common.WORK`` under the code's fingerprint."""
    scale, code = latent_scale(), training_code() if shape_code else None
    if shape_code and code is None:
        raise RuntimeError(f"{autoencoder_file()} has no learned latent channel 3: train stage vae first "
                           "(python -m engine.shapes.train vae)")
    cache = None
    if code is not None:
        fingerprint = latent_code.fingerprint(code)
        tag = f"{texture}-{fingerprint}" + (f"-{size}px" if size != 128 else "")
        cache = common.WORK / f"latents-{seed}-{n}-{tag}.pt"
        for path in common.WORK.glob(f"latents-{seed}-*-{tag}.pt"):
            if int(path.name.split("-")[2]) >= n:  # render i is the same whatever the set's length
                return torch.load(path, weights_only=True)[:n].to(device)
    if code is not None:  # its full-resolution convolutions are the cost: on the GPU when training runs there
        code = code.to(device)
    out = [fast_latents(common.to_tensor(common.render_set(seed, range(start, min(n, start + 500)), size, texture))
                        .to(device), scale, code).cpu() for start in range(0, n, 500)]
    latents = torch.cat(out) * LATENT_SCALE
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(latents, cache.with_suffix(".tmp"))
        cache.with_suffix(".tmp").replace(cache)
    return latents.to(device)


def autoencoder_file() -> Path:
    """The autoencoder the other stages train for: stage ``vae``'s output when this machine has trained one,
    else the shipped checkpoint's."""
    return vae_file() if vae_file().is_file() else CHECKPOINT


def training_code() -> ShapeCode | None:
    """The learned channel-3 code of :func:`autoencoder_file`'s encoder, or None when channel 3 is unused."""
    path = autoencoder_file()
    if not path.is_file():
        return None
    vae = load_vae(path)
    return latent_code.extract(vae).eval() if latent_code.has_code(vae) else None


def alphas_cumprod() -> torch.Tensor:
    """SD1's ᾱ_t for t = 0..999 (from the sigma table the sampler uses, so train and test agree)."""
    sigmas = DiscreteSchedule().sigmas.double()
    return (1.0 / (1.0 + sigmas ** 2)).float()


def noised(x0: torch.Tensor, ab: torch.Tensor, gen: torch.Generator, offset: float = 0.0):
    """``(t, noise, x_t)``: a random integer timestep per sample and the forward process at it. ``offset``: the
    standard deviation of a per-sample, per-channel constant added to the noise ("offset noise"). SD1's schedule
    keeps sqrt(ᾱ) = 0.068 of the image at the last step, and on a 16x16 latent the plain noise's mean has a
    standard deviation of 1/16, about as much: a model trained without offset reads an image's overall colour
    (the background) off the starting noise and ignores the prompt's; with it, the noise's mean says nothing."""
    t = torch.randint(0, len(ab), (len(x0),), generator=gen, device=x0.device)
    noise = torch.randn(x0.shape, generator=gen, device=x0.device)
    if offset:
        noise = noise + offset * torch.randn((*x0.shape[:2], 1, 1), generator=gen, device=x0.device)
    a = ab[t].view(-1, 1, 1, 1)
    return t, noise, a.sqrt() * x0 + (1 - a).sqrt() * noise


def diffusion_loss(unet, xt, t, noise, context, ab, min_snr, control=None):
    """Epsilon MSE of ``unet`` on ``x_t`` (from :func:`noised`), min-SNR weighted unless ``min_snr`` is None."""
    eps = unet(xt, t.float(), context, control=control)
    a = ab[t].view(-1, 1, 1, 1)
    snr = a / (1 - a)
    weight = torch.clamp(snr, max=min_snr) / snr if min_snr else torch.ones_like(snr)
    return (weight * (eps.float() - noise).pow(2)).mean()


def captions_for(indices, rng: np.random.Generator, cfg: T2ITraining, seed: int = TRAIN_SEED,
                 p_drop_positions: float | None = None) -> list[str]:
    return ["" if rng.random() < cfg.p_uncond
            else common.describe(_scene(seed, int(i)), rng, cfg.p_drop_words, p_drop_positions) for i in indices]


def focus_repeats(cfg: T2ITraining, seed: int = TRAIN_SEED) -> np.ndarray | None:
    """How many times a pass draws each training scene: ``cfg.focus_repeats`` for a scene with a shape of a kind
    in ``cfg.focus`` (the kinds the model draws worst), else once; None without a focus."""
    if not cfg.focus:
        return None
    return np.array([cfg.focus_repeats if any(s.kind in cfg.focus for s in _scene(seed, i).shapes) else 1
                     for i in range(cfg.images)])


def hires_steps(cfg: T2ITraining) -> np.ndarray | None:
    """Which steps train on 256-pixel renders (a fraction ``cfg.hires`` of them, evenly spread), or None. A
    256-pixel render is the same scene (sizes and positions are fractions of the side) on 32x32 latents: a model
    that has only seen 16x16 ones draws each shape at its 128-pixel size in latent pixels, so at 256 pixels it
    tiles the prompt's shapes, and a hires-fix second pass turns a large circle into lumps."""
    if not cfg.hires:
        return None
    return np.floor((np.arange(cfg.steps) + 1) * cfg.hires) > np.floor(np.arange(cfg.steps) * cfg.hires)


@lru_cache(maxsize=None)  # each scene is captioned once an epoch: drawing it again costs more than the rest of a step
def _scene(seed: int, index: int):
    return scene_at(seed, index)


def train_t2i(cfg: T2ITraining, device: torch.device, out: Path = CHECKPOINT, measure_quality: bool = True) -> Path:
    common.seed_everything(cfg.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    latents = encode_latents(TRAIN_SEED, cfg.images, device, shape_code=cfg.shape_code)
    unet, clip = load_networks(t2i_file()) if cfg.resume else (UNetModel(UNET_CONFIG), CLIPTextModel(CLIP_CONFIG))
    previous = common.metadata_of(t2i_file()) if cfg.resume else None
    unet, clip = unet.to(device), clip.to(device)
    params = list(unet.parameters()) + list(clip.parameters())
    opt = common.adamw(params, cfg.lr, weight_decay=0.01)
    ema_unet, ema_clip = common.EMA(unet, cfg.ema), common.EMA(clip, cfg.ema)
    ab = alphas_cumprod().to(device)
    captions, rng = Captions(), np.random.default_rng(cfg.seed)
    gen = torch.Generator(device).manual_seed(cfg.seed)
    log = Log("t2i", common.WORK / "t2i.log.jsonl", cfg.steps,
              {"training": cfg, "unet": UNET_CONFIG, "clip": CLIP_CONFIG, "vae": VAE_CONFIG})
    hires = hires_steps(cfg)
    if hires is not None:
        hires_latents = encode_latents(TRAIN_SEED, cfg.hires_images, device, shape_code=cfg.shape_code, size=256)
        hires_batches = common.batches(cfg.hires_images, cfg.batch // 4, int(hires.sum()), cfg.seed + 1)
    for step, idx in enumerate(common.batches(cfg.images, cfg.batch, cfg.steps, cfg.seed, focus_repeats(cfg))):
        common.set_lr(opt, common.lr_at(step, cfg.steps, cfg.lr))
        source = latents
        if hires is not None and hires[step]:  # a quarter of the batch: four times the latents each, the same cost
            idx, source = next(hires_batches), hires_latents
        x0 = source[torch.as_tensor(idx, device=device)].float()
        ids = captions.batch(captions_for(idx, rng, cfg), device)
        t, noise, xt = noised(x0, ab, gen, cfg.offset_noise)
        loss = common.optimise(opt, diffusion_loss(unet, xt, t, noise, encode_text(clip, ids), ab, cfg.min_snr), params)
        ema_unet.update(unet, step)
        ema_clip.update(clip, step)
        if step % 100 == 0 or step == cfg.steps - 1:
            log.step(step + 1, loss=loss)
    log.close()
    runs, minutes = common.run_record(previous, cfg, log.minutes, previous and previous.get("train_minutes"))
    common.save(t2i_file(), {**common.prefixed("model.diffusion_model.", ema_unet.state_dict(unet)),
                             **common.prefixed("cond_stage_model.transformer.", ema_clip.state_dict(clip))},
                {"training": runs, "device": str(device), "train_minutes": minutes})
    return assemble_if_ready(out, measure_quality)


def load_networks(path: Path) -> tuple[UNetModel, CLIPTextModel]:
    """The UNet and text encoder (fp32) in stage ``t2i``'s file or an assembled checkpoint."""
    from safetensors.torch import load_file
    weights = load_file(str(path))
    unet, clip = UNetModel(UNET_CONFIG), CLIPTextModel(CLIP_CONFIG)
    unet.load_state_dict(_unprefixed(weights, "model.diffusion_model."))
    clip.load_state_dict(_unprefixed(weights, "cond_stage_model.transformer."))
    return unet, clip


def _unprefixed(weights: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v.float() for k, v in weights.items() if k.startswith(prefix)}


def t2i_file() -> Path:
    """Where stage ``t2i`` leaves the UNet and text encoder (EMA weights) for the checkpoint."""
    return common.WORK / "t2i.safetensors"


def networks_file() -> Path:
    """The UNet and text encoder the ControlNet and LoRA train against: the t2i stage's output when this
    machine has trained one, else the shipped checkpoint (the same networks)."""
    return t2i_file() if t2i_file().is_file() else CHECKPOINT


def t2i_runs_in(path: Path) -> int:
    """How many t2i runs made the UNet in ``path`` (stage t2i's file or an assembled checkpoint): recorded with each
    ControlNet and LoRA run, which train against that UNet."""
    runs = common.metadata_of(path).get("training")
    runs = runs.get("t2i") if isinstance(runs, dict) else runs
    return len(runs) if isinstance(runs, list) else 1


def assemble_if_ready(out: Path = CHECKPOINT, measure_quality: bool = True, vae_path: Path | None = None) -> Path | None:
    """Write the checkpoint from the two stages' files once both exist, then measure it. Stage ``t2i``'s
    runs without ``shape_code`` do not depend on stage ``vae`` (they may run in either order, or at once); a run
    with it trains on the latents of stage ``vae``'s last run."""
    vae_path = vae_path or vae_file()
    if not (vae_path.is_file() and t2i_file().is_file()):
        print("[checkpoint] waiting for the other stage (vae or t2i) before writing the checkpoint", flush=True)
        return None
    from safetensors.torch import load_file
    vae_meta, t2i_meta = common.metadata_of(vae_path), common.metadata_of(t2i_file())
    tensors = {**load_file(str(t2i_file())), **common.prefixed("first_stage_model.", load_file(str(vae_path)))}
    metadata = {"config": {"unet": UNET_CONFIG, "clip": CLIP_CONFIG, "vae": VAE_CONFIG},
                "training": {"t2i": t2i_meta.get("training"), "vae": vae_meta.get("training")},
                "vae_encoder": vae_meta.get("encoder"), "device": t2i_meta.get("device"),
                "train_minutes": {"t2i": float(t2i_meta.get("train_minutes", 0)),
                                  "vae": (vae_meta.get("metrics") or {}).get("train_minutes")},
                "modelspec.prediction_type": "epsilon"}
    metrics = {"vae": vae_meta.get("metrics")}
    common.save(out, tensors, {**metadata, "metrics": metrics})
    print(f"[checkpoint] wrote {out}", flush=True)
    if measure_quality:
        common.measure_file(out, "checkpoint")
    return out
