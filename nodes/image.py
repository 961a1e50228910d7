"""Image nodes: load, save, preview, scale, invert, blur, composite (ComfyUI's names and inputs)."""
from __future__ import annotations

import hashlib
import os
import random
import re
import time
from pathlib import Path

import torch

from engine import imageops
from engine.errors import LoomError
from engine.paths import default_paths
from engine.schema import Input, Node, NodeOutput, Output

MAX_RESOLUTION = 16384


def _input_files():
    return default_paths().list_inputs()


class LoadImage(Node):
    TYPE = "LoadImage"
    DISPLAY_NAME = "Load Image"
    CATEGORY = "image"
    DESCRIPTION = "Loads an image from the input folder; its alpha channel becomes the mask (transparent = 1)."
    INPUTS = (Input("image", "COMBO", options=_input_files, upload="image",
                    tooltip="a file in the input folder"),)
    OUTPUTS = (Output("IMAGE", "IMAGE"), Output("MASK", "MASK"))

    def execute(self, image):
        return imageops.load_image_frames(self.ctx.paths.find_input(image))

    @classmethod
    def fingerprint(cls, image=None, **_):
        return input_file_hash(image)


def input_file_hash(name):
    """An input file's sha256, so editing the image on disk re-runs the nodes that read it."""
    try:
        return hashlib.sha256(default_paths().find_input(name).read_bytes()).hexdigest()
    except (LoomError, OSError):
        return None


_TOKEN = re.compile(r"%([^%]+)%")
_DATE_FIELDS = {"yyyy": "%Y", "yy": "%y", "MM": "%m", "dd": "%d", "hh": "%H", "mm": "%M", "ss": "%S"}


def expand_prefix(prefix: str, width: int, height: int, graph=None, now=None) -> str:
    """ComfyUI's filename_prefix substitutions: %width% %height% %year% … %date:yyyy-MM-dd% %Title.widget%."""
    now = now or time.localtime()
    fixed = {"width": str(width), "height": str(height), "year": f"{now.tm_year}", "month": f"{now.tm_mon:02}",
             "day": f"{now.tm_mday:02}", "hour": f"{now.tm_hour:02}", "minute": f"{now.tm_min:02}",
             "second": f"{now.tm_sec:02}"}

    def replace(match):
        token = match.group(1)
        if token in fixed:
            return fixed[token]
        if token.startswith("date:"):
            fmt = token[5:]
            for key in sorted(_DATE_FIELDS, key=len, reverse=True):
                fmt = fmt.replace(key, _DATE_FIELDS[key])
            return time.strftime(fmt, now)
        if "." in token and graph is not None:
            title, widget = token.rsplit(".", 1)
            for node in graph.nodes.values():
                if title in (node.title, node.type) and widget in node.values:
                    return str(node.values[widget])
        return match.group(0)

    return _TOKEN.sub(replace, prefix)


def save_png_batch(images: torch.Tensor, directory: Path, prefix: str, pnginfo, compress_level: int) -> list[dict]:
    """Write each image as ``{prefix}_{counter:05}_.png`` in ``directory``; never overwrites a file."""
    directory = Path(directory)
    subfolder, _, name = prefix.replace("\\", "/").rpartition("/")
    target = (directory / subfolder).resolve()
    if os.path.commonpath([target, directory.resolve()]) != str(directory.resolve()):
        raise LoomError(f"filename_prefix {prefix!r} points outside the output folder {directory}")
    target.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(name) + r"_(\d+)_?\.png$")
    counter = max((int(m.group(1)) for f in os.listdir(target) if (m := pattern.match(f))), default=0) + 1
    saved = []
    for batch_index, image in enumerate(images):
        pil = imageops.tensor_to_pil(image)
        while True:
            filename = f"{name.replace('%batch_num%', str(batch_index))}_{counter:05}_.png"
            counter += 1
            try:
                with open(target / filename, "xb") as fh:  # exclusive create: an existing file is never replaced
                    pil.save(fh, format="PNG", pnginfo=pnginfo, compress_level=compress_level)
                break
            except FileExistsError:
                continue
        saved.append({"filename": filename, "subfolder": subfolder, "path": str(target / filename)})
    return saved


def _pnginfo(ctx):
    graph, registry = ctx.run_info.get("graph"), ctx.run_info.get("registry")
    if graph is None or registry is None or ctx.run_info.get("no_metadata"):
        return None
    from engine.workflow.png import png_metadata

    return png_metadata(graph, registry)


class SaveImage(Node):
    TYPE = "SaveImage"
    DISPLAY_NAME = "Save Image"
    CATEGORY = "image"
    DESCRIPTION = ("Saves images to the output folder as PNG with the workflow embedded. "
                   "Never overwrites: the counter moves past existing files.")
    INPUTS = (Input("images", "IMAGE", tooltip="the images to save"),
              Input("filename_prefix", "STRING", default="ComfyUI",
                    tooltip="file name start; may contain a subfolder and %width%, %height%, "
                            "%year%, %date:yyyy-MM-dd%, %Node Title.widget%"))
    OUTPUTS = (Output("IMAGE", "IMAGE"),)
    OUTPUT_NODE = True
    COMPRESS_LEVEL = 4

    def output_dir(self) -> Path:
        return self.ctx.paths.output_dir

    def prefix(self, filename_prefix: str) -> str:
        return filename_prefix

    def execute(self, images, filename_prefix="ComfyUI"):
        prefix = expand_prefix(self.prefix(filename_prefix), images.shape[2], images.shape[1],
                               self.ctx.run_info.get("graph"))
        saved = save_png_batch(images, self.output_dir(), prefix, _pnginfo(self.ctx), self.COMPRESS_LEVEL)
        return NodeOutput((images,), {"images": saved})


