"""A byte-bounded plain LRU cache, kept only as the baseline S3-FIFO is measured against.

Same API as ``edge.s3fifo.S3FifoCache`` (get / peek / put / delete, stats,
eviction callback) so the benchmark and tests can swap one for the other. Every
hit moves the entry to the most-recent end, and a put evicts from the least
recent end until the new entry fits. That is why a one-time scan of cold keys
flushes the hot set: each scanned key becomes "most recent" once.

The POP does not serve from this class. Like S3FifoCache it is not
thread-safe (one event loop owns it), performs no I/O and reads no clock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

from edge.s3fifo import CacheStats, EvictionCallback, Rejection

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """A byte-bounded LRU cache.

    Args:
        capacity_bytes: the most bytes (sum of ``size`` of live entries) it holds.
        max_entry_bytes: larger entries are rejected (default: capacity_bytes).
        on_evict: called as ``on_evict(key, value)`` after an entry is removed
            to make room; must not call back into the cache.

    Raises:
        ValueError: on a non-positive capacity or a negative max_entry_bytes.
    """

    def __init__(
        self,
        capacity_bytes: int,
        *,
        max_entry_bytes: int | None = None,
        on_evict: EvictionCallback[K, V] | None = None,
    ) -> None:
        if capacity_bytes < 1:
            raise ValueError(f"capacity_bytes must be positive, got {capacity_bytes}")
        if max_entry_bytes is not None and max_entry_bytes < 0:
            raise ValueError(f"max_entry_bytes must not be negative, got {max_entry_bytes}")
        self._capacity = capacity_bytes
        self._max_entry_bytes = capacity_bytes if max_entry_bytes is None else min(max_entry_bytes, capacity_bytes)
        self._on_evict = on_evict
        # Least recently used first; each value is (value, size).
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes_used = 0
        self.stats = CacheStats()
        self.last_rejection: Rejection | None = None

    def get(self, key: K) -> V | None:
        """The cached value, or None; a hit makes the entry the most recent."""
        item = self._entries.get(key)
        if item is None:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        self._entries.move_to_end(key)
        return item[0]

    def peek(self, key: K) -> V | None:
        """The cached value, or None, without touching recency or stats."""
        item = self._entries.get(key)
        return None if item is None else item[0]

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    @property
    def bytes_used(self) -> int:
        return self._bytes_used

    def put(self, key: K, value: V, size: int) -> bool:
        """Store value under key as the most recent entry, evicting the least recent to make room.

        Returns:
            True if stored; False if larger than max_entry_bytes (the old value,
            if any, is dropped so it never outlives a newer one).

        Raises:
            ValueError: if size is negative.
        """
        if size < 0:
            raise ValueError(f"size must not be negative, got {size}")
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes_used -= old[1]
        if size > self._max_entry_bytes:
            self.stats.rejected += 1
            self.last_rejection = Rejection.LARGER_THAN_MAX_ENTRY
            return False
        while self._bytes_used + size > self._capacity:
            victim_key, (victim_value, victim_size) = self._entries.popitem(last=False)
            self._bytes_used -= victim_size
            self.stats.evictions += 1
            if self._on_evict is not None:
                self._on_evict(victim_key, victim_value)
        self._entries[key] = (value, size)
        self._bytes_used += size
        return True

    def delete(self, key: K) -> bool:
        """Remove key. True if it was cached."""
        old = self._entries.pop(key, None)
        if old is None:
            return False
        self._bytes_used -= old[1]
        return True
