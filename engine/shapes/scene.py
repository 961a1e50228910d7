"""Procedural "shapes" scenes: sampling, rendering, masks and captions.

A scene is 1..3 coloured shapes (circle, square, triangle, star, ring, cross) of three sizes at nine named
positions, on a plain or linear-gradient background. Nothing is stored: ``scene_at(seed, index)`` is the
dataset. Geometry is in image fractions: a shape's ``radius`` is its circumradius (every point of the shape
lies within ``radius`` of its centre), so non-overlap and "fully inside" are tests on circles.

Captions read like "a large red circle on the left and a small blue star at the top right, yellow background";
``parse_caption`` / ``parse_background`` invert them and tolerate partial prompts ("a red circle").
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

GENERATOR_VERSION = "1"

COLOURS: dict[str, tuple[int, int, int]] = {  # shape colours; pairwise CIELAB distance >= 40
    "red": (220, 35, 35),
    "orange": (250, 140, 20),
    "yellow": (245, 220, 40),
    "green": (40, 170, 70),
    "blue": (30, 110, 240),
    "purple": (130, 40, 170),
    "pink": (250, 140, 210),
    "white": (245, 245, 245),
}
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {**COLOURS, "black": (20, 20, 20), "gray": (128, 128, 128)}
KINDS: tuple[str, ...] = ("circle", "square", "triangle", "star", "ring", "cross")
SIZES: dict[str, float] = {"small": 0.10, "medium": 0.15, "large": 0.21}
POSITIONS: dict[str, tuple[float, float]] = {
    "on the left": (0.25, 0.5),
    "on the right": (0.75, 0.5),
    "at the top": (0.5, 0.25),
    "at the bottom": (0.5, 0.75),
    "in the center": (0.5, 0.5),
    "at the top left": (0.25, 0.25),
    "at the top right": (0.75, 0.25),
    "at the bottom left": (0.25, 0.75),
    "at the bottom right": (0.75, 0.75),
}

MIN_CONTRAST = 45.0  # CIELAB distance between a shape colour and every colour of its background
SIZE_JITTER = (0.9, 1.1)  # radius = SIZES[size] * uniform(SIZE_JITTER)
POSITION_JITTER = 0.04  # centre = anchor + uniform(-j, j) per axis
BORDER = 0.016  # every shape keeps this far from the image edge (2 px at 128)
GAP = 0.04  # minimum distance between two shapes' circumcircles (5 px at 128)
PLAIN_FRACTION = 0.6
SYMMETRY = {"circle": 0.0, "ring": 0.0, "square": 90.0, "triangle": 120.0, "star": 72.0, "cross": 90.0}
RING_INNER = 0.55  # inner radius / outer radius
STAR_INNER = 0.45  # inner vertex radius / outer vertex radius
CROSS_HALF_WIDTH = 0.2  # arm half-width / radius (arm width 0.4 * radius)
STRIPE_PERIOD = 1 / 8  # stripe period of texture="stripes", fraction of the image side (2 latent px)
SUPERSAMPLE = 4  # render at 4x and average down (anti-aliasing)


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: str
    position: str
    cx: float  # actual centre in [0,1] (position anchor + jitter)
    cy: float
    radius: float  # circumradius, fraction of the side (SIZES[size] * jitter)
    angle: float  # rotation in degrees, counter-clockwise as seen on screen (0 for circle/ring)


@dataclass(frozen=True)
class Background:
    colours: tuple[str, ...]  # 1 colour = plain; 2 = linear gradient from the first to the second
    direction: str = "vertical"  # "vertical" (top -> bottom) or "horizontal" (left -> right)


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    background: Background


# --- colour -------------------------------------------------------------------------------------------

def srgb_to_lab(rgb) -> np.ndarray:
    """CIELAB (D65) of sRGB values in 0..255, any leading shape ``[..., 3]``."""
    rgb = np.asarray(rgb, dtype=np.float32) / 255.0
    return cv2.cvtColor(rgb.reshape(-1, 1, 3), cv2.COLOR_RGB2Lab).reshape(rgb.shape)


@lru_cache(maxsize=None)
def _background_labs(background: Background) -> np.ndarray:
    """Lab of 9 colours sampled along the background (one for a plain background)."""
    rgbs = np.array([BACKGROUND_COLOURS[c] for c in background.colours], dtype=np.float32)
    t = np.linspace(0.0, 1.0, 9 if len(rgbs) == 2 else 1)[:, None]
    return srgb_to_lab(rgbs[0] * (1 - t) + rgbs[-1] * t)


@lru_cache(maxsize=None)  # scene sampling asks it for the same few pairs thousands of times
def contrasts(colour: str, background: Background) -> bool:
    """Whether a shape colour stays >= MIN_CONTRAST from every colour of the background."""
    distances = np.linalg.norm(_background_labs(background) - srgb_to_lab(COLOURS[colour]), axis=-1)
    return bool(distances.min() >= MIN_CONTRAST)


def shape_colours_for(background: Background) -> tuple[str, ...]:
    return tuple(c for c in COLOURS if contrasts(c, background))


# --- sampling -----------------------------------------------------------------------------------------

def _pick(rng: np.random.Generator, options) -> str:
    options = tuple(options)
    return options[int(rng.integers(len(options)))]


def _sample_background(rng: np.random.Generator, shape_colours: tuple[str, ...] = ()) -> Background:
    """~60% plain, ~40% two-colour gradients, leaving >= 3 usable shape colours and contrasting with
    ``shape_colours``; after 1000 failed draws the last draw is returned."""
    for _ in range(1000):
        if rng.random() < PLAIN_FRACTION:
            background = Background((_pick(rng, BACKGROUND_COLOURS),))
        else:
            first = _pick(rng, BACKGROUND_COLOURS)
            second = _pick(rng, (c for c in BACKGROUND_COLOURS if c != first))
            background = Background((first, second), _pick(rng, ("vertical", "horizontal")))
        if len(shape_colours_for(background)) >= 3 and all(contrasts(c, background) for c in shape_colours):
            return background
    return background


def _place(rng: np.random.Generator, kind: str, colour: str, size: str, position: str) -> Shape:
    radius = SIZES[size] * rng.uniform(*SIZE_JITTER)
    lo, hi = radius + BORDER, 1.0 - radius - BORDER
    ax, ay = POSITIONS[position]
    cx = float(np.clip(ax + rng.uniform(-POSITION_JITTER, POSITION_JITTER), lo, hi))
    cy = float(np.clip(ay + rng.uniform(-POSITION_JITTER, POSITION_JITTER), lo, hi))
    angle = rng.uniform(0.0, SYMMETRY[kind]) if SYMMETRY[kind] else 0.0
    return Shape(kind, colour, size, position, cx, cy, float(radius), float(angle))


def disjoint(shapes) -> bool:
    """Whether all circumcircles are at least GAP apart."""
    for i, a in enumerate(shapes):
        for b in shapes[i + 1:]:
            if np.hypot(a.cx - b.cx, a.cy - b.cy) < a.radius + b.radius + GAP:
                return False
    return True


def sample_scene(rng: np.random.Generator, max_shapes: int = 3, min_shapes: int = 1) -> Scene:
    """A random scene: background first, then shapes at distinct positions with contrasting colours,
    rejection-sampled until no two circumcircles come closer than GAP."""
    if not 0 <= min_shapes <= max_shapes <= len(POSITIONS):
        raise ValueError(f"need 0 <= min_shapes <= max_shapes <= {len(POSITIONS)}, got {min_shapes}, {max_shapes}")
    n = int(rng.integers(min_shapes, max_shapes + 1))
    background = _sample_background(rng)
    colours = shape_colours_for(background)
    for _ in range(10_000):
        positions = [tuple(POSITIONS)[i] for i in rng.permutation(len(POSITIONS))[:n]]
        shapes = tuple(_place(rng, _pick(rng, KINDS), _pick(rng, colours), _pick(rng, SIZES), p)
                       for p in positions)
        if disjoint(shapes):
            return Scene(shapes, background)
    raise ValueError(f"could not place {n} disjoint shapes")


def scene_at(seed: int, index: int, **kw) -> Scene:
    """Item ``index`` of the dataset with ``seed``; the same pair always gives the same scene."""
    return sample_scene(np.random.default_rng([seed, index]), **kw)


# --- rendering ----------------------------------------------------------------------------------------

def _rotation(theta: float) -> np.ndarray:
    return np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])


def outline(shape: Shape) -> tuple[np.ndarray, np.ndarray | None]:
    """(outer polygon, hole polygon or None) in image fractions, ``[n, 2]`` (x, y) each."""
    def polygon(radii, start_deg):
        theta = np.deg2rad(start_deg - shape.angle) + np.arange(len(radii)) * 2 * np.pi / len(radii)
        return np.stack([shape.cx + radii * np.cos(theta), shape.cy + radii * np.sin(theta)], axis=1)

    r = shape.radius
    if shape.kind in ("circle", "ring"):
        outer = polygon(np.full(128, r), 0.0)
        return outer, polygon(np.full(128, r * RING_INNER), 0.0) if shape.kind == "ring" else None
    if shape.kind == "square":
        return polygon(np.full(4, r), 45.0), None
    if shape.kind == "triangle":
        return polygon(np.full(3, r), -90.0), None
    if shape.kind == "star":
        return polygon(np.tile([r, r * STAR_INNER], 5), -90.0), None
    if shape.kind == "cross":  # plus sign whose arm corners lie on the circumcircle
        w, a = CROSS_HALF_WIDTH * r, np.sqrt(1 - CROSS_HALF_WIDTH ** 2) * r
        quarter = np.array([[a, -w], [a, w], [w, w]])  # right arm and the inner corner below it
        plus = np.concatenate([quarter @ _rotation(t).T for t in np.arange(4) * np.pi / 2])
        return plus @ _rotation(np.deg2rad(-shape.angle)).T + [shape.cx, shape.cy], None
    raise ValueError(f"unknown kind {shape.kind!r}")


_SHIFT = 4  # fractional bits of cv2.fillPoly coordinates


def _fill(mask: np.ndarray, polygon: np.ndarray, value: int, side: int, origin) -> None:
    """Fill a polygon given in image fractions into ``mask``, a window starting at pixel ``origin`` of a
    ``side``-px image (pixel centres at integer coordinates)."""
    pts = np.round((polygon * side - 0.5 - np.asarray(origin)) * (1 << _SHIFT)).astype(np.int32)
    cv2.fillPoly(mask, [pts], value, lineType=cv2.LINE_8, shift=_SHIFT)


def _coverage(shape: Shape, size: int) -> tuple[tuple[slice, slice], np.ndarray]:
    """(window of the ``size``-px image around the shape, uint8 {0,1} silhouette of that window at SUPERSAMPLE
    times the resolution; ring: annulus only)."""
    lo = [max(int(np.floor((c - shape.radius) * size)) - 1, 0) for c in (shape.cx, shape.cy)]
    hi = [min(int(np.ceil((c + shape.radius) * size)) + 1, size) for c in (shape.cx, shape.cy)]
    mask = np.zeros(((hi[1] - lo[1]) * SUPERSAMPLE, (hi[0] - lo[0]) * SUPERSAMPLE), np.uint8)
    outer, hole = outline(shape)
    origin = [lo[0] * SUPERSAMPLE, lo[1] * SUPERSAMPLE]
    _fill(mask, outer, 1, size * SUPERSAMPLE, origin)
    if hole is not None:
        _fill(mask, hole, 0, size * SUPERSAMPLE, origin)
    return (slice(lo[1], hi[1]), slice(lo[0], hi[0])), mask


def _box_mean(fine: np.ndarray) -> np.ndarray:
    """Average SUPERSAMPLE x SUPERSAMPLE blocks of ``[H*s, W*s, ...]``."""
    h, w = fine.shape[0] // SUPERSAMPLE, fine.shape[1] // SUPERSAMPLE
    return fine.reshape(h, SUPERSAMPLE, w, SUPERSAMPLE, *fine.shape[2:]).mean(axis=(1, 3))


def _background_canvas(background: Background, size: int) -> np.ndarray:
    """float32 ``[size, size, 3]``; a gradient is linear in sRGB, sampled at pixel centres."""
    rgbs = np.array([BACKGROUND_COLOURS[c] for c in background.colours], dtype=np.float32)
    t = (np.arange(size, dtype=np.float32) + 0.5) / size
    ramp = rgbs[0] * (1 - t[:, None]) + rgbs[-1] * t[:, None]  # [size, 3]
    if background.direction == "vertical":
        return np.broadcast_to(ramp[:, None, :], (size, size, 3)).copy()
    return np.broadcast_to(ramp[None, :, :], (size, size, 3)).copy()


def _stripe_fill(shape: Shape, window: tuple[slice, slice], size: int) -> np.ndarray:
    """float32 ``[h, w, 3]`` at SUPERSAMPLE resolution over ``window``: diagonal stripes of period
    STRIPE_PERIOD * size alternating the shape's colour and white (black for a white shape)."""
    ys, xs = (np.arange(s.start * SUPERSAMPLE, s.stop * SUPERSAMPLE, dtype=np.float32) + 0.5 for s in window)
    phase = (xs[None, :] + ys[:, None]) / np.sqrt(2) / (STRIPE_PERIOD * size * SUPERSAMPLE)
    other = COLOURS["white"] if shape.colour != "white" else BACKGROUND_COLOURS["black"]
    return np.where((phase % 1.0)[..., None] < 0.5, np.float32(COLOURS[shape.colour]), np.float32(other))


