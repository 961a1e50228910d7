"""What every shapes-model trainer shares: device, seeds, data, logging, EMA, saving.

Data comes only from :mod:`engine.shapes.scene`: scene ``i`` of the training set is
``scene_at(TRAIN_SEED, i)``, held-out scenes use ``EVAL_SEED``. Files are written atomically in
fp16 (as released SD checkpoints are) with their config, the generator version and measured metrics
in the safetensors metadata.
"""
from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ..scene import GENERATOR_VERSION, Scene, render, scene_at, with_article

ROOT = Path(__file__).resolve().parents[3]
ASSETS = ROOT / "assets" / "models"
WORK = ROOT / "build" / "shapes"  # intermediate files (the trained VAE, cached latents); gitignored
TRAIN_SEED = 1
EVAL_SEED = 2
LATENT_SCALE = 0.18215  # SD1's latent scale factor: the shipped VAE is calibrated to it


def pick_device(name: str | None = None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed)
    return torch.Generator().manual_seed(seed)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def render_set(seed: int, indices, size: int = 128, texture: str | None = None) -> np.ndarray:
    """uint8 [N, size, size, 3]: renders of scenes ``indices`` of the set ``seed``."""
    return np.stack([render(scene_at(seed, int(i)), size, texture=texture) for i in indices])


def describe(scene: Scene, rng: np.random.Generator, p_drop: float = 0.3, p_drop_position: float | None = None) -> str:
    """A caption of ``scene`` in the generator's words with sizes, positions and the background each
    left out with probability ``p_drop``, so short prompts ("a red circle") work as well as full ones.
    ``p_drop_position``: the positions' own probability instead (the same draws from ``rng`` either way)."""
    parts = []
    for shape in scene.shapes:
        words = [shape.size] if rng.random() >= p_drop else []
        words += [shape.colour, shape.kind]
        if rng.random() >= (p_drop if p_drop_position is None else p_drop_position):
            words.append(shape.position)
        phrase = " ".join(words)
        parts.append(with_article(phrase))
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    if rng.random() >= p_drop:
        bg = scene.background
        text += f", {' to '.join(bg.colours)}{' gradient' if len(bg.colours) > 1 else ''} background"
    return text



class Log:
    """Progress lines on stdout and a JSON-lines training log beside the output file."""

    def __init__(self, name: str, path: Path, total: int, config: dict):
        self.name, self.total, self.start = name, total, time.time()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "w", encoding="utf-8")
        self.write(event="start", config=config, python=sys.version.split()[0], torch=torch.__version__,
                   machine=platform.machine(), generator_version=GENERATOR_VERSION)

    def write(self, **record):
        self.file.write(json.dumps(record, default=_jsonable) + "\n")
        self.file.flush()

    def step(self, step: int, **metrics):
        elapsed = time.time() - self.start
        eta = elapsed / max(step, 1) * (self.total - step)
        metrics = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}
        shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        print(f"[{self.name}] {step}/{self.total} {shown} ({elapsed / 60:.1f} min, eta {eta / 60:.1f} min)",
              flush=True)
        self.write(event="step", step=step, elapsed_s=round(elapsed, 1), **metrics)

    def close(self, **metrics):
        self.write(event="end", elapsed_s=round(time.time() - self.start, 1), **metrics)
        self.file.close()

    @property
    def minutes(self) -> float:
        return (time.time() - self.start) / 60


def _jsonable(value):
    if is_dataclass(value):
        return asdict(value)
    if isinstance(value, (torch.device, torch.dtype, Path)):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def lr_at(step: int, total: int, peak: float, warmup: int = 200) -> float:
    """Linear warm-up, then cosine decay to 10% of ``peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def adamw(params, lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW with the fused kernel (one pass over each tensor, not one elementwise op after another): most of the
    optimiser's work is the text encoder's 3.2M-entry token table, and fused a t2i step on a CPU is about 9%
    shorter (``python -m tests.bench.train_step``)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def optimise(opt: torch.optim.Optimizer, loss: torch.Tensor, params: list, max_norm: float = 1.0) -> torch.Tensor:
    """One optimiser step on ``loss`` with gradient-norm clipping; returns the loss, detached. Not a float: reading
    it waits for the GPU, so a trainer reads it only on the steps it logs and otherwise queues the next step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step()
    return loss.detach()


