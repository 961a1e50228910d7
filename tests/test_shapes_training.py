"""The shapes-model trainers write files in the real layouts, and Loom loads them like any downloaded file.

Each trainer runs a few steps on a handful of scenes (the shipped configs, tiny data), then the file goes
through the same loader a user's file would: the checkpoint is detected as SD1 from its shapes, the
ControlNet and the kohya LoRA match the checkpoint's UNet, spandrel recognises the upscaler.
"""
import json
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from engine import memory
from engine.loading.checkpoint import UNET_PREFIX, load_checkpoint
from engine.loading.controlnet import load_controlnet
from engine.loading.lora import match_lora, read_lora_file
from engine.models.unet import detect_unet_config
from engine.models.vae import AutoencoderKL
from engine.sampling.schedules import DiscreteSchedule
from engine.shapes.scene import scene_at
from engine.shapes.train import checkpoint as ck
from engine.shapes.train import common, latent_code
from engine.shapes.train.controlnet import CONTROLNET, ControlNetTraining, train_controlnet
from engine.shapes.train.lora import LORA, LoRATraining, train_lora
from engine.shapes.train.upscaler import UpscalerTraining, train_upscaler

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A VAE decoder and a UNet + text encoder trained for two steps each, in a private work folder."""
    work = tmp_path_factory.mktemp("shapes")
    saved, common.WORK = common.WORK, work
    try:
        memory.configure("cpu", "fp32")
        out = work / "loom-shapes.safetensors"
        assert ck.train_t2i(replace(ck.T2ITraining(), steps=2, images=16, batch=4), CPU, out=out,
                            measure_quality=False) is None  # waits for the VAE stage
        ck.train_vae(replace(ck.VAETraining(), steps=2, batch=2, eval_images=4), CPU, checkpoint=out,
                     measure_quality=False)  # the second stage to finish writes the checkpoint
        yield work, out
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
    # the VAE autocasts to bf16 only where this CPU runs it natively (emulated, it is several times slower)
    assert meta["training"]["vae"][0]["bf16"] is memory.supports_bf16(CPU)


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


def test_a_resumed_run_starts_from_the_last_weights_and_adds_to_the_record(trained):
    work, path = trained
    from safetensors.torch import load_file
    before = load_file(str(ck.t2i_file()))
    first = common.metadata_of(ck.t2i_file())
    # zero steps: the saved networks are exactly the ones resumed from (EMA of unchanged weights)
    ck.train_t2i(replace(ck.T2ITraining(), steps=0, images=16, batch=4, resume=True, lr=1e-4), CPU,
                 out=work / "resumed.safetensors", measure_quality=False)
    after = load_file(str(ck.t2i_file()))
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    meta = common.metadata_of(ck.t2i_file())
    assert [run["lr"] for run in meta["training"]] == [first["training"][0]["lr"], 1e-4]
    assert float(meta["train_minutes"]) >= float(first["train_minutes"])
    assert common.metadata_of(work / "resumed.safetensors")["train_minutes"]["t2i"] == float(meta["train_minutes"])
    assert all(run.get("resume") for run in ck.T2I_RUNS[1:]) and not ck.T2I_RUNS[0].get("resume")
    vae_before = load_file(str(ck.vae_file()))
    ck.train_vae(replace(ck.VAETraining(), steps=0, eval_images=4, resume=True), CPU,
                 checkpoint=work / "resumed.safetensors", measure_quality=False)
    vae_after = load_file(str(ck.vae_file()))
    assert all(torch.equal(vae_after[k], vae_before[k]) for k in vae_before)
    assert [run["resume"] for run in common.metadata_of(ck.vae_file())["training"]] == [False, True]


def test_the_encoder_is_the_calibrated_block_mean_code(trained):
    """The shipped encoder computes what the trainers use as latents (8x8 block means, scaled), and
    0.18215 x latent has about unit standard deviation, as SD1 latents do."""
    vae = ck.load_vae(trained[0] / "vae.safetensors")
    x = common.to_tensor(common.render_set(common.EVAL_SEED, range(8)))
    with torch.no_grad():
        latents = vae.encode(x) * common.LATENT_SCALE
    fast = ck.block_means(x) * ck.latent_scale() * common.LATENT_SCALE
    assert (latents - fast).abs().max().item() < 0.01
    assert latents.std().item() == pytest.approx(1.0, abs=0.2)
    assert latents[:, 3].abs().max().item() < 0.01  # the fourth channel is unused


def test_a_learned_fourth_channel_is_what_the_sd_layout_encoder_computes(trained, tmp_path, monkeypatch):
    """Stage ``vae`` with ``shape_code`` learns latent channel 3 beside the block means. The saved SD-layout
    encoder computes exactly the latents the other stages train on, channel 3 at zero mean and unit
    variance, and those latents are cached for the next run."""
    import shutil
    work, _ = trained
    monkeypatch.setattr(common, "WORK", tmp_path)
    shutil.copy(work / "vae.safetensors", ck.vae_file())
    assert ck.training_code() is None  # channel 3 unused until a run learns it
    with pytest.raises(RuntimeError, match="no learned latent channel 3"):
        ck.encode_latents(common.EVAL_SEED, 8, CPU, shape_code=True)
    ck.train_vae(replace(ck.VAETraining(), steps=2, batch=2, eval_images=4, resume=True, shape_code=True), CPU,
                 checkpoint=tmp_path / "checkpoint.safetensors", measure_quality=False)
    vae = ck.load_vae()
    assert latent_code.has_code(vae) and "channel 3 learned" in common.metadata_of(ck.vae_file())["encoder"]
    x = common.to_tensor(common.render_set(common.EVAL_SEED, range(8)))
    with torch.no_grad():
        latents = vae.encode(x) * common.LATENT_SCALE
    cached = ck.encode_latents(common.EVAL_SEED, 8, CPU, shape_code=True)
    assert (latents[:, :3] - cached[:, :3]).abs().max().item() < 0.01
    assert (latents[:, 3] - cached[:, 3]).abs().max().item() < 1e-4
    assert list(tmp_path.glob("latents-*.pt"))
    assert torch.equal(ck.encode_latents(common.EVAL_SEED, 8, CPU, shape_code=True), cached)
    assert torch.equal(ck.encode_latents(common.EVAL_SEED, 5, CPU, shape_code=True), cached[:5])
    assert not ck.encode_latents(common.EVAL_SEED, 8, CPU)[:, 3].any()  # what the runs before it trained on
    calibration = ck.encode_latents(common.TRAIN_SEED, 64, CPU, shape_code=True)[:, 3]
    assert calibration.mean().item() == pytest.approx(0.0, abs=0.3)
    assert calibration.std().item() == pytest.approx(1.0, abs=0.3)
    with torch.no_grad():  # the decoder reads channel 3 as it was trained to (post_quant_conv undoes the calibration)
        y = vae.decode(vae.encode(x))
    assert ((y.clamp(-1, 1) - x) / 2).pow(2).mean().item() < 10 ** -2


def test_block_code_init_reconstructs_before_any_training():
    """Hand-set weights make the SD-layout autoencoder a block-mean code: it reproduces renders about as well
    as nearest-neighbour upsampling of the 8x8 block means (random weights give the mean grey)."""
    torch.manual_seed(0)
    vae = AutoencoderKL(ck.VAE_CONFIG)
    ck.block_code_init(vae)
    x = common.to_tensor(common.render_set(common.EVAL_SEED, range(8)))
    with torch.no_grad():
        y = vae.decode(vae.encode(x))
    nearest = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, 8), scale_factor=8)
    assert (y - x).abs().mean().item() < 1.1 * (nearest - x).abs().mean().item()


def test_training_captions_tokenize_as_the_text_encoder_does(trained):
    ckpt = load_checkpoint(trained[1])
    spec = ckpt.clip.encoders[0][0]
    captions = ck.Captions()  # tokenizes word by word: must give what the prompt node gives the whole text
    texts = ck.captions_for(range(300), np.random.default_rng(0), ck.T2ITraining(p_uncond=0.05))
    texts += [common.describe(scene_at(common.TRAIN_SEED, 3), np.random.default_rng(0), p_drop=0.0), "",
              "a (red:1.3) circle", " ".join(["a big red circle,"] * 20)]  # weight syntax, over one chunk
    assert "" in texts and any(len(scene_at(common.TRAIN_SEED, i).shapes) == 3 for i in range(300))
    for text in texts:
        assert captions.ids(text) == [t for t, _ in ckpt.clip.tokenize(text, spec.pad_token)[0]], text


def test_offset_noise_moves_the_noise_mean_and_nothing_else():
    x0, ab = torch.zeros(512, 4, 16, 16), ck.alphas_cumprod()
    _, plain, _ = ck.noised(x0, ab, torch.Generator().manual_seed(0))
    _, offset, xt = ck.noised(x0, ab, torch.Generator().manual_seed(0), offset=0.5)
    assert plain.mean((2, 3)).std() < 0.08 and 0.4 < offset.mean((2, 3)).std() < 0.6  # 1/16 vs sqrt(1/256 + 0.25)
    centred = lambda n: n - n.mean((2, 3), keepdim=True)
    torch.testing.assert_close(centred(offset), centred(plain))  # same draws; only a constant per channel added
    t = ck.noised(x0, ab, torch.Generator().manual_seed(0), offset=0.5)[0]
    torch.testing.assert_close(xt, (1 - ab[t]).sqrt().view(-1, 1, 1, 1) * offset)  # x_t carries that noise


def test_a_focus_draws_scenes_with_those_kinds_that_many_times_a_pass():
    assert ck.focus_repeats(ck.T2ITraining()) is None
    repeats = ck.focus_repeats(replace(ck.T2ITraining(), images=300, focus=("star", "ring"), focus_repeats=3))
    focused = [any(s.kind in ("star", "ring") for s in scene_at(common.TRAIN_SEED, i).shapes) for i in range(300)]
    assert 50 < sum(focused) < 250 and list(repeats) == [3 if f else 1 for f in focused]
    one_pass = np.concatenate(list(common.batches(300, 1, int(repeats.sum()), 0, repeats)))
    np.testing.assert_array_equal(np.bincount(one_pass, minlength=300), repeats)
    assert sorted(next(common.batches(300, 300, 1, 0))) == list(range(300))  # no repeats: each once a pass


def test_hires_steps_train_on_the_same_scenes_at_twice_the_size():
    """A quarter of a hires run's steps, evenly spread, see 32x32 latents of 256-pixel renders, and those are the
    training scenes themselves (whose captions the step draws): pooled 2x they are the 128-pixel latents."""
    assert ck.hires_steps(ck.T2ITraining()) is None
    steps = ck.hires_steps(replace(ck.T2ITraining(), steps=400, hires=0.25))
    assert steps.sum() == 100 and np.diff(np.flatnonzero(steps)).max() == 4
    small, large = (ck.encode_latents(common.TRAIN_SEED, 6, CPU, size=size) for size in (128, 256))
    assert small.shape == (6, 4, 16, 16) and large.shape == (6, 4, 32, 32)
    torch.testing.assert_close(torch.nn.functional.avg_pool2d(large, 2), small, atol=0.1, rtol=0)  # anti-aliasing


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


def test_describe_can_leave_positions_out_on_their_own():
    """The ControlNet's captions drop positions more often than other words (the edges say where); the same
    draws decide, so a rate equal to the others' gives the very captions the t2i runs trained on."""
    scene = next(s for s in (scene_at(common.TRAIN_SEED, i) for i in range(50)) if len(s.shapes) > 1)
    same = [common.describe(scene, np.random.default_rng(seed), 0.3, 0.3) for seed in range(20)]
    assert same == [common.describe(scene, np.random.default_rng(seed), 0.3) for seed in range(20)]
    for seed in range(20):
        text = common.describe(scene, np.random.default_rng(seed), 0.0, 1.0)
        assert all(f"{s.size} {s.colour} {s.kind}" in text and s.position not in text for s in scene.shapes), text


