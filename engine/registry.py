"""The node-type registry: built-in node modules and ``custom_nodes/``.

Built-in types come from the ``nodes`` package; custom types from every
``.py`` file or package in a custom-nodes folder.  A module contributes every
:class:`~engine.schema.Node` subclass it defines with a ``TYPE``, or, for
modules written for ComfyUI, the classes in its ``NODE_CLASS_MAPPINGS``
(adapted by :mod:`engine.comfy_v1`).  A module that fails to import is
recorded in ``load_errors`` and skipped: the app still starts.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from .schema import Node


@dataclass
class LoadError:
    module: str
    message: str
    traceback: str = ""


class Registry:
    def __init__(self):
        self.types: dict[str, type[Node]] = {}
        self.sources: dict[str, str] = {}
        self.load_errors: list[LoadError] = []

    def register(self, cls: type[Node], source: str = "builtin") -> None:
        if not cls.TYPE:
            raise ValueError(f"{cls.__name__} has no TYPE")
        if cls.TYPE in self.types and self.types[cls.TYPE] is not cls:
            if self.sources[cls.TYPE] == "builtin":
                self.load_errors.append(LoadError(source, f"node type {cls.TYPE!r} is built in; the custom one is ignored"))
                return
        self.types[cls.TYPE] = cls
        self.sources[cls.TYPE] = source

    def get(self, type_name: str) -> type[Node] | None:
        return self.types.get(type_name)

    def __contains__(self, type_name: str) -> bool:
        return type_name in self.types

    def __iter__(self):
        return iter(sorted(self.types))

    def register_module(self, module: ModuleType, source: str) -> int:
        found = 0
        for _name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, Node) and obj is not Node
                    and obj.__module__ == module.__name__ and obj.TYPE):
                self.register(obj, source)
                found += 1
        mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
        if isinstance(mappings, dict):
            from .comfy_v1 import adapt_v1_class

            names = getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", {}) or {}
            for type_name, cls in mappings.items():
                self.register(adapt_v1_class(type_name, cls, names.get(type_name)), source)
                found += 1
        return found

    # --- discovery --------------------------------------------------------
    def load_builtin(self, package: str = "nodes") -> None:
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name.startswith("_"):
                continue
            name = f"{package}.{info.name}"
            try:
                self.register_module(importlib.import_module(name), "builtin")
            except Exception as exc:  # a broken built-in module is a bug, but never stops the app
                self.load_errors.append(LoadError(name, f"{type(exc).__name__}: {exc}", traceback.format_exc()))

    def load_custom_dir(self, directory: Path) -> None:
        directory = Path(directory)
        if not directory.is_dir():
            return
        for path in sorted(directory.iterdir()):
            if path.name.startswith((".", "_")) or path.name.endswith(".disabled"):
                continue
            if path.is_dir() and (path / "__init__.py").is_file():
                entry = path / "__init__.py"
            elif path.suffix == ".py":
                entry = path
            else:
                continue
            self._load_custom_module(path, entry)

    def _load_custom_module(self, path: Path, entry: Path) -> None:
        module_name = f"loom_custom_nodes.{path.stem.replace('-', '_')}"
        source = f"custom_nodes/{path.name}"
        try:
            spec = importlib.util.spec_from_file_location(
                module_name, entry,
                submodule_search_locations=[str(path)] if entry.name == "__init__.py" else None)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
            if self.register_module(module, source) == 0:
                self.load_errors.append(LoadError(source, "defines no node types"))
        except BaseException as exc:  # SystemExit / KeyboardInterrupt from a bad module must not stop the app
            if isinstance(exc, KeyboardInterrupt):
                raise
            sys.modules.pop(module_name, None)
            self.load_errors.append(LoadError(source, f"{type(exc).__name__}: {exc}", traceback.format_exc()))

    def schemas_json(self) -> dict:
        return {name: self.types[name].schema_json() for name in self}


_default: Registry | None = None


def default_registry() -> Registry:
    """Built-in nodes plus the custom-node folders of the default paths (loaded once)."""
    global _default
    if _default is None:
        from .paths import default_paths

        registry = Registry()
        registry.load_builtin()
        for directory in default_paths().custom_nodes_dirs:
            registry.load_custom_dir(directory)
        _default = registry
    return _default
