"""Workflows inside PNG images: text chunks written on save, read back on open.

A saved image carries three text chunks: ``loom_workflow`` (Loom's JSON),
``prompt`` (ComfyUI's API JSON) and ``workflow`` (ComfyUI's UI JSON), so both
programs can open it (comfyui.md §3.4).  Reading prefers ``loom_workflow``,
then ``workflow``, then ``prompt``, and reads tEXt, zTXt and iTXt chunks.

Opening an image's workflow is for reproducing that image, so every seed
control is set to ``fixed``.
"""
from __future__ import annotations

import json
import os
import struct
import zlib

from PIL.PngImagePlugin import PngInfo

from ..errors import WorkflowFileError
from ..graph import Graph
from ..registry import Registry
from .comfy_api import from_api, to_api
from .comfy_ui import from_ui, has_control, to_ui
from .native import dumps_native, from_native, parse_json

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_TEXT_BYTES = 64 * 2**20  # a compressed chunk inflating past this is refused
CHUNK_LOADERS = (("loom_workflow", from_native), ("workflow", from_ui), ("prompt", from_api))


def png_metadata(graph: Graph, registry: Registry) -> PngInfo:
    """Text chunks for a saved image: Loom's workflow, ComfyUI's prompt and workflow."""
    info = PngInfo()
    info.add_text("loom_workflow", dumps_native(graph))
    info.add_text("prompt", json.dumps(to_api(graph, registry)))
    info.add_text("workflow", json.dumps(to_ui(graph, registry)))
    return info


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_TEXT_BYTES)
    except zlib.error as exc:
        raise WorkflowFileError(f"a compressed text chunk is corrupt ({exc})") from None
    if inflater.unconsumed_tail:
        raise WorkflowFileError(f"a compressed text chunk inflates past {MAX_TEXT_BYTES >> 20} MiB")
    return out


def _text_chunk(kind: bytes, body: bytes) -> tuple[str, str]:
    key, _, rest = body.partition(b"\0")
    if kind == b"tEXt":
        return key.decode("latin-1"), rest.decode("latin-1")
    if kind == b"zTXt":
        return key.decode("latin-1"), _inflate(rest[1:]).decode("latin-1")
    compressed, rest = rest[:1] == b"\1", rest[2:]  # iTXt: flag, method, language, translated keyword
    _language, _, rest = rest.partition(b"\0")
    _translated, _, text = rest.partition(b"\0")
    text = _inflate(text) if compressed else text
    try:
        return key.decode("latin-1"), text.decode("utf-8")
    except UnicodeDecodeError:
        raise WorkflowFileError(f"iTXt chunk '{key.decode('latin-1')}' is not UTF-8") from None


def png_text(data: bytes) -> dict[str, str]:
    """Every text chunk of a PNG, first occurrence of a key wins."""
    if not data.startswith(PNG_SIGNATURE):
        raise WorkflowFileError("not a PNG image")
    texts: dict[str, str] = {}
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IEND" or len(body) < length:
            break
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            key, text = _text_chunk(kind, body)
            texts.setdefault(key, text)
    return texts


def fix_seed_controls(graph: Graph, registry: Registry) -> int:
    """Set every seed control to ``fixed``; returns how many changed."""
    changed = 0
    for node in graph.nodes.values():
        cls = registry.get(node.type)
        if cls is None:
            continue
        names = ["value"] if "value" in node.controls and node.type == "PrimitiveNode" else \
            [i.name for i in cls.INPUTS if has_control(i)]
        for name in names:
            changed += node.controls.get(name) != "fixed"
            node.controls[name] = "fixed"
    return changed


def load_png(data: bytes, registry: Registry) -> tuple[Graph, list[str]]:
    """The workflow in a PNG's text chunks; returns (graph, warnings)."""
    texts = png_text(data)
    failures = []
    for key, loader in CHUNK_LOADERS:
        if key not in texts:
            continue
        try:
            graph, warnings = loader(parse_json(texts[key]), registry)
        except WorkflowFileError as exc:
            failures.append(f"'{key}' chunk: {exc}")
            continue
        warnings = [f"{f}; used the '{key}' chunk instead" for f in failures] + warnings
        changed = fix_seed_controls(graph, registry)
        if changed:
            warnings.append(f"opened from an image: {changed} seed control(s) set to 'fixed' "
                            "so the workflow reproduces this image")
        return graph, warnings
    if failures:
        raise WorkflowFileError("; ".join(failures))
    raise WorkflowFileError("the PNG carries no workflow (no loom_workflow, workflow or prompt text chunk)")


def read_png_workflow(path: str | os.PathLike, registry: Registry) -> Graph:
    """The workflow embedded in the PNG at ``path``, seeds fixed."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise WorkflowFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        return load_png(data, registry)[0]
    except WorkflowFileError as exc:
        raise WorkflowFileError(f"{path}: {exc}") from exc