def test_controlnet_file_loads_for_the_checkpoint(trained):
    work, path = trained
    cfg = replace(ControlNetTraining(), steps=1, images=8, batch=2, p_partial=0.5, shape_code=False)
    out = train_controlnet(cfg, CPU, out=work / "cn.safetensors", base=path, measure_quality=False)
    control = load_controlnet(out)
    assert control.config.unet.model_channels == ck.UNET_CONFIG.model_channels
    assert control.config.hint_block_channels == (16, 32, 64, 128)
    from safetensors.torch import load_file
    before = load_file(str(out))
    train_controlnet(replace(ControlNetTraining(), steps=0, images=8, batch=2, resume=True, shape_code=False), CPU,
                     out=out, base=path, measure_quality=False)  # a resumed run starts from the file's weights
    assert all(torch.equal(v, load_file(str(out))[k]) for k, v in before.items())
    assert [run["resume"] for run in common.metadata_of(out)["training"]] == [False, True]


def test_controlnet_hints_are_what_the_workflows_canny_node_computes():
    import json

    from engine.paths import ROOT
    from engine.shapes.train.controlnet import CANNY_THRESHOLDS, edges_of
    doc = json.loads((ROOT / "workflows" / "shapes" / "controlnet_canny.json").read_text())
    canny = next(n for n in doc["nodes"] if n["type"] == "Canny")
    assert (canny["values"]["low_threshold"], canny["values"]["high_threshold"]) == CANNY_THRESHOLDS
    # a blue cross on gray differs little in luma: its outline must still be in the hint
    from engine.shapes.evaluate import outlines
    from engine.shapes.scene import render
    image = render(scene_at(12, 0, max_shapes=1), 128)
    assert edges_of(image[None])[0].sum() > 0.5 * outlines(image).sum()


