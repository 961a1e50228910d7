"""Workflow files for the editor: open and save, clipboard text, recent files, autosave.

Reading and writing go through :mod:`engine.workflow` (native JSON, ComfyUI
API and UI JSON, PNGs with an embedded workflow); this module adds what only
a desktop editor needs.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from PySide6.QtCore import QSettings

from engine.errors import WorkflowFileError
from engine.graph import Graph
from engine.registry import Registry

SAVE_FORMATS = {
    "native": "Loom workflow (*.json)",
    "comfy_ui": "ComfyUI workflow (*.json)",
    "comfy_api": "ComfyUI API prompt (*.json)",
}
OPEN_FILTER = "Workflows and images (*.json *.png);;All files (*)"
WORKFLOW_SUFFIXES = {".json", ".png"}
MAX_RECENT = 10


def open_workflow(path, registry: Registry):
    """A ``LoadedWorkflow(graph, format, warnings)``; raises ``WorkflowFileError``."""
    from engine.workflow import load_workflow

    return load_workflow(Path(path), registry)


def save_workflow(graph: Graph, path, registry: Registry, fmt: str = "native") -> None:
    from engine.workflow import save_workflow as save

    save(graph, Path(path), registry, format=fmt)


def graph_to_text(graph: Graph) -> str:
    """A graph as native workflow JSON (what the clipboard carries)."""
    from engine.workflow import dumps_native

    return dumps_native(graph)


def graph_from_text(text: str, registry: Registry) -> Graph:
    """A graph from clipboard text in any format Loom reads (native, ComfyUI UI or API JSON)."""
    from engine.workflow import load_workflow

    return load_workflow(text.strip(), registry).graph


def config_settings(config_dir: Path) -> QSettings:
    config_dir.mkdir(parents=True, exist_ok=True)
    return QSettings(str(config_dir / "loom.ini"), QSettings.IniFormat)


class RecentFiles:
    def __init__(self, settings: QSettings):
        self.settings = settings

    def paths(self) -> list[str]:
        value = self.settings.value("recent_files", [])
        paths = [value] if isinstance(value, str) else list(value or [])
        return [p for p in paths if Path(p).exists()]

    def add(self, path) -> None:
        path = str(Path(path).resolve())
        paths = [path] + [p for p in self.paths() if p != path]
        self.settings.setValue("recent_files", paths[:MAX_RECENT])


class Autosave:
    """The open workflow written aside every few seconds; a clean exit removes it.

    If the app dies, the next start finds the file and offers to recover it.
    """

    def __init__(self, config_dir: Path):
        self.path = Path(config_dir) / "autosave.json"
        self.meta = Path(config_dir) / "autosave.meta.json"

    def write(self, graph: Graph, registry: Registry, source: str | None) -> None:
        save_workflow(graph, self.path, registry, "native")
        self.meta.write_text(json.dumps({"source": source, "time": time.time()}), encoding="utf-8")

    def pending(self) -> dict | None:
        """``{"source", "time"}`` of a recoverable autosave, or None."""
        if not self.path.is_file():
            return None
        try:
            return json.loads(self.meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"source": None, "time": self.path.stat().st_mtime}

    def recover(self, registry: Registry) -> Graph:
        try:
            return open_workflow(self.path, registry).graph
        except WorkflowFileError:
            self.discard()
            raise

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)
