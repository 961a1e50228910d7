"""The shipped Canny ControlNet for the shapes checkpoint.

A ControlNet in the original ``cldm`` layout (``control_model.`` keys): a copy of the checkpoint
UNet's input half and middle block, initialised from it, plus the hint encoder and zero convolutions.
The UNet and text encoder stay frozen. Hints are :func:`engine.imageops.canny_edges` of the render at
thresholds (0.05, 0.1), exactly what the workflow's Canny node computes. The node's defaults (0.4, 0.8)
threshold the luma gradient, and many colour pairs here differ little in luma (blue on gray, red on
green): at those thresholds 60% of training renders lose more than half their outline; at these 2.5%.
Captions are dropped half the time so the edges alone must carry the layout, and the colour comes from
the prompt.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ...imageops import canny_edges
from ...models.clip import CLIPTextModel
from ...models.controlnet import ControlNetConfig, ControlNetModel
from ...models.unet import UNetModel
from ..scene import render, scene_at
from . import common
from .checkpoint import (CHECKPOINT, UNET_CONFIG, Captions, T2ITraining, alphas_cumprod, captions_for, diffusion_loss,
                         encode_latents, encode_text, load_networks, networks_file, noised, t2i_runs_in)
from .common import ASSETS, TRAIN_SEED, Log

CONTROLNET = ASSETS / "controlnet" / "loom-shapes-canny.safetensors"
CONFIG = ControlNetConfig(unet=UNET_CONFIG, hint_block_channels=(16, 32, 64, 128))
CANNY_THRESHOLDS = (0.05, 0.1)


@dataclass(frozen=True)
class ControlNetTraining:
    images: int = 16000
    steps: int = 11000
    batch: int = 16
    lr: float = 3e-4
    p_uncond: float = 0.5
    p_drop_words: float = 0.3
    # Two options that make a ControlNet trained afresh in under an hour hold up when stacked (controlnet_stacked:
    # each shape on its own control's side, over 24 seeds at strength 1): positions dropped at 0.8 and hints with
    # only some of a scene's shapes for 0.4 of the samples place both shapes in 12 of 24, as the 9-run chain this
    # replaced (5.5 h) did in 13. At strength 0.8 (before channels-last): 5 of 12; without either option 2 of 12;
    # with batch 8 (13000 steps, 35 min) 3 of 12. The chain had outline IoU 0.75 on single controls; this 0.69.
    p_drop_positions: float | None = 0.8  # a caption's position words' own drop rate (None: p_drop_words)
    p_partial: float = 0.4  # share of samples whose hint has only some of the scene's shapes (partial_edges())
    min_snr: float = 5.0
    ema: float = 0.998
    seed: int = 0
    resume: bool = False  # go on from the ControlNet in assets/ instead of a copy of the UNet
    shape_code: bool = True  # latents with the autoencoder's learned channel 3 (see T2ITraining)
    # The shipped ControlNet is one run of these defaults against the shipped UNet (t2i run 15), 48.5 min on two
    # CPU cores; the file records the UNet run it trained against (``against_t2i_runs``). ``resume`` goes on from
    # it, e.g. against a newer UNet.


def edges_of(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> Canny maps uint8 [N, H, W] (0 or 1), as the Canny node computes them."""
    low, high = CANNY_THRESHOLDS
    return torch.from_numpy(np.stack([canny_edges(img.astype(np.float32) / 255.0, low, high) for img in images])
                            .round().astype(np.uint8))


def as_hint(edges: torch.Tensor) -> torch.Tensor:
    """Canny maps [N, H, W] -> the hint the ControlNet sees: [N, 3, H, W] in 0..1 (the IMAGE's channels), laid out
    channels-last for the trainer's hint encoder (:func:`channels_last`)."""
    return edges.float()[:, None].expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)


def channels_last(net: ControlNetModel) -> ControlNetModel:
    """Put ``net``'s hint encoder in channels-last memory format, as the trainer runs it (with :func:`as_hint`'s
    layout): its full-resolution convolutions are about half a training step's time on a CPU, and channels-last
    makes the step 1.16-1.27x as fast (tests/bench/train_step.py; the shipped run took 48.5 min against 54.5)."""
    net.input_hint_block.to(memory_format=torch.channels_last)
    return net


