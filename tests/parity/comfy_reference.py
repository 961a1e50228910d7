"""Make the reference PNGs: run each parity workflow through ComfyUI itself, on the CPU in fp32.

Runs in ComfyUI's own environment, never Loom's (ComfyUI is GPL: Loom only
keeps the images it outputs).  It imports ComfyUI from ``--comfyui``, sets its
command-line flags as ``python main.py --cpu --force-fp32`` would, validates
and executes every ``*.json`` API workflow of ``--cases`` with ComfyUI's
``PromptExecutor`` (headless, a stand-in for the web server), and copies each
SaveImage output to ``--out/<case>.png`` (a batch side by side, left to
right).  See README.md beside this file for the full procedure.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np


class HeadlessServer:
    """What ComfyUI's executor expects of its PromptServer, with nobody listening."""

    client_id = None
    last_node_id = None
    last_prompt_id = None

    def send_sync(self, event, data, sid=None):
        pass

    def queue_updated(self):
        pass


def import_comfyui(root: Path):
    sys.argv = ["main.py", "--cpu", "--force-fp32"]
    sys.path.insert(0, str(root))
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.cli_args  # noqa: F401  (parses sys.argv)
    import execution
    import folder_paths

    return execution, folder_paths


def seed_ancestral_noise_like_current_comfyui() -> None:
    """ComfyUI before PR #11528 (issue #9819) seeded the ancestral samplers' CPU noise generator with
    the seed itself, so their first fresh noise repeated the initial noise. Current ComfyUI (and Loom)
    seed it with seed + 1 on the CPU; give an older checkout the same rule."""
    import inspect

    from comfy.k_diffusion import sampling

    original = sampling.default_noise_sampler
    if "cpu" in inspect.getsource(original):
        return  # this ComfyUI has the fix

    def noise_sampler(x, seed=None):
        return original(x, seed=seed + 1 if seed is not None and x.device.type == "cpu" else seed)

    sampling.default_noise_sampler = noise_sampler
    logging.info("patched default_noise_sampler: seed + 1 on the CPU (ComfyUI PR #11528)")


def run_case(execution, prompt: dict, executor) -> None:
    prompt_id = str(uuid.uuid4())
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not valid:
        raise SystemExit(f"ComfyUI rejected the workflow: {error} {node_errors}")
    executor.execute(prompt, prompt_id, {}, outputs)
    if not executor.success:
        raise SystemExit(f"ComfyUI failed: {executor.status_messages[-1]}")


def side_by_side(paths: list[Path], out: Path) -> None:
    from PIL import Image

    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    Image.fromarray(np.concatenate(images, axis=1)).save(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", type=Path, required=True, help="a ComfyUI checkout")
    parser.add_argument("--checkpoints", type=Path, required=True, help="folder holding the parity checkpoint")
    parser.add_argument("--cases", type=Path, required=True, help="folder of <case>.json and the input images")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", nargs="*", help="case names to run (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    execution, folder_paths = import_comfyui(args.comfyui.resolve())
    seed_ancestral_noise_like_current_comfyui()
    work = Path(tempfile.mkdtemp(prefix="comfy-parity-"))
    (work / "input").mkdir()
    for image in args.cases.glob("*.png"):
        if not image.with_suffix(".json").exists():  # an input image, not a reference output
            shutil.copy(image, work / "input" / image.name)
    folder_paths.set_input_directory(str(work / "input"))
    folder_paths.add_model_folder_path("checkpoints", str(args.checkpoints.resolve()), is_default=True)
    folder_paths.set_output_directory(str(work / "output"))
    executor = execution.PromptExecutor(HeadlessServer(), cache_type=False)
    args.out.mkdir(parents=True, exist_ok=True)
    for case in sorted(args.cases.glob("*.json")):
        if args.only and case.stem not in args.only:
            continue
        before = set(work.glob("output/*.png"))
        run_case(execution, json.loads(case.read_text()), executor)
        saved = sorted(set(work.glob("output/*.png")) - before)
        if len(saved) == 1:
            shutil.copy(saved[0], args.out / f"{case.stem}.png")
        else:
            side_by_side(saved, args.out / f"{case.stem}.png")
        print(f"{case.stem}: {len(saved)} image(s)", flush=True)


if __name__ == "__main__":
    main()
