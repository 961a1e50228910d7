"""Full-size SD1.5 and SDXL UNets against diffusers on the same random weights.

Slow (GBs of weights on the CPU): deselected by default, run with ``pytest -m slow``.
The small-config parity tests in test_unet.py run in CI.
"""
import pytest
import torch
from diffusers import UNet2DConditionModel

from engine.models.unet import UNetConfig, UNetModel, sdxl_adm
from tests.test_unet import diffusers_config, to_diffusers_layout

pytestmark = pytest.mark.slow


def compare(config, dtype, adm=False):
    torch.manual_seed(0)
    with torch.device("meta"):
        ours = UNetModel(config)
    ours = ours.to_empty(device="cpu")
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.02)
    ours = ours.to(dtype).eval()
    kwargs = diffusers_config(config)
    with torch.device("meta"):
        reference = UNet2DConditionModel(**kwargs)
    reference.load_state_dict(to_diffusers_layout(ours.state_dict(), kwargs), strict=True, assign=True)
    reference = reference.eval()
    x = torch.randn(2, config.in_channels, 16, 16, dtype=dtype)
    t = torch.tensor([999.0, 250.0])
    context = torch.randn(2, 77, config.context_dim, dtype=dtype)
    with torch.inference_mode():
        if adm:
            pooled = torch.randn(2, config.adm_in_channels - 6 * 256)
            y = sdxl_adm(pooled, 1024, 1024, 0, 0, 1024, 1024).to(dtype)
            time_ids = torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * 2)
            expected = reference(x, t, context, added_cond_kwargs={"text_embeds": pooled.to(dtype),
                                                                   "time_ids": time_ids}).sample
            got = ours(x, t, context, y=y)
        else:
            expected = reference(x, t, context).sample
            got = ours(x, t, context)
    return (got.float() - expected.float()).abs().max().item(), expected.float().abs().max().item()


def test_full_sd15_unet_matches_diffusers():
    diff, scale = compare(UNetConfig.sd15(), torch.float32)
    print(f"SD1.5 fp32: max abs diff {diff:.2e} (outputs up to {scale:.2f})")
    assert diff < 1e-4 * max(1.0, scale)


def test_full_sdxl_unet_matches_diffusers():
    diff, scale = compare(UNetConfig.sdxl(), torch.bfloat16, adm=True)
    print(f"SDXL bf16: max abs diff {diff:.2e} (outputs up to {scale:.2f})")
    assert diff < 0.05 * max(1.0, scale)
