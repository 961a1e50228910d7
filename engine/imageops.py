"""Image tensor helpers shared by nodes: file I/O, resizing, compositing.

Conventions (DESIGN.md): IMAGE is float32 ``[B,H,W,C]`` in 0..1, MASK float32
``[B,H,W]`` in 0..1 where 1 means "change this pixel".
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, ImageSequence

UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as kornia's rgb_to_grayscale


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image as ``[1,H,W,3]`` float32 in 0..1."""
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0)[None]


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """One ``[H,W,C]`` image to 8 bits the way ComfyUI's SaveImage does it: truncating, not rounding."""
    array = np.clip(255.0 * image.detach().float().cpu().numpy(), 0, 255).astype(np.uint8)
    if array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array)


def _normalise_mode(frame: Image.Image) -> Image.Image:
    if frame.mode == "I":  # 32-bit integer images (16-bit PNGs) hold 0..65535
        frame = frame.point(lambda v: v * (1 / 255))
    if frame.mode == "P" and "transparency" in frame.info:
        frame = frame.convert("RGBA")
    return frame


def load_image_frames(path) -> tuple[torch.Tensor, torch.Tensor]:
    """All frames of an image file as (IMAGE, MASK); the mask is 1 − alpha (zeros 64×64 without alpha).

    Frames of a different size than the first are skipped, as ComfyUI does.
    """
    with Image.open(path) as img:
        images, masks = [], []
        size = None
        for frame in ImageSequence.Iterator(img):
            frame = _normalise_mode(ImageOps.exif_transpose(frame))
            if size is None:
                size = frame.size
            if frame.size != size:
                continue
            images.append(pil_to_tensor(frame))
            if "A" in frame.getbands():
                alpha = np.asarray(frame.getchannel("A"), dtype=np.float32) / 255.0
                masks.append(1.0 - torch.from_numpy(alpha)[None])
            else:
                masks.append(torch.zeros((1, 64, 64), dtype=torch.float32))
    return torch.cat(images), torch.cat(masks) if len({m.shape for m in masks}) == 1 else masks[0]


def load_image_channel(path, channel: str) -> torch.Tensor:
    """One channel (R, G, B or A) of an image file as a MASK; alpha is inverted (transparent = 1)."""
    with Image.open(path) as img:
        img = _normalise_mode(ImageOps.exif_transpose(img))
        if img.getbands() != ("R", "G", "B", "A"):
            img = img.convert("RGBA")
        mask = torch.from_numpy(np.asarray(img.getchannel(channel), dtype=np.float32) / 255.0)[None]
    return 1.0 - mask if channel == "A" else mask


