"""The shipped LoRA: diagonal stripes inside every shape, in the kohya (sd-scripts) file format.

Low-rank adapters on the frozen checkpoint UNet: every attention projection, feed-forward and
``proj_in``/``proj_out`` (Linear or 1x1 conv), and the 3x3 convolutions of the res blocks (kohya's
"conv" LoRA, as LoCon), trained on the same captions with striped renders as targets. Saved under
kohya's names (``lora_unet_<diffusers module, dots as underscores>.lora_down.weight`` / ``lora_up`` /
``alpha``), which every SD tool reads.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...loading.lora import diffusers_unet_names
from ...models.unet import UNetModel
from . import common
from .checkpoint import (CHECKPOINT, networks_file, t2i_runs_in, UNET_CONFIG, Captions, T2ITraining, alphas_cumprod, captions_for, diffusion_loss,
                         encode_latents, encode_text, noised)
from .common import ASSETS, TRAIN_SEED, Log
from .controlnet import load_checkpoint_networks

LORA = ASSETS / "loras" / "loom-shapes-stripes.safetensors"
TEXTURE = "stripes"


@dataclass(frozen=True)
class LoRATraining:
    images: int = 6000
    steps: int = 1200
    batch: int = 32
    rank: int = 8
    alpha: float = 8.0
    lr: float = 1e-3
    p_uncond: float = 0.1
    min_snr: float = 5.0
    seed: int = 0
    shape_code: bool = True  # latents with the autoencoder's learned channel 3 (see T2ITraining)


class LoRA(nn.Module):
    """``base(x) + up(down(x)) * alpha / rank``; ``down`` keeps the base's kernel, ``up`` is 1x1 and starts at 0."""

    def __init__(self, base: nn.Module, rank: int, alpha: float):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        if isinstance(base, nn.Linear):
            self.down = nn.Linear(base.in_features, rank, bias=False)
            self.up = nn.Linear(rank, base.out_features, bias=False)
        else:
            self.down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding, bias=False)
            self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=5 ** 0.5)
        nn.init.zeros_(self.up.weight)

    def forward(self, x):
        return self.base(x) + self.up(self.down(x)) * self.scale


def is_target(name: str, module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return ".transformer_blocks." in name and not name.endswith(("norm1", "norm2", "norm3"))
    if isinstance(module, nn.Conv2d):
        return name.endswith(("proj_in", "proj_out", "in_layers.2", "out_layers.3"))
    return False


def add_adapters(unet: UNetModel, rank: int, alpha: float) -> dict[str, LoRA]:
    """Wrap every target module of ``unet`` in a LoRA; returns {original module name: adapter}."""
    targets = [(name, m) for name, m in unet.named_modules() if is_target(name, m)]
    adapters = {}
    for name, module in targets:
        parent_name, _, leaf = name.rpartition(".")
        adapter = LoRA(module, rank, alpha)
        setattr(unet.get_submodule(parent_name), leaf, adapter)
        adapters[name] = adapter
    return adapters


def kohya_state_dict(adapters: dict[str, LoRA], alpha: float) -> dict[str, torch.Tensor]:
    """Adapters under kohya's SD1 names (from diffusers' module names)."""
    ours_to_diffusers = {ours: theirs for theirs, ours in diffusers_unet_names(UNET_CONFIG).items()}
    out = {}
    for name, adapter in adapters.items():
        diffusers = ours_to_diffusers[name + ".weight"].removesuffix(".weight")
        stem = "lora_unet_" + diffusers.replace(".", "_")
        out[f"{stem}.lora_down.weight"] = adapter.down.weight.detach()
        out[f"{stem}.lora_up.weight"] = adapter.up.weight.detach()
        out[f"{stem}.alpha"] = torch.tensor(float(alpha))
    return out


def lora_config(cfg: LoRATraining, modules: int) -> dict:
    return {"rank": cfg.rank, "alpha": cfg.alpha, "modules": modules, "unet": UNET_CONFIG,
            "targets": "attention q/k/v/out, feed-forward, proj_in/proj_out, res-block 3x3 convs"}


def train_lora(cfg: LoRATraining, device: torch.device, out: Path = LORA, base: Path | None = None,
               measure_quality: bool = True) -> Path:
    common.seed_everything(cfg.seed)
    base = base or networks_file()
    unet, clip = load_checkpoint_networks(base, device)
    latents = encode_latents(TRAIN_SEED, cfg.images, device, texture=TEXTURE, shape_code=cfg.shape_code)
    adapters = add_adapters(unet, cfg.rank, cfg.alpha)
    params = [p for a in adapters.values() for p in (a.down.weight, a.up.weight)]
    for p in params:
        p.requires_grad_(True)
    unet.to(device)
    opt = common.adamw(params, cfg.lr)
    ab = alphas_cumprod().to(device)
    captions, rng = Captions(), np.random.default_rng(cfg.seed)
    gen = torch.Generator(device).manual_seed(cfg.seed)
    t2i = T2ITraining(p_uncond=cfg.p_uncond)
    log = Log("lora", common.WORK / "lora.log.jsonl", cfg.steps, {"training": cfg, "modules": len(adapters)})
    for step, idx in enumerate(common.batches(cfg.images, cfg.batch, cfg.steps, cfg.seed)):
        common.set_lr(opt, common.lr_at(step, cfg.steps, cfg.lr, warmup=100))
        x0 = latents[torch.as_tensor(idx, device=device)].float()
        with torch.no_grad():
            context = encode_text(clip, captions.batch(captions_for(idx, rng, t2i), device))
        t, noise, xt = noised(x0, ab, gen)
        loss = common.optimise(opt, diffusion_loss(unet, xt, t, noise, context, ab, cfg.min_snr), params)
        if step % 100 == 0 or step == cfg.steps - 1:
            log.step(step + 1, loss=loss)
    tensors = kohya_state_dict(adapters, cfg.alpha)
    metadata = {"config": lora_config(cfg, len(adapters)), "training": cfg, "device": str(device), "train_minutes": round(log.minutes, 1),
                "base_checkpoint": CHECKPOINT.name, "against_t2i_runs": t2i_runs_in(base),
                "effect": "diagonal stripes inside shapes",
                "ss_network_module": "networks.lora", "ss_network_dim": str(cfg.rank),
                "ss_network_alpha": str(cfg.alpha)}
    common.save(out, tensors, {**metadata, "metrics": {}})
    log.close()
    if measure_quality:
        common.measure_file(out, "lora")
    return out
