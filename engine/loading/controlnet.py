"""ControlNet and T2I-Adapter files: which layout a file is in, conversion, loading.

The layout is read from key names and tensor shapes, never the file name, so scaled-down files
load through the same path as the real ones:

====================  ==========================================================================
original ControlNet   ``input_hint_block``, ``zero_convs.N.0``, ``middle_block_out``, UNet input
                      blocks (``label_emb`` for SDXL); under ``control_model.`` or bare. ControlNet
                      1.0 ``.pth`` files that also hold a whole SD checkpoint are read the same way.
difference            the original layout plus a ``difference`` key: weights are deltas from the
                      UNet they were trained on (``DiffControlNetLoader`` adds the model's weights)
diffusers ControlNet  ``controlnet_cond_embedding``, ``controlnet_down_blocks.N``,
                      ``controlnet_mid_block``, ``down_blocks`` / ``mid_block``: renamed to the
                      original layout by :func:`controlnet_from_diffusers`
T2I-Adapter           ``conv_in``, ``body.N.block1`` (diffusers: ``adapter.body.L.resnets.M``)
T2I-Adapter light     ``body.N.in_conv``, ``body.N.body.M.block1``, ``body.N.out_conv``
====================  ==========================================================================
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from .. import memory
from ..models.controlnet import (Adapter, AdapterConfig, ControlNetConfig, ControlNetModel, LightAdapter,
                                 LightAdapterConfig)
from ..models.unet import UNetConfig, detect_input_side
from ..sd.control import ControlNet, T2IAdapter
from .checkpoint import _build, _key
from .files import StateDict, WeightsFileError, _Renamed, load_state_dict

ORIGINAL_PREFIX = "control_model."
UNSUPPORTED = {  # a key that marks a kind of control file Loom does not run -> what it is
    "lora_controlnet": "a Control-LoRA",
    "task_embedding": "a ControlNet Union (several control types in one file)",
    "control_add_embedding.linear_1.weight": "a ControlNet Union (several control types in one file)",
    "controlnet_blocks.0.weight": "a ControlNet for a DiT model (SD3, Flux, Qwen-Image)",
    "controlnet_blocks.0.linear.weight": "a ControlNet for Flux (MistoLine)",
    "controlnet_x_embedder.weight": "a ControlNet for Flux (InstantX)",
    "after_proj_list.18.bias": "a ControlNet for Hunyuan-DiT",
    "backbone.0.0.weight": "a Stable Cascade ControlNet",
    "backbone.10.blocks.0.weight": "a Stable Cascade ControlNet",
    "style_embedding": "a T2I style adapter (a style model, not a ControlNet)",
}


def load_controlnet(path, model=None) -> ControlNet | T2IAdapter:
    """Open a ControlNet or T2I-Adapter file; the network is loaded on first use and kept by the
    model manager. `model` (a DiffusionModel) is needed for difference ControlNets."""
    path = Path(path)
    sd = load_state_dict(path)
    layout = control_layout(sd)
    policy = memory.policy()
    device, dtype = policy.device, policy.dtype
    if layout in ("t2i_adapter", "t2i_adapter_light"):
        sd = adapter_state_dict(sd)
        config = detect_adapter_config(sd)
        cls = Adapter if isinstance(config, AdapterConfig) else LightAdapter
        ref = memory.ModelRef(_key(path, "t2i_adapter", dtype, device),
                              _build(cls, config, lambda: adapter_state_dict(load_state_dict(path)), dtype, device))
        return T2IAdapter(ref, config, path.stem)

    is_difference = "difference" in sd
    sd = controlnet_state_dict(sd)
    try:
        config = detect_controlnet_config(sd)
    except (KeyError, ValueError, IndexError) as exc:
        raise WeightsFileError(f"{path.name}: unrecognised ControlNet layout ({exc})") from exc
    if not is_difference:
        reopen = lambda: controlnet_state_dict(load_state_dict(path))  # noqa: E731 (nothing stays mapped)
        ref = memory.ModelRef(_key(path, "controlnet", dtype, device),
                              _build(ControlNetModel, config, reopen, dtype, device))
    elif model is None:
        raise WeightsFileError(f"{path.name} is a difference ControlNet (weights relative to its base UNet): "
                               "load it with DiffControlNetLoader, which takes the model")
    else:
        def load():  # the UNet's weights as this model handle has them (LoRA patches included)
            whole = with_base_weights(controlnet_state_dict(load_state_dict(path)), model.network().state_dict())
            return _build(ControlNetModel, config, lambda: whole, dtype, device)()

        patches = tuple((id(patch), strength) for patch, strength in getattr(model, "patches", ()))
        ref = memory.ModelRef(_key(path, f"controlnet+{model.unet.key[0]}{patches}", dtype, device), load)
    # The shuffle ControlNets carry no trace of it in their weights; ComfyUI recognises them by name.
    pooling = re.search(r"_shuffle(_fp16)?$", path.stem) is not None
    return ControlNet(ref, config, path.stem, global_average_pooling=pooling)


def control_layout(sd: StateDict) -> str:
    """controlnet | controlnet_diffusers | t2i_adapter | t2i_adapter_light, or a clear error."""
    for key, what in UNSUPPORTED.items():
        if key in sd or ORIGINAL_PREFIX + key in sd:
            raise WeightsFileError(f"{_name(sd)} is {what}, which Loom does not support")
    if ORIGINAL_PREFIX + "zero_convs.0.0.weight" in sd or "zero_convs.0.0.weight" in sd:
        return "controlnet"
    if "controlnet_cond_embedding.conv_in.weight" in sd:
        return "controlnet_diffusers"
    if "conv_in.weight" in sd and "body.0.block1.weight" in sd or "adapter.body.0.resnets.0.block1.weight" in sd:
        return "t2i_adapter"
    if "body.0.in_conv.weight" in sd and "body.0.out_conv.weight" in sd:
        return "t2i_adapter_light"
    if sd.count("model.diffusion_model."):
        raise WeightsFileError(f"{_name(sd)} is a Stable Diffusion checkpoint, not a ControlNet: "
                               "load it with Load Checkpoint")
    found = ", ".join(sorted({k.split(".")[0] for k in sd})[:8])
    raise WeightsFileError(f"{_name(sd)} is neither a ControlNet nor a T2I-Adapter: none of their keys "
                           f"(zero_convs, controlnet_cond_embedding, body.0.block1) is there; "
                           f"top-level keys found: {found or 'none'}")


def _name(sd: StateDict) -> str:
    return sd.path.name if sd.path is not None else "the weights"


def renamed(sd: StateDict, mapping: dict[str, str]) -> StateDict:
    """A lazy view of `sd` under new names (`mapping` new -> old)."""
    return StateDict(_Renamed(sd, mapping), list(mapping), sd.metadata, sd.path)


# --- ControlNets ---------------------------------------------------------------------------------

def controlnet_state_dict(sd: StateDict) -> StateDict:
    """The ControlNet's weights in the original layout without prefix, whatever the file's layout."""
    if sd.count(ORIGINAL_PREFIX):
        return sd.view(ORIGINAL_PREFIX)
    if "controlnet_cond_embedding.conv_in.weight" in sd:
        return controlnet_from_diffusers(sd)
    return sd


RESNET_RENAMES = {"norm1.": "in_layers.0.", "conv1.": "in_layers.2.", "time_emb_proj.": "emb_layers.1.",
                  "norm2.": "out_layers.0.", "conv2.": "out_layers.3.", "conv_shortcut.": "skip_connection."}


def _numbers(keys, stem) -> list[int]:
    """The sorted numbers N of the keys `stem{N}.` in `keys`."""
    return sorted({int(k[len(stem):].split(".", 1)[0]) for k in keys if k.startswith(stem)})


def controlnet_from_diffusers(sd: StateDict) -> StateDict:
    """Rename a diffusers ``ControlNetModel`` state dict to the original (cldm) layout.

    diffusers numbers res blocks and attentions per level (``down_blocks.L.resnets.J``); the original
    numbers every input block in order (``input_blocks.K``), a level's downsampler included.
    """
    keys = list(sd)
    prefixes = {"conv_in.": "input_blocks.0.0.", "time_embedding.linear_1.": "time_embed.0.",
                "time_embedding.linear_2.": "time_embed.2.", "add_embedding.linear_1.": "label_emb.0.0.",
                "add_embedding.linear_2.": "label_emb.0.2.", "controlnet_mid_block.": "middle_block_out.0.",
                "controlnet_cond_embedding.conv_in.": "input_hint_block.0."}
    blocks = _numbers(keys, "controlnet_cond_embedding.blocks.")
    for m in blocks:
        prefixes[f"controlnet_cond_embedding.blocks.{m}."] = f"input_hint_block.{2 * (m + 1)}."
    prefixes["controlnet_cond_embedding.conv_out."] = f"input_hint_block.{2 * (len(blocks) + 1)}."
    for k in _numbers(keys, "controlnet_down_blocks."):
        prefixes[f"controlnet_down_blocks.{k}."] = f"zero_convs.{k}.0."
    block = 1
    for level in _numbers(keys, "down_blocks."):
        for j in _numbers(keys, f"down_blocks.{level}.resnets."):
            prefixes[f"down_blocks.{level}.resnets.{j}."] = f"input_blocks.{block}.0."
            prefixes[f"down_blocks.{level}.attentions.{j}."] = f"input_blocks.{block}.1."
            block += 1
        if f"down_blocks.{level}.downsamplers.0.conv.weight" in sd:
            prefixes[f"down_blocks.{level}.downsamplers.0.conv."] = f"input_blocks.{block}.0.op."
            block += 1
    prefixes.update({"mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
                     "mid_block.resnets.1.": "middle_block.2."})

    mapping, leftover = {}, []
    for key in keys:
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is None:
            leftover.append(key)
            continue
        rest = key[len(prefix):]
        if ".resnets." in prefix:
            rest = next((new + rest[len(old):] for old, new in RESNET_RENAMES.items() if rest.startswith(old)), rest)
        mapping[prefixes[prefix] + rest] = key
    if leftover:
        raise WeightsFileError(f"{_name(sd)}: diffusers ControlNet with {len(leftover)} weights Loom cannot place "
                               f"(e.g. {', '.join(leftover[:3])})")
    return renamed(sd, mapping)


def with_base_weights(delta: StateDict, base: dict[str, torch.Tensor]) -> StateDict:
    """A difference ControlNet made whole: each weight the UNet also has gets the UNet's added, in the
    file's dtype (as ComfyUI adds them)."""

    class Sum:
        def get(self, key):
            d = delta[key]
            b = base.get(key)
            return d + b.to(d.device, d.dtype) if b is not None and b.shape == d.shape else d

        def shape(self, key):
            return delta.shape(key)

    keys = [k for k in delta if k != "difference"]
    return StateDict(Sum(), keys, delta.metadata, delta.path)