class PreviewImage(SaveImage):
    TYPE = "PreviewImage"
    DISPLAY_NAME = "Preview Image"
    DESCRIPTION = "Shows images without keeping them (written to the temp folder)."
    INPUTS = (Input("images", "IMAGE"),)
    OUTPUTS = ()
    COMPRESS_LEVEL = 1

    def output_dir(self) -> Path:
        return self.ctx.paths.temp_dir

    def prefix(self, filename_prefix: str) -> str:
        return "LoomPreview_" + "".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5))

    def execute(self, images):
        result = super().execute(images)
        return NodeOutput((), result.ui)


class ImageScale(Node):
    TYPE = "ImageScale"
    DISPLAY_NAME = "Upscale Image"
    CATEGORY = "image/upscaling"
    DESCRIPTION = "Resizes to width × height; 0 in one of them keeps the aspect ratio."
    INPUTS = (Input("image", "IMAGE"),
              Input("upscale_method", "COMBO", options=imageops.UPSCALE_METHODS),
              Input("width", "INT", default=512, min=0, max=MAX_RESOLUTION, step=1),
              Input("height", "INT", default=512, min=0, max=MAX_RESOLUTION, step=1),
              Input("crop", "COMBO", options=("disabled", "center")))
    OUTPUTS = (Output("IMAGE", "IMAGE"),)

    def execute(self, image, upscale_method, width, height, crop):
        return (imageops.scale_image(image, width, height, upscale_method, crop),)


class ImageScaleBy(Node):
    TYPE = "ImageScaleBy"
    DISPLAY_NAME = "Upscale Image By"
    CATEGORY = "image/upscaling"
    INPUTS = (Input("image", "IMAGE"),
              Input("upscale_method", "COMBO", options=imageops.UPSCALE_METHODS),
              Input("scale_by", "FLOAT", default=1.0, min=0.01, max=8.0, step=0.01))
    OUTPUTS = (Output("IMAGE", "IMAGE"),)

    def execute(self, image, upscale_method, scale_by):
        width, height = round(image.shape[2] * scale_by), round(image.shape[1] * scale_by)
        return (imageops.scale_image(image, width, height, upscale_method),)


class ImageInvert(Node):
    TYPE = "ImageInvert"
    DISPLAY_NAME = "Invert Image"
    CATEGORY = "image"
    INPUTS = (Input("image", "IMAGE"),)
    OUTPUTS = (Output("IMAGE", "IMAGE"),)

    def execute(self, image):
        return (1.0 - image,)


class ImageBlur(Node):
    TYPE = "ImageBlur"
    DISPLAY_NAME = "Image Blur"
    CATEGORY = "image/postprocessing"
    INPUTS = (Input("image", "IMAGE"),
              Input("blur_radius", "INT", default=1, min=1, max=31, step=1),
              Input("sigma", "FLOAT", default=1.0, min=0.1, max=10.0, step=0.1))
    OUTPUTS = (Output("IMAGE", "IMAGE"),)

    def execute(self, image, blur_radius, sigma):
        return (imageops.gaussian_blur(image, blur_radius, sigma),)


class ImageCompositeMasked(Node):
    TYPE = "ImageCompositeMasked"
    DISPLAY_NAME = "ImageCompositeMasked"
    CATEGORY = "image"
    DESCRIPTION = "Pastes source onto destination at (x, y); where a mask is given, only its white part."
    INPUTS = (Input("destination", "IMAGE"),
              Input("source", "IMAGE"),
              Input("x", "INT", default=0, min=0, max=MAX_RESOLUTION, step=1),
              Input("y", "INT", default=0, min=0, max=MAX_RESOLUTION, step=1),
              Input("resize_source", "BOOLEAN", default=False),
              Input("mask", "MASK", optional=True))
    OUTPUTS = (Output("IMAGE", "IMAGE"),)

    def execute(self, destination, source, x, y, resize_source, mask=None):
        out = imageops.composite(destination.movedim(-1, 1), source.movedim(-1, 1), x, y, mask, resize_source)
        return (out.movedim(1, -1),)


class EmptyImage(Node):
    TYPE = "EmptyImage"
    CATEGORY = "image"
    DESCRIPTION = "A batch of images filled with one colour."
    INPUTS = (Input("width", "INT", default=512, min=1, max=MAX_RESOLUTION, step=1),
              Input("height", "INT", default=512, min=1, max=MAX_RESOLUTION, step=1),
              Input("batch_size", "INT", default=1, min=1, max=4096),
              Input("color", "INT", default=0, min=0, max=0xFFFFFF, step=1, tooltip="0xRRGGBB"))
    OUTPUTS = (Output("IMAGE", "IMAGE"),)

    def execute(self, width, height, batch_size, color):
        rgb = torch.tensor([(color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF], dtype=torch.float32) / 255.0
        return (rgb.expand(batch_size, height, width, 3).clone(),)
