"""The models Loom ships (assets/models/) do what their workflows claim, measured on CPU in fp32 with the
OpenCV evaluator (engine/shapes/evaluate.py), through the same workflows a user opens."""
import numpy as np
import pytest

from engine import memory
from engine.loading.checkpoint import load_checkpoint
from engine.paths import SHIPPED_MODELS
from engine.shapes import quality
from engine.shapes.train import common
from engine.shapes.train.checkpoint import CHECKPOINT, UNET_CONFIG, VAE_CONFIG
from engine.shapes.train.controlnet import CONTROLNET
from engine.shapes.train.lora import LORA
from engine.shapes.train.upscaler import NETWORK, UPSCALER

SHIPPED = sorted(SHIPPED_MODELS.rglob("*.safetensors"))


@pytest.fixture(autouse=True)
def cpu_fp32():
    memory.configure("cpu", "fp32")


def test_shipped_weights_fit_the_budget():
    assert {CHECKPOINT, CONTROLNET, UPSCALER, LORA} <= set(SHIPPED)
    assert sum(p.stat().st_size for p in SHIPPED) < 30 * 2 ** 20


def test_every_shipped_file_records_config_generator_and_metrics():
    for path in SHIPPED:
        meta = common.metadata_of(path)
        assert meta["generator_version"] and meta["config"] and meta["metrics"], path.name
    assert common.metadata_of(UPSCALER)["config"] == NETWORK


def test_default_precision_on_the_cpu_decodes_the_shipped_colours():
    """--precision auto computes in bf16 on a CPU that runs it natively, but VAEs in fp32 (as ComfyUI does on the
    CPU): bf16 all through the shipped autoencoder turned a dark gray background black, 25 levels off on
    average. bf16 asked for by name still applies to the VAE."""
    import torch
    from engine.shapes.scene import render, scene_at
    pixels = torch.from_numpy(render(scene_at(7, 0), 128))[None].float() / 255
    reference = load_checkpoint(CHECKPOINT).vae
    expected = reference.decode(reference.encode(pixels))
    memory.configure("cpu", "auto")
    assert memory.policy().vae_dtype == torch.float32
    vae = load_checkpoint(CHECKPOINT).vae
    assert vae.dtype == torch.float32 and torch.equal(vae.decode(vae.encode(pixels)), expected)
    memory.configure("cpu", "bf16")
    assert load_checkpoint(CHECKPOINT).vae.dtype == torch.bfloat16


def test_checkpoint_is_detected_as_sd1_from_its_shapes():
    ckpt = load_checkpoint(CHECKPOINT)
    assert ckpt.family == "sd1" and ckpt.model.prediction_type == "eps" and ckpt.model.config == UNET_CONFIG
    assert ckpt.vae.downscale == 8 and ckpt.vae.latent_channels == 4
    assert common.metadata_of(CHECKPOINT)["config"]["vae"]["ch"] == VAE_CONFIG.ch


def test_guidance_makes_samples_follow_the_prompt():
    """At the default CFG the requested colour is drawn in most samples, and colour and kind together clearly
    more often than without guidance (CFG 1). The issue's goal is colour and kind in 80% of samples: 83% of these
    24 (85% of 288 in the README); tests/bench/quality.py measures 48. With the examples' Euler sampler before
    (20 steps, normal sigmas) it was 79% of the 288."""
    guided = quality.txt2img_adherence(n_prompts=24, seeds=1)
    unguided = quality.txt2img_adherence(cfg=1.0, n_prompts=24, seeds=1)
    assert guided["colour"] >= 0.9 and guided["colour_and_kind"] >= 0.7, guided
    assert guided["colour_and_kind"] >= unguided["colour_and_kind"] + 0.1, (guided, unguided)
    hits, samples = zip(*(map(int, v.split("/")) for v in guided["by_kind"].values()))
    assert sum(samples) == 24 and sum(hits) == round(24 * guided["colour_and_kind"])  # the misses, per kind


def test_the_default_workflow_is_the_measured_txt2img_example():
    """The README's first command and the editor run workflows/default.json; what is measured above is
    workflows/shapes/txt2img.json. They are the same graph, differing only in the prompt, the file name prefix and
    the note, so a sampler or size change made to one and not the other fails here."""
    import json

    from engine.paths import ROOT

    def graph(path):
        nodes = json.loads(path.read_text())["nodes"]
        return {n["id"]: (n["type"], n["links"], {k: v for k, v in n["values"].items()
                                                  if k not in ("text", "filename_prefix")}) for n in nodes}

    assert graph(ROOT / "workflows" / "default.json") == graph(quality.WORKFLOWS / "txt2img.json")


def test_the_background_follows_the_prompt():
    """"..., blue background" gives a blue background: the prompt sets it, not the seed's starting noise (the
    checkpoint before offset-noise training drew the same background for every prompt at a given seed)."""
    result = quality.background_adherence(n=6)
    assert result["background"] >= 0.66 and result["background"] >= result["chance"] + 0.5, result


