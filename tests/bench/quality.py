"""Measured adherence of the shipped shapes models, and their speed, through the workflows in workflows/shapes/.

Run: python -m tests.bench.quality [--quick] [--threads N]

For each shipped file it runs the workflow that uses it and scores the images with the OpenCV evaluator
(engine.shapes.evaluate), printing one table plus JSON:
- txt2img: requested colour AND kind found, at the default CFG (6) and at CFG 1 (the guidance baseline);
- hires fix: the same at 256 px, through the hires-fix workflow (same prompts and first-pass seeds as txt2img);
- background: the plain background a prompt names is the image's, next to how often it is another prompt's (chance);
- autoencoder: the same found in the VAE round trip of one-shape renders (the ceiling for txt2img);
- inpainting: the prompt's shape inside the mask; pixels outside it bit-identical to the input; inside it, away
  from the shapes found, the mean difference from the input (the lighter halo a hard noise mask leaves);
- outpainting: the input kept left of the feathered band; the step across its old edge (a seam); the prompt's
  right-hand shape in the new strip;
- SDEdit: the input's layout (silhouette IoU) at strengths 0.15, 0.3, 0.9 while the prompt asks for another
  colour and kind at the opposite position; the prompt's shape found;
- ControlNet: outline IoU with the control edges (2 px tolerance) and silhouette IoU, with the prompt's colour;
- stacked ControlNets: each control scene's shape on its side in the prompt's colour for that kind;
- upscaler: PSNR against the 256 px render, next to bicubic (the baseline);
- LoRA: stripe energy inside shapes at strength 1 against strength 0 (the baseline);
- speed: one 128x128 txt2img (the example's 20 DPM++ 2M SDE steps on Karras sigmas, CFG 6) wall time, warm,
  next to a 1-step run (fixed cost).
A file that is not shipped is reported as missing. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from engine import memory
from engine.paths import SHIPPED_MODELS
from engine.shapes import quality

FILES = {"checkpoint": "checkpoints/loom-shapes.safetensors", "controlnet": "controlnet/loom-shapes-canny.safetensors",
         "lora": "loras/loom-shapes-stripes.safetensors", "upscaler": "upscale_models/loom-shapes-2x.safetensors"}


def speed(repeats: int = 5) -> dict:
    def timed(steps):
        times = []
        for r in range(repeats):
            start = time.perf_counter()
            quality.run_workflow("txt2img", {"Sampler": {"steps": steps, "seed": r}})
            times.append(time.perf_counter() - start)
        return statistics.median(times[1:])
    full, one = timed(20), timed(1)
    return {"txt2img_128_s": round(full, 3), "one_step_run_s": round(one, 3), "ratio": round(full / one, 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    memory.configure("cpu", "fp32")
    n = 4 if args.quick else None
    have = {name: (SHIPPED_MODELS / rel).is_file() for name, rel in FILES.items()}
    sizes = {rel: round((SHIPPED_MODELS / rel).stat().st_size / 2 ** 20, 2) for rel in FILES.values()
             if (SHIPPED_MODELS / rel).is_file()}
    results = {"files_mib": sizes, "total_mib": round(sum(sizes.values()), 2)}
    if have["checkpoint"]:
        results["speed"] = speed()
        results["txt2img"] = quality.txt2img_adherence(n_prompts=n or 24, seeds=1 if n else 2)
        results["txt2img_cfg1"] = quality.txt2img_adherence(cfg=1.0, n_prompts=n or 24, seeds=1 if n else 2)
        results["hires_fix"] = quality.txt2img_adherence(n_prompts=n or 24, seeds=1 if n else 2, workflow="hires_fix")
        results["background"] = quality.background_adherence(n or 24)
        results["autoencoder"] = quality.autoencoder_ceiling(n or 96)
        results["inpaint"] = quality.inpaint_adherence(n or 8)
        results["outpaint"] = quality.outpaint_adherence(n or 8)
        results["sdedit"] = quality.sdedit_follow(n or 8)
    if have["controlnet"]:
        results["controlnet"] = quality.controlnet_adherence(n or 12)
        results["controlnet_stacked"] = quality.controlnet_stacked_layout(n or 12)
    if have["upscaler"]:
        results["upscaler"] = quality.upscaler_psnr(n=n or 16)
    if have["lora"]:
        results["lora"] = quality.lora_effect(n or 6)
    results["missing"] = [name for name, ok in have.items() if not ok]
    for key, value in results.items():
        print(f"{key:>18}: {value}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
