"""SD UNet family: checkpoint key layout, config detection, and parity with diffusers' UNet2DConditionModel
on weights converted by diffusers' own single-file converter."""

from functools import cache

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint
from diffusers.models.embeddings import get_timestep_embedding

from engine.models.unet import (UNetConfig, UNetModel, detect_unet_config, sdxl_adm,
                                sdxl_refiner_adm, timestep_embedding)

LDM_PREFIX = "model.diffusion_model."
TOLERANCE = 1e-4

SD1_TINY = UNetConfig.from_level_depths(
    (1, 0), (2, 2), model_channels=32, channel_mult=(1, 2), context_dim=48)
SD2_TINY = UNetConfig.from_level_depths(
    (1, 1), (1, 1), model_channels=64, channel_mult=(1, 2), context_dim=40,
    num_heads=-1, num_head_channels=64, use_linear_in_transformer=True)
SDXL_TINY_POOLED = 32
SDXL_TINY = UNetConfig.from_level_depths(
    (0, 1, 2), (2, 2, 2), model_channels=32, channel_mult=(1, 2, 4), transformer_depth_middle=2,
    context_dim=64, num_heads=-1, num_head_channels=64, use_linear_in_transformer=True,
    adm_in_channels=SDXL_TINY_POOLED + 6 * 256)
INPAINT_TINY = UNetConfig.from_level_depths(
    (1, 0), (2, 2), in_channels=9, model_channels=32, channel_mult=(1, 2), context_dim=48)

PRESETS = {
    "sd15": UNetConfig.sd15(), "sd15_inpaint": UNetConfig.sd15(in_channels=9),
    "sd21": UNetConfig.sd21(), "sdxl": UNetConfig.sdxl(), "sdxl_inpaint": UNetConfig.sdxl(in_channels=9),
    "sdxl_refiner": UNetConfig.sdxl_refiner(),
}


@cache
def meta_state_dict(config):
    with torch.device("meta"):
        return UNetModel(config).state_dict()


def level_depths(config):
    n = config.num_res_blocks[0]
    assert config.num_res_blocks == (n,) * len(config.channel_mult), "diffusers needs uniform res blocks"
    return config.transformer_depth[::n]


