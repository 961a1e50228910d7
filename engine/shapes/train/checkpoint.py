"""The shipped text-to-image checkpoint: a KL autoencoder, then a UNet and a CLIP text encoder trained together.

Everything is Loom's own network classes in scaled-down SD1 configs, so the saved file has the SD1
single-file layout (``first_stage_model.``, ``model.diffusion_model.``, ``cond_stage_model.transformer.``)
and loads through :func:`engine.loading.checkpoint.load_checkpoint` like any SD1.5 file.

Stage ``vae``: L1 + image-gradient L1 + a small KL term (posterior starting narrow) on 32-pixel crops of renders (a quarter of them
striped, so the LoRA's texture can be decoded). The trained encoder is then calibrated so that latents
times SD1's 0.18215 have unit variance: the mean half of ``quant_conv`` is scaled by ``s`` and
``post_quant_conv``'s weight by ``1/s`` (decoding is unchanged; the log-variance moves by ``2 log s``).

Stage ``t2i``: epsilon prediction on SD1's scaled-linear 1000-step schedule, min-SNR-5 loss weights,
10% empty captions (classifier-free guidance), captions with sizes, positions and backgrounds randomly
left out, the text encoder read as SD1 reads CLIP-L (last layer, final LayerNorm, padded with the end
token), EMA weights saved.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...models.clip import CLIPTextConfig, CLIPTextModel
from ...models.unet import UNetConfig, UNetModel
from ...models.vae import AutoencoderKL, VAEConfig
from ...sampling.schedules import DiscreteSchedule
from ...text import CLIPTokenizer, tokenize_with_weights
from ..scene import scene_at
from . import common
from .common import ASSETS, LATENT_SCALE, TRAIN_SEED, Log

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
    batch: int = 16
    crop: int = 32
    lr: float = 1e-3
    kl_weight: float = 1e-6
    striped_fraction: float = 0.25
    calibration_images: int = 512
    eval_images: int = 256
    seed: int = 0


@dataclass(frozen=True)
class T2ITraining:
    images: int = 6000
    steps: int = 4000
    batch: int = 32
    lr: float = 5e-4
    p_uncond: float = 0.1
    p_drop_words: float = 0.3
    min_snr: float = 5.0
    ema: float = 0.999
    seed: int = 0


# --- VAE ---------------------------------------------------------------------------------------------------
def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def vae_batch(step: int, cfg: VAETraining, rng: np.random.Generator) -> torch.Tensor:
    indices = range(step * cfg.batch, (step + 1) * cfg.batch)
    striped = rng.random(cfg.batch) < cfg.striped_fraction
    from ..scene import render
    images = np.stack([render(scene_at(TRAIN_SEED + 100, i), 128, texture="stripes" if s else None)
                       for i, s in zip(indices, striped)])
    x = common.to_tensor(images)
    ys, xs = rng.integers(0, 128 - cfg.crop + 1, size=2)
    return x[..., ys:ys + cfg.crop, xs:xs + cfg.crop]


def vae_file() -> Path:
    """Where stage ``vae`` leaves the trained autoencoder for the later stages."""
    return common.WORK / "vae.safetensors"


def train_vae(cfg: VAETraining, device: torch.device, out: Path | None = None) -> AutoencoderKL:
    out = out or vae_file()
    common.seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    vae = AutoencoderKL(VAE_CONFIG).to(device)
    with torch.no_grad():  # start with a narrow posterior (std e^-4): unit-variance noise would drown the code
        vae.quant_conv.bias[VAE_CONFIG.embed_dim:] = -8.0
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    log = Log("vae", out.with_suffix(".log.jsonl"), cfg.steps, {"training": cfg, "vae": VAE_CONFIG})
    gen = torch.Generator(device).manual_seed(cfg.seed)
    for step in range(cfg.steps):
        common.set_lr(opt, common.lr_at(step, cfg.steps, cfg.lr, warmup=100))
        x = vae_batch(step, cfg, rng).to(device)
        moments = vae.quant_conv(vae.encoder(x))
        mean, logvar = moments.chunk(2, dim=1)
        logvar = logvar.clamp(-30, 20)
        z = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=gen, device=device)
        y = vae.decode(z)
        l1 = (y - x).abs().mean()
        grad = sum((a - b).abs().mean() for a, b in zip(image_gradients(y), image_gradients(x)))
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3)).mean()
        loss = l1 + grad + cfg.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == cfg.steps - 1:
            log.step(step + 1, l1=l1.item(), grad=grad.item(), kl=kl.item())
    vae.eval()
    scale = calibrate(vae, device, cfg.calibration_images)
    metrics = {"psnr_db": vae_psnr(vae, device, cfg.eval_images), "latent_scale_applied": scale, "train_minutes": round(log.minutes, 1)}
    log.close(**metrics)
    common.save(out, vae.state_dict(), {"config": VAE_CONFIG, "training": cfg, "metrics": metrics},
                dtype=torch.float32)
    return vae


@torch.no_grad()
def calibrate(vae: AutoencoderKL, device: torch.device, n: int = 512) -> float:
    """Rescale the latent space so that ``LATENT_SCALE * latent`` has unit standard deviation."""
    x = common.to_tensor(common.render_set(TRAIN_SEED, range(n))).to(device)
    latents = torch.cat([vae.encode(chunk) for chunk in x.split(64)])
    s = 1.0 / (LATENT_SCALE * latents.std().item())
    c = vae.config.embed_dim
    vae.quant_conv.weight[:c] *= s
    vae.quant_conv.bias[:c] *= s
    vae.quant_conv.bias[c:] += 2 * np.log(s)
    vae.post_quant_conv.weight /= s
    return s


@torch.no_grad()
def vae_psnr(vae: AutoencoderKL, device: torch.device, n: int = 256) -> float:
    """Reconstruction PSNR (dB) on held-out renders at 128 pixels."""
    x = common.to_tensor(common.render_set(common.EVAL_SEED, range(n))).to(device)
    y = torch.cat([vae.decode(vae.encode(chunk)).clamp(-1, 1) for chunk in x.split(64)])
    mse = ((y - x) / 2).pow(2).mean().item()
    return round(10 * np.log10(1 / mse), 2)


def load_vae(path: Path | None = None, device="cpu") -> AutoencoderKL:
    from safetensors.torch import load_file
    vae = AutoencoderKL(VAE_CONFIG)
    vae.load_state_dict(load_file(str(path or vae_file())))
    return vae.to(device).eval().requires_grad_(False)


# --- text encoder + UNet -------------------------------------------------------------------------------------
class Captions:
    """Caption -> token ids of its first 77-token chunk, exactly as Loom's TextEncoder tokenizes SD1 prompts."""

    def __init__(self):
        self.tokenizer = CLIPTokenizer.default()
        self.cache: dict[str, list[int]] = {}

    def ids(self, text: str) -> list[int]:
        if text not in self.cache:
            chunk = tokenize_with_weights(text, self.tokenizer, pad_token=PAD_TOKEN)[0]
            self.cache[text] = [t for t, _ in chunk]
        return self.cache[text]

    def batch(self, texts: list[str], device) -> torch.Tensor:
        return torch.tensor([self.ids(t) for t in texts], device=device)