def test_partial_hints_outline_some_of_a_scenes_shapes():
    """What a stacked ControlNet sees: one shape's edges among the several shapes its prompt names."""
    from engine.shapes.evaluate import outlines
    from engine.shapes.scene import render
    from engine.shapes.train.controlnet import edges_of, partial_edges
    indices = range(16)
    full = edges_of(common.render_set(common.TRAIN_SEED, indices)).bool()
    part = partial_edges(common.TRAIN_SEED, indices, pick_seed=0).bool()
    assert torch.equal(part, partial_edges(common.TRAIN_SEED, indices, pick_seed=0).bool())  # deterministic
    assert not (part & ~full).any()  # no edge the whole scene lacks
    for i in indices:
        scene = scene_at(common.TRAIN_SEED, i)
        near = [torch.from_numpy(outlines(render(replace(scene, shapes=(s,))))).bool() for s in scene.shapes]
        near = [torch.nn.functional.max_pool2d(o[None, None].float(), 5, 1, 2)[0, 0].bool() for o in near]
        outlined = [(part[i] & o).sum() > 0.5 * (full[i] & o).sum() for o in near]
        if len(scene.shapes) == 1:
            assert torch.equal(part[i], full[i])
        else:  # some of the shapes, never none and never all
            assert 0 < sum(outlined) < len(scene.shapes), (i, outlined)