def detect_controlnet_config(sd: StateDict) -> ControlNetConfig:
    """The ControlNetConfig of an original-layout ControlNet state dict, from key names and shapes.

    Heads follow the UNet rule (1x1-conv projections: 8 heads; linear: 64 channels per head).
    """
    keys = set(sd)

    def shape(key):
        return tuple(sd.shape(key))

    def depth(block):
        return len(_numbers(keys, f"{block}.1.transformer_blocks."))

    model_channels, in_channels, num_res_blocks, channel_mult, transformer_depth = detect_input_side(keys, shape)

    to_k = next((k for k in keys if k.endswith("attn2.to_k.weight")), None)
    proj_in = next((k for k in keys if k.endswith("proj_in.weight")), None)
    use_linear = proj_in is not None and len(shape(proj_in)) == 2
    level_depths = [transformer_depth[sum(num_res_blocks[:i + 1]) - 1] for i in range(len(num_res_blocks))]
    unet = UNetConfig(
        in_channels=in_channels, out_channels=in_channels, model_channels=model_channels,
        channel_mult=tuple(channel_mult), num_res_blocks=tuple(num_res_blocks),
        transformer_depth=tuple(transformer_depth),
        # a ControlNet has no output blocks; mirror the input side so the config is a whole UNet's
        transformer_depth_output=tuple(d for d, n in zip(level_depths, num_res_blocks) for _ in range(n + 1)),
        transformer_depth_middle=depth("middle_block") if "middle_block.1.proj_in.weight" in keys else -1,
        context_dim=shape(to_k)[1] if to_k else None,
        num_heads=-1 if use_linear else 8, num_head_channels=64 if use_linear else -1,
        use_linear_in_transformer=use_linear,
        adm_in_channels=shape("label_emb.0.0.weight")[1] if "label_emb.0.0.weight" in keys else None)
    convs = _numbers(keys, "input_hint_block.")
    widths = tuple(shape(f"input_hint_block.{i}.weight")[0] for i in convs[:-1:2])
    return ControlNetConfig(unet, hint_channels=shape("input_hint_block.0.weight")[1], hint_block_channels=widths)


