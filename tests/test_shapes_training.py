"""The shapes-model trainers write files in the real layouts, and Loom loads them like any downloaded file.

Each trainer runs a few steps on a handful of scenes (the shipped configs, tiny data), then the file goes
through the same loader a user's file would: the checkpoint is detected as SD1 from its shapes, the
ControlNet and the kohya LoRA match the checkpoint's UNet, spandrel recognises the upscaler.
"""
from dataclasses import replace

import numpy as np
import pytest
import torch

from engine import memory
from engine.loading.checkpoint import load_checkpoint
from engine.loading.controlnet import load_controlnet
from engine.loading.lora import match_lora, read_lora_file
from engine.models.unet import detect_unet_config
from engine.sampling.schedules import DiscreteSchedule
from engine.shapes.scene import scene_at
from engine.shapes.train import checkpoint as ck
from engine.shapes.train import common
from engine.shapes.train.controlnet import ControlNetTraining, train_controlnet
from engine.shapes.train.lora import LoRATraining, train_lora
from engine.shapes.train.upscaler import UpscalerTraining, train_upscaler

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A VAE and a checkpoint trained for two steps each, in a private work folder."""
    work = tmp_path_factory.mktemp("shapes")
    saved, common.WORK = common.WORK, work
    try:
        memory.configure("cpu", "fp32")
        ck.train_vae(replace(ck.VAETraining(), steps=2, batch=2, calibration_images=16, eval_images=4), CPU)
        path = ck.train_t2i(replace(ck.T2ITraining(), steps=2, images=16, batch=4), CPU,
                            out=work / "loom-shapes.safetensors", measure_quality=False)
        yield work, path
    finally:
        common.WORK = saved


def test_checkpoint_is_an_sd1_file_detected_from_its_shapes(trained):
    _, path = trained
    ckpt = load_checkpoint(path)
    assert ckpt.family == "sd1" and ckpt.model.prediction_type == "eps"
    assert ckpt.model.config == ck.UNET_CONFIG
    assert ckpt.vae.downscale == 8 and ckpt.vae.latent_channels == 4
    meta = common.metadata_of(path)
    assert meta["generator_version"] == "1" and meta["config"]["unet"]["model_channels"] == 32
    assert meta["metrics"]["vae"]["latent_scale_applied"] > 0


def test_checkpoint_generates_through_the_sd1_path(trained):
    from engine.sampling.ksampler import sample
    from engine.sd.conditioning import Cond
    _, path = trained
    ckpt = load_checkpoint(path)
    cond = [Cond(*ckpt.clip.encode("a large red circle"))]
    uncond = [Cond(*ckpt.clip.encode(""))]
    latent = {"samples": torch.zeros(1, 4, 16, 16)}
    out = sample(ckpt.model, latent, cond, uncond, seed=1, steps=2, cfg=6.0, sampler_name="euler", scheduler="normal")
    image = ckpt.vae.decode(out["samples"])
    assert image.shape == (1, 128, 128, 3) and torch.isfinite(image).all()


def test_calibrated_latents_have_sd1_scale(trained):
    """After calibration, 0.18215 x latent has unit standard deviation on the calibration renders."""
    vae = ck.load_vae(trained[0] / "vae.safetensors")
    x = common.to_tensor(common.render_set(common.TRAIN_SEED, range(16)))
    with torch.no_grad():
        latents = vae.encode(x) * common.LATENT_SCALE
    assert latents.std().item() == pytest.approx(1.0, rel=1e-3)


def test_training_captions_tokenize_as_the_text_encoder_does(trained):
    ckpt = load_checkpoint(trained[1])
    text = common.describe(scene_at(common.TRAIN_SEED, 3), np.random.default_rng(0), p_drop=0.0)
    spec = ckpt.clip.encoders[0][0]
    assert ck.Captions().ids(text) == [t for t, _ in ckpt.clip.tokenize(text, spec.pad_token)[0]]


def test_training_schedule_is_the_sampler_schedule():
    sigmas = ((1 - ck.alphas_cumprod()) / ck.alphas_cumprod()).sqrt()
    torch.testing.assert_close(sigmas, DiscreteSchedule().sigmas, rtol=5e-5, atol=0)  # fp32 round-off


def test_describe_leaves_words_out_but_never_the_colour_and_kind():
    scene = scene_at(common.TRAIN_SEED, 7)
    rng = np.random.default_rng(0)
    texts = {common.describe(scene, rng) for _ in range(50)}
    assert len(texts) > 3
    for text in texts:
        for shape in scene.shapes:
            assert f"{shape.colour} {shape.kind}" in text


def test_controlnet_file_loads_for_the_checkpoint(trained):
    work, path = trained
    out = train_controlnet(replace(ControlNetTraining(), steps=1, images=8, batch=2), CPU, out=work / "cn.safetensors",
                           base=path, measure_quality=False)
    control = load_controlnet(out)
    assert control.config.unet.model_channels == ck.UNET_CONFIG.model_channels
    assert control.config.hint_block_channels == (16, 32, 64, 128)


def test_lora_is_kohya_format_and_matches_every_module(trained):
    work, path = trained
    out = train_lora(replace(LoRATraining(), steps=1, images=8, batch=2), CPU, out=work / "lora.safetensors",
                     base=path, measure_quality=False)
    tensors = read_lora_file(str(out))
    assert all(k.startswith("lora_unet_") for k in tensors)
    assert any(k.startswith("lora_unet_down_blocks_") and ".lora_down." in k for k in tensors)
    from safetensors.torch import load_file
    unet_sd = {k[22:]: v for k, v in load_file(str(path)).items() if k.startswith("model.diffusion_model.")}
    matched = match_lora(tensors, "lora", detect_unet_config(unet_sd))
    assert not matched.unmatched
    assert len(matched.unet.adapters) == len(tensors) // 3  # down, up, alpha per module
    assert any(v.abs().sum() > 0 for k, v in tensors.items() if k.endswith("lora_up.weight"))  # it trained


def test_upscaler_is_a_2x_model_spandrel_detects(tmp_path, monkeypatch):
    from engine.upscale import load_upscale_model, upscale_image
    monkeypatch.setattr(common, "WORK", tmp_path)
    out = train_upscaler(replace(UpscalerTraining(), steps=2, batch=2), CPU, out=tmp_path / "up.safetensors",
                         measure_quality=False)
    model = load_upscale_model(out)
    assert model.descriptor.scale == 2 and model.descriptor.architecture.name.lower().startswith("realesrgan")
    image = upscale_image(model, torch.rand(1, 32, 40, 3))
    assert image.shape == (1, 64, 80, 3)
