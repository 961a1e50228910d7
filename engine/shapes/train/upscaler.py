"""The shipped 2x upscaler: a Real-ESRGAN compact network (SRVGGNetCompact, spandrel's ``Compact``).

Trained on held-apart renders: the target is a scene rendered at 256 pixels, the input the same render
shrunk to 128 with area averaging, MSE loss (what PSNR measures) on random 48-pixel input crops.
Most of a render is flat colour, where bicubic is exact: a first run with blur and noise on half the
inputs and L1 loss left ~1 level of error there and lost to bicubic (35.4 vs 38.3 dB), so the inputs
are clean (``p_degrade`` 0; the option stays for sharpening decoded images). The file has Real-ESRGAN's
``body.N`` keys, so spandrel (and any tool using it) detects it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..scene import render, scene_at
from . import common
from .common import ASSETS, TRAIN_SEED, Log

UPSCALER = ASSETS / "upscale_models" / "loom-shapes-2x.safetensors"
SCALE = 2
NETWORK = dict(num_in_ch=3, num_out_ch=3, num_feat=32, num_conv=8, upscale=SCALE, act_type="prelu")


@dataclass(frozen=True)
class UpscalerTraining:
    steps: int = 3000
    batch: int = 16
    crop: int = 48
    lr: float = 1e-3
    p_degrade: float = 0.0
    seed: int = 0


def network():
    from spandrel.architectures.Compact import Compact
    return Compact(**NETWORK)


def pair(index: int, rng: np.random.Generator, cfg: UpscalerTraining) -> tuple[np.ndarray, np.ndarray]:
    """(low-res crop, high-res crop) in 0..1 float, HWC."""
    hr = render(scene_at(TRAIN_SEED + 200, index), 128 * SCALE, texture="stripes" if rng.random() < 0.2 else None)
    lr = cv2.resize(hr, (128, 128), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    if rng.random() < cfg.p_degrade:
        lr = cv2.GaussianBlur(lr, (0, 0), rng.uniform(0.3, 1.0))
        lr = np.clip(lr + rng.normal(0, rng.uniform(0, 0.02), lr.shape).astype(np.float32), 0, 1)
    y, x = rng.integers(0, 128 - cfg.crop + 1, size=2)
    hr = hr[SCALE * y:SCALE * (y + cfg.crop), SCALE * x:SCALE * (x + cfg.crop)].astype(np.float32) / 255.0
    return lr[y:y + cfg.crop, x:x + cfg.crop], hr


def chw(batch: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous()


def train_upscaler(cfg: UpscalerTraining, device: torch.device, out: Path = UPSCALER, measure_quality: bool = True) -> Path:
    common.seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = network().to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    log = Log("upscaler", common.WORK / "upscaler.log.jsonl", cfg.steps, {"training": cfg, "network": NETWORK})
    for step in range(cfg.steps):
        common.set_lr(opt, common.lr_at(step, cfg.steps, cfg.lr))
        pairs = [pair(step * cfg.batch + k, rng, cfg) for k in range(cfg.batch)]
        lr, hr = chw([p[0] for p in pairs]).to(device), chw([p[1] for p in pairs]).to(device)
        loss = (net(lr) - hr).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == cfg.steps - 1:
            log.step(step + 1, mse=loss.item())
    metadata = {"config": NETWORK, "architecture": "Real-ESRGAN compact (SRVGGNetCompact)", "training": cfg,
                "device": str(device), "train_minutes": round(log.minutes, 1)}
    common.save(out, net.state_dict(), {**metadata, "metrics": {}}, dtype=torch.float32)
    log.close()
    if measure_quality:
        common.measure_file(out, "upscaler")
    return out
