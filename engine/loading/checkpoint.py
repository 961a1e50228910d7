"""Single-file checkpoints (SD1.x, SD2.x, SDXL base/refiner, inpainting) and standalone VAEs.

The family is read from key names and tensor shapes, never the file name, so
a scaled-down file in the same layout loads through exactly the same path as a
full-size one (comfyui.md §6.1):

=============  ====================================  =====================================
family         UNet                                  text encoders
=============  ====================================  =====================================
sd1            no ``label_emb``                      ``cond_stage_model.transformer.`` (HF)
sd2            no ``label_emb``                      ``cond_stage_model.model.`` (OpenCLIP)
sdxl           ``label_emb``                         ``conditioner.embedders.0.transformer.`` (L)
                                                     + ``conditioner.embedders.1.model.`` (G)
sdxl_refiner   ``label_emb``                         ``conditioner.embedders.0.model.`` (G)
=============  ====================================  =====================================

Each network is built on the meta device and filled one tensor at a time
from the memory-mapped file, in the compute dtype chosen by :mod:`engine.memory`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import memory
from ..models.clip import CLIPTextModel, clip_state_dict, detect_clip_config
from ..models.meta import meta_device
from ..models.unet import UNetModel, detect_unet_config
from ..models.vae import AutoencoderKL, detect_vae_config, vae_from_diffusers_keys
from ..sampling.schedules import DiscreteSchedule
from ..sd.model import SD15_LATENT, SDXL_LATENT, DiffusionModel
from ..sd.text_encoder import SD1_L, SD2_H, SDXL_G, SDXL_L, TextEncoder
from ..sd.vae import VAE
from .embeddings import EmbeddingLibrary
from .files import StateDict, WeightsFileError, load_into, load_state_dict

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODERS = {  # family -> [(spec, key prefix, layout)]
    "sd1": [(SD1_L, "cond_stage_model.transformer.", "hf")],
    "sd2": [(SD2_H, "cond_stage_model.model.", "open_clip")],
    "sdxl": [(SDXL_L, "conditioner.embedders.0.transformer.", "hf"),
             (SDXL_G, "conditioner.embedders.1.model.", "open_clip")],
    "sdxl_refiner": [(SDXL_G, "conditioner.embedders.0.model.", "open_clip")],
}


class ShapeView(Mapping):
    """A mapping of meta tensors with the file's shapes: detection reads no tensor data."""

    def __init__(self, sd: StateDict):
        self.sd = sd

    def __iter__(self):
        return iter(self.sd)

    def __len__(self):
        return len(self.sd)

    def __contains__(self, key):
        return key in self.sd

    def __getitem__(self, key):
        return torch.empty(self.sd.shape(key), device="meta")


@dataclass
class Checkpoint:
    family: str
    model: DiffusionModel | None
    clip: TextEncoder | None
    vae: VAE | None


def detect_family(sd: StateDict, unet_config) -> str:
    """Which SD family a checkpoint is, from the layout of its UNet and text encoders."""
    if unet_config.adm_in_channels:
        if sd.count("conditioner.embedders.1.model.") or sd.count("conditioner.embedders.0.transformer."):
            return "sdxl"
        if sd.count("conditioner.embedders.0.model."):
            return "sdxl_refiner"
        return "sdxl" if unet_config.adm_in_channels == 2816 or unet_config.context_dim == 2048 else "sdxl_refiner"
    if sd.count("cond_stage_model.model."):
        return "sd2"
    if sd.count("cond_stage_model.transformer."):
        return "sd1"
    return "sd2" if unet_config.context_dim == 1024 else "sd1"


def prediction_type(sd: StateDict, family: str, unet_config) -> str:
    """eps or v, by ComfyUI's rules: SDXL files mark v-prediction with a ``v_pred`` key; for SD2 the
    spread of one late norm bias tells (v models trained it wider)."""
    if "v_pred" in sd:
        return "v"
    declared = str(sd.metadata.get("modelspec.prediction_type", "")).lower()
    if declared in ("v", "v_prediction", "v-prediction"):
        return "v"
    if family == "sd2" and unet_config.in_channels == 4:
        key = UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
        if key in sd and torch.std(sd[key].float()).item() > 0.09:
            return "v"
    return "eps"


def _key(path: Path, part: str, dtype: torch.dtype, device: torch.device) -> tuple:
    stat = path.stat()
    return (f"{path.name}:{part}", str(path), stat.st_size, stat.st_mtime_ns, str(dtype), str(device))


def _reopen(path: Path, prefix: str):
    """The weights under ``prefix`` from a fresh handle, so nothing stays mapped once a network is loaded."""
    return lambda: load_state_dict(path).view(prefix)