# --- T2I-Adapters --------------------------------------------------------------------------------

def adapter_state_dict(sd: StateDict) -> StateDict:
    """A T2I-Adapter's weights in the original layout; the diffusers layout's level L, resnet M
    becomes ``body.{L * num_res_blocks + M}`` (a level's ``in_conv`` goes to its first block)."""
    if "adapter.body.0.resnets.0.block1.weight" not in sd:
        return sd
    keys = list(sd)
    per_level = len(_numbers(keys, "adapter.body.0.resnets."))
    mapping = {}
    for key in keys:
        match = re.match(r"adapter\.body\.(\d+)\.(?:resnets\.(\d+)\.)?(.*)", key)
        if match:
            level, resnet, rest = match.groups()
            mapping[f"body.{int(level) * per_level + int(resnet or 0)}.{rest}"] = key
        else:
            mapping[key.removeprefix("adapter.")] = key
    return renamed(sd, mapping)


def detect_adapter_config(sd: StateDict) -> AdapterConfig | LightAdapterConfig:
    keys = set(sd)
    blocks = _numbers(keys, "body.")
    if any(".skep." in k for k in keys):
        raise WeightsFileError(f"{_name(sd)}: a T2I-Adapter variant with skip convolutions (skep), "
                               "which Loom (like ComfyUI) does not load")
    if "body.0.in_conv.weight" in keys and "body.0.out_conv.weight" in keys:
        return LightAdapterConfig(
            cin=sd.shape("body.0.in_conv.weight")[1],
            channels=tuple(sd.shape(f"body.{i}.out_conv.weight")[0] for i in blocks),
            num_res_blocks=len(_numbers(keys, "body.0.body.")))
    cin = sd.shape("conv_in.weight")[1]
    levels = 4  # the feature placement (see models.controlnet._input_slots) assumes four levels
    if len(blocks) % levels:
        raise WeightsFileError(f"{_name(sd)}: a T2I-Adapter with {len(blocks)} blocks, not a multiple of 4 levels")
    per_level = len(blocks) // levels
    return AdapterConfig(
        cin=cin, channels=tuple(sd.shape(f"body.{i * per_level}.block1.weight")[0] for i in range(levels)),
        num_res_blocks=per_level, ksize=sd.shape("body.0.block2.weight")[2],
        conv_down=any(k.endswith("down_opt.op.weight") for k in keys),
        xl=cin in (256, 768))  # hint channels x 16² (SDXL adapters unshuffle by 16, SD ones by 8)
