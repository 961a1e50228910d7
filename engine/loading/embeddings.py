"""Textual-inversion embeddings from ``models/embeddings``, looked up as ComfyUI does.

``embedding:name`` finds ``name`` itself or ``name`` + ``.safetensors``/``.pt``/``.bin`` in
every embeddings folder and its subfolders. The vectors of a file, for an encoder whose
vectors an SDXL file stores under ``key`` (``clip_l``, ``clip_g``; ``clip_h`` for SD2):

===========================  ==========================================================
A1111 ``.pt``                ``string_to_param`` -> its first tensor [n, width]
list of dicts                every tensor of the encoder's width, concatenated
SDXL ``.safetensors``        ``clip_l`` [n, 768], ``clip_g`` [n, 1280]: the one for ``key``
``.safetensors``             ``emb_params`` [n, width]
diffusers ``.bin``           ``{token: [width]}``
===========================  ==========================================================

In the last two cases (no ``key`` entry) the first tensor of the encoder's width is used,
else the first tensor: an embedding of another width is then ignored by the encoder.
Pickle files go through ``torch.load(weights_only=True)``, which refuses pickled code.
"""
from __future__ import annotations

import functools
import logging
import pickle
from pathlib import Path

import torch

from ..paths import Paths, default_paths
from .files import WeightsFileError, load_state_dict

log = logging.getLogger(__name__)

EXTENSIONS = (".safetensors", ".pt", ".bin")


def _read_pickle(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsFileError(f"{path.name} contains pickled code that is not plain weights; Loom refuses to "
                               f"load it: {str(exc).splitlines()[0]}") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise WeightsFileError(f"{path.name} is not a readable PyTorch file: {exc}") from exc


@functools.lru_cache(maxsize=64)
def read_embedding_file(path: str, size: int, mtime_ns: int):
    """The file's content: a dict (possibly nested) or a list of dicts of tensors."""
    path = Path(path)
    if path.suffix.lower() in (".safetensors", ".sft"):
        sd = load_state_dict(path)
        return {key: sd[key] for key in sd}
    return _read_pickle(path)


def _of_width(tensors, width: int | None):
    tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
    matching = [t for t in tensors if width is None or t.shape[-1] == width]
    return (matching or tensors or [None])[0]


def embedding_vectors(data, key: str = "clip_l", width: int | None = None) -> torch.Tensor | None:
    """The vectors [n, width] (or [width]) a loaded embedding file holds for one encoder."""
    if isinstance(data, list):
        rows = [t.reshape(-1, t.shape[-1]) for entry in data if isinstance(entry, dict)
                for t in entry.values() if isinstance(t, torch.Tensor) and (width is None or t.shape[-1] == width)]
        return torch.cat(rows) if rows else None
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("string_to_param"), dict):
        return _of_width(data["string_to_param"].values(), None)
    if isinstance(data.get(key), torch.Tensor):
        return data[key]
    return _of_width(data.values(), width)


class EmbeddingLibrary:
    """``library(name, key, width)`` -> the vectors of embedding ``name`` for one encoder, or None.

    Folders come from ``paths`` (the process default when None) at each lookup,
    so a file added while the app runs is found.
    """

    def __init__(self, paths: Paths | None = None):
        self.paths = paths

    def folders(self) -> list[Path]:
        roots = (self.paths or default_paths()).model_dirs.get("embeddings", [])
        return [folder for root in roots if root.is_dir()
                for folder in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]]

    def find(self, name: str) -> Path | None:
        for folder in self.folders():
            base = (folder / name).resolve()
            if not base.is_relative_to(folder.resolve()):
                continue
            for candidate in (base, *(base.with_name(base.name + ext) for ext in EXTENSIONS)):
                if candidate.is_file():
                    return candidate
        return None

    def __call__(self, name: str, key: str = "clip_l", width: int | None = None) -> torch.Tensor | None:
        path = self.find(name)
        if path is None:
            return None
        stat = path.stat()
        try:
            data = read_embedding_file(str(path), stat.st_size, stat.st_mtime_ns)
        except WeightsFileError as exc:
            log.warning("embedding %s could not be read, ignoring it: %s", name, exc)
            return None
        return embedding_vectors(data, key, width)
