"""A full-size SD1.5 checkpoint with deterministic random weights, for pixel parity with ComfyUI.

ComfyUI recognises a checkpoint only when its shapes match a real model
(SD1.5: UNet ``model_channels`` 320, ``context_dim`` 768, CLIP ViT-L/14, the
SD VAE), so the parity file has the real architecture and key layout, with
random weights.  Every tensor is a pure function of ``(seed, key, shape)``:
nothing depends on the order in which a program builds its modules, so the
reference images made with ComfyUI stay valid while Loom's code changes.

Values follow PyTorch's default module initialisation, which keeps
activations in range through the whole network (large random normals do not):

- conv / linear weights and their biases: U(-1/√fan_in, 1/√fan_in);
- embeddings: N(0, 1);
- norm scales 1 + U(-0.1, 0.1) and norm shifts U(-0.1, 0.1) (slightly off 1 and 0,
  so a swapped or ignored norm parameter shows in the pixels).

The file stores fp16 (half the size; both programs upcast to fp32 on CPU, and
ComfyUI keeps CLIP weights in fp16 on CPU anyway, so fp16 storage is the one
both programs see identically).

    python -m tests.parity.make_checkpoint OUT.safetensors [--seed 0]
"""
from __future__ import annotations

import argparse
import math
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.models.clip import CLIPTextConfig, CLIPTextModel
from engine.models.unet import UNetConfig, UNetModel
from engine.models.vae import AutoencoderKL, VAEConfig

CHECKPOINT_NAME = "sd15_parity_random.safetensors"
SEED = 0
PARTS = (  # (key prefix in the single-file checkpoint, module built on the meta device)
    ("model.diffusion_model.", lambda: UNetModel(UNetConfig.sd15())),
    ("cond_stage_model.transformer.", lambda: CLIPTextModel(CLIPTextConfig.clip_l())),
    ("first_stage_model.", lambda: AutoencoderKL(VAEConfig.sd())),
)


def sd15_layout() -> dict[str, torch.Size]:
    """Every key of an SD1.5 single-file checkpoint (without EMA and position ids) and its shape."""
    layout = {}
    for prefix, build in PARTS:
        with torch.device("meta"):
            module = build()
        layout.update({prefix + key: value.shape for key, value in module.state_dict().items()})
    return layout


def _generator(seed: int, key: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 4_294_967_296 + zlib.crc32(key.encode()))


def _fan_in(shape: torch.Size) -> int:
    return math.prod(shape[1:])


def random_tensor(seed: int, key: str, shape: torch.Size, layout: dict[str, torch.Size]) -> torch.Tensor:
    """The value of one tensor: a function of the seed, its key and its shape only."""
    g = _generator(seed, key)
    uniform = lambda bound: (torch.rand(shape, generator=g) * 2 - 1) * bound  # noqa: E731
    if len(shape) >= 2:
        if "embedding" in key:
            return torch.randn(shape, generator=g)
        return uniform(1 / math.sqrt(_fan_in(shape)))
    weight_shape = layout.get(key.removesuffix(".bias") + ".weight")
    if key.endswith(".bias") and weight_shape is not None and len(weight_shape) >= 2:
        return uniform(1 / math.sqrt(_fan_in(weight_shape)))
    if key.endswith(".weight"):
        return 1 + uniform(0.1)  # a norm's scale
    return uniform(0.1)  # a norm's shift


def sd15_state_dict(seed: int = SEED, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    layout = sd15_layout()
    return {key: random_tensor(seed, key, shape, layout).to(dtype) for key, shape in layout.items()}


def write_checkpoint(path, seed: int = SEED, dtype: torch.dtype = torch.float16) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd15_state_dict(seed, dtype), str(path), metadata={"loom.parity_seed": str(seed)})
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    print(write_checkpoint(args.out, args.seed))


if __name__ == "__main__":
    main()
