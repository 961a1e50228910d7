"""Mask nodes against hand-computed masks, with ComfyUI's inputs and numbers (its quirks included)."""
import pytest
import torch

from engine.registry import Registry
from nodes.mask_ops import CropMask, FeatherMask, GrowMask, MaskComposite, ThresholdMask


def dot(h=7, w=7, y=3, x=3, value=1.0):
    mask = torch.zeros(1, h, w)
    mask[0, y, x] = value
    return mask


def cells(mask):
    """The (y, x) positions of the nonzero pixels of a single mask."""
    return {tuple(p) for p in torch.nonzero(mask[0]).tolist()}


def diamond(y, x, r):
    return {(y + dy, x + dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if abs(dy) + abs(dx) <= r}


def square(y, x, r):
    return {(y + dy, x + dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)}


def test_grow_mask_tapered_corners_grow_a_diamond_and_square_corners_a_square():
    grow = GrowMask().execute
    assert cells(grow(dot(), 1, True)[0]) == diamond(3, 3, 1)  # a plus sign
    assert cells(grow(dot(), 2, True)[0]) == diamond(3, 3, 2)  # 13 pixels
    assert cells(grow(dot(), 1, False)[0]) == square(3, 3, 1)
    assert cells(grow(dot(), 2, False)[0]) == square(3, 3, 2)
    assert torch.equal(grow(dot(), 0, True)[0], dot())


def test_grow_mask_negative_erodes_and_borders_repeat_the_edge_pixel():
    block = torch.zeros(1, 7, 7)
    block[0, 2:5, 2:5] = 1.0
    for tapered in (True, False):
        assert cells(GrowMask().execute(block, -1, tapered)[0]) == {(3, 3)}
    full = torch.ones(1, 4, 5)
    assert torch.equal(GrowMask().execute(full, -2, False)[0], full)  # the edge is extended, not zero
    corner = GrowMask().execute(dot(y=0, x=0), 1, True)[0]
    assert cells(corner) == {(0, 0), (0, 1), (1, 0)}


def test_grow_mask_is_a_grey_dilation_of_soft_values():
    mask = torch.zeros(1, 3, 5)
    mask[0, 1, 1], mask[0, 1, 3] = 0.25, 0.75
    grown = GrowMask().execute(mask, 1, True)[0][0]
    expected = torch.tensor([[0.0, 0.25, 0.0, 0.75, 0.0],
                             [0.25, 0.25, 0.75, 0.75, 0.75],
                             [0.0, 0.25, 0.0, 0.75, 0.0]])
    assert torch.equal(grown, expected)
    shrunk = GrowMask().execute(torch.tensor([[[0.5, 0.5, 0.5], [0.5, 0.9, 0.5], [0.5, 0.5, 0.2]]]), -1, False)[0]
    assert torch.equal(shrunk, torch.tensor([[[0.5, 0.5, 0.5], [0.5, 0.2, 0.2], [0.5, 0.2, 0.2]]]))


def test_feather_mask_ramps_including_comfyui_far_edge_indexing():
    ones = torch.ones(1, 4, 6)
    left = FeatherMask().execute(ones, 2, 0, 0, 0)[0][0]
    assert left[:, 0].eq(0.5).all() and left[:, 1:].eq(1.0).all()
    # ComfyUI scales column -k by (k+1)/right; for k = 0 that is column 0 (the left one)
    right = FeatherMask().execute(ones, 0, 0, 3, 0)[0][0]
    assert torch.allclose(right[0], torch.tensor([1 / 3, 1, 1, 1, 1, 2 / 3]))
    assert torch.equal(right[0], right[3])
    top = FeatherMask().execute(ones, 0, 4, 0, 0)[0][0]
    assert torch.allclose(top[:, 0], torch.tensor([0.25, 0.5, 0.75, 1.0]))
    bottom = FeatherMask().execute(ones, 0, 0, 0, 2)[0][0]
    assert torch.allclose(bottom[:, 0], torch.tensor([0.5, 1.0, 1.0, 1.0]))  # row 0 again, row -1 gets 2/2
    both = FeatherMask().execute(ones, 2, 0, 3, 0)[0][0]
    assert torch.allclose(both[0], torch.tensor([0.5 / 3, 1, 1, 1, 1, 2 / 3]))
    capped = FeatherMask().execute(ones, 100, 0, 0, 0)[0][0]  # widths are capped at the mask size
    assert torch.allclose(capped[0], torch.arange(1, 7) / 6)


def test_feather_mask_multiplies_in_comfyui_order_bit_for_bit():
    torch.manual_seed(0)
    mask = torch.rand(2, 9, 11)
    expected = mask.clone()
    for k in range(3):  # ComfyUI's loops, written out: left 3, right 4, top 2, bottom 5
        expected[:, :, k] *= (k + 1.0) / 3
    for k in range(4):
        expected[:, :, -k] *= (k + 1) / 4
    for k in range(2):
        expected[:, k, :] *= (k + 1) / 2
    for k in range(5):
        expected[:, -k, :] *= (k + 1) / 5
    assert torch.equal(FeatherMask().execute(mask, 3, 2, 4, 5)[0], expected)


def test_threshold_mask_is_strictly_above():
    mask = torch.tensor([[[0.2, 0.5, 0.50001, 1.0]]])
    assert torch.equal(ThresholdMask().execute(mask, 0.5)[0], torch.tensor([[[0.0, 0.0, 1.0, 1.0]]]))


@pytest.mark.parametrize("operation, inside", [("multiply", 0.375), ("add", 1.0), ("subtract", 0.0),
                                               ("and", 0.0), ("or", 1.0), ("xor", 1.0)])
def test_mask_composite_operations_offsets_and_clamp(operation, inside):
    destination = torch.full((1, 3, 4), 0.5)
    source = torch.full((1, 2, 3), 0.75)
    out = MaskComposite().execute(destination, source, 2, 1, operation)[0][0]
    # the source lands on rows 1..2, columns 2..3 (its third column falls outside)
    expected = torch.full((3, 4), 0.5)
    expected[1:3, 2:4] = inside  # add 1.25 and subtract -0.25 clamp; round(0.5) = 0 (half to even)
    assert torch.equal(out, expected)
    assert torch.equal(destination, torch.full((1, 3, 4), 0.5))  # inputs untouched


def test_mask_composite_outside_the_destination_changes_nothing():
    destination = torch.rand(1, 3, 3)
    out = MaskComposite().execute(destination, torch.ones(1, 2, 2), 5, 0, "add")[0]
    assert torch.equal(out, destination)


def test_crop_mask_slices_and_stops_at_the_border():
    mask = torch.arange(30, dtype=torch.float32).reshape(1, 5, 6)
    out = CropMask().execute(mask, 1, 2, 3, 2)[0]
    assert torch.equal(out, torch.tensor([[[13.0, 14.0, 15.0], [19.0, 20.0, 21.0]]]))
    assert CropMask().execute(mask, 4, 3, 512, 512)[0].shape == (1, 2, 2)
    assert CropMask().execute(mask[0], 0, 0, 2, 1)[0].shape == (1, 1, 2)  # [H,W] masks are accepted


# ComfyUI's declarations (comfy_extras/nodes_mask.py, nodes.py, nodes_differential_diffusion.py):
# name -> [(input, type, default, min, max)] in order.
M = 16384
COMFY_INPUTS = {
    "GrowMask": [("mask", "MASK", None, None, None), ("expand", "INT", 0, -M, M),
                 ("tapered_corners", "BOOLEAN", True, None, None)],
    "FeatherMask": [("mask", "MASK", None, None, None)] + [(s, "INT", 0, 0, M) for s in ("left", "top", "right",
                                                                                      "bottom")],
    "ThresholdMask": [("mask", "MASK", None, None, None), ("value", "FLOAT", 0.5, 0.0, 1.0)],
    "MaskComposite": [("destination", "MASK", None, None, None), ("source", "MASK", None, None, None),
                      ("x", "INT", 0, 0, M), ("y", "INT", 0, 0, M), ("operation", "COMBO", "multiply", None, None)],
    "CropMask": [("mask", "MASK", None, None, None), ("x", "INT", 0, 0, M), ("y", "INT", 0, 0, M),
                 ("width", "INT", 512, 1, M), ("height", "INT", 512, 1, M)],
    "VAEEncodeForInpaint": [("pixels", "IMAGE", None, None, None), ("vae", "VAE", None, None, None),
                            ("mask", "MASK", None, None, None), ("grow_mask_by", "INT", 6, 0, 64)],
    "InpaintModelConditioning": [("positive", "CONDITIONING", None, None, None),
                                 ("negative", "CONDITIONING", None, None, None), ("vae", "VAE", None, None, None),
                                 ("pixels", "IMAGE", None, None, None), ("mask", "MASK", None, None, None),
                                 ("noise_mask", "BOOLEAN", True, None, None)],
    "ImagePadForOutpaint": [("image", "IMAGE", None, None, None)] + [(s, "INT", 0, 0, M) for s in (
        "left", "top", "right", "bottom")] + [("feathering", "INT", 40, 0, M)],
    "DifferentialDiffusion": [("model", "MODEL", None, None, None), ("strength", "FLOAT", 1.0, 0.0, 1.0)],
}


@pytest.fixture(scope="module")
def registry():
    r = Registry()
    r.load_builtin()
    return r


@pytest.mark.parametrize("type_name", sorted(COMFY_INPUTS))
def test_declared_inputs_match_comfyui(type_name, registry):
    cls = registry.get(type_name)
    declared = [(i.name, i.type, i.default_value() if i.is_widget else None, i.min, i.max) for i in cls.INPUTS]
    assert declared == COMFY_INPUTS[type_name]
    if type_name == "MaskComposite":
        assert cls.input("operation").option_list() == ["multiply", "add", "subtract", "and", "or", "xor"]
