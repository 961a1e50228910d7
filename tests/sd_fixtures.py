"""Tiny random checkpoints in the exact single-file layouts of SD1, SD2 and SDXL.

Same key names and tensor roles as the real 2–7 GB files, scaled down so tests
run in seconds; they load through the same detection path.
"""
from __future__ import annotations

import torch
from safetensors.torch import save_file

from engine.models.clip import CLIPTextConfig, CLIPTextModel
from engine.models.unet import UNetConfig, UNetModel
from engine.models.vae import AutoencoderKL, VAEConfig

TINY_VAE = VAEConfig(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1)
TINY_CLIP = CLIPTextConfig(width=64, layers=2, heads=1, mlp_width=128)
TINY_CLIP_G = CLIPTextConfig(width=64, layers=2, heads=1, mlp_width=128, activation="gelu", projection_dim=64)
TINY_SD1_UNET = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), transformer_depth=(1, 1),
                           transformer_depth_output=(1, 1, 1, 1), transformer_depth_middle=1, context_dim=64)
TINY_SD2_UNET = UNetConfig(model_channels=64, channel_mult=(1, 2), num_res_blocks=(1, 1), transformer_depth=(1, 1),
                           transformer_depth_output=(1, 1, 1, 1), context_dim=64, num_heads=-1,
                           num_head_channels=64, use_linear_in_transformer=True)
TINY_REFINER_UNET = UNetConfig(model_channels=64, channel_mult=(1, 2), num_res_blocks=(1, 1), transformer_depth=(0, 1),
                               transformer_depth_output=(0, 0, 1, 1), context_dim=64, num_heads=-1,
                               num_head_channels=64, use_linear_in_transformer=True, adm_in_channels=64 + 5 * 256)
TINY_SDXL_UNET = UNetConfig(model_channels=64, channel_mult=(1, 2), num_res_blocks=(1, 1), transformer_depth=(0, 1),
                            transformer_depth_output=(0, 0, 1, 1), context_dim=128, num_heads=-1,
                            num_head_channels=64, use_linear_in_transformer=True, adm_in_channels=64 + 6 * 256)


def _randomize(module: torch.nn.Module, generator: torch.Generator, scale: float = 0.2) -> dict:
    """Random weights with norms away from 1/0, so a test would see any mistake."""
    sd = {}
    for key, value in module.state_dict().items():
        noise = torch.randn(value.shape, generator=generator) * scale
        if key.endswith(("norm.weight", "norm1.weight", "norm2.weight", "norm3.weight", "norm_out.weight",
                         "layer_norm1.weight", "layer_norm2.weight", "final_layer_norm.weight", "in_layers.0.weight",
                         "out_layers.0.weight", "out.0.weight")) or ".norm" in key and key.endswith("weight"):
            noise = 1.0 + noise
        sd[key] = noise
    return sd


def to_open_clip(sd: dict) -> dict:
    """Our (HF-named) text tower -> OpenCLIP key layout, as SD2/SDXL-G files store it."""
    out = {"token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
           "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
           "ln_final.weight": sd["text_model.final_layer_norm.weight"],
           "ln_final.bias": sd["text_model.final_layer_norm.bias"]}
    if "text_projection.weight" in sd:
        out["text_projection"] = sd["text_projection.weight"].t().contiguous()
    layers = {int(k.split(".")[3]) for k in sd if k.startswith("text_model.encoder.layers.")}
    for i in layers:
        src, dst = f"text_model.encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat([sd[src + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
            for a, b in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("self_attn.out_proj", "attn.out_proj"),
                         ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                out[dst + f"{b}.{kind}"] = sd[src + f"{a}.{kind}"]
    return out


def make_checkpoint(path, family: str = "sd1", seed: int = 0, inpaint: bool = False, dtype=torch.float32) -> dict:
    """Write a tiny random checkpoint of ``family`` to ``path``; returns the state dict written."""
    g = torch.Generator().manual_seed(seed)
    unet_config = {"sd1": TINY_SD1_UNET, "sd2": TINY_SD2_UNET, "sdxl": TINY_SDXL_UNET,
                   "sdxl_refiner": TINY_REFINER_UNET}[family]
    if inpaint:
        unet_config = UNetConfig(**{**unet_config.__dict__, "in_channels": 9})
    with torch.device("meta"):
        unet, vae = UNetModel(unet_config), AutoencoderKL(TINY_VAE)
    sd = {f"model.diffusion_model.{k}": v for k, v in _randomize(unet, g).items()}
    sd.update({f"first_stage_model.{k}": v for k, v in _randomize(vae, g).items()})
    if family == "sd1":
        with torch.device("meta"):
            clip = CLIPTextModel(TINY_CLIP)
        sd.update({f"cond_stage_model.transformer.{k}": v for k, v in _randomize(clip, g).items()})
    elif family == "sd2":
        with torch.device("meta"):
            clip = CLIPTextModel(TINY_CLIP_G)
        sd.update({f"cond_stage_model.model.{k}": v for k, v in to_open_clip(_randomize(clip, g)).items()})
    elif family == "sdxl_refiner":
        with torch.device("meta"):
            clip_g = CLIPTextModel(TINY_CLIP_G)
        sd.update({f"conditioner.embedders.0.model.{k}": v for k, v in to_open_clip(_randomize(clip_g, g)).items()})
    else:
        with torch.device("meta"):
            clip_l, clip_g = CLIPTextModel(TINY_CLIP), CLIPTextModel(TINY_CLIP_G)
        sd.update({f"conditioner.embedders.0.transformer.{k}": v for k, v in _randomize(clip_l, g).items()})
        sd.update({f"conditioner.embedders.1.model.{k}": v for k, v in to_open_clip(_randomize(clip_g, g)).items()})
    sd = {k: v.to(dtype).contiguous() for k, v in sd.items()}
    save_file(sd, str(path))
    return sd