def run_record(previous: dict | None, cfg, minutes: float, earlier_minutes=0) -> tuple[list, float]:
    """``(training configs, total minutes)`` for a file's metadata: this run's alone, or appended to those of
    the file it resumed (``previous``: that file's metadata; ``earlier_minutes``: the time it recorded)."""
    if previous is None:
        return [cfg], round(minutes, 1)
    runs = previous.get("training")
    runs = [] if runs is None else runs if isinstance(runs, list) else [runs]
    return [*runs, cfg], round(minutes + float(earlier_minutes or 0), 1)


class EMA:
    """Exponential moving average of a module's floating-point state."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int):
        decay = min(self.decay, (1 + step) / (10 + step))
        live = [v.detach() for k, v in module.state_dict().items() if k in self.shadow]  # in the shadow's order
        torch._foreach_lerp_(list(self.shadow.values()), live, 1 - decay)  # one launch, not one per tensor

    def state_dict(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: self.shadow.get(k, v) for k, v in module.state_dict().items()}


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


def save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict, dtype=torch.float16) -> None:
    """Write ``tensors`` (floats cast to ``dtype``) with JSON ``metadata`` values, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).contiguous()
           for k, v in tensors.items()}
    meta = {"loom.generator_version": GENERATOR_VERSION, "loom.created_by": "engine.shapes.train"}
    for k, v in metadata.items():  # kohya's ss_* and the modelspec.* keys keep their own names
        name = k if k.startswith(("ss_", "modelspec.")) else f"loom.{k}"
        meta[name] = v if isinstance(v, str) else json.dumps(v, default=_jsonable)
    _write(path, out, meta)


def _write(path: Path, tensors: dict[str, torch.Tensor], raw_metadata: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=raw_metadata)
    tmp.chmod(0o644)
    os.replace(tmp, path)


def metadata_of(path: Path) -> dict:
    """The ``loom.*`` metadata of a shipped file, JSON values decoded."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        raw = f.metadata() or {}
    out = {}
    for k, v in raw.items():
        if k.startswith("loom."):
            out[k[5:]] = json.loads(v) if v[:1] in "{[" else v  # save() wrote plain strings as they are
    return out


def batches(n_items: int, batch_size: int, steps: int, seed: int, repeats: np.ndarray | None = None):
    """``steps`` index batches drawn without replacement within each pass over ``n_items``. ``repeats``: how
    many times each item appears in a pass (default once each)."""
    rng = np.random.default_rng(seed)
    pool = n_items if repeats is None else np.repeat(np.arange(n_items), repeats)
    order, at = rng.permutation(pool), 0
    for _ in range(steps):
        if at + batch_size > len(order):
            order, at = rng.permutation(pool), 0
        yield order[at:at + batch_size]
        at += batch_size


def measure_file(path: Path, kind: str) -> dict:
    """Measure a shipped file through its workflows (:mod:`engine.shapes.quality`, fp32) and record the numbers
    in its metadata next to what is there. ``kind``: ``checkpoint``, ``controlnet``, ``lora`` or ``upscaler``.
    The checkpoint must be in place first: every measurement but the upscaler's samples it."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ... import memory
    from .. import quality

    memory.configure("auto", "fp32")
    if kind == "checkpoint":
        found = {"txt2img": quality.txt2img_adherence(seeds=1), "txt2img_cfg1": quality.txt2img_adherence(cfg=1.0, seeds=1),
                 "hires_fix": quality.txt2img_adherence(seeds=1, workflow="hires_fix"),
                 "background": quality.background_adherence(n=12),
                 "inpaint": quality.inpaint_adherence(n=8), "sdedit": quality.sdedit_follow(n=8),
                 "autoencoder": quality.autoencoder_ceiling(path=path)}
    elif kind == "controlnet":
        found = {**quality.controlnet_adherence(n=8), "stacked": quality.controlnet_stacked_layout(n=8)}
    elif kind == "lora":
        found = quality.lora_effect(n=6)
    elif kind == "upscaler":
        found = quality.upscaler_psnr(path, n=16)
    else:
        raise ValueError(f"nothing to measure for {kind!r}")
    with safe_open(str(path), "pt") as f:
        raw = dict(f.metadata() or {})
    raw["loom.metrics"] = json.dumps({**json.loads(raw.get("loom.metrics", "{}")), **found}, default=_jsonable)
    _write(path, load_file(str(path)), raw)
    print(f"[measure] {path.name}: {json.dumps(found)}", flush=True)
    return found
