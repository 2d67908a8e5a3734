"""A thread-safe LRU cache bounded in bytes, keyed by any hashable (usually a RegionRequest)."""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

V = TypeVar("V")

_MIN_DEFAULT = 256 * 2**20
_MAX_DEFAULT = 4 * 2**30


def total_memory_bytes() -> int | None:
    """Physical memory of this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def default_cache_bytes() -> int:
    """A sensible share of RAM for decoded tiles: 1/8 of it, kept between 256 MiB and 4 GiB.

    ``COCOPATH_CACHE_MB`` overrides it.
    """
    env = os.environ.get("COCOPATH_CACHE_MB")
    if env:
        try:
            return max(1, int(float(env) * 2**20))
        except ValueError:
            log.warning("COCOPATH_CACHE_MB=%r is not a number; using the default", env)
    total = total_memory_bytes()
    if total is None:
        return 1 * 2**30
    return int(min(_MAX_DEFAULT, max(_MIN_DEFAULT, total // 8)))


class ByteBoundedCache(Generic[V]):
    """Least-recently-used cache whose values' declared sizes never sum above ``max_bytes``.

    Every method takes one lock, so it can be shared by a pool of loader threads and the GUI thread.
    A value larger than the whole budget is not stored.
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        self._max = int(max_bytes if max_bytes is not None else default_cache_bytes())
        if self._max <= 0:
            raise ValueError("cache budget must be positive")
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def max_bytes(self) -> int:
        return self._max

    @property
    def current_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def get(self, key: Hashable) -> V | None:
        """The value for ``key`` (now the most recently used), or None."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def peek(self, key: Hashable) -> V | None:
        """The value for ``key`` without touching its recency or the hit counters."""
        with self._lock:
            item = self._items.get(key)
            return None if item is None else item[0]

    def put(self, key: Hashable, value: V, nbytes: int) -> bool:
        """Store ``value`` weighing ``nbytes``; evict the least recently used to fit. False if too big."""
        if nbytes < 0:
            raise ValueError("nbytes must be ≥ 0")
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if nbytes > self._max:
                return False
            while self._items and self._bytes + nbytes > self._max:
                _, (_, size) = self._items.popitem(last=False)
                self._bytes -= size
            self._items[key] = (value, nbytes)
            self._bytes += nbytes
            return True

    def resize(self, max_bytes: int) -> None:
        """Change the budget, evicting the least recently used values if it shrank."""
        if max_bytes <= 0:
            raise ValueError("cache budget must be positive")
        with self._lock:
            self._max = int(max_bytes)
            while self._items and self._bytes > self._max:
                _, (_, size) = self._items.popitem(last=False)
                self._bytes -= size

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
