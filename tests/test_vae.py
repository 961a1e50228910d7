"""KL-VAE parity with diffusers.AutoencoderKL on the same weights, key layouts and config detection."""

import pytest
import torch
from diffusers import AutoencoderKL as DiffusersAutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

from engine.models.vae import AutoencoderKL, VAEConfig, detect_vae_config, vae_from_diffusers_keys

SMALL = VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1)


def diffusers_config(c: VAEConfig) -> dict:
    return dict(
        in_channels=c.in_channels,
        out_channels=c.out_channels,
        down_block_types=["DownEncoderBlock2D"] * len(c.ch_mult),
        up_block_types=["UpDecoderBlock2D"] * len(c.ch_mult),
        block_out_channels=[c.ch * m for m in c.ch_mult],
        layers_per_block=c.num_res_blocks,
        latent_channels=c.z_channels,
        norm_num_groups=32,
        mid_block_add_attention=c.mid_attention,
    )


def random_vae(config: VAEConfig, seed: int = 0) -> AutoencoderKL:
    """A VAE whose every parameter (norms included) is random, so no term can hide."""
    torch.manual_seed(seed)
    model = AutoencoderKL(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model


def diffusers_twin(model: AutoencoderKL) -> DiffusersAutoencoderKL:
    config = diffusers_config(model.config)
    twin = DiffusersAutoencoderKL(**config).eval()
    converted = convert_ldm_vae_checkpoint(model.state_dict(), config)
    twin.load_state_dict(converted, strict=True)
    return twin


@pytest.mark.parametrize("config", [SMALL, VAEConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, mid_attention=False)])
@torch.no_grad()
def test_encode_decode_match_diffusers(config):
    model = random_vae(config)
    twin = diffusers_twin(model)
    torch.manual_seed(1)
    pixels = torch.rand(2, 3, 32, 40) * 2 - 1
    mean = model.encode(pixels)
    expected_mean = twin.encode(pixels).latent_dist.mean
    factor = model.downscale
    assert mean.shape == (2, 4, 32 // factor, 40 // factor)
    diff = (mean - expected_mean).abs().max().item()
    print(f"encode mean max abs diff {diff:.2e} (scale {expected_mean.abs().max():.2e})")
    assert diff < 1e-4 * max(1.0, expected_mean.abs().max().item())

    latent = torch.randn(2, 4, 5, 6)
    pixels_out = model.decode(latent)
    expected = twin.decode(latent).sample
    assert pixels_out.shape == (2, 3, 5 * factor, 6 * factor)
    diff = (pixels_out - expected).abs().max().item()
    print(f"decode max abs diff {diff:.2e} (scale {expected.abs().max():.2e})")
    assert diff < 1e-4 * max(1.0, expected.abs().max().item())


@torch.no_grad()
def test_sampling_uses_the_generator_and_the_posterior_std():
    model = random_vae(SMALL)
    twin = diffusers_twin(model)
    pixels = torch.rand(1, 3, 16, 16) * 2 - 1
    sample = model.encode(pixels, generator=torch.Generator().manual_seed(7))
    again = model.encode(pixels, generator=torch.Generator().manual_seed(7))
    assert torch.equal(sample, again)
    posterior = twin.encode(pixels).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(sample, posterior.mean + posterior.std * noise, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(sample, model.encode(pixels))


def test_diffusers_layout_round_trip():
    model = random_vae(SMALL)
    original = model.state_dict()
    as_diffusers = convert_ldm_vae_checkpoint(dict(original), diffusers_config(SMALL))
    assert "decoder.up_blocks.0.resnets.0.norm1.weight" in as_diffusers
    assert as_diffusers["encoder.mid_block.attentions.0.to_q.weight"].ndim == 2
    back = vae_from_diffusers_keys(as_diffusers)
    assert back.keys() == original.keys()
    for key, value in original.items():
        assert back[key].shape == value.shape, key
        assert torch.equal(back[key], value), key


def test_old_diffusers_attention_names_convert():
    """Older diffusers files name the attention query/key/value/proj_attn."""
    model = random_vae(SMALL)
    as_diffusers = convert_ldm_vae_checkpoint(model.state_dict(), diffusers_config(SMALL))
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for key, value in as_diffusers.items():
        for new, old in old_names.items():
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        renamed[key] = value
    back = vae_from_diffusers_keys(renamed)
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


@torch.no_grad()
def test_linear_shaped_attention_weights_load():
    model = random_vae(SMALL)
    sd = model.state_dict()
    linear = {k: (v[:, :, 0, 0] if v.ndim == 4 and ".attn_1." in k else v) for k, v in sd.items()}
    assert linear["decoder.mid.attn_1.q.weight"].ndim == 2
    other = AutoencoderKL(SMALL).eval()
    other.load_state_dict(linear, strict=True)
    latent = torch.randn(1, 4, 4, 4)
    assert torch.equal(other.decode(latent), model.decode(latent))


def test_sd_preset_has_the_original_layout_and_is_detected():
    with torch.device("meta"):
        sd = AutoencoderKL(VAEConfig.sd()).state_dict()
    for key in (
        "encoder.conv_in.weight",
        "encoder.down.0.block.0.norm1.weight",
        "encoder.down.1.block.0.nin_shortcut.weight",
        "encoder.down.2.downsample.conv.weight",
        "encoder.mid.attn_1.q.weight",
        "encoder.norm_out.weight",
        "quant_conv.weight",
        "post_quant_conv.weight",
        "decoder.mid.block_2.conv2.weight",
        "decoder.up.3.block.2.conv2.weight",
        "decoder.up.1.upsample.conv.weight",
        "decoder.norm_out.bias",
        "decoder.conv_out.weight",
    ):
        assert key in sd, key
    assert "encoder.down.3.downsample.conv.weight" not in sd and "decoder.up.0.upsample.conv.weight" not in sd
    assert sd["encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    assert sd["quant_conv.weight"].shape == (8, 8, 1, 1)
    assert len(sd) == 248  # number of first_stage_model.* tensors in SD1/SD2/SDXL checkpoints
    assert detect_vae_config(sd) == VAEConfig.sd()

    # Same keys and shapes as diffusers' converter expects from an original-layout file.
    config = diffusers_config(VAEConfig.sd())
    with torch.device("meta"):
        twin = DiffusersAutoencoderKL(**config).state_dict()
    converted = convert_ldm_vae_checkpoint(sd, config)
    assert converted.keys() == twin.keys()
    assert all(converted[k].shape == twin[k].shape for k in twin)


def test_detects_scaled_down_configs():
    for config in (SMALL, VAEConfig(ch=64, ch_mult=(1, 1, 2), num_res_blocks=3, z_channels=8, embed_dim=8, mid_attention=False)):
        with torch.device("meta"):
            sd = AutoencoderKL(config).state_dict()
        assert detect_vae_config(sd) == config