def diffusers_config(config):
    """UNet2DConditionModel kwargs for a UNetConfig with the same depth in every block of a level.
    (diffusers' `attention_head_dim` is really the number of heads; its mid block reads the
    last level's entries.)"""
    depths = level_depths(config)
    channels = [config.model_channels * m for m in config.channel_mult]
    kwargs = dict(
        sample_size=16, in_channels=config.in_channels, out_channels=config.out_channels,
        block_out_channels=tuple(channels), layers_per_block=config.num_res_blocks[0],
        down_block_types=tuple("CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths),
        up_block_types=tuple("CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depths)),
        transformer_layers_per_block=tuple(d or config.transformer_depth_middle for d in depths),
        attention_head_dim=tuple(max(config.heads(c)[0], 1) for c in channels),
        cross_attention_dim=config.context_dim, use_linear_projection=config.use_linear_in_transformer)
    if config.adm_in_channels is not None:
        kwargs.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                      projection_class_embeddings_input_dim=config.adm_in_channels)
    return kwargs


def to_diffusers_layout(state_dict, config):
    checkpoint = {LDM_PREFIX + k: v for k, v in state_dict.items()}
    return convert_ldm_unet_checkpoint(checkpoint, config)


def random_model(config, seed=0):
    """A UNetModel with every parameter (norms included) moved off its default init."""
    torch.manual_seed(seed)
    model = UNetModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@cache
def model_and_reference(config):
    """A random UNetModel and the diffusers UNet loaded with the same weights through the converter."""
    model = random_model(config)
    kwargs = diffusers_config(config)
    reference = UNet2DConditionModel(**kwargs).eval()
    reference.load_state_dict(to_diffusers_layout(model.state_dict(), kwargs), strict=True)
    return model, reference


def inputs(config, height=16, width=16, batch=2, tokens=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, height, width, generator=g)
    t = torch.tensor([999.0, 17.5])[:batch]
    context = torch.randn(batch, tokens, config.context_dim, generator=g)
    return x, t, context


def max_diff(a, b):
    return (a - b).abs().max().item()


# --- key layout of the real checkpoints -------------------------------------------------------------

@pytest.mark.parametrize(("config", "count", "parameters"), [
    (UNetConfig.sd15(), 686, 859_520_964), (UNetConfig.sd21(), 686, 865_910_724),
    (UNetConfig.sdxl(), 1680, 2_567_463_684)])
def test_presets_have_the_published_key_and_parameter_counts(config, count, parameters):
    state_dict = meta_state_dict(config)
    assert len(state_dict) == count
    assert sum(v.numel() for v in state_dict.values()) == parameters


@pytest.mark.parametrize(("preset", "key", "shape"), [
    ("sd15", "input_blocks.0.0.weight", (320, 4, 3, 3)),
    ("sd15_inpaint", "input_blocks.0.0.weight", (320, 9, 3, 3)),
    ("sd15", "time_embed.0.weight", (1280, 320)),
    ("sd15", "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight", (320, 320)),
    ("sd15", "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", (320, 768)),
    ("sd15", "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight", (2560, 320)),
    ("sd15", "input_blocks.3.0.op.weight", (320, 320, 3, 3)),
    ("sd15", "middle_block.1.proj_in.weight", (1280, 1280, 1, 1)),
    ("sd15", "output_blocks.2.1.conv.weight", (1280, 1280, 3, 3)),
    ("sd15", "output_blocks.5.2.conv.weight", (1280, 1280, 3, 3)),
    ("sd15", "output_blocks.11.1.transformer_blocks.0.norm1.bias", (320,)),
    ("sd15", "out.2.weight", (4, 320, 3, 3)),
    ("sd21", "middle_block.1.proj_in.weight", (1280, 1280)),
    ("sd21", "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", (320, 1024)),
    ("sdxl", "label_emb.0.0.weight", (1280, 2816)),
    ("sdxl", "input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight", (1280, 2048)),
    ("sdxl", "output_blocks.2.2.conv.weight", (1280, 1280, 3, 3)),
    ("sdxl", "output_blocks.5.1.transformer_blocks.1.norm3.weight", (640,)),
    ("sdxl_refiner", "label_emb.0.0.weight", (1536, 2560)),
    ("sdxl_refiner", "input_blocks.4.1.transformer_blocks.3.attn2.to_v.weight", (768, 1280)),
])
def test_preset_keys_have_checkpoint_names_and_shapes(preset, key, shape):
    assert tuple(meta_state_dict(PRESETS[preset])[key].shape) == shape


@pytest.mark.parametrize("preset", ["sd15", "sd21", "sdxl", "sdxl_refiner"])
def test_presets_convert_onto_diffusers_full_size_unets(preset):
    """diffusers' converter maps every key we produce onto exactly the parameters of the
    equivalent full-size diffusers UNet, with the same shapes."""
    config = PRESETS[preset]
    kwargs = diffusers_config(config)
    ours = to_diffusers_layout(meta_state_dict(config), kwargs)
    with torch.device("meta"):
        theirs = UNet2DConditionModel(**kwargs).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


# --- detection --------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", [*PRESETS.values(), SD1_TINY, SD2_TINY, SDXL_TINY, INPAINT_TINY],
                         ids=[*PRESETS, "sd1_tiny", "sd2_tiny", "sdxl_tiny", "inpaint_tiny"])
def test_detect_round_trips_every_preset_and_scaled_down_layout(config):
    assert detect_unet_config(meta_state_dict(config)) == config


def test_detect_with_checkpoint_prefix_and_irregular_depths():
    """SSD-1B-style per-block depths and a middle block without attention survive detection."""
    config = UNetConfig(model_channels=32, channel_mult=(1, 2, 4), num_res_blocks=(2, 2, 2),
                        transformer_depth=(0, 0, 2, 1, 3, 2),
                        transformer_depth_output=(0, 0, 0, 1, 1, 2, 3, 1, 2),
                        transformer_depth_middle=-1, context_dim=64, num_heads=-1, num_head_channels=32,
                        use_linear_in_transformer=True, adm_in_channels=96)
    checkpoint = {LDM_PREFIX + k: v for k, v in meta_state_dict(config).items()}
    checkpoint["first_stage_model.decoder.conv_in.weight"] = torch.empty(512, 4, 3, 3, device="meta")
    detected = detect_unet_config(checkpoint, prefix=LDM_PREFIX)
    assert detected.transformer_depth == config.transformer_depth
    assert detected.transformer_depth_output == config.transformer_depth_output
    assert detected.transformer_depth_middle == -1 and detected.adm_in_channels == 96
    assert detected.num_head_channels == 64  # heads leave no trace in shapes: ComfyUI's SD2/XL rule
    with pytest.raises(ValueError):
        detect_unet_config(checkpoint)


def test_strict_load_of_a_prefixed_checkpoint():
    source, _ = model_and_reference(SD1_TINY)
    checkpoint = {LDM_PREFIX + k: v for k, v in source.state_dict().items()}
    target = UNetModel(detect_unet_config(checkpoint, LDM_PREFIX))
    target.load_state_dict({k[len(LDM_PREFIX):]: v for k, v in checkpoint.items()}, strict=True)
    x, t, context = inputs(SD1_TINY)
    with torch.no_grad():
        assert torch.equal(target(x, t, context), source(x, t, context))


# --- numerics against diffusers ---------------------------------------------------------------------