def encode_text(clip: CLIPTextModel, ids: torch.Tensor) -> torch.Tensor:
    """SD1's reading of CLIP: last layer through the final LayerNorm."""
    return clip.encode(ids, layer="last", final_layer_norm=True)[0]


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, seed: int, n: int, device, texture: str | None = None) -> torch.Tensor:
    """Scaled latents (``LATENT_SCALE`` applied) of renders 0..n-1 of the set ``seed``, cached on disk."""
    cache = common.WORK / f"latents-{seed}-{n}-{texture or 'plain'}.pt"
    if cache.is_file() and cache.stat().st_mtime > vae_file().stat().st_mtime:
        return torch.load(cache, weights_only=True)
    out = []
    for start in range(0, n, 256):
        images = common.render_set(seed, range(start, min(n, start + 256)), texture=texture)
        out.append(vae.encode(common.to_tensor(images).to(device)).mul(LATENT_SCALE).half().cpu())
    latents = torch.cat(out)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(latents, cache)
    return latents


def alphas_cumprod() -> torch.Tensor:
    """SD1's ᾱ_t for t = 0..999 (from the sigma table the sampler uses, so train and test agree)."""
    sigmas = DiscreteSchedule().sigmas.double()
    return (1.0 / (1.0 + sigmas ** 2)).float()