def render(scene: Scene, size: int = 128, texture: str | None = None) -> np.ndarray:
    """uint8 ``[size, size, 3]`` RGB, anti-aliased: each shape's coverage and colour are averaged over
    SUPERSAMPLE^2 samples per pixel and composited over the background.

    ``texture="stripes"`` fills each shape with diagonal stripes alternating its colour and white (black for a
    white shape), period STRIPE_PERIOD of the side — a style whose presence is measurable in pixels.
    """
    if texture not in (None, "stripes"):
        raise ValueError(f"unknown texture {texture!r}")
    canvas = _background_canvas(scene.background, size)
    for shape in scene.shapes:
        window, fine = _coverage(shape, size)
        alpha = _box_mean(fine.astype(np.float32))[..., None]
        if texture == "stripes":
            colour = _box_mean(fine[..., None] * _stripe_fill(shape, window, size))  # premultiplied by alpha
        else:
            colour = alpha * np.float32(COLOURS[shape.colour])
        canvas[window] = canvas[window] * (1 - alpha) + colour
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def shape_masks(scene: Scene, size: int = 128) -> np.ndarray:
    """bool ``[n_shapes, size, size]``: pixels more than half covered by each shape (as rendered)."""
    masks = np.zeros((len(scene.shapes), size, size), bool)
    for mask, shape in zip(masks, scene.shapes):
        window, fine = _coverage(shape, size)
        mask[window] = _box_mean(fine.astype(np.float32)) > 0.5
    return masks


