"""Find the shapes in an image and score it against its prompt (OpenCV, no learning).

Pipeline of ``find_shapes``:
1. background: per RGB channel a plane a + b x + c y fitted by least squares to the 2-px border (refitted twice
   without border pixels that disagree with it), so plain and linear-gradient backgrounds are both modelled;
2. foreground: CIELAB distance to that plane above FOREGROUND_DELTA_E, on the distance map upsampled to
   ~512 px (smooth sub-pixel outlines), opened and closed by a 1-px disk; each component is then
   re-thresholded at half its own contrast (outline = 50% level of its edge);
3. per connected component (contours from RETR_CCOMP, so a ring's hole is seen): a rotation-invariant shape
   signature — largest hole / area, the Fourier magnitudes 1..6 of the radial profile r(theta) around the
   centroid relative to its mean, and solidity (area / convex hull area) — classified as the nearest
   prototype in PROTOTYPES, or "unknown" when no prototype is within UNKNOWN_DISTANCE;
4. colour: nearest named colour (CIELAB) to the median of the component eroded by one pixel.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .scene import BACKGROUND_COLOURS, COLOURS, KINDS, POSITIONS, SIZES, parse_caption, srgb_to_lab

SMOOTH_SIGMA = 0.7  # px of Gaussian blur before the background distance (tames pixel noise)
FOREGROUND_DELTA_E = 20.0  # scene colours contrast with their background by >= 45 (scene.MIN_CONTRAST)
BORDER = 2  # px of image border that fit the background
WORK_SIDE = 512  # the distance map is upsampled to about this side before contours are taken
PURITY_DELTA_E = 20.0  # a pixel agrees with its shape's colour when this close to the median
UNKNOWN_DISTANCE = 0.4  # prototypes are >= 0.13 apart; blurred, noisy, JPEG'd renders stay within ~0.25
HARMONICS = 6
SIGNATURE = ("hole", *(f"h{k}" for k in range(1, HARMONICS + 1)), "solidity")
PROTOTYPES: dict[str, tuple[float, ...]] = {  # median SIGNATURE over clean, blurred+noisy and 64-px renders
    #            hole   h1   h2   h3    h4    h5    h6   solidity
    "circle":   (0.00, 0.0, 0.0, 0.00, 0.00, 0.00, 0.00, 0.99),
    "square":   (0.00, 0.0, 0.0, 0.00, 0.13, 0.00, 0.00, 0.98),
    "triangle": (0.00, 0.0, 0.0, 0.27, 0.00, 0.00, 0.09, 0.97),
    "star":     (0.00, 0.0, 0.0, 0.00, 0.00, 0.28, 0.00, 0.68),
    "ring":     (0.30, 0.0, 0.0, 0.00, 0.00, 0.00, 0.00, 0.99),
    "cross":    (0.00, 0.0, 0.0, 0.00, 0.54, 0.00, 0.00, 0.60),
}
_PROTOTYPE_MATRIX = np.array([PROTOTYPES[k] for k in KINDS])
_COLOUR_NAMES = tuple(COLOURS)
_COLOUR_LABS = srgb_to_lab(np.array([COLOURS[c] for c in _COLOUR_NAMES], np.float32))
_BACKGROUND_NAMES = tuple(BACKGROUND_COLOURS)
_BACKGROUND_LABS = srgb_to_lab(np.array([BACKGROUND_COLOURS[c] for c in _BACKGROUND_NAMES], np.float32))


@dataclass
class Found:
    kind: str  # one of KINDS or "unknown"
    colour: str  # nearest of COLOURS
    size: str  # nearest SIZES name to `radius` (log scale)
    position: str  # nearest POSITIONS anchor to the centroid
    cx: float  # centroid in [0,1]
    cy: float
    radius: float  # circumradius (minimum enclosing circle), fraction of the side: comparable to Shape.radius
    area: int  # pixels of `mask`
    mask: np.ndarray  # bool [H, W] filled silhouette (ring: annulus only)
    confidence: float  # kind clarity x colour purity, 0..1 (see _kind_and_clarity, _colour_and_purity)


# --- background and foreground ------------------------------------------------------------------------

def _as_rgb01(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an [H, W, 3] RGB image, got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return np.clip(image.astype(np.float32), 0.0, 1.0)


def _lab(rgb01: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb01, cv2.COLOR_RGB2Lab)


def _border(h: int, w: int) -> np.ndarray:
    border = np.ones((h, w), bool)
    border[BORDER:-BORDER, BORDER:-BORDER] = False
    return border


def background_distance(rgb01: np.ndarray) -> np.ndarray:
    """CIELAB distance ``[H, W]`` of every pixel to the plane background fitted to the image border."""
    h, w, _ = rgb01.shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    design = np.stack([np.ones_like(x), x / w, y / h], axis=-1)
    border = _border(h, w)
    lab, keep = _lab(rgb01), border
    for _ in range(3):  # refit without border pixels that a shape or a stray blob covers
        coef, *_ = np.linalg.lstsq(design[keep], rgb01[keep], rcond=None)
        distance = np.linalg.norm(lab - _lab(np.clip(design @ coef, 0, 1).astype(np.float32)), axis=-1)
        keep = border & (distance < max(6.0, 3.0 * float(np.median(distance[border]))))
    return distance


def background_colour(image) -> str:
    """The named background colour (scene.BACKGROUND_COLOURS, nearest in CIELAB) of the median of the 2-px image
    border: what a plain background is called. Shapes keep off the border, so a stray one barely moves the median."""
    rgb01 = _as_rgb01(image)
    median = np.median(rgb01[_border(*rgb01.shape[:2])], axis=0) * 255.0
    return _BACKGROUND_NAMES[int(np.argmin(np.linalg.norm(_BACKGROUND_LABS - srgb_to_lab(median), axis=-1)))]


def _clean(mask: np.ndarray, up: int) -> np.ndarray:
    """Open then close a uint8 mask by a disk of one image pixel (``up`` work pixels)."""
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * up + 1, 2 * up + 1))
    return cv2.morphologyEx(cv2.morphologyEx(mask, cv2.MORPH_OPEN, disk), cv2.MORPH_CLOSE, disk)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count < 2:
        return mask
    return (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)


def _regions(distance: np.ndarray, up: int, min_area: float) -> list[tuple[tuple[int, int], np.ndarray]]:
    """Foreground regions at ``up`` times the image resolution: (origin (x, y), uint8 mask of a window there).

    Each component of distance > FOREGROUND_DELTA_E is thresholded again at half its own contrast (median
    of its distance), so its outline is the 50% level of its edge whatever its contrast and blur.
    Windows are aligned to whole image pixels.
    """
    fine = cv2.resize(distance, None, fx=up, fy=up, interpolation=cv2.INTER_LINEAR)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        _clean((fine > FOREGROUND_DELTA_E).astype(np.uint8), up), connectivity=8)
    pad, regions = 2 * up, []
    for i in range(1, count):
        x, y, w, h, area = stats[i]
        if area < min_area:
            continue
        x0, y0 = max(x - pad, 0) // up * up, max(y - pad, 0) // up * up
        x1, y1 = min(-(-(x + w + pad) // up) * up, fine.shape[1]), min(-(-(y + h + pad) // up) * up, fine.shape[0])
        window = (slice(y0, y1), slice(x0, x1))
        component = (labels[window] == i).astype(np.uint8)
        level = max(FOREGROUND_DELTA_E, 0.5 * float(np.percentile(fine[window][component > 0], 50)))
        near = cv2.dilate(component, np.ones((pad + 1, pad + 1), np.uint8)) > 0
        region = _largest_component(_clean(((fine[window] > level) & near).astype(np.uint8), up))
        if region.sum() >= min_area:
            regions.append(((x0, y0), region))
    return regions


def _block_mean(fine: np.ndarray, k: int) -> np.ndarray:
    return fine.reshape(fine.shape[0] // k, k, fine.shape[1] // k, k).mean(axis=(1, 3))


# --- geometry -----------------------------------------------------------------------------------------

def radial_harmonics(contour: np.ndarray, centre) -> np.ndarray:
    """|c_k| / c_0 for k = 1..HARMONICS (times 2) of the radial profile r(theta) of a closed contour."""
    p = contour.reshape(-1, 2).astype(np.float64) - centre
    theta, rho = np.arctan2(p[:, 1], p[:, 0]), np.hypot(p[:, 0], p[:, 1])
    order = np.argsort(theta)
    grid = np.linspace(-np.pi, np.pi, 128, endpoint=False)
    spectrum = np.abs(np.fft.rfft(np.interp(grid, theta[order], rho[order], period=2 * np.pi)))
    return 2.0 * spectrum[1:HARMONICS + 1] / max(spectrum[0], 1e-9)


def _kind_and_clarity(signature: np.ndarray) -> tuple[str, float]:
    """Nearest prototype; clarity = 1 - d_nearest / d_second (0: halfway between two kinds, 1: exactly one).
    "unknown" with clarity 0 when even the nearest prototype is further than UNKNOWN_DISTANCE."""
    d = np.linalg.norm(_PROTOTYPE_MATRIX - signature, axis=1)
    first, second = np.sort(d)[:2]
    if first > UNKNOWN_DISTANCE:
        return "unknown", 0.0
    return KINDS[int(np.argmin(d))], float(1.0 - first / max(second, 1e-9))


def _colour_and_purity(rgb01: np.ndarray, lab: np.ndarray, mask: np.ndarray) -> tuple[str, float]:
    """Nearest named colour to the median of the mask eroded by one pixel; purity = fraction of those pixels
    within PURITY_DELTA_E of the median (about 1 for a flat colour, about 0.5 for stripes, ~0 for noise)."""
    inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    inner = inner if inner.any() else mask
    median_lab = _lab(np.median(rgb01[inner], axis=0).astype(np.float32)[None, None])[0, 0]
    name = _COLOUR_NAMES[int(np.argmin(np.linalg.norm(_COLOUR_LABS - median_lab, axis=1)))]
    purity = float(np.mean(np.linalg.norm(lab[inner] - median_lab, axis=1) < PURITY_DELTA_E))
    return name, purity


def _nearest_size(radius: float) -> str:
    return min(SIZES, key=lambda s: abs(np.log(radius / SIZES[s])))


def _nearest_position(cx: float, cy: float) -> str:
    return min(POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2)


def _component(component: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """(signature, filled silhouette, geometry in pixels) of one connected component."""
    contours, hierarchy = cv2.findContours(component, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    outer = max((c for c, h in zip(contours, hierarchy[0]) if h[3] < 0), key=cv2.contourArea)
    holes = [c for c, h in zip(contours, hierarchy[0]) if h[3] >= 0]
    area = max(cv2.contourArea(outer), 1.0)
    hole = max(holes, key=cv2.contourArea) if holes else None
    moments = cv2.moments(outer)
    centre = (moments["m10"] / max(moments["m00"], 1e-9), moments["m01"] / max(moments["m00"], 1e-9))
    signature = np.array([cv2.contourArea(hole) / area if hole is not None else 0.0,
                          *radial_harmonics(outer, centre),
                          area / max(cv2.contourArea(cv2.convexHull(outer)), 1.0)])
    silhouette = cv2.drawContours(np.zeros_like(component), [outer], -1, 1, cv2.FILLED)
    _, radius = cv2.minEnclosingCircle(outer)
    return signature, silhouette, {"hole": hole, "centre": centre, "radius": radius}


def find_shapes(image, min_area_frac: float = 0.004) -> list[Found]:
    """Shapes in an RGB image (uint8, or float in 0..1; any size), largest first; see the module docstring.

    An image whose border is not a plain or linear-gradient background (median border distance to the fitted
    plane above FOREGROUND_DELTA_E / 2, e.g. noise or a photograph) has no figure/ground split: [].
    """
    rgb01 = _as_rgb01(image)
    h, w, _ = rgb01.shape
    side = (h + w) / 2
    up = max(1, round(WORK_SIDE / max(h, w)))
    distance = background_distance(cv2.GaussianBlur(rgb01, (0, 0), SMOOTH_SIGMA))
    if np.median(distance[_border(h, w)]) > FOREGROUND_DELTA_E / 2:
        return []
    lab, found = _lab(rgb01), []
    for (x0, y0), region in _regions(distance, up, min_area_frac * h * w * up * up):
        signature, silhouette, geometry = _component(region)
        kind, clarity = _kind_and_clarity(signature)
        if kind == "ring":
            cv2.drawContours(silhouette, [geometry["hole"]], -1, 0, cv2.FILLED)
        mask = np.zeros((h, w), bool)
        mask[y0 // up:(y0 + silhouette.shape[0]) // up, x0 // up:(x0 + silhouette.shape[1]) // up] = \
            _block_mean(silhouette.astype(np.float32), up) > 0.5
        if not mask.any():
            continue
        colour, purity = _colour_and_purity(rgb01, lab, mask)
        cx, cy = ((c + origin + 0.5) / up / n for c, origin, n in zip(geometry["centre"], (x0, y0), (w, h)))
        radius = geometry["radius"] / up / side
        found.append(Found(kind, colour, _nearest_size(radius), _nearest_position(cx, cy), cx, cy, radius,
                           int(mask.sum()), mask, clarity * purity))
    return sorted(found, key=lambda f: f.area, reverse=True)


# --- scores -------------------------------------------------------------------------------------------

def matches(found: Found, kind: str | None = None, colour: str | None = None) -> bool:
    return (kind is None or found.kind == kind) and (colour is None or found.colour == colour)


def score_prompt(image, text: str) -> dict:
    """How much of a prompt an image shows: {"requested": parsed shapes, "found": Found list, and the fractions
    of requested shapes for which some found shape has the colour and kind ("colour_and_kind"), the colour
    ("colour"), the kind ("kind")}. A requested shape without a colour counts any colour. No requested shape: 1."""
    requested, found = parse_caption(text), find_shapes(image)

    def fraction(use_kind: bool, use_colour: bool) -> float:
        hits = [any(matches(f, r["kind"] if use_kind else None, r["colour"] if use_colour else None) for f in found)
                for r in requested]
        return float(np.mean(hits)) if hits else 1.0

    return {"requested": requested, "found": found, "colour_and_kind": fraction(True, True),
            "colour": fraction(False, True), "kind": fraction(True, False)}


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks; 1 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def outlines(image) -> np.ndarray:
    """bool [H, W]: the 2-px band straddling the edge of every mask find_shapes sees (pixels whose 2x2
    neighbourhood is partly inside, partly outside; a ring has two outlines)."""
    rgb01 = _as_rgb01(image)
    edges = np.zeros(rgb01.shape[:2], bool)
    square = np.ones((2, 2), np.uint8)
    for f in find_shapes(rgb01):
        mask = f.mask.astype(np.uint8)
        edges |= (cv2.dilate(mask, square) > 0) & ~(cv2.erode(mask, square) > 0)
    return edges


def edge_iou(image, edges: np.ndarray, tolerance: int = 2) -> float:
    """Agreement of an edge map (e.g. cv2.Canny, bool or 0..1/0..255) with the outlines of the shapes in
    ``image``: both are dilated by a (2 tolerance + 1)-px square, then ``mask_iou`` of the dilated sets."""
    kernel = np.ones((2 * tolerance + 1, 2 * tolerance + 1), np.uint8)
    ours = cv2.dilate(outlines(image).astype(np.uint8), kernel)
    theirs = cv2.dilate((np.asarray(edges, np.float32) > 0.5).astype(np.uint8), kernel)
    return mask_iou(ours.astype(bool), theirs.astype(bool))
