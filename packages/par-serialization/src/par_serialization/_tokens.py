"""The worker-side cache of callables unpickled by value (shared by ``_picklers``,
``_blobs`` and ``_results``; its own module so that none of them imports another lazily)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

__all__ = ["_TOKEN_CACHE", "_TokenCache"]


class _TokenCache:
    """Worker-side cache of callables unpickled by value, keyed by the token the parent
    gave them (unique per callable and per call), so a large closure is unpickled once
    per worker per call. Bounded: least recently used entries go first."""

    def __init__(self, max_entries: int = 256, max_bytes: int = 256 * 2**20) -> None:
        self._data: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._bytes = 0
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.loads = 0
        self.hits = 0

    def get_or_load(
        self, token: str, rebuild: Callable[..., Any], args: tuple[Any, ...], size: int | None = None
    ) -> Any:
        with self._lock:
            entry = self._data.get(token)
            if entry is not None:
                self._data.move_to_end(token)
                self.hits += 1
                return entry[0]
        obj = rebuild(*args)
        if size is None:
            size = sum(len(a) for a in args if isinstance(a, (bytes, bytearray)))
        with self._lock:
            self.loads += 1
            if token not in self._data:
                self._data[token] = (obj, size)
                self._bytes += size
                while len(self._data) > 1 and (
                    len(self._data) > self.max_entries or self._bytes > self.max_bytes
                ):
                    _, (_, old_size) = self._data.popitem(last=False)
                    self._bytes -= old_size
        return obj

    def info(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._data), "bytes": self._bytes, "loads": self.loads, "hits": self.hits}

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0


_TOKEN_CACHE = _TokenCache()
