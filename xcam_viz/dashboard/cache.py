"""A thread-safe least-recently-used cache bounded by the bytes of its values."""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import torch


def nbytes(value: Any) -> int:
    """Approximate memory of a value: its tensors and arrays, also inside dicts, lists and objects."""
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(getattr(value, "nbytes", None), int):      # numpy and xarray
        return value.nbytes
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v) for v in value)
    if isinstance(value, torch.nn.Module):
        return 0                                    # models are shared, not owned by the cache
    if hasattr(value, "__dict__"):
        return sum(nbytes(v) for v in vars(value).values())
    return 64


class LRUCache:
    """Maps keys to values, evicting the least recently used once the values exceed `max_bytes`.

    `get_or_compute` computes a missing value outside the lock, so slow computations of different
    keys run concurrently; two callers racing for one key may both compute it (the last one wins).
    """

    def __init__(self, max_bytes: int = 256 * 2**20):
        self.max_bytes = max_bytes
        self._data: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key: Hashable, default=None):
        with self._lock:
            if key not in self._data:
                self.misses += 1
                return default
            self.hits += 1
            self._data.move_to_end(key)
            return self._data[key][0]

    def put(self, key: Hashable, value: Any) -> None:
        size = nbytes(value)
        with self._lock:
            if key in self._data:
                self._bytes -= self._data.pop(key)[1]
            self._data[key] = (value, size)
            self._bytes += size
            while self._bytes > self.max_bytes and len(self._data) > 1:
                self._bytes -= self._data.popitem(last=False)[1][1]

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]):
        missing = object()
        value = self.get(key, missing)
        if value is missing:
            value = compute()
            self.put(key, value)
        return value

    def clear(self, where: Callable[[Hashable], bool] | None = None) -> None:
        """Drop every entry, or those whose key satisfies `where`."""
        with self._lock:
            for key in [k for k in self._data if where is None or where(k)]:
                self._bytes -= self._data.pop(key)[1]