def test_timestep_embedding_is_cos_first_like_diffusers_sd_setting():
    t = torch.tensor([0.0, 1.0, 17.5, 999.0])
    expected = get_timestep_embedding(t, 320, flip_sin_to_cos=True, downscale_freq_shift=0)
    assert max_diff(timestep_embedding(t, 320), expected) < 1e-6
    assert torch.equal(timestep_embedding(t, 320)[:, 0], torch.cos(t))


@pytest.mark.parametrize("config", [SD1_TINY, SD2_TINY, INPAINT_TINY], ids=["sd1", "sd2", "inpaint9"])
def test_parity_with_diffusers(config):
    model, reference = model_and_reference(config)
    x, t, context = inputs(config)
    with torch.no_grad():
        ours = model(x, t, context)
        theirs = reference(x, t, encoder_hidden_states=context).sample
    assert ours.shape == (2, 4, 16, 16)
    assert ours.abs().max() > 0.1
    assert max_diff(ours, theirs) < TOLERANCE


def test_sdxl_parity_with_diffusers_text_time_embedding_on_odd_latents():
    model, reference = model_and_reference(SDXL_TINY)
    x, t, context = inputs(SDXL_TINY, height=15, width=13)
    pooled = torch.randn(2, SDXL_TINY_POOLED)
    # original (h, w) = (1024, 832), crop (top, left) = (16, 0), target (h, w) = (960, 768)
    y = sdxl_adm(pooled, width=832, height=1024, crop_w=0, crop_h=16, target_width=768, target_height=960)
    time_ids = torch.tensor([[1024.0, 832.0, 16.0, 0.0, 960.0, 768.0]]).repeat(2, 1)
    with torch.no_grad():
        ours = model(x, t, context, y=y)
        theirs = reference(x, t, encoder_hidden_states=context,
                           added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
    assert ours.shape == (2, 4, 15, 13)
    assert max_diff(ours, theirs) < TOLERANCE
    with pytest.raises(ValueError):
        model(x, t, context)


def test_refiner_adm_is_pooled_then_five_size_embeddings():
    pooled = torch.randn(3, 1280)
    y = sdxl_refiner_adm(pooled, width=1024, height=768, crop_w=0, crop_h=8, aesthetic_score=6.0)
    assert y.shape == (3, 2560)
    assert torch.equal(y[:, :1280], pooled)
    assert torch.equal(y[1, 1280:1536], timestep_embedding(torch.tensor([768.0]), 256)[0])
    assert torch.equal(y[2, -256:], timestep_embedding(torch.tensor([6.0]), 256)[0])


def test_controlnet_residuals_match_diffusers_down_and_mid_residuals():
    model, reference = model_and_reference(SD1_TINY)
    x, t, context = inputs(SD1_TINY)
    g = torch.Generator().manual_seed(3)
    shapes = [(2, 32, 16, 16)] * 3 + [(2, 32, 8, 8)] + [(2, 64, 8, 8)] * 2  # conv_in, 2 res, down, 2 res
    down = [torch.randn(s, generator=g) for s in shapes]
    mid = torch.randn(2, 64, 8, 8, generator=g)
    control = {"output": list(down), "middle": [mid]}
    with torch.no_grad():
        ours = model(x, t, context, control=control)
        theirs = reference(x, t, encoder_hidden_states=context, down_block_additional_residuals=tuple(down),
                           mid_block_additional_residual=mid).sample
        plain = model(x, t, context)
    assert len(control["output"]) == 6 and len(control["middle"]) == 1  # caller's lists untouched
    assert max_diff(ours, plain) > 0.1
    assert max_diff(ours, theirs) < TOLERANCE


def test_t2i_adapter_input_residuals_match_diffusers_intrablock_residuals():
    """T2I-Adapter features land on the last res block of each level; ComfyUI lists them
    per input block with None elsewhere, in reverse (the list is popped)."""
    model, reference = model_and_reference(SD1_TINY)
    x, t, context = inputs(SD1_TINY)
    g = torch.Generator().manual_seed(4)
    features = [torch.randn(2, 32, 16, 16, generator=g), torch.randn(2, 64, 8, 8, generator=g)]
    per_input_block = [None, None, features[0], None, None, features[1]]
    with torch.no_grad():
        ours = model(x, t, context, control={"input": list(reversed(per_input_block))})
        theirs = reference(x, t, encoder_hidden_states=context,
                           down_intrablock_additional_residuals=list(features)).sample
    assert max_diff(ours, theirs) < TOLERANCE


def test_bf16_weights_track_fp32_and_return_input_dtype():
    model = random_model(SD1_TINY)
    x, t, context = inputs(SD1_TINY)
    with torch.no_grad():
        full = model(x, t, context)
        half = model.to(torch.bfloat16)(x, t, context)
    assert half.dtype == torch.float32
    assert max_diff(half, full) < 0.05 * full.abs().max().item()