def _build(cls, config, source, dtype, device):
    """A loader for ModelRef: build ``cls`` on the meta device and fill it from ``source()``."""
    def load():
        with meta_device():
            module = cls(config)
        load_into(module, source(), dtype=dtype, device=device)
        return module.eval().requires_grad_(False)
    return load


def load_checkpoint(path, output_vae: bool = True, output_clip: bool = True) -> Checkpoint:
    """Open a single-file checkpoint; networks are loaded when first used (and kept by the manager)."""
    path = Path(path)
    sd = load_state_dict(path)
    if sd.count(UNET_PREFIX) <= 5:
        found = ", ".join(sorted({k.split(".")[0] for k in sd})[:8])
        raise WeightsFileError(
            f"{path.name} is not a Stable Diffusion checkpoint: no UNet weights under '{UNET_PREFIX}' "
            f"(top-level keys found: {found or 'none'}). A standalone VAE, LoRA or ControlNet goes in its own folder.")
    unet_sd = sd.view(UNET_PREFIX)
    try:
        config = detect_unet_config(ShapeView(unet_sd))
    except (ValueError, KeyError, IndexError) as exc:
        raise WeightsFileError(f"{path.name}: unrecognised UNet layout ({exc})") from exc
    family = detect_family(sd, config)
    policy = memory.policy()
    device, dtype = policy.device, policy.dtype

    model = DiffusionModel(
        family=family,
        unet=memory.ModelRef(_key(path, "unet", dtype, device),
                             _build(UNetModel, config, _reopen(path, UNET_PREFIX), dtype, device)),
        config=config,
        prediction_type=prediction_type(sd, family, config),
        schedule=DiscreteSchedule(),
        latent_format=SDXL_LATENT if family.startswith("sdxl") else SD15_LATENT,
        device=device, dtype=dtype)
    clip = _load_text_encoders(path, sd, family, device, dtype) if output_clip else None
    vae = (_load_vae(path, sd.view(VAE_PREFIX), device, policy.vae_dtype, _reopen(path, VAE_PREFIX))
           if output_vae and sd.count(VAE_PREFIX) else None)
    return Checkpoint(family, model, clip, vae)


def _load_text_encoders(path: Path, sd: StateDict, family: str, device, dtype) -> TextEncoder | None:
    encoders = []
    for spec, prefix, layout in TEXT_ENCODERS[family]:
        if not sd.count(prefix):
            return None  # ComfyUI: "no CLIP/text encoder weights in checkpoint"
        view = sd.view(prefix)
        config = detect_clip_config(ShapeView(view), layout)
        ref = memory.ModelRef(_key(path, f"clip_{spec.name}", dtype, device),
                              _build_clip(config, _reopen(path, prefix), layout, dtype, device))
        encoders.append((spec, _LazyCLIP(ref, config)))
    return TextEncoder(encoders, device, dtype, embeddings=EmbeddingLibrary())


def _build_clip(config, source, layout, dtype, device):
    return _build(CLIPTextModel, config, lambda: clip_state_dict(source(), layout), dtype, device)


class _LazyCLIP:
    """Stands in for a CLIPTextModel until it is used, so loading a checkpoint reads no CLIP weights."""

    def __init__(self, ref: memory.ModelRef, config):
        self.ref = ref
        self.config = config

    def network(self) -> CLIPTextModel:
        return self.ref.get()

    def __getattr__(self, name):
        return getattr(self.ref.get(), name)


def _load_vae(path: Path, vae_sd, device, dtype, source) -> VAE:
    config = detect_vae_config(ShapeView(vae_sd))
    ref = memory.ModelRef(_key(path, "vae", dtype, device), _build(AutoencoderKL, config, source, dtype, device))
    return VAE(ref, device, dtype, downscale=2 ** (len(config.ch_mult) - 1), latent_channels=config.embed_dim)


def load_vae_file(path) -> VAE:
    """A standalone VAE file, in the original or the diffusers layout (with or without a prefix)."""
    path = Path(path)
    sd = load_state_dict(path)
    prefix = VAE_PREFIX if sd.count(VAE_PREFIX) else ""
    sd = sd.view(prefix)
    source = _reopen(path, prefix)
    if any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in sd):
        from .files import from_tensors
        sd = from_tensors(vae_from_diffusers_keys(dict(sd.items())))  # converted once, kept in memory
        source = lambda: sd  # noqa: E731
    if "decoder.conv_in.weight" not in sd:
        raise WeightsFileError(f"{path.name} is not a VAE: no 'decoder.conv_in.weight'")
    policy = memory.policy()
    return _load_vae(path, sd, policy.device, policy.vae_dtype, source)
