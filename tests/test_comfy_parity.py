"""Pixel parity with ComfyUI: the same checkpoint, workflow and seed give the same PNG (fp32, CPU).

Each ``tests/fixtures/comfy_parity/<case>.json`` is a ComfyUI API workflow and
``<case>.png`` the image ComfyUI itself saved for it (a batch side by side),
made by ``tests/parity/comfy_reference.py`` as ``tests/parity/README.md``
describes.  The checkpoint is the full SD1.5 architecture with deterministic
random weights (``tests/parity/make_checkpoint.py``), built once per module.
Loom runs each workflow exactly as a user would (``main.py run WF.json
--precision fp32 --device cpu``) and every 8-bit channel of its PNG must be
within 2/255 of ComfyUI's.

A full-size SD1.5 is 1.07 B parameters: building it and running one case takes
about a minute of CPU, so only the first case runs by default and the others
are ``slow`` (``pytest -m slow tests/test_comfy_parity.py``).
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine import memory
from engine import paths as paths_mod
from engine.cli import main
from tests.parity.make_checkpoint import CHECKPOINT_NAME, write_checkpoint

FIXTURES = Path(__file__).parent / "fixtures" / "comfy_parity"
CASES = sorted(p.stem for p in FIXTURES.glob("*.json"))
DEFAULT_CASES = {"a_euler_normal"}
TOLERANCE = 2  # in 8-bit levels


def load_png_row(paths) -> np.ndarray:
    """One PNG, or a batch's PNGs side by side, as int RGB."""
    return np.concatenate([np.asarray(Image.open(p).convert("RGB")) for p in paths], axis=1).astype(np.int16)


@pytest.fixture(scope="module")
def parity_paths(tmp_path_factory):
    """Model, input and output folders holding the parity checkpoint and input images."""
    base = tmp_path_factory.mktemp("comfy_parity")
    paths = paths_mod.Paths(base=base)
    write_checkpoint(base / "models" / "checkpoints" / CHECKPOINT_NAME)
    paths.input_dir.mkdir(parents=True)
    for image in FIXTURES.glob("*.png"):
        if not image.with_suffix(".json").exists():  # an input image, not a reference
            shutil.copy(image, paths.input_dir / image.name)
    previous_paths, previous_policy = paths_mod._default, memory._policy
    paths_mod.set_default_paths(paths)
    yield paths
    paths_mod._default, memory._policy = previous_paths, previous_policy
    memory.model_manager().clear()


def case_param(case):
    return pytest.param(case, marks=() if case in DEFAULT_CASES else pytest.mark.slow)


def test_every_case_has_a_reference_image():
    assert len(CASES) >= 12
    missing = [case for case in CASES if not (FIXTURES / f"{case}.png").is_file()]
    assert not missing
    for case in CASES:
        workflow = json.loads((FIXTURES / f"{case}.json").read_text())
        assert any(node["class_type"] == "SaveImage" for node in workflow.values())
        assert load_png_row([FIXTURES / f"{case}.png"]).std() > 10  # a picture, not a flat or clipped field


@pytest.mark.parametrize("case", [case_param(c) for c in CASES])
def test_loom_gives_comfyuis_pixels(parity_paths, case, tmp_path):
    out = tmp_path / "out"
    code = main(["run", str(FIXTURES / f"{case}.json"), "--precision", "fp32", "--device", "cpu",
                 "--output", str(out)])
    assert code == 0
    loom = load_png_row(sorted(out.glob("*.png")))
    comfy = load_png_row([FIXTURES / f"{case}.png"])
    assert loom.shape == comfy.shape
    difference = np.abs(loom - comfy)
    print(f"{case}: max |Loom - ComfyUI| = {difference.max()}/255, mean {difference.mean():.4f}/255")
    assert difference.max() <= TOLERANCE