def diffusion_loss(unet, x0, context, t, noise, ab, min_snr, control=None):
    """Min-SNR-weighted epsilon MSE at integer timesteps ``t``."""
    a = ab[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    eps = unet(xt, t.float(), context, control=control)
    snr = a / (1 - a)
    weight = torch.clamp(snr, max=min_snr) / snr
    return (weight * (eps.float() - noise).pow(2)).mean()


def captions_for(indices, rng: np.random.Generator, cfg: T2ITraining, seed: int = TRAIN_SEED) -> list[str]:
    return ["" if rng.random() < cfg.p_uncond else common.describe(scene_at(seed, int(i)), rng, cfg.p_drop_words)
            for i in indices]


def train_t2i(cfg: T2ITraining, device: torch.device, out: Path = CHECKPOINT, measure_quality: bool = True) -> Path:
    common.seed_everything(cfg.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    vae = load_vae(device=device)
    latents = encode_latents(vae, TRAIN_SEED, cfg.images, device).to(device)
    unet = UNetModel(UNET_CONFIG).to(device)
    clip = CLIPTextModel(CLIP_CONFIG).to(device)
    params = list(unet.parameters()) + list(clip.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    ema_unet, ema_clip = common.EMA(unet, cfg.ema), common.EMA(clip, cfg.ema)
    ab = alphas_cumprod().to(device)
    captions, rng = Captions(), np.random.default_rng(cfg.seed)
    gen = torch.Generator(device).manual_seed(cfg.seed)
    log = Log("t2i", common.WORK / "t2i.log.jsonl", cfg.steps,
              {"training": cfg, "unet": UNET_CONFIG, "clip": CLIP_CONFIG, "vae": VAE_CONFIG})
    for step, idx in enumerate(common.batches(cfg.images, cfg.batch, cfg.steps, cfg.seed)):
        common.set_lr(opt, common.lr_at(step, cfg.steps, cfg.lr))
        x0 = latents[torch.as_tensor(idx, device=device)].float()
        ids = captions.batch(captions_for(idx, rng, cfg), device)
        t = torch.randint(0, 1000, (len(idx),), generator=gen, device=device)
        noise = torch.randn(x0.shape, generator=gen, device=device)
        loss = diffusion_loss(unet, x0, encode_text(clip, ids), t, noise, ab, cfg.min_snr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_unet.update(unet, step)
        ema_clip.update(clip, step)
        if step % 100 == 0 or step == cfg.steps - 1:
            log.step(step + 1, loss=loss.item())
    vae_meta = common.metadata_of(vae_file())
    tensors = {**common.prefixed("model.diffusion_model.", ema_unet.state_dict(unet)),
               **common.prefixed("cond_stage_model.transformer.", ema_clip.state_dict(clip)),
               **common.prefixed("first_stage_model.", vae.state_dict())}
    metadata = {"config": {"unet": UNET_CONFIG, "clip": CLIP_CONFIG, "vae": VAE_CONFIG},
                "training": {"t2i": cfg, "vae": vae_meta.get("training")},
                "device": str(device), "train_minutes": round(log.minutes, 1),
                "modelspec.prediction_type": "epsilon"}
    metrics = {"vae": vae_meta.get("metrics")}
    common.save(out, tensors, {**metadata, "metrics": metrics})
    if measure_quality:
        metrics.update(measure())
        common.save(out, tensors, {**metadata, "metrics": metrics})
    log.close(**metrics)
    return out


def measure() -> dict:
    """Adherence of the shipped checkpoint (as the txt2img workflow finds it), through Loom's own loading and sampling path."""
    from ..quality import txt2img_adherence
    return {"txt2img": txt2img_adherence(seeds=1), "txt2img_cfg1": txt2img_adherence(cfg=1.0, seeds=1)}
