"""Measured adherence of the shipped shapes models, through the workflows users run.

Every measurement loads a workflow from ``workflows/shapes/``, overrides values by node title (as
``loom run --set`` does), runs it with Loom's executor and reads the image that its SaveImage would
write; :mod:`engine.shapes.evaluate` then finds the shapes in it. The same functions feed the
training logs (metrics stored in each file's metadata), ``tests/bench/quality.py`` and the tests.
"""
from __future__ import annotations

from functools import cache

import cv2
import numpy as np
import torch

from ..executor import Executor
from ..paths import ROOT
from .evaluate import background_colour, find_shapes, mask_iou, matches, score_prompt
from .scene import COLOURS, POSITIONS, parse_caption, render, scene_at, shape_masks, with_article

WORKFLOWS = ROOT / "workflows" / "shapes"
EVAL_SEED = 2
DEFAULT_CFG = 6.0


@cache
def _registry():
    from ..registry import Registry
    registry = Registry()
    registry.load_builtin()
    return registry


def run_workflow(name: str, values: dict[str, dict] | None = None, output: str | None = None) -> np.ndarray:
    """Run ``workflows/shapes/<name>.json`` with ``values`` ({node title: {input: value}}) and return the
    image its SaveImage node (or the node titled ``output``) receives, as uint8 [H, W, 3] (first of the batch)."""
    from ..workflow import load_workflow

    graph = load_workflow(WORKFLOWS / f"{name}.json", _registry()).graph
    by_title = {n.title: n for n in graph.nodes.values() if n.title}
    for title, inputs in (values or {}).items():
        if title not in by_title:
            raise KeyError(f"{name}.json has no node titled {title!r} (titles: {sorted(by_title)})")
        for key, value in inputs.items():
            graph.set_value(by_title[title].id, key, value)
    if output is None:
        save = next(n for n in graph.nodes.values() if n.type == "SaveImage")
        src, slot = save.links["images"]
    else:
        src, slot = by_title[output].id, 0
    result = Executor(_registry()).run(graph, targets=[src], apply_seed_controls=False)
    if not result.ok:
        raise RuntimeError(f"{name}.json failed: {result.error or result.problems}")
    image = result.values[src][slot]
    return to_uint8(image)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """IMAGE [B, H, W, 3] in 0..1 -> uint8 [H, W, 3] of the first image (SaveImage truncates likewise)."""
    return (image[0].clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()


def eval_prompts(n: int = 24) -> list[str]:
    """Held-out one-shape prompts, half short ("a red star"), half full captions with size and position."""
    prompts = []
    for i in range(n):
        shape = scene_at(EVAL_SEED, i, max_shapes=1).shapes[0]
        phrase = f"{shape.colour} {shape.kind}" if i % 2 == 0 else f"{shape.size} {shape.colour} {shape.kind} {shape.position}"
        prompts.append(with_article(phrase))
    return prompts


def txt2img_adherence(cfg: float = DEFAULT_CFG, n_prompts: int = 24, seeds: int = 2, workflow: str = "txt2img",
                      extra: dict | None = None) -> dict:
    """Fraction of samples in which the requested colour AND kind are found (plus colour, kind alone), and
    ``by_kind``: "hits/samples" of colour and kind per requested kind (where the misses are)."""
    scores = {"colour_and_kind": [], "colour": [], "kind": []}
    by_kind: dict[str, list[float]] = {}
    for i, prompt in enumerate(eval_prompts(n_prompts)):
        for s in range(seeds):
            image = run_workflow(workflow, {"Positive": {"text": prompt}, "Sampler": {"seed": 1000 * s + i, "cfg": cfg},
                                            **(extra or {})})
            result = score_prompt(image, prompt)
            for key in scores:
                scores[key].append(result[key])
            by_kind.setdefault(result["requested"][0]["kind"], []).append(result["colour_and_kind"])
    return ({key: round(float(np.mean(v)), 3) for key, v in scores.items()}
            | {"by_kind": {kind: f"{sum(v):g}/{len(v)}" for kind, v in sorted(by_kind.items())},
               "samples": n_prompts * seeds, "cfg": cfg})


def background_adherence(n: int = 24, cfg: float = DEFAULT_CFG) -> dict:
    """txt2img with prompts that name a plain background ("a red circle, blue background", from held-out plain
    scenes): how often the image's background (``evaluate.background_colour``) is the one asked for. ``chance``:
    how often it is the background of the next prompt instead, which nothing in this prompt asks for."""
    scenes = [s for s in (scene_at(EVAL_SEED + 50, i, max_shapes=1) for i in range(4 * n))
              if len(s.background.colours) == 1][:n]
    asked = [s.background.colours[0] for s in scenes]
    found = []
    for i, scene in enumerate(scenes):
        shape = scene.shapes[0]
        prompt = with_article(f"{shape.colour} {shape.kind}, {asked[i]} background")
        found.append(background_colour(run_workflow("txt2img", {"Positive": {"text": prompt},
                                                                "Sampler": {"seed": i, "cfg": cfg}})))
    other = [(f, o) for f, a, o in zip(found, asked, asked[1:] + asked[:1]) if o != a]
    return {"background": round(float(np.mean([f == a for f, a in zip(found, asked)])), 3),
            "chance": round(float(np.mean([f == o for f, o in other])), 3), "samples": len(scenes), "cfg": cfg}


def autoencoder_ceiling(n: int = 96, path=None) -> dict:
    """The evaluator on the shipped checkpoint's autoencoder round trip (VAE encode, then decode, as the VAEEncode
    and VAEDecode nodes run it) of held-out one-shape renders: how often the colour AND kind survive, overall and
    for the hardest cases (small shapes, stars). No UNet can score above what its autoencoder can draw."""
    from ..loading.checkpoint import load_checkpoint
    path = path or ROOT / "assets" / "models" / "checkpoints" / "loom-shapes.safetensors"
    vae = load_checkpoint(path).vae
    hits = {"all": [], "small": [], "star": []}
    for i in range(n):
        scene = scene_at(EVAL_SEED + 40, i, max_shapes=1)
        shape = scene.shapes[0]
        pixels = torch.from_numpy(render(scene, 128))[None].float() / 255
        image = to_uint8(vae.decode(vae.encode(pixels)))
        ok = any(matches(f, shape.kind, shape.colour) for f in find_shapes(image))
        for key in ("all", shape.size, shape.kind):
            if key in hits:
                hits[key].append(ok)
    return {f"colour_and_kind_{key}": round(float(np.mean(v)), 3) for key, v in hits.items()} | {
        "samples": n, "small": len(hits["small"]), "stars": len(hits["star"])}


def controlnet_adherence(n: int = 12, strength: float = 1.0) -> dict:
    """The generated shapes' outline against the control edges (edge IoU, 2 px tolerance, and silhouette IoU),
    while the prompt asks for a colour the control image does not have."""
    from .evaluate import edge_iou
    edge_ious, mask_ious, colour_ok = [], [], []
    for i in range(n):
        scene = scene_at(EVAL_SEED + 10, i, max_shapes=1)
        shape = scene.shapes[0]
        colour = next(c for c in COLOURS if c != shape.colour and c not in scene.background.colours)
        prompt = f"a {colour} {shape.kind}"
        image = run_workflow("controlnet_canny", {
            "Control scene": {"description": _caption_of(scene), "seed": i},
            "Positive": {"text": prompt}, "Sampler": {"seed": i}, "Apply ControlNet": {"strength": strength}})
        edges = run_workflow("controlnet_canny", {"Control scene": {"description": _caption_of(scene), "seed": i}},
                             output="Edges")[..., 0] > 127
        edge_ious.append(edge_iou(image, edges))
        found = find_shapes(image)
        target = shape_masks(scene, image.shape[0])[0]
        mask_ious.append(max((mask_iou(f.mask, target) for f in found), default=0.0))
        colour_ok.append(any(f.colour == colour for f in found))
    return {"edge_iou": round(float(np.mean(edge_ious)), 3), "mask_iou": round(float(np.mean(mask_ious)), 3),
            "prompt_colour": round(float(np.mean(colour_ok)), 3), "samples": n, "strength": strength}


def controlnet_stacked_layout(n: int = 12) -> dict:
    """The stacked-ControlNet example over seeds 0..n-1: the share of samples in which each control scene's shape is
    drawn on its side of the picture (left or right half) in the colour the prompt gives that kind. The prompt names
    both shapes without positions, so only the two ControlNets' edges say which goes where."""
    from ..workflow import load_workflow

    graph = load_workflow(WORKFLOWS / "controlnet_stacked.json", _registry()).graph
    values = {node.title: node.values for node in graph.nodes.values() if node.title}
    colour_of = {shape["kind"]: shape["colour"] for shape in parse_caption(values["Positive"]["text"])}
    wanted = [(shape["kind"], colour_of[shape["kind"]], POSITIONS[shape["position"]][0] < 0.5)
              for title in ("Control scene A", "Control scene B")
              for shape in parse_caption(values[title]["description"])]
    placed = []
    for seed in range(n):
        found = find_shapes(run_workflow("controlnet_stacked", {"Sampler": {"seed": seed}}))
        placed.append(all(any(matches(f, kind, colour) and (f.cx < 0.5) == left for f in found)
                          for kind, colour, left in wanted))
    return {"both_placed": round(float(np.mean(placed)), 3), "samples": n}


def workflow_values(name: str) -> dict[str, dict]:
    """{node title: values} of ``workflows/shapes/<name>.json`` (titled nodes only)."""
    from ..workflow import load_workflow

    return {n.title: n.values for n in load_workflow(WORKFLOWS / f"{name}.json", _registry()).graph.nodes.values()
            if n.title}


def _inpaint_square() -> np.ndarray:
    """bool [H, W]: the square the inpaint workflow re-generates (its "Hole" mask where "Mask" places it on the
    "Canvas"; the feathered mask's outermost pixels are too faint to survive a uint8 image, yet the paste changes
    them)."""
    values = workflow_values("inpaint")
    x, y = values["Mask"]["x"], values["Mask"]["y"]
    w, h = values["Hole"]["width"], values["Hole"]["height"]
    square = np.zeros((values["Canvas"]["height"], values["Canvas"]["width"]), bool)
    square[y:y + h, x:x + w] = True
    return square


def _clear_of_shapes(found: list, shape: tuple[int, int], margin: int = 4) -> np.ndarray:
    """bool mask of the pixels more than ``margin`` px from every found shape: where the background should be."""
    near = np.zeros(shape, np.uint8)
    for f in found:
        near |= f.mask.astype(np.uint8)
    return ~cv2.dilate(near, np.ones((2 * margin + 1,) * 2, np.uint8)).astype(bool)


def inpaint_adherence(n: int = 8) -> dict:
    """Inpainting workflow: the prompt's shape inside the masked square, every pixel outside it unchanged, and
    ``background_shift``: how far (mean absolute difference, 0-255 levels) the square's pixels more than 4 px
    from every shape found in it are from the input's (the halo or lighter patch a user sees where the input's
    background should simply go on). The prompts are the first ``n`` held-out ones whose colour is not the
    input's background (a white shape on the example's white background is there but cannot be seen)."""
    source = run_workflow("inpaint", output="Input scene")
    hole = _inpaint_square()
    background = background_colour(source)
    shapes = [s for s in (parse_caption(p)[0] for p in eval_prompts(3 * n)) if s["colour"] != background][:n]
    inside, unchanged, shift = [], [], []
    for i, shape in enumerate(shapes):
        image = run_workflow("inpaint", {"Positive": {"text": f"a medium {shape['colour']} {shape['kind']} in the center"},
                                         "Sampler": {"seed": i}})
        found = find_shapes(image)
        unchanged.append(bool(np.array_equal(image[~hole], source[~hole])))
        inside.append(any(matches(f, shape["kind"], shape["colour"]) and hole[int(f.cy * 128), int(f.cx * 128)]
                          for f in found))
        clear = hole & _clear_of_shapes(found, hole.shape)
        shift.append(float(np.abs(image[clear].astype(np.float32) - source[clear]).mean()))
    return {"shape_in_mask": round(float(np.mean(inside)), 3), "outside_unchanged": float(np.mean(unchanged)),
            "background_shift": round(float(np.mean(shift)), 2), "samples": len(shapes)}


def outpaint_adherence(n: int = 4) -> dict:
    """Outpainting workflow (the input padded on the right), over seeds 0..n-1 with its own prompt:
    ``input_kept``: the input's pixels bit-identical left of the feathered band; ``seam_step``: the mean absolute
    difference (0-255 levels) across the input's old right edge in rows clear of shapes, where a hard seam shows
    as a step; ``new_shape``: the prompt's shape "on the right" found, in its colour and kind, in the new strip."""
    values = workflow_values("outpaint")
    pad, prompt = values["Pad"], values["Positive"]["text"]
    if pad["left"] or pad["top"] or pad["bottom"]:
        raise ValueError("outpaint_adherence measures a strip added on the right only")
    source = run_workflow("outpaint", output="Pad")  # the input, padded
    width = source.shape[1] - pad["right"]
    kept_columns = width - pad["feathering"]
    wanted = next(s for s in parse_caption(prompt) if s["position"] == "on the right")
    kept, step, new_shape = [], [], []
    for seed in range(n):
        image = run_workflow("outpaint", {"Sampler": {"seed": seed}})
        found = find_shapes(image)
        kept.append(bool(np.array_equal(image[:, :kept_columns], source[:, :kept_columns])))
        rows = _clear_of_shapes(found, image.shape[:2])[:, width - 8:width + 8].all(axis=1)
        if rows.any():  # some rows cross the old edge on background only
            step.append(float(np.abs(image[rows, width - 1].astype(np.float32) - image[rows, width]).mean()))
        new_shape.append(any(matches(f, wanted["kind"], wanted["colour"]) and f.cx * image.shape[1] >= width
                             for f in found))
    return {"input_kept": float(np.mean(kept)), "seam_step": round(float(np.mean(step)), 2),
            "new_shape": round(float(np.mean(new_shape)), 3), "samples": n}


def sdedit_follow(n: int = 8, strengths=(0.15, 0.3, 0.9)) -> dict:
    """SDEdit workflow, per strength: how much of the input's layout survives (``layout_iou``: the best
    silhouette IoU of a found shape with the input's shape), how often the input's shape survives whole
    (``input_kept``: its colour and kind) and how often the prompt's appears (``prompt_followed``: its colour
    and kind). The prompt asks for another colour and kind at the opposite position, so following it moves the
    shape away from where the input has it."""
    out = {}
    for strength in strengths:
        kept, followed, layout = [], [], []
        for i in range(n):
            scene = scene_at(EVAL_SEED + 30, i, max_shapes=1)
            src = scene.shapes[0]
            kind = next(k for k in ("star", "square", "circle", "cross") if k != src.kind)
            colour = next(c for c in ("blue", "red", "green", "purple") if c != src.colour
                          and c not in scene.background.colours)
            prompt = f"a {src.size} {colour} {kind} {_opposite(src.position)}"
            image = run_workflow("sdedit", {"Input scene": {"description": _caption_of(scene), "seed": i},
                                            "Positive": {"text": prompt}, "SDEdit": {"strength": strength, "seed": i}})
            found = find_shapes(image)
            target = shape_masks(scene, image.shape[0])[0]
            layout.append(max((mask_iou(f.mask, target) for f in found), default=0.0))
            kept.append(any(matches(f, src.kind, src.colour) for f in found))
            followed.append(any(matches(f, kind, colour) for f in found))
        out[f"strength_{strength}"] = {"layout_iou": round(float(np.mean(layout)), 3),
                                       "input_kept": round(float(np.mean(kept)), 3),
                                       "prompt_followed": round(float(np.mean(followed)), 3)}
    return out | {"samples": n}


def _opposite(position: str) -> str:
    """The position mirrored through the centre ("on the left" -> "on the right"); the centre -> top left."""
    if position == "in the center":
        return "at the top left"
    swap = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
    return " ".join(swap.get(word, word) for word in position.split())


def _caption_of(scene) -> str:
    from .scene import caption
    return caption(scene)


def upscaler_psnr(path=None, n: int = 16, scale: int = 2) -> dict:
    """PSNR of the shipped upscaler (or ``path``) and of bicubic against held-out renders downscaled ``scale``x."""
    import cv2

    from ..upscale import load_upscale_model, upscale_image
    model = load_upscale_model(path or ROOT / "assets" / "models" / "upscale_models" / "loom-shapes-2x.safetensors")
    ours, bicubic = [], []
    for i in range(n):
        hr = render(scene_at(EVAL_SEED + 20, i), 128 * scale)
        lr = cv2.resize(hr, (128, 128), interpolation=cv2.INTER_AREA)
        up = upscale_image(model, torch.from_numpy(lr)[None].float() / 255)
        ours.append(psnr(to_uint8(up), hr))
        bicubic.append(psnr(cv2.resize(lr, hr.shape[1::-1], interpolation=cv2.INTER_CUBIC), hr))
    return {"psnr_db": round(float(np.mean(ours)), 2), "bicubic_psnr_db": round(float(np.mean(bicubic)), 2), "images": n}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))


