"""Reading weight files safely and lazily.

``.safetensors`` files are memory-mapped: keys, shapes and metadata come from
the header and a tensor is read only when asked for, so detection costs
nothing and each weight is read once, straight into its module.  Pickle-based
files (``.ckpt/.pt/.pth/.bin``) go through ``torch.load(weights_only=True)``,
which refuses pickled code instead of running it.
"""
from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..errors import LoomError

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pt2"}


class WeightsFileError(LoomError):
    pass


class StateDict(Mapping):
    """A read-only mapping key -> tensor over a weights file, loading on access.

    ``prefix`` views (``sd.view("first_stage_model.")``) share the open file.
    """

    def __init__(self, source, keys: list[str], metadata: dict | None = None, path: Path | None = None):
        self._source = source  # object with get(key) -> Tensor and shape(key) -> tuple
        self._keys = keys
        self.metadata = metadata or {}
        self.path = path

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._key_set:
            raise KeyError(key)
        return self._source.get(key)

    @property
    def _key_set(self) -> set[str]:
        if not hasattr(self, "_keys_cached"):
            self._keys_cached = set(self._keys)
        return self._keys_cached

    def __contains__(self, key) -> bool:
        return key in self._key_set

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._source.shape(key))

    def view(self, prefix: str, replace: str = "") -> "StateDict":
        """The keys under ``prefix``, renamed to start with ``replace`` instead."""
        inner = [k for k in self._keys if k.startswith(prefix)]
        renamed = [replace + k[len(prefix):] for k in inner]
        return StateDict(_Renamed(self._source, dict(zip(renamed, inner))), renamed, self.metadata, self.path)

    def count(self, prefix: str) -> int:
        return sum(1 for k in self._keys if k.startswith(prefix))


class _Renamed:
    def __init__(self, source, mapping: dict[str, str]):
        self.source, self.mapping = source, mapping

    def get(self, key):
        return self.source.get(self.mapping[key])

    def shape(self, key):
        return self.source.shape(self.mapping[key])


class _Safetensors:
    def __init__(self, handle):
        self.handle = handle

    def get(self, key):
        return self.handle.get_tensor(key)

    def shape(self, key):
        return self.handle.get_slice(key).get_shape()


class _InMemory:
    def __init__(self, tensors: dict):
        self.tensors = tensors

    def get(self, key):
        return self.tensors[key]

    def shape(self, key):
        return self.tensors[key].shape


def load_state_dict(path) -> StateDict:
    """Open a weights file; a clear :class:`WeightsFileError` for anything unreadable."""
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"{path} does not exist")
    if path.suffix.lower() in (".safetensors", ".sft"):
        return _open_safetensors(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return _open_pickle(path)
    # Unknown suffix: sniff the content.
    try:
        return _open_safetensors(path)
    except WeightsFileError:
        return _open_pickle(path)


def _open_safetensors(path: Path) -> StateDict:
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
        keys = list(handle.keys())
        metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightsFileError(f"{path.name} is not a readable safetensors file (corrupt or truncated?): {exc}") from exc
    return StateDict(_Safetensors(handle), keys, metadata, path)


def _open_pickle(path: Path) -> StateDict:
    try:
        mmap = zipfile.is_zipfile(path)
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise WeightsFileError(
            f"{path.name} contains pickled code that is not plain weights, so Loom refuses to load it "
            f"(loading it could run arbitrary code). Convert it to .safetensors with a tool you trust. Detail: "
            f"{str(exc).splitlines()[0]}") from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise WeightsFileError(f"{path.name} is not a readable PyTorch weights file (corrupt or truncated?): "
                               f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    data = _unwrap(data)
    if not isinstance(data, dict):
        raise WeightsFileError(f"{path.name} holds a {type(data).__name__}, not a dictionary of weights")
    tensors = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsFileError(f"{path.name} holds no tensors")
    return StateDict(_InMemory(tensors), list(tensors), {}, path)


def _unwrap(data):
    """The weights inside common containers: Lightning's ``state_dict``, BasicSR's ``params_ema`` /
    ``params`` (ESRGAN releases), or any dict holding a single dict."""
    for _ in range(3):
        if not isinstance(data, dict):
            return data
        for key in ("state_dict", "params_ema", "params"):
            if isinstance(data.get(key), dict):
                data = data[key]
                break
        else:
            if len(data) == 1 and isinstance(next(iter(data.values())), dict):
                data = next(iter(data.values()))
            else:
                return data
    return data


def from_tensors(tensors: dict[str, torch.Tensor]) -> StateDict:
    """Wrap an in-memory state dict (tests, conversions)."""
    return StateDict(_InMemory(dict(tensors)), list(tensors))


def load_into(module: torch.nn.Module, state_dict: Mapping, dtype: torch.dtype | None = None,
              device: torch.device | str = "cpu", strict: bool = True) -> None:
    """Fill a module built on the meta device from ``state_dict``, one tensor at a time.

    Each weight is read from the file (memory-mapped), cast, and assigned to
    the module: there is never a second full copy of the model in memory.
    Missing or unexpected keys are a clear error when ``strict``.
    """
    expected = module.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if strict and (missing or unexpected):
        raise WeightsFileError(_key_mismatch(missing, unexpected))
    for key, current in expected.items():
        if key not in state_dict:
            continue
        tensor = state_dict[key]
        if tuple(tensor.shape) != tuple(current.shape):
            raise WeightsFileError(f"weight {key} has shape {tuple(tensor.shape)}, expected {tuple(current.shape)}")
        target_dtype = dtype if (dtype is not None and tensor.is_floating_point()) else tensor.dtype
        value = tensor.to(device=device, dtype=target_dtype)
        _assign(module, key, value, isinstance(current, torch.nn.Parameter))


def _assign(module: torch.nn.Module, key: str, value: torch.Tensor, is_param: bool) -> None:
    *path, name = key.split(".")
    owner = module
    for part in path:
        owner = getattr(owner, part)
    if is_param:
        owner._parameters[name] = torch.nn.Parameter(value, requires_grad=False)
    else:
        owner._buffers[name] = value


def _key_mismatch(missing: list[str], unexpected: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} weights missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected weights (e.g. {', '.join(unexpected[:3])})")
    return "the file does not match the model: " + "; ".join(parts)
