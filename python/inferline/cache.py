"""Opt-in result cache: an LRU of answers keyed by model, version and the input's bytes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["ResultCache", "input_key"]


def _nbytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, Mapping):
        return sum(_nbytes(v) for v in value.values())
    return 64


def _copy(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    return value


def input_key(x: Any) -> bytes | tuple[tuple[str, bytes], ...]:
    """A hashable key for one canonical (converted, contiguous) item."""
    if isinstance(x, Mapping):
        return tuple((k, np.ascontiguousarray(v).tobytes()) for k, v in sorted(x.items()))
    return np.ascontiguousarray(x).tobytes()


class ResultCache:
    """A least-recently-used map from input bytes to a copy of the answer.

    One cache belongs to one model version, so a key never matches an answer of another
    version: a swap starts the new version with its own, empty cache and drops the old one.
    Bounded by ``max_entries`` and by ``max_bytes`` (inputs and outputs counted). Answers are
    copied in and out, so a caller that mutates its answer cannot poison the cache.
    Thread-safe (a lock guards the map; it is only touched on the event loop in practice).
    """

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("cache bounds must be positive")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._bytes = 0
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any | None:
        """The cached answer (a fresh copy) or None; counts a hit or a miss."""
        with self._lock:
            found = self._items.get(key)
            if found is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return _copy(found[0])

    def put(self, key: Any, value: Any) -> None:
        """Stores a copy of ``value``; evicts the least recently used entries over a bound."""
        size = _nbytes(value) + (
            len(key) if isinstance(key, bytes) else sum(len(b) for _, b in key)
        )
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (_copy(value), size)
            self._bytes += size
            while len(self._items) > self.max_entries or self._bytes > self.max_bytes:
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= evicted
                self.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def stats(self) -> dict[str, int]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "entries": len(self._items),
            "bytes": self._bytes,
            "evictions": self.evictions,
        }
