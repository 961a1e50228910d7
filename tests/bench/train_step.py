"""One training step of the shipped shapes UNet + text encoder (the t2i stage's shapes: batch 32 of 16x16 latents,
77-token captions), with the optimiser the trainers use (fused AdamW) against PyTorch's default AdamW; and one
ControlNet step (batch 16 of 128-pixel hints) with its hint encoder channels-last, as the trainer runs it, against
the default memory format; and one VAE decoder step in fp32 against bf16 autocast.

Run: python -m tests.bench.train_step [--repeats 10] [--batch 32] [--threads N]

Prints the median step time of each and their ratio, measured in the same run on the same weights and batch.
The text encoder's 49,408 x 64 token table is most of its parameters, so the optimiser's own work is a large
share of a step on a CPU; the ControlNet's hint encoder runs at the hint's full resolution, where about half its
step goes. Times are not asserted.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from engine.memory import supports_bf16
from engine.models.clip import CLIPTextModel
from engine.models.unet import UNetModel
from engine.shapes.train import common
from engine.shapes.train.checkpoint import (CLIP_CONFIG, UNET_CONFIG, alphas_cumprod, diffusion_loss, encode_text,
                                            fixed_encoder_vae)
from engine.shapes.train.controlnet import as_hint, channels_last, controlnet_from_unet


def step_times(make_optimiser, batch: int, repeats: int) -> list[float]:
    torch.manual_seed(0)
    unet, clip = UNetModel(UNET_CONFIG), CLIPTextModel(CLIP_CONFIG)
    params = list(unet.parameters()) + list(clip.parameters())
    opt = make_optimiser(params)
    x, t = torch.randn(batch, 4, 16, 16), torch.randint(0, 1000, (batch,)).float()
    ids = torch.randint(0, CLIP_CONFIG.vocab_size, (batch, 77))
    times = []
    for _ in range(repeats + 2):  # two warm-up steps
        start = time.perf_counter()
        eps = unet(x, t, encode_text(clip, ids))
        common.optimise(opt, (eps - x).pow(2).mean(), params)
        times.append(time.perf_counter() - start)
    return times[2:]


def controlnet_step_times(hints_channels_last: bool, batch: int, repeats: int) -> list[float]:
    torch.manual_seed(0)
    unet, clip = UNetModel(UNET_CONFIG).requires_grad_(False), CLIPTextModel(CLIP_CONFIG).requires_grad_(False)
    net = controlnet_from_unet(unet)
    hint = as_hint((torch.rand(batch, 128, 128) > 0.9).to(torch.uint8))
    if hints_channels_last:
        channels_last(net)
    else:
        hint = hint.contiguous()
    params = list(net.parameters())
    opt = common.adamw(params, 3e-4)
    xt, noise, t = torch.randn(batch, 4, 16, 16), torch.randn(batch, 4, 16, 16), torch.randint(0, 1000, (batch,))
    with torch.no_grad():
        context = encode_text(clip, torch.randint(0, CLIP_CONFIG.vocab_size, (batch, 77)))
    ab, times = alphas_cumprod(), []
    for _ in range(repeats + 2):  # two warm-up steps
        start = time.perf_counter()
        control = net(xt, hint, t.float(), context)
        common.optimise(opt, diffusion_loss(unet, xt, t, noise, context, ab, 5.0, control=control), params)
        times.append(time.perf_counter() - start)
    return times[2:]


def vae_step_times(bf16: bool, repeats: int) -> list[float]:
    """One decoder step of the VAE trainer (batch 4 of 64-pixel crops, L1 + gradient L1), autocast to bf16 or not."""
    torch.manual_seed(0)
    vae = fixed_encoder_vae()
    vae.requires_grad_(False)
    params = list(vae.decoder.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = common.adamw(params, 3e-4)
    x, z = torch.rand(4, 3, 64, 64) * 2 - 1, torch.randn(4, 4, 8, 8)
    times = []
    for _ in range(repeats + 2):  # two warm-up steps
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = vae.decode(z).float()
        common.optimise(opt, (y - x).abs().mean(), params)
        times.append(time.perf_counter() - start)
    return times[2:]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    default = statistics.median(step_times(lambda p: torch.optim.AdamW(p, lr=1e-4, weight_decay=0.01),
                                           args.batch, args.repeats))
    fused = statistics.median(step_times(lambda p: common.adamw(p, 1e-4, weight_decay=0.01), args.batch, args.repeats))
    print(f"t2i step, batch {args.batch}: default AdamW {default:.3f} s, fused (trainers) {fused:.3f} s, "
          f"ratio {default / fused:.2f}x")
    plain = statistics.median(controlnet_step_times(False, 16, args.repeats))
    last = statistics.median(controlnet_step_times(True, 16, args.repeats))
    print(f"ControlNet step, batch 16: hint encoder contiguous {plain:.3f} s, channels-last (trainer) {last:.3f} s, "
          f"ratio {plain / last:.2f}x")
    fp32 = statistics.median(vae_step_times(False, args.repeats))
    bf16 = statistics.median(vae_step_times(True, args.repeats))
    print(f"VAE decoder step, batch 4 of 64 px: fp32 {fp32:.3f} s, bf16 autocast {bf16:.3f} s, ratio {fp32 / bf16:.2f}x "
          f"(this CPU runs bf16 {'natively' if supports_bf16(torch.device('cpu')) else 'emulated'}; the trainer "
          "autocasts only where it is native)")


if __name__ == "__main__":
    main()