# --- captions -----------------------------------------------------------------------------------------

def with_article(phrase: str) -> str:
    """"a red circle", "an orange star": the article the captions use."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _shape_phrase(shape: Shape) -> str:
    return with_article(f"{shape.size} {shape.colour} {shape.kind} {shape.position}")


def _background_phrase(background: Background) -> str:
    if len(background.colours) == 1:
        return f"{background.colours[0]} background"
    direction = " horizontal" if background.direction == "horizontal" else ""
    return f"{background.colours[0]} to {background.colours[1]}{direction} gradient background"


def caption(scene: Scene) -> str:
    """"a A, a B and a C, <background>"; a horizontal gradient says so ("yellow to green horizontal gradient
    background"), a vertical one (top to bottom) does not."""
    phrases = [_shape_phrase(s) for s in scene.shapes]
    shapes = " and ".join([", ".join(phrases[:-1]), phrases[-1]] if len(phrases) > 1 else phrases)
    return ", ".join(p for p in (shapes, _background_phrase(scene.background)) if p)


def _alternation(words) -> str:
    return "|".join(sorted((re.escape(w) for w in words), key=len, reverse=True))


_BACKGROUND_RE = re.compile(rf"\b({_alternation(BACKGROUND_COLOURS)})(?:\s+to\s+({_alternation(BACKGROUND_COLOURS)}))?"
                            r"(?:\s+(vertical|horizontal))?(?:\s+gradient)?\s+background\b")
_TERM_RE = re.compile(rf"\b(?:(?P<position>{_alternation(POSITIONS)})|(?P<kind>{_alternation(KINDS)})"
                      rf"|(?P<colour>{_alternation(COLOURS)})|(?P<size>{_alternation(SIZES)}))\b")


def _normalise(text: str) -> str:
    text = re.sub(r"[^a-z]+", " ", text.lower())
    return re.sub(r"\bcentre\b", "center", re.sub(r"\bgrey\b", "gray", text))


def parse_background(text: str) -> Background | None:
    """The background named by a caption ("yellow background", "black to blue gradient background"), or None."""
    match = _BACKGROUND_RE.search(_normalise(text))
    if match is None:
        return None
    first, second, direction = match.groups()
    return Background((first, second) if second else (first,), direction or "vertical")


def parse_caption(text: str) -> list[dict]:
    """Shapes requested by a caption, in order: ``[{"kind", "colour", "size", "position"}, ...]``.

    Each kind word closes a shape phrase: its colour and size are the last such words since the previous
    phrase, its position the first position phrase before the next kind; missing ones are None. Unknown words
    and the background phrase (see ``parse_background``) are ignored.
    """
    text = _BACKGROUND_RE.sub(" ", _normalise(text))
    shapes, pending = [], {"colour": None, "size": None}
    for match in _TERM_RE.finditer(text):
        group = match.lastgroup
        if group == "kind":
            shapes.append({"kind": match[group], **pending, "position": None})
            pending = {"colour": None, "size": None}
        elif group == "position":
            if shapes and shapes[-1]["position"] is None and pending == {"colour": None, "size": None}:
                shapes[-1]["position"] = match[group]
        else:
            pending[group] = match[group]
    return shapes


def scene_from_caption(text: str, rng: np.random.Generator) -> Scene:
    """A concrete scene for a (possibly partial) caption; what it leaves out is drawn from ``rng``.

    Missing colours contrast with the background; missing positions are unused ones. When the requested shapes
    cannot be placed disjointly within 1000 draws, the last draw is returned (shapes may then overlap).
    """
    specs = parse_caption(text)
    named = tuple(s["colour"] for s in specs if s["colour"])
    background = parse_background(text) or _sample_background(rng, named)
    colours = shape_colours_for(background) or tuple(COLOURS)
    taken = {s["position"] for s in specs if s["position"]}
    free = [p for p in POSITIONS if p not in taken] or list(POSITIONS)
    for _ in range(1000):
        spare = [free[i] for i in rng.permutation(len(free))]
        shapes = tuple(_place(rng, s["kind"], s["colour"] or _pick(rng, colours), s["size"] or _pick(rng, SIZES),
                              s["position"] or spare[i % len(spare)]) for i, s in enumerate(specs))
        if disjoint(shapes):
            break
    return Scene(shapes, background)
