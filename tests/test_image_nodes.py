"""The basic image and mask nodes, run through the executor as a user would."""
import numpy as np
import pytest
import torch
from PIL import Image

from engine.executor import Executor
from engine.graph import Graph
from engine.registry import Registry


@pytest.fixture
def run(loom_paths):
    registry = Registry()
    registry.load_builtin()
    executor = Executor(registry, paths=loom_paths)

    def run_graph(graph, **kw):
        result = executor.run(graph, **kw)
        assert result.ok, (result.problems, result.error)
        return result
    run_graph.executor = executor
    return run_graph


def preview_of(graph, node_id, image_node):
    """Target a node directly and return its first output."""
    return graph, [image_node]


def values(run, graph, node_id):
    return run(graph, targets=[node_id]).values[node_id]


def test_load_image_alpha_becomes_inverted_mask_and_edits_rerun(run, loom_paths):
    rgba = np.zeros((8, 12, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:4, :, 3] = 255  # top half opaque
    Image.fromarray(rgba, "RGBA").save(loom_paths.input_dir / "a.png")
    g = Graph()
    g.add_node("LoadImage", {"image": "a.png"}, id="1")
    image, mask = values(run, g, "1")
    assert image.shape == (1, 8, 12, 3) and image.dtype == torch.float32
    assert torch.allclose(image[0, 0, 0], torch.tensor([200 / 255, 0, 0]))
    assert mask.shape == (1, 8, 12)
    assert mask[0, :4].max() == 0 and mask[0, 4:].min() == 1
    assert run(g, targets=["1"]).cached == ["1"]
    Image.fromarray(rgba[..., :3], "RGB").save(loom_paths.input_dir / "a.png")  # edited on disk
    result = run(g, targets=["1"])
    assert result.executed == ["1"]
    assert result.values["1"][1].shape == (1, 64, 64) and result.values["1"][1].max() == 0


def test_save_image_never_overwrites_and_truncates_to_8_bits(run, loom_paths):
    g = Graph()
    g.add_node("EmptyImage", {"width": 4, "height": 2, "batch_size": 2, "color": 0}, id="1")
    g.add_node("SolidMask", {"value": 0.999, "width": 4, "height": 2}, id="2")
    g.add_node("MaskToImage", id="3")
    g.connect("2", 0, "3", "mask")
    g.add_node("ImageCompositeMasked", {"x": 0, "y": 0, "resize_source": False}, id="4")
    g.connect("1", 0, "4", "destination")
    g.connect("3", 0, "4", "source")
    g.add_node("SaveImage", {"filename_prefix": "shots/img_%width%x%height%"}, id="5")
    g.connect("4", 0, "5", "images")
    (loom_paths.output_dir / "shots").mkdir()
    (loom_paths.output_dir / "shots" / "img_4x2_00001_.png").write_bytes(b"precious")
    result = run(g)
    names = [i["filename"] for i in result.ui["5"]["images"]]
    assert names == ["img_4x2_00002_.png", "img_4x2_00003_.png"]
    assert (loom_paths.output_dir / "shots" / "img_4x2_00001_.png").read_bytes() == b"precious"
    pixels = np.asarray(Image.open(loom_paths.output_dir / "shots" / names[0]))
    assert pixels.shape == (2, 4, 3) and (pixels == 254).all()  # 0.999*255 = 254.7 -> 254, as ComfyUI
    again = run(g, force={"5"})
    assert [i["filename"] for i in again.ui["5"]["images"]] == ["img_4x2_00004_.png", "img_4x2_00005_.png"]


def test_save_image_refuses_prefix_outside_output(run, loom_paths):
    g = Graph()
    g.add_node("EmptyImage", {"width": 4, "height": 4, "batch_size": 1, "color": 0}, id="1")
    g.add_node("SaveImage", {"filename_prefix": "../../escape"}, id="2")
    g.connect("1", 0, "2", "images")
    result = run.executor.run(g)
    assert result.status == "error" and "outside the output folder" in result.error.message


def test_image_scale_keeps_aspect_with_zero_and_crops_center(run):
    g = Graph()
    g.add_node("EmptyImage", {"width": 40, "height": 20, "batch_size": 1, "color": 0xFF0000}, id="1")
    g.add_node("ImageScale", {"upscale_method": "bilinear", "width": 0, "height": 10, "crop": "disabled"}, id="2")
    g.connect("1", 0, "2", "image")
    g.add_node("ImageScale", {"upscale_method": "lanczos", "width": 10, "height": 10, "crop": "center"}, id="3")
    g.connect("1", 0, "3", "image")
    g.add_node("ImageScaleBy", {"upscale_method": "nearest-exact", "scale_by": 0.5}, id="4")
    g.connect("1", 0, "4", "image")
    result = run(g, targets=["2", "3", "4"])
    assert result.values["2"][0].shape == (1, 10, 20, 3)
    assert result.values["3"][0].shape == (1, 10, 10, 3)
    assert torch.allclose(result.values["3"][0][0, 5, 5], torch.tensor([1.0, 0, 0]), atol=1e-2)
    assert result.values["4"][0].shape == (1, 10, 20, 3)


def test_blur_invert_and_masked_composite(run):
    g = Graph()
    g.add_node("EmptyImage", {"width": 16, "height": 16, "batch_size": 1, "color": 0x000000}, id="1")
    g.add_node("EmptyImage", {"width": 8, "height": 8, "batch_size": 1, "color": 0xFFFFFF}, id="2")
    g.add_node("SolidMask", {"value": 1.0, "width": 8, "height": 8}, id="m")
    g.add_node("ImageCompositeMasked", {"x": 4, "y": 4, "resize_source": False}, id="3")
    g.connect("1", 0, "3", "destination")
    g.connect("2", 0, "3", "source")
    g.connect("m", 0, "3", "mask")
    g.add_node("ImageBlur", {"blur_radius": 2, "sigma": 1.0}, id="4")
    g.connect("3", 0, "4", "image")
    g.add_node("ImageInvert", id="5")
    g.connect("3", 0, "5", "image")
    result = run(g, targets=["3", "4", "5"])
    sharp = result.values["3"][0]
    assert sharp[0, 4:12, 4:12].min() == 1 and sharp[0, :4].max() == 0 and sharp[0, :, :4].max() == 0
    blurred = result.values["4"][0]
    assert 0 < blurred[0, 4, 4, 0] < 1 and abs(blurred.mean() - sharp.mean()) < 0.02
    assert torch.equal(result.values["5"][0], 1 - sharp)


def test_mask_nodes(run, loom_paths):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 1] = 255
    rgba[..., 3] = 64
    Image.fromarray(rgba, "RGBA").save(loom_paths.input_dir / "m.png")
    g = Graph()
    g.add_node("LoadImageMask", {"image": "m.png", "channel": "alpha"}, id="1")
    g.add_node("LoadImageMask", {"image": "m.png", "channel": "green"}, id="2")
    g.add_node("InvertMask", id="3")
    g.connect("1", 0, "3", "mask")
    g.add_node("MaskToImage", id="4")
    g.connect("2", 0, "4", "mask")
    g.add_node("ImageToMask", {"channel": "blue"}, id="5")
    g.connect("4", 0, "5", "image")
    result = run(g, targets=["1", "2", "3", "5"])
    assert torch.allclose(result.values["1"][0], torch.full((1, 4, 4), 1 - 64 / 255))
    assert torch.equal(result.values["2"][0], torch.ones(1, 4, 4))
    assert torch.allclose(result.values["3"][0], torch.full((1, 4, 4), 64 / 255))
    assert torch.equal(result.values["5"][0], torch.ones(1, 4, 4))