def partial_edges(seed: int, indices, pick_seed: int) -> torch.Tensor:
    """Canny maps [N, H, W] of scenes ``indices`` with only some of their shapes: of each scene with two or more, a
    random non-empty proper subset (a one-shape scene keeps its shape). Stacked ControlNets each see such a map:
    one shape's edges under a prompt that names every shape, and each must draw the shape its edges outline."""
    rng = np.random.default_rng(pick_seed)
    maps = []
    for i in indices:  # one at a time: a set's renders would take 3 times the memory of its maps
        scene = scene_at(seed, int(i))
        shapes = scene.shapes
        if len(shapes) > 1:
            keep = rng.permutation(len(shapes))[:rng.integers(1, len(shapes))]
            shapes = tuple(shapes[k] for k in sorted(keep))
        maps.append(edges_of(render(replace(scene, shapes=shapes))[None]))
    return torch.cat(maps)


def load_checkpoint_networks(path: Path, device) -> tuple[UNetModel, CLIPTextModel]:
    """The UNet and text encoder in ``path``, frozen, to train against."""
    unet, clip = load_networks(path)
    return unet.to(device).eval().requires_grad_(False), clip.to(device).eval().requires_grad_(False)


def controlnet_from_unet(unet: UNetModel) -> ControlNetModel:
    """A ControlNet whose UNet half starts as the checkpoint's (hint encoder's last conv and readouts zero)."""
    net = ControlNetModel(CONFIG)
    own = net.state_dict()
    shared = {k: v for k, v in unet.state_dict().items() if k in own and own[k].shape == v.shape}
    net.load_state_dict(shared, strict=False)
    return net


def train_controlnet(cfg: ControlNetTraining, device: torch.device, out: Path = CONTROLNET, base: Path | None = None,
                     measure_quality: bool = True) -> Path:
    common.seed_everything(cfg.seed)
    base = base or networks_file()
    unet, clip = load_checkpoint_networks(base, device)
    latents = encode_latents(TRAIN_SEED, cfg.images, device, shape_code=cfg.shape_code)
    hints = torch.cat([edges_of(common.render_set(TRAIN_SEED, range(s, min(cfg.images, s + 500))))
                       for s in range(0, cfg.images, 500)])
    partial = partial_edges(TRAIN_SEED, range(cfg.images), cfg.seed) if cfg.p_partial else None
    pick = np.random.default_rng([cfg.seed, 1])
    net = controlnet_from_unet(unet)
    previous = None
    if cfg.resume:
        from safetensors.torch import load_file
        previous = common.metadata_of(out)
        net.load_state_dict({k[len("control_model."):]: v.float() for k, v in load_file(str(out)).items()})
    net = channels_last(net.to(device).train())
    opt = common.adamw(net.parameters(), cfg.lr)
    ema = common.EMA(net, cfg.ema)
    ab = alphas_cumprod().to(device)
    captions, rng = Captions(), np.random.default_rng(cfg.seed)
    gen = torch.Generator(device).manual_seed(cfg.seed)
    t2i = T2ITraining(p_uncond=cfg.p_uncond, p_drop_words=cfg.p_drop_words)
    log = Log("controlnet", common.WORK / "controlnet.log.jsonl", cfg.steps, {"training": cfg, "controlnet": CONFIG})
    for step, idx in enumerate(common.batches(cfg.images, cfg.batch, cfg.steps, cfg.seed)):
        common.set_lr(opt, common.lr_at(step, cfg.steps, cfg.lr))
        index = torch.as_tensor(idx)
        edges = hints[index]
        if partial is not None:
            edges = torch.where(torch.from_numpy(pick.random(len(idx)) < cfg.p_partial)[:, None, None],
                                partial[index], edges)
        x0, hint = latents[index.to(device)].float(), as_hint(edges.to(device))
        with torch.no_grad():
            texts = captions_for(idx, rng, t2i, p_drop_positions=cfg.p_drop_positions)
            context = encode_text(clip, captions.batch(texts, device))
        t, noise, xt = noised(x0, ab, gen)
        control = net(xt, hint, t.float(), context)
        loss = common.optimise(opt, diffusion_loss(unet, xt, t, noise, context, ab, cfg.min_snr, control=control),
                               list(net.parameters()))
        ema.update(net, step)
        if step % 100 == 0 or step == cfg.steps - 1:
            log.step(step + 1, loss=loss)
    tensors = common.prefixed("control_model.", ema.state_dict(net))
    runs, minutes = common.run_record(previous, cfg, log.minutes, previous and previous.get("train_minutes"))
    runs[-1] = {**asdict(cfg), "against_t2i_runs": t2i_runs_in(base)}
    metadata = {"config": CONFIG, "training": runs, "device": str(device), "train_minutes": minutes,
                "base_checkpoint": CHECKPOINT.name, "hint": f"canny_edges {CANNY_THRESHOLDS} of the image, 3 channels"}
    common.save(out, tensors, {**metadata, "metrics": {}})
    log.close()
    if measure_quality:
        common.measure_file(out, "controlnet")
    return out
