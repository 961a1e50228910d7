"""LoRA files: kohya, diffusers/PEFT and LyCORIS (LoCon, LoHa, LoKr, full diffs) for the UNet and CLIP.

A file names the modules it patches in one of several vocabularies; each is
mapped to Loom's parameter keys (comfyui.md §6.5):

==========================  ===================================================================
UNet (original layout)      ``lora_unet_input_blocks_1_1_proj_in`` (kohya, SDXL),
                            ``diffusion_model.input_blocks.1.1.proj_in`` (generic)
UNet (diffusers layout)     ``lora_unet_down_blocks_0_attentions_0_proj_in`` (kohya, SD1),
                            ``unet.down_blocks.0...attn1.to_q`` (PEFT, with or without ``unet.``),
                            ``unet.down_blocks.0...attn1.processor.to_q`` (attention processors),
                            ``lycoris_down_blocks_0_...`` (SimpleTuner)
CLIP (HF names)             ``lora_te_text_model_encoder_layers_0_mlp_fc1`` (SD1/SD2/refiner),
                            ``lora_te1_`` / ``lora_te2_`` (SDXL's L / G),
                            ``text_encoder.`` / ``text_encoder_2.`` (diffusers),
                            ``text_encoders.clip_l.transformer.text_model...`` (generic)
==========================  ===================================================================

and the tensors of one module by their suffix: ``.lora_up/.lora_down(.lora_mid).weight``,
``_lora.up/down.weight``, ``.lora_B/.lora_A.weight``, ``.lora.up/down.weight``,
``.lora_linear_layer.up/down.weight`` (LoRA, LoCon), ``.hada_*`` (LoHa), ``.lokr_*`` (LoKr),
``.diff``/``.diff_b``/``.w_norm``/``.b_norm`` (full deltas), ``.alpha``. The diffusers
correspondence is built from the UNetConfig, as diffusers' ``convert_ldm_unet_checkpoint`` lays
the blocks out. Keys that patch nothing (unknown names, wrong shapes, DoRA/OFT/GLoRA which are not
supported) are returned by name.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..models.clip import CLIPTextConfig, CLIPTextModel
from ..models.meta import meta_device
from ..models.unet import UNetConfig, UNetModel
from ..sd.patching import Diff, LoHa, LoKr, LoRA, PatchSet
from .files import load_state_dict

# Key suffix -> the role of that tensor in its module's adapter.
ROLES = {
    ".lora_up.weight": "up", ".lora_down.weight": "down", ".lora_mid.weight": "mid",
    "_lora.up.weight": "up", "_lora.down.weight": "down",
    ".lora_B.weight": "up", ".lora_A.weight": "down",
    ".lora_B.default.weight": "up", ".lora_A.default.weight": "down",
    ".lora.up.weight": "up", ".lora.down.weight": "down",
    ".lora_linear_layer.up.weight": "up", ".lora_linear_layer.down.weight": "down",
    **{f".hada_{p}": f"hada_{p}" for p in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")},
    **{f".lokr_{p}": f"lokr_{p}" for p in ("w1", "w2", "w1_a", "w1_b", "w2_a", "w2_b", "t2")},
    ".diff": "diff", ".diff_b": "diff_b", ".w_norm": "diff", ".b_norm": "diff_b", ".alpha": "alpha",
    ".dora_scale": "dora_scale",  # recognised so that a DoRA module is reported whole, not half applied
}
UNSUPPORTED_ROLES = {"dora_scale"}
_SUFFIXES = sorted(ROLES, key=len, reverse=True)
TEXT_ENCODER_STEMS = ("lora_te", "text_encoder")  # lora_te_/te1_/te2_, text_encoder./_2., text_encoders.

# diffusers' names inside a resnet block, by the original's.
RESNET_NAMES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
TOP_LEVEL_NAMES = [("input_blocks.0.0", "conv_in"), ("time_embed.0", "time_embedding.linear_1"),
                   ("time_embed.2", "time_embedding.linear_2"), ("out.0", "conv_norm_out"), ("out.2", "conv_out"),
                   ("label_emb.0.0", "add_embedding.linear_1"), ("label_emb.0.2", "add_embedding.linear_2"),
                   ("label_emb.0.0", "class_embedding.linear_1"), ("label_emb.0.2", "class_embedding.linear_2")]


@dataclass
class LoadedLora:
    """One LoRA file matched against a MODEL and/or CLIP: patch sets and the keys that matched nothing."""

    unet: PatchSet | None = None
    clip: dict[str, PatchSet] = field(default_factory=dict)  # encoder name ("l", "h", "g") -> patches
    unmatched: list[str] = field(default_factory=list)


# --- parameter names ---------------------------------------------------------------

@functools.cache
def unet_shapes(config: UNetConfig) -> dict[str, tuple[int, ...]]:
    with meta_device():
        return {k: tuple(p.shape) for k, p in UNetModel(config).named_parameters()}


@functools.cache
def clip_shapes(config: CLIPTextConfig) -> dict[str, tuple[int, ...]]:
    with meta_device():
        return {k: tuple(p.shape) for k, p in CLIPTextModel(config).named_parameters()}


def diffusers_block_names(config: UNetConfig) -> list[tuple[str, str]]:
    """(original module path, diffusers module path) of every block, walking the UNet as it is built."""
    pairs = list(TOP_LEVEL_NAMES)
    levels = len(config.channel_mult)
    n, depths = 1, iter(config.transformer_depth)
    for level in range(levels):
        for i in range(config.num_res_blocks[level]):
            pairs.append((f"input_blocks.{n}.0", f"down_blocks.{level}.resnets.{i}"))
            if next(depths):
                pairs.append((f"input_blocks.{n}.1", f"down_blocks.{level}.attentions.{i}"))
            n += 1
        if level != levels - 1:
            pairs.append((f"input_blocks.{n}.0.op", f"down_blocks.{level}.downsamplers.0.conv"))
            n += 1
    pairs.append(("middle_block.0", "mid_block.resnets.0"))
    if config.transformer_depth_middle >= 0:
        pairs += [("middle_block.1", "mid_block.attentions.0"), ("middle_block.2", "mid_block.resnets.1")]
    n, depths_output = 0, list(config.transformer_depth_output)
    for up, level in enumerate(reversed(range(levels))):
        for i in range(config.num_res_blocks[level] + 1):
            pairs.append((f"output_blocks.{n}.0", f"up_blocks.{up}.resnets.{i}"))
            layer = 1
            if depths_output.pop():
                pairs.append((f"output_blocks.{n}.1", f"up_blocks.{up}.attentions.{i}"))
                layer = 2
            if level and i == config.num_res_blocks[level]:
                pairs.append((f"output_blocks.{n}.{layer}.conv", f"up_blocks.{up}.upsamplers.0.conv"))
            n += 1
    return pairs


@functools.cache
def diffusers_unet_names(config: UNetConfig) -> dict[str, str]:
    """diffusers UNet2DConditionModel parameter key -> our (original-layout) key."""
    blocks: dict[str, list[str]] = {}
    for original, diffusers in diffusers_block_names(config):
        blocks.setdefault(original, []).append(diffusers)
    names = {}
    for key in unet_shapes(config):
        parts = key.split(".")
        block = next((b for c in range(len(parts) - 1, 0, -1) if (b := ".".join(parts[:c])) in blocks), None)
        if block is None:
            continue
        module, leaf = ".".join(parts[block.count(".") + 1:-1]), parts[-1]
        for diffusers in blocks[block]:
            inner = RESNET_NAMES.get(module, module) if ".resnets." in diffusers else module
            names[".".join(p for p in (diffusers, inner, leaf) if p)] = key
    return names


def _processor_name(module: str) -> str | None:
    """diffusers' attention-processor LoRA name of an attention projection (``attn1.to_q`` ->
    ``attn1.processor.to_q``, ``attn1.to_out.0`` -> ``attn1.processor.to_out``), else None."""
    head, _, tail = module.removesuffix(".0").rpartition(".")
    return f"{head}.processor.{tail}" if tail in ("to_q", "to_k", "to_v", "to_out") else None


@functools.cache
def unet_lora_names(config: UNetConfig) -> dict[str, str]:
    """LoRA module name (every vocabulary above) -> UNet weight key."""
    names = {}
    for key in unet_shapes(config):
        if key.endswith(".weight"):
            module = key[: -len(".weight")]
            names["lora_unet_" + module.replace(".", "_")] = key
            names["diffusion_model." + module] = key
    for diffusers, key in diffusers_unet_names(config).items():
        if not diffusers.endswith(".weight"):
            continue
        module = diffusers[: -len(".weight")]
        names["lora_unet_" + module.replace(".", "_")] = key
        names["lycoris_" + module.replace(".", "_")] = key
        for prefix in ("", "unet."):
            names[prefix + module] = key
            if processor := _processor_name(module):
                names[prefix + processor] = key
    return names


def clip_lora_names(encoders: list[tuple[str, CLIPTextConfig]]) -> dict[str, tuple[str, str]]:
    """LoRA module name -> (encoder name, CLIP weight key). With two encoders (SDXL) the first is
    ``lora_te1_``/``text_encoder.`` (and plain ``lora_te_``), the second ``lora_te2_``/``text_encoder_2.``."""
    two = len(encoders) == 2
    names = {}
    for index, (name, config) in enumerate(encoders):
        kohya = ("lora_te2_",) if two and index else ("lora_te_", "lora_te1_")
        diffusers = "text_encoder_2." if two and index else "text_encoder."
        for key in clip_shapes(config):
            if not key.endswith(".weight"):
                continue
            module = key[: -len(".weight")]
            for prefix in kohya:
                names[prefix + module.replace(".", "_")] = (name, key)
            names[diffusers + module] = (name, key)
            names[f"text_encoders.clip_{name}.transformer.{module}"] = (name, key)
    return names


# --- reading a file ----------------------------------------------------------------

def split_key(key: str) -> tuple[str, str] | None:
    """``stem.suffix`` -> (stem, role), or None for a suffix no supported format uses."""
    for suffix in _SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], ROLES[suffix]
    return None


def _adapter(roles: dict[str, torch.Tensor]):
    """The weight adapter a module's tensors describe, or None."""
    alpha = float(roles["alpha"].item()) if "alpha" in roles else None
    if "up" in roles and "down" in roles:
        return LoRA(roles["up"], roles["down"], alpha, roles.get("mid"))
    if "hada_w1_a" in roles:
        return LoHa(roles["hada_w1_a"], roles.get("hada_w1_b"), roles.get("hada_w2_a"), roles.get("hada_w2_b"),
                    alpha, roles.get("hada_t1"), roles.get("hada_t2"))
    if any(role.startswith("lokr_") for role in roles):
        return LoKr(**{role[len("lokr_"):]: t for role, t in roles.items() if role.startswith("lokr_")}, alpha=alpha)
    if "diff" in roles:
        return Diff(roles["diff"])
    return None


