"""Where Loom finds models, inputs and custom nodes, and where it writes outputs.

The layout follows ComfyUI's ``folder_paths``: ``models/<kind>/`` beside
``main.py``, plus the roots listed in an ``extra_model_paths.yaml`` written in
ComfyUI's format (so an existing ComfyUI or A1111 install's folders are used
as they are).  The demo models Loom ships (``assets/models/<kind>/``) come
right after ``models/<kind>/``, so a user's own file of the same name wins.
Model choices are file paths relative to their folder root, exactly the
strings ComfyUI workflows store.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import LoomError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODELS = ROOT / "assets" / "models"  # the small demo models Loom ships, listed after the user's
MODEL_EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
MODEL_KINDS = ("checkpoints", "vae", "loras", "controlnet", "upscale_models", "embeddings",
               "text_encoders", "diffusion_models", "clip_vision", "vae_approx", "configs")
# Legacy folder names ComfyUI still accepts, mapped to the current kind.
KIND_ALIASES = {"clip": "text_encoders", "unet": "diffusion_models", "t2i_adapter": "controlnet"}


@dataclass
class Paths:
    base: Path = ROOT
    model_dirs: dict[str, list[Path]] = field(default_factory=dict)
    input_dir: Path | None = None
    output_dir: Path | None = None
    temp_dir: Path | None = None
    custom_nodes_dirs: list[Path] = field(default_factory=list)
    shipped_models: bool = True  # also offer assets/models/<kind> (the demo models)

    def __post_init__(self):
        self.base = Path(self.base)
        for kind in MODEL_KINDS:
            dirs = self.model_dirs.setdefault(kind, [])
            dirs.insert(0, self.base / "models" / kind)
            if self.shipped_models:
                dirs.insert(1, SHIPPED_MODELS / kind)
        self.input_dir = Path(self.input_dir or self.base / "input")
        self.output_dir = Path(self.output_dir or self.base / "output")
        self.temp_dir = Path(self.temp_dir or self.base / "temp")
        if not self.custom_nodes_dirs:
            self.custom_nodes_dirs = [self.base / "custom_nodes"]

    # --- model files ----------------------------------------------------
    def add_model_dir(self, kind: str, directory: Path) -> None:
        kind = KIND_ALIASES.get(kind, kind)
        dirs = self.model_dirs.setdefault(kind, [])
        if Path(directory) not in dirs:
            dirs.append(Path(directory))

    def list_models(self, kind: str) -> list[str]:
        """Model files of ``kind``, relative to their folder root, sorted, without duplicates."""
        names: set[str] = set()
        for root in self.model_dirs.get(KIND_ALIASES.get(kind, kind), []):
            if not root.is_dir():
                continue
            for dirpath, _dirs, files in os.walk(root, followlinks=True):
                for f in files:
                    if Path(f).suffix.lower() in MODEL_EXTENSIONS:
                        names.add(Path(dirpath, f).relative_to(root).as_posix())
        return sorted(names, key=str.lower)

    def find_model(self, kind: str, name: str) -> Path:
        """The file for a combo value; a clear error listing the folders searched."""
        roots = self.model_dirs.get(KIND_ALIASES.get(kind, kind), [])
        for root in roots:
            # Refuse "../" escapes on the written path, but follow symlinks (users link big models in).
            candidate = Path(os.path.normpath(root / name))
            if _inside(candidate, Path(os.path.normpath(root))) and candidate.is_file():
                return candidate
        searched = ", ".join(str(r) for r in roots) or "(no folders configured)"
        available = self.list_models(kind)
        hint = f" Available: {', '.join(available[:10])}" if available else " The folders hold no model files."
        raise LoomError(f"{kind} file {name!r} not found in {searched}.{hint}")

    # --- images ---------------------------------------------------------
    def list_inputs(self) -> list[str]:
        if not self.input_dir.is_dir():
            return []
        return sorted((p.relative_to(self.input_dir).as_posix() for p in self.input_dir.rglob("*")
                       if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()), key=str.lower)

    def find_input(self, name: str) -> Path:
        path = Path(name)
        if not path.is_absolute():
            path = self.input_dir / name
        if not path.is_file():
            raise LoomError(f"input image {name!r} not found in {self.input_dir}")
        return path

    # --- extra_model_paths.yaml --------------------------------------------
    def load_extra_model_paths(self, yaml_path: Path) -> None:
        """Add the roots of a ComfyUI-format ``extra_model_paths.yaml``.

        Each top-level section has an optional ``base_path`` (relative to the
        yaml file) and kind -> one path or several on separate lines.
        """
        import yaml

        yaml_path = Path(yaml_path)
        try:
            config = yaml.safe_load(yaml_path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise LoomError(f"cannot read {yaml_path}: {exc}") from exc
        if not isinstance(config, dict):
            raise LoomError(f"{yaml_path}: expected sections of folder names, got {type(config).__name__}")
        for section in config.values():
            if not isinstance(section, dict):
                continue
            base = Path(os.path.expanduser(str(section.get("base_path", "")))) if section.get("base_path") else None
            if base is not None and not base.is_absolute():
                base = yaml_path.parent / base
            for kind, value in section.items():
                if kind in ("base_path", "is_default") or value is None:
                    continue
                for line in str(value).splitlines():
                    line = line.strip()
                    if not line:
                        continue
                    directory = Path(os.path.expanduser(line))
                    if not directory.is_absolute():
                        directory = (base or yaml_path.parent) / directory
                    self.add_model_dir(kind, directory)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


_default: Paths | None = None


def default_paths() -> Paths:
    """The process-wide paths: ``models/`` beside main.py plus ``extra_model_paths.yaml`` if present."""
    global _default
    if _default is None:
        _default = Paths()
        extra = ROOT / "extra_model_paths.yaml"
        if extra.is_file():
            _default.load_extra_model_paths(extra)
    return _default


def set_default_paths(paths: Paths) -> None:
    global _default
    _default = paths