def test_lora_is_kohya_format_and_matches_every_module(trained):
    work, path = trained
    out = train_lora(replace(LoRATraining(), steps=1, images=8, batch=2, shape_code=False), CPU, out=work / "lora.safetensors",
                     base=path, measure_quality=False)
    tensors = read_lora_file(str(out))
    assert all(k.startswith("lora_unet_") for k in tensors)
    assert any(k.startswith("lora_unet_down_blocks_") and ".lora_down." in k for k in tensors)
    from safetensors.torch import load_file
    unet_sd = {k.removeprefix(UNET_PREFIX): v for k, v in load_file(str(path)).items() if k.startswith(UNET_PREFIX)}
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


def test_measuring_a_file_adds_metrics_and_keeps_kohya_metadata(trained, monkeypatch):
    from safetensors import safe_open

    from engine.shapes import quality
    work, path = trained
    out = train_lora(replace(LoRATraining(), steps=1, images=8, batch=2, shape_code=False), CPU, out=work / "lora2.safetensors",
                     base=path, measure_quality=False)
    monkeypatch.setattr(quality, "lora_effect", lambda n: {"stripe_energy_at_1": 9.5, "stripe_energy_at_0": 0.5})
    before = read_lora_file(str(out))
    common.measure_file(out, "lora")
    with safe_open(str(out), "pt") as f:
        raw = f.metadata()
    assert raw["ss_network_dim"] == "8" and raw["loom.generator_version"] == "1"
    assert common.metadata_of(out)["metrics"] == {"stripe_energy_at_1": 9.5, "stripe_energy_at_0": 0.5}
    after = read_lora_file(str(out))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_shipped_files_record_the_runs_their_training_commands_make():
    """The shipped checkpoint, ControlNet and LoRA are what ``python -m engine.shapes.train`` makes: each recorded
    run has the settings of its entry in the runs table (fields added since are not in older records), and the
    ControlNet's and LoRA's last runs trained against the shipped UNet (all of T2I_RUNS)."""

    def agree(recorded, table, config):
        assert len(recorded) == len(table)
        for run, overrides in zip(recorded, table):
            wanted = json.loads(json.dumps(asdict(replace(config(), **overrides))))  # as recorded: tuples are lists
            if wanted.get("bf16", False) is None:  # "where native": the run records what its machine resolved
                del wanted["bf16"]
            assert {k: run[k] for k in wanted if k in run} == {k: v for k, v in wanted.items() if k in run}

    meta = common.metadata_of(ck.CHECKPOINT)
    agree(meta["training"]["t2i"], ck.T2I_RUNS, ck.T2ITraining)
    agree(meta["training"]["vae"], ck.VAE_RUNS, ck.VAETraining)
    controlnet = common.metadata_of(CONTROLNET)["training"]
    agree(controlnet, [dict()], ControlNetTraining)
    assert controlnet[-1]["against_t2i_runs"] == len(ck.T2I_RUNS) == ck.t2i_runs_in(ck.CHECKPOINT)
    lora = common.metadata_of(LORA)
    agree([lora["training"]], [dict()], LoRATraining)
    assert int(lora["against_t2i_runs"]) == len(ck.T2I_RUNS)  # kohya metadata: strings
