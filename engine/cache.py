"""Content-addressed output cache shared by runs and workflows, bounded in bytes (LRU).

Keys come from :func:`engine.executor.cache_key`: node type, version, literal
inputs and the keys of upstream outputs, never the node id, so two workflows
that share a sub-graph share its results.
"""
from __future__ import annotations

import dataclasses
import sys
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

DEFAULT_CACHE_BYTES = 4 * 1024**3


def nbytes(obj: Any, _seen: set | None = None) -> int:
    """Approximate memory held by a node output (tensors dominate).

    Objects may report their own size with a ``cache_nbytes()`` method; a model
    handle reports 0 because the model memory manager accounts for weights.
    """
    seen = _seen if _seen is not None else set()
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if hasattr(obj, "cache_nbytes"):
        return int(obj.cache_nbytes())
    if isinstance(obj, dict):
        return sum(nbytes(v, seen) for v in obj.values()) + 64
    if isinstance(obj, (list, tuple, set, frozenset)):
        return sum(nbytes(v, seen) for v in obj) + 64
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(nbytes(getattr(obj, f.name), seen) for f in dataclasses.fields(obj)) + 64
    return sys.getsizeof(obj)


@dataclasses.dataclass
class CacheEntry:
    values: tuple
    ui: dict
    nbytes: int


class OutputCache:
    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> CacheEntry | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, key: str, values: tuple, ui: dict | None = None) -> None:
        size = nbytes(values)
        if key in self._entries:
            self.bytes -= self._entries.pop(key).nbytes
        if size > self.max_bytes:
            return  # larger than the whole budget: never kept
        self._entries[key] = CacheEntry(values, ui or {}, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.nbytes

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