def _fits(adapter, shape) -> bool:
    """Whether the adapter is complete and its ΔW has the parameter's size."""
    try:
        return adapter.numel() == math.prod(shape)
    except (AttributeError, IndexError, TypeError):  # a factor is missing
        return False


def _targets(roles, weight_key, shapes):
    """[(parameter key, adapter)] for one module, or None when something does not fit."""
    if UNSUPPORTED_ROLES & roles.keys():
        return None
    targets = []
    adapter = _adapter(roles)
    if adapter is not None:
        targets.append((weight_key, adapter))
    if "diff_b" in roles:
        targets.append((weight_key[: -len(".weight")] + ".bias", Diff(roles["diff_b"])))
    if not targets or any(key not in shapes or not _fits(a, shapes[key]) for key, a in targets):
        return None
    return targets


@functools.lru_cache(maxsize=1)
def _read(path: str, size: int, mtime_ns: int) -> dict[str, torch.Tensor]:
    sd = load_state_dict(path)
    return {key: sd[key] for key in sd}


def read_lora_file(path) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA file; the last file read is kept, so changing a strength re-reads nothing."""
    path = Path(path)
    stat = path.stat()
    return _read(str(path), stat.st_size, stat.st_mtime_ns)


def match_lora(tensors: dict[str, torch.Tensor], name: str = "lora", unet_config: UNetConfig | None = None,
               encoders: list[tuple[str, CLIPTextConfig]] | None = None) -> LoadedLora:
    """Match a LoRA state dict against a UNet (its config) and/or text encoders ((name, config) each).

    With ``encoders=None`` text-encoder keys are skipped silently (a model-only loader).
    """
    unet_names = unet_lora_names(unet_config) if unet_config is not None else {}
    clip_names = clip_lora_names(encoders) if encoders is not None else {}
    modules: dict[str, dict[str, torch.Tensor]] = {}
    keys_of: dict[str, list[str]] = {}
    unmatched = []
    for key, tensor in tensors.items():
        split = split_key(key)
        if split is None:
            unmatched.append(key)
            continue
        stem, role = split
        modules.setdefault(stem, {})[role] = tensor
        keys_of.setdefault(stem, []).append(key)

    adapters = {"unet": {}, **{encoder: {} for encoder, _ in encoders or ()}}
    for stem, roles in modules.items():
        if stem in unet_names:
            network, key, shapes = "unet", unet_names[stem], unet_shapes(unet_config)
        elif stem in clip_names:
            network, key = clip_names[stem]
            shapes = clip_shapes(dict(encoders)[network])
        elif encoders is None and stem.startswith(TEXT_ENCODER_STEMS):
            continue  # a model-only loader skips the text-encoder weights
        else:
            unmatched += keys_of[stem]
            continue
        targets = _targets(roles, key, shapes)
        if targets is None:
            unmatched += keys_of[stem]
        else:
            adapters[network].update(targets)
    unet = adapters.pop("unet")
    clip = {encoder: PatchSet(f"{name}:{encoder}", found) for encoder, found in adapters.items() if found}
    return LoadedLora(PatchSet(name, unet) if unet else None, clip, sorted(unmatched))


def load_lora(path, model=None, clip=None) -> LoadedLora:
    """Read a LoRA file and match it against a MODEL (DiffusionModel) and/or CLIP (TextEncoder)."""
    encoders = [(spec.name, encoder.config) for spec, encoder in clip.encoders] if clip is not None else None
    return match_lora(read_lora_file(path), Path(path).name, model.config if model is not None else None, encoders)
