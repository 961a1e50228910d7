"""Workflow files: Loom's native JSON, ComfyUI's API and UI JSON, and PNGs carrying any of them.

:func:`load_workflow` recognises the format by content, never by extension;
:func:`save_workflow` writes any of the JSON formats atomically.  Every
failure is a :class:`~engine.errors.WorkflowFileError` whose message names the
file and the problem.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import WorkflowFileError
from ..graph import Graph
from ..registry import Registry
from .comfy_api import from_api, is_api, to_api
from .comfy_ui import from_ui, is_ui, to_ui
from .native import FORMAT, dumps, dumps_native, from_native, parse_json, save_native, write_atomic
from .png import PNG_SIGNATURE, load_png, png_metadata, read_png_workflow

__all__ = ["LoadedWorkflow", "load_workflow", "save_workflow", "detect_format", "save_native",
           "to_api", "to_ui", "png_metadata", "read_png_workflow"]

LOADERS = {"native": from_native, "comfy_ui": from_ui, "comfy_api": from_api}


@dataclass
class LoadedWorkflow:
    graph: Graph
    format: str  # native | comfy_api | comfy_ui | png
    warnings: list[str] = field(default_factory=list)


def detect_format(doc: Any) -> str:
    """native, comfy_ui or comfy_api for a parsed JSON document."""
    if not isinstance(doc, dict):
        raise WorkflowFileError(f"not a workflow: the JSON is {type(doc).__name__}, not an object")
    if doc.get("format") == FORMAT:
        return "native"
    if is_ui(doc):
        return "comfy_ui"
    if is_api(doc):
        return "comfy_api"
    if "format" in doc:
        raise WorkflowFileError(f"not a Loom workflow (format is {doc['format']!r})")
    raise WorkflowFileError("not a workflow: expected Loom's format, a ComfyUI workflow (\"nodes\" and "
                            "\"links\") or a ComfyUI API prompt (a \"class_type\" per node)")


def _read(source: str | os.PathLike | bytes) -> tuple[str, bytes]:
    """(name for messages, content) of a path, JSON text or raw bytes."""
    if isinstance(source, (bytes, bytearray)):
        return "<data>", bytes(source)
    if isinstance(source, str) and (not source.strip() or source.lstrip()[:1] in "{[" or "\n" in source):
        return "<text>", source.encode("utf-8")
    if not isinstance(source, (str, os.PathLike)):
        raise WorkflowFileError(f"cannot load a workflow from {type(source).__name__}")
    path = Path(source)
    if not path.is_file():
        raise WorkflowFileError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    try:
        return str(path), path.read_bytes()
    except OSError as exc:
        raise WorkflowFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _load(data: bytes, registry: Registry) -> LoadedWorkflow:
    if data.startswith(PNG_SIGNATURE):
        graph, warnings = load_png(data, registry)
        return LoadedWorkflow(graph, "png", warnings)
    doc = parse_json(data)
    fmt = detect_format(doc)
    graph, warnings = LOADERS[fmt](doc, registry)
    return LoadedWorkflow(graph, fmt, warnings)


def load_workflow(source: str | os.PathLike | bytes, registry: Registry) -> LoadedWorkflow:
    """Load a workflow from a path, JSON text or bytes, whatever its format."""
    name, data = _read(source)
    try:
        return _load(data, registry)
    except WorkflowFileError as exc:
        raise WorkflowFileError(f"{name}: {exc}") from None
    except RecursionError:
        raise WorkflowFileError(f"{name}: the workflow is nested too deeply") from None


def save_workflow(graph: Graph, path: str | os.PathLike, registry: Registry, format: str = "native") -> None:
    """Write ``graph`` to ``path`` as native, comfy_api or comfy_ui JSON, atomically."""
    if format == "native":
        text = dumps_native(graph)
    elif format == "comfy_api":
        text = dumps(to_api(graph, registry))
    elif format == "comfy_ui":
        text = dumps(to_ui(graph, registry))
    else:
        raise WorkflowFileError(f"unknown workflow format {format!r} (native, comfy_api or comfy_ui)")
    write_atomic(path, text)