def center_crop_to_aspect(x: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Crop a ``[B,C,H,W]`` tensor at its centre to the aspect ratio ``width:height``."""
    old_h, old_w = x.shape[-2:]
    old_aspect, new_aspect = old_w / old_h, width / height
    x0 = y0 = 0
    if old_aspect > new_aspect:
        x0 = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y0 = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return x[..., y0:old_h - y0, x0:old_w - x0]


def resize_bchw(x: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """Resize ``[B,C,H,W]`` to ``width×height`` with one of :data:`UPSCALE_METHODS`."""
    if crop == "center":
        x = center_crop_to_aspect(x, width, height)
    if method == "lanczos":
        out = []
        for item in x:
            array = (item.movedim(0, -1).clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
            img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
            resized = np.asarray(img.resize((width, height), Image.LANCZOS), dtype=np.float32) / 255.0
            out.append(torch.from_numpy(resized.reshape(height, width, -1)).movedim(-1, 0))
        return torch.stack(out).to(x.device, x.dtype)
    if method not in UPSCALE_METHODS:
        raise ValueError(f"unknown upscale method {method!r}")
    return F.interpolate(x, size=(height, width), mode=method)


def scale_image(image: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """ComfyUI's ImageScale: a 0 width or height keeps the aspect ratio; both 0 leaves the image alone."""
    if width == 0 and height == 0:
        return image
    h, w = image.shape[1:3]
    if width == 0:
        width = max(1, round(w * height / h))
    elif height == 0:
        height = max(1, round(h * width / w))
    return resize_bchw(image.movedim(-1, 1), width, height, method, crop).movedim(1, -1)


def gaussian_blur(image: torch.Tensor, radius: int, sigma: float) -> torch.Tensor:
    """Blur ``[B,H,W,C]`` with a (2r+1)² Gaussian whose coordinates span −1..1, edges reflected.

    That coordinate convention is ComfyUI's ImageBlur, so ``sigma`` means the same there and here.
    """
    if radius == 0:
        return image
    size = 2 * radius + 1
    coords = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    kernel = torch.exp(-(xx ** 2 + yy ** 2) / (2.0 * sigma * sigma))
    kernel = (kernel / kernel.sum()).to(image)
    channels = image.shape[-1]
    x = F.pad(image.movedim(-1, 1), (radius,) * 4, mode="reflect")
    x = F.conv2d(x, kernel.expand(channels, 1, size, size), groups=channels)
    return x.movedim(1, -1)


def repeat_to_batch(x: torch.Tensor, batch: int) -> torch.Tensor:
    if x.shape[0] >= batch:
        return x[:batch]
    reps = -(-batch // x.shape[0])
    return x.repeat(reps, *([1] * (x.dim() - 1)))[:batch]


def composite(destination: torch.Tensor, source: torch.Tensor, x: int, y: int,
              mask: torch.Tensor | None = None, resize_source: bool = False) -> torch.Tensor:
    """Paste ``source`` onto ``destination`` (both ``[B,C,H,W]``) at (x, y) through ``mask``.

    The mask (``[B,H,W]`` or ``[H,W]``) is resized to the source; 1 takes the
    source.  Parts falling outside the destination are cut off.
    """
    destination = destination.clone()
    source = source.to(destination)
    if resize_source:
        source = F.interpolate(source, size=destination.shape[-2:], mode="bilinear")
    source = repeat_to_batch(source, destination.shape[0])
    dest_h, dest_w = destination.shape[-2:]
    x, y = max(0, min(x, dest_w)), max(0, min(y, dest_h))
    h, w = min(source.shape[-2], dest_h - y), min(source.shape[-1], dest_w - x)
    if mask is None:
        mask = torch.ones_like(source[:, :1])
    else:
        mask = mask.to(destination).reshape(-1, 1, *mask.shape[-2:])
        mask = F.interpolate(mask, size=source.shape[-2:], mode="bilinear")
        mask = repeat_to_batch(mask, source.shape[0])
    mask = mask[..., :h, :w]
    region = destination[..., y:y + h, x:x + w]
    destination[..., y:y + h, x:x + w] = mask * source[..., :h, :w] + (1 - mask) * region
    return destination


# --- preprocessing ----------------------------------------------------------------------------------

def luma(image: np.ndarray) -> np.ndarray:
    """[H,W,C] 0..1 -> [H,W] luma."""
    if image.shape[-1] < 3:
        return np.ascontiguousarray(image[..., 0])
    return np.ascontiguousarray(image[..., :3] @ np.array(GRAY_WEIGHTS, dtype=np.float32))


def canny_edges(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """Canny on the luma after a 5x5, sigma 1 Gaussian blur (kornia's defaults, which ComfyUI uses).

    kornia thresholds the L2 norm of the raw 3x3 Sobel gradient of the 0..1 image; OpenCV's
    ``L2gradient`` Canny computes the same norm on the 0..255 image, so the thresholds are x255.
    Differences from ComfyUI's output: OpenCV works on the blurred image rounded to 8 bits, and its
    non-maximum suppression breaks ties between equal neighbours on one side (kornia needs a strict
    maximum), so a few edge pixels can differ.
    """
    blurred = cv2.GaussianBlur(luma(image), (5, 5), 1.0, borderType=cv2.BORDER_REFLECT_101)
    eight_bit = np.clip(np.round(blurred * 255.0), 0, 255).astype(np.uint8)
    return cv2.Canny(eight_bit, low * 255.0, high * 255.0, L2gradient=True) / 255.0
