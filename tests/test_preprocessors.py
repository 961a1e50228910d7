"""OpenCV hint preprocessors: Canny (ComfyUI's node and threshold units), lineart, scribble, soft edges."""
import cv2
import numpy as np
import pytest
import torch

from nodes.control import Canny, EdgesLineart, EdgesScribble, EdgesSoft


def step_image(low=0.1, high=0.9, column=20, size=40):
    """Dark left, bright right, with one mid-grey column between (the edge's unique maximum)."""
    image = torch.full((1, size, size, 3), low)
    image[:, :, column] = (low + high) / 2
    image[:, :, column + 1:] = high
    return image


def square_image(size=64, inset=20):
    image = torch.zeros(1, size, size, 3)
    image[:, inset:size - inset, inset:size - inset] = 1.0
    return image


def kornia_max_gradient(image: torch.Tensor) -> float:
    """The largest gradient magnitude as kornia's canny measures it (which ComfyUI thresholds):
    5x5 Gaussian (sigma 1, reflected border), raw 3x3 Sobel, L2 norm, on the 0..1 luma in float."""
    gray = image[0].numpy() @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    blurred = cv2.GaussianBlur(gray, (5, 5), 1.0, borderType=cv2.BORDER_REFLECT_101)
    gx = cv2.Sobel(blurred, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.Sobel(blurred, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE)
    return float(np.sqrt(gx ** 2 + gy ** 2).max())


def test_canny_draws_binary_edges_exactly_on_the_step():
    (edges,) = Canny().execute(step_image(), 0.4, 0.8)
    assert edges.shape == (1, 40, 40, 3) and edges.dtype == torch.float32
    assert torch.equal(edges[..., 0], edges[..., 1]) and torch.equal(edges[..., 0], edges[..., 2])
    expected = torch.zeros(40, 40)
    expected[:, 20] = 1.0
    assert torch.equal(edges[0, ..., 0], expected)


def test_canny_thresholds_are_in_kornias_gradient_units():
    image = step_image(0.4, 0.6)
    strongest = kornia_max_gradient(image)  # about 0.77 for a 0.2 step
    (above,) = Canny().execute(image, 0.01, min(0.99, strongest * 0.96))
    (below,) = Canny().execute(image, 0.01, strongest * 1.04)
    assert above[0, :, 20, 0].min() == 1.0
    assert below.max() == 0.0


def test_canny_hysteresis_keeps_weak_edges_only_where_connected_to_strong_ones():
    contrast = torch.linspace(0.6, 0.1, 40)  # one edge, strong at the top and weak at the bottom
    image = torch.full((1, 40, 40), 0.2)
    image[:, :, 20] += contrast / 2
    contrast = contrast[:, None]
    image[:, :, 21:] += contrast
    image[:, :, 31] += 0.075  # and a weak edge on its own
    image[:, :, 32:] += 0.15
    image = image[..., None].expand(-1, -1, -1, 3)
    (strong_only,) = Canny().execute(image, 0.8, 0.9)
    (linked,) = Canny().execute(image, 0.2, 0.9)
    assert strong_only[0, :10, 20, 0].min() == 1.0 and strong_only[0, 30:, 20, 0].max() == 0.0
    assert linked[0, :, 20, 0].min() == 1.0
    assert linked[0, :, 25:, 0].max() == 0.0


def test_canny_rejects_a_low_threshold_above_the_high_one():
    assert "must not exceed" in Canny.validate(low_threshold=0.9, high_threshold=0.2)
    assert Canny.validate(low_threshold=0.4, high_threshold=0.8) is None
    with pytest.raises(ValueError, match="must not exceed"):
        Canny().execute(step_image(), 0.9, 0.2)


@pytest.mark.parametrize(("node", "values"), [
    (EdgesLineart, dict(sigma=1.0, threshold=0.005, sharpness=100.0)),
    (EdgesScribble, dict(sigma=2.0, threshold=0.01, thickness=3)),
    (EdgesSoft, dict(sigma=1.5, threshold=0.1)),
])
def test_edge_nodes_draw_white_lines_on_black_near_edges_only(node, values):
    flat = torch.full((1, 64, 64, 3), 0.5)
    (nothing,) = node().execute(flat, **values)
    assert nothing.max() == 0.0

    image = torch.cat([square_image(), 1 - square_image()])  # a bright square, then a dark one
    (lines,) = node().execute(image, **values)
    assert lines.shape == (2, 64, 64, 3) and 0.0 <= lines.min() and lines.max() == 1.0
    assert torch.equal(lines[..., 0], lines[..., 2])
    boundary = torch.zeros(64, 64, dtype=torch.bool)
    boundary[10:54, 10:54] = True
    boundary[30:34, 30:34] = False  # a band of 10 px on each side of the square's outline
    for drawn in lines[..., 0]:
        assert drawn[~boundary].max() == 0.0 and drawn[boundary].sum() > 40
    (alone,) = node().execute(image[1:], **values)  # batch items are independent
    assert torch.equal(alone[0], lines[1])


def test_lineart_draws_on_the_dark_side_of_an_edge():
    (lines,) = EdgesLineart().execute(step_image(0.1, 0.9), 1.0, 0.005, 100.0)
    profile = lines[0, 20, :, 0]
    assert profile[:20].sum() > 1.0 and profile[21:].sum() == 0.0


def test_scribble_is_binary_and_thickness_widens_the_strokes():
    image = square_image()
    thin, thick = (EdgesScribble().execute(image, 2.0, 0.01, t)[0] for t in (1, 5))
    assert set(thick.unique().tolist()) == {0.0, 1.0}
    assert thick.sum() > 1.5 * thin.sum() and torch.all(thick >= thin)


def test_soft_edges_see_colour_edges_and_threshold_thins_them():
    image = torch.zeros(1, 40, 40, 3)
    image[..., :20, 0] = 0.6  # red left half, green right half of about the same luma
    image[..., 20:, 1] = 0.6 * 0.299 / 0.587
    (soft,) = EdgesSoft().execute(image, 1.5, 0.1)
    (luma_canny,) = Canny().execute(image, 0.05, 0.1)
    assert soft[0, 20, 18:22, 0].min() > 0.5 and luma_canny.max() == 0.0
    (thinner,) = EdgesSoft().execute(image, 1.5, 0.6)
    assert 0 < (thinner > 0).sum() < (soft > 0).sum()