def stripe_energy(image: np.ndarray) -> float:
    """Mean absolute Laplacian of the luma inside the found shapes (eroded 2 px, so outlines do not count):
    about 0 for flat fills, large for the stripes LoRA's texture."""
    import cv2

    found = find_shapes(image)
    if not found:
        return 0.0
    inside = np.any([f.mask for f in found], axis=0).astype(np.uint8)
    inside = cv2.erode(inside, np.ones((5, 5), np.uint8)).astype(bool)
    if not inside.any():
        return 0.0
    luma = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return float(np.abs(cv2.Laplacian(luma, cv2.CV_32F))[inside].mean())


def lora_effect(n: int = 6) -> dict:
    """Stripe energy of the LoRA workflow's images at LoRA strength 1 and 0 (same prompts and seeds)."""
    energy = {1.0: [], 0.0: []}
    for i, prompt in enumerate(eval_prompts(n)):
        for strength in energy:
            image = run_workflow("lora", {"LoRA": {"strength_model": strength, "strength_clip": strength},
                                          "Positive": {"text": prompt}, "Sampler": {"seed": i}})
            energy[strength].append(stripe_energy(image))
    return {"stripe_energy_at_1": round(float(np.mean(energy[1.0])), 2),
            "stripe_energy_at_0": round(float(np.mean(energy[0.0])), 2), "samples": n}
