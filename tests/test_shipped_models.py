"""The models Loom ships (assets/models/) do what their workflows claim, measured on CPU in fp32.

So far one is shipped: the 2x upscaler. (The checkpoint, ControlNet and LoRA follow; see issue #6.)
"""
import pytest

from engine import memory
from engine.paths import SHIPPED_MODELS
from engine.shapes import quality
from engine.shapes.train import common
from engine.shapes.train.upscaler import NETWORK, UPSCALER

SHIPPED = sorted(SHIPPED_MODELS.rglob("*.safetensors"))


@pytest.fixture(autouse=True)
def cpu_fp32():
    memory.configure("cpu", "fp32")


def test_shipped_weights_fit_the_budget():
    assert UPSCALER in SHIPPED
    assert sum(p.stat().st_size for p in SHIPPED) < 30 * 2 ** 20


def test_every_shipped_file_records_config_generator_and_metrics():
    for path in SHIPPED:
        meta = common.metadata_of(path)
        assert meta["generator_version"] and meta["config"] and meta["metrics"], path.name
    assert common.metadata_of(UPSCALER)["config"] == NETWORK


def test_upscaler_beats_bicubic_on_held_out_renders():
    result = quality.upscaler_psnr(n=4)
    assert result["psnr_db"] > result["bicubic_psnr_db"] + 1.0, result


def test_upscale_workflow_doubles_the_picture():
    image = quality.run_workflow("esrgan_upscale")
    assert image.shape == (256, 256, 3) and image.std() > 5