def test_the_autoencoder_keeps_colour_and_kind():
    """VAE encode then decode (as the VAEEncode and VAEDecode nodes run it) keeps the colour and kind of most
    held-out one-shape renders, as the evaluator reads them: what bounds every txt2img score."""
    result = quality.autoencoder_ceiling(n=16)
    assert result["colour_and_kind_all"] >= 0.75, result


def test_prompt_changes_the_image():
    a = quality.run_workflow("txt2img", {"Positive": {"text": "a large red circle in the center"}})
    b = quality.run_workflow("txt2img", {"Positive": {"text": "a large blue square in the center"}})
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 10


def test_inpainting_keeps_every_pixel_outside_the_mask_and_continues_the_background_inside():
    """Outside the square nothing changes; inside, away from the new shape, the input's background goes on. With
    a hard-edged noise mask (the example before its soft one) a lighter patch ringed the shape: 2.66 levels here."""
    result = quality.inpaint_adherence(n=4)
    assert result["outside_unchanged"] == 1.0, result
    assert result["background_shift"] < 2.25, result


def test_outpainting_keeps_the_input_and_leaves_no_seam():
    """Left of the feathered band the input is untouched; across its old edge the background runs on (without
    the Pad node's feathering the new strip met it in a step of 3.4 levels here); the prompt's right-hand shape is
    drawn in the new strip."""
    result = quality.outpaint_adherence(n=2)
    assert result["input_kept"] == 1.0, result
    assert result["seam_step"] < 1.5, result
    assert result["new_shape"] > 0, result


@pytest.mark.parametrize("name", ["img2img", "sdedit", "outpaint", "hires_fix", "area_composition",
                                  "custom_split_sigmas", "controlnet_stacked"])
def test_checkpoint_workflows_run(name):
    image = quality.run_workflow(name)
    expected = {"outpaint": (128, 192), "hires_fix": (256, 256), "area_composition": (128, 256)}.get(name, (128, 128))
    assert image.shape[:2] == expected and image.std() > 5


def test_area_composition_draws_each_area_its_own_prompt():
    """The example's left area asks for a red circle and its right area for a blue square: the evaluator finds
    just those two shapes, each in its own half (before the negative prompt was evaluated on each area's crop,
    CFG filled the picture with coloured specks and it found nothing)."""
    from engine.shapes.evaluate import find_shapes
    found = find_shapes(quality.run_workflow("area_composition"))
    assert sorted((f.colour, f.cx < 0.5) for f in found) == [("blue", False), ("red", True)], found


def test_controlnet_puts_the_shape_where_the_edges_are():
    """The control scene's silhouette is matched far better with the ControlNet than without it (strength 0),
    and the colour still comes from the prompt (tests/bench/quality.py measures outline IoU on more samples)."""
    on, off = quality.controlnet_adherence(n=4), quality.controlnet_adherence(n=4, strength=0.0)
    assert on["mask_iou"] > off["mask_iou"] + 0.15 and on["edge_iou"] > off["edge_iou"], (on, off)
    assert on["prompt_colour"] >= 0.5, on


def test_stacked_controlnets_each_put_their_shape_on_their_side():
    """Two ControlNets, a circle's edges on the left and a square's on the right, under a prompt that names an orange
    circle and a purple square with no positions: each shape lands on its own control's side in its own colour.
    The shipped ControlNet gets 6 of these 8 seeds. One trained without the recipe's two stacking options (55 min,
    outline IoU 0.73 on single controls) got 2 of 12 at strength 0.8, drawing the circle where the square's edges
    are."""
    assert quality.controlnet_stacked_layout(n=8)["both_placed"] >= 0.5


def test_lora_draws_stripes_at_strength_1_and_not_at_0():
    result = quality.lora_effect(n=4)
    assert result["stripe_energy_at_1"] > 1.2 * result["stripe_energy_at_0"], result


def test_upscaler_beats_bicubic_on_held_out_renders():
    result = quality.upscaler_psnr(n=4)
    assert result["psnr_db"] > result["bicubic_psnr_db"] + 1.0, result


def test_upscale_workflow_doubles_the_picture():
    image = quality.run_workflow("esrgan_upscale")
    assert image.shape == (256, 256, 3) and image.std() > 5


def test_hires_fix_draws_the_prompt_at_twice_the_size():
    """The hires-fix example (a 128 px pass, its latent upscaled 2x and re-sampled at denoise 0.4) draws at 256 px
    just what its prompt asks: a red circle on the left and a blue star at the top right. Before the UNet also
    trained on 256-pixel renders, the second pass broke the circle into red lumps and the star into specks."""
    from engine.shapes.evaluate import find_shapes
    found = find_shapes(quality.run_workflow("hires_fix"))
    assert sorted((f.colour, f.kind) for f in found) == [("blue", "star"), ("red", "circle")], found
    star, circle = sorted(found, key=lambda f: f.colour)
    assert circle.cx < 0.5 and star.cx > 0.5 and star.cy < 0.5, found
