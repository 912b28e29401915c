"""S3-FIFO: the edge POP's byte-bounded, scan-resistant response store.

S3-FIFO (Yang et al., "FIFO queues are all you need for cache eviction",
SOSP 2023) keeps three FIFO queues:

- **small** (about 10% of the bytes): every new key enters here. Most objects
  in skewed traffic are read once in a short window; they leave from here
  quickly ("quick demotion") and never reach main. That is what makes a
  one-time scan harmless: it churns through small and leaves main alone.
- **main** (about 90%): entries read while they were in small, and keys the
  ghost remembers. Eviction from main reinserts an entry that was read since it
  was last looked at, with its frequency decremented ("lazy promotion").
- **ghost**: keys (no values) recently evicted from small, about one main
  queue's worth of them. A put of a key the ghost remembers goes straight to
  main: that key was demoted too early.

Each entry has a 2-bit frequency counter (0..3) that ``get`` bumps. Nothing is
reordered on a hit, so ``get`` is one dict lookup and an increment; all
reordering happens at eviction time and each entry is moved at most
``MAX_FREQUENCY + 1`` times per residency, so every operation is amortised O(1).

Sizes are bytes given by the caller; after every call the cache holds at most
``capacity_bytes``. An instance is **not thread-safe, by design**: it belongs
to one event loop in one worker process, which is what lets the hit path skip
locking entirely. Nothing here performs I/O or reads a clock.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# The paper's static split (section 4): a small queue of 10% of the cache is
# enough to filter one-hit wonders out of most of 6,594 production traces, and
# larger shares cost hit ratio by shrinking main.
SMALL_QUEUE_FRACTION: Final = 0.10

# 2-bit counters as in the paper: more resolution does not improve eviction
# decisions, and the cap bounds how many times main reinserts one entry (3).
MAX_FREQUENCY: Final = 3

# What remembering one key in the ghost costs in memory (dict slot, key object,
# size int). Ghost entries are charged at least this much, so the ghost, whose
# charged bytes are bounded by main's share, never holds more than
# main_bytes / 128 keys however small the entries are.
GHOST_MIN_CHARGE_BYTES: Final = 128


class Rejection(enum.Enum):
    """Why ``put`` or ``admit_if_room`` returned False (see ``last_rejection``)."""

    # Larger than the configured max_entry_bytes: one huge response must not
    # displace thousands of small ones (the operator's cap per object).
    LARGER_THAN_MAX_ENTRY = "entry is larger than max_entry_bytes"
    # Every new entry enters the small queue; one larger than that queue would
    # flush it entirely, so no other new entry could ever prove it is hot.
    LARGER_THAN_SMALL_QUEUE = "entry is larger than the small queue"
    # admit_if_room only: making room would evict an entry read since it was
    # cached (warming must not push out what users are reading).
    WOULD_EVICT_HOTTER = "making room would evict an entry that has been read"
    # admit_if_room only: warming never overwrites a live entry; put does.
    ALREADY_CACHED = "key is already cached"


@dataclass(slots=True)
class CacheStats:
    """Counters since the cache was created. ``peek`` touches none of them."""

    hits: int = 0  # get found the key
    misses: int = 0  # get did not find the key
    evictions: int = 0  # entries removed to make room (not deletes, not replacements)
    rejected: int = 0  # put / admit_if_room calls that returned False
    ghost_hits: int = 0  # inserts of a key the ghost remembered (went straight to main)

    @property
    def hit_ratio(self) -> float:
        """hits / (hits + misses), 0.0 before the first get."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


EvictionCallback = Callable[[K, V], None]


class _Entry(Generic[V]):
    __slots__ = ("freq", "in_main", "size", "value")

    def __init__(self, value: V, size: int, in_main: bool) -> None:
        self.value = value
        self.size = size
        self.freq = 0
        self.in_main = in_main


class S3FifoCache(Generic[K, V]):
    """A byte-bounded S3-FIFO cache (module docstring: how it works).

    Args:
        capacity_bytes: the most bytes (sum of ``size`` of live entries) it holds.
        max_entry_bytes: larger entries are rejected; defaults to, and is in any
            case capped by, the small queue's share of capacity.
        small_fraction: the small queue's share of capacity (0 < f < 1).
        on_evict: called as ``on_evict(key, value)`` after an entry is removed
            to make room — not on ``delete`` or replacement. It must not call
            back into the cache.

    Raises:
        ValueError: on a non-positive capacity, a fraction outside (0, 1), a
            negative max_entry_bytes, or a capacity too small to give the small
            queue at least one byte.

    Values must not be None: ``get`` returns None for a miss.
    """

    def __init__(
        self,
        capacity_bytes: int,
        *,
        max_entry_bytes: int | None = None,
        small_fraction: float = SMALL_QUEUE_FRACTION,
        on_evict: EvictionCallback[K, V] | None = None,
    ) -> None:
        if capacity_bytes < 1:
            raise ValueError(f"capacity_bytes must be positive, got {capacity_bytes}")
        if not 0.0 < small_fraction < 1.0:
            raise ValueError(f"small_fraction must be between 0 and 1, got {small_fraction}")
        small_target = int(capacity_bytes * small_fraction)
        if small_target < 1:
            raise ValueError(f"capacity_bytes {capacity_bytes} leaves no room for a small queue")
        if max_entry_bytes is not None and max_entry_bytes < 0:
            raise ValueError(f"max_entry_bytes must not be negative, got {max_entry_bytes}")
        self._capacity = capacity_bytes
        self._small_target = small_target
        self._main_target = capacity_bytes - small_target
        self._max_entry_bytes = max_entry_bytes
        self._largest_admissible = small_target if max_entry_bytes is None else min(max_entry_bytes, small_target)
        self._on_evict = on_evict

        self._entries: dict[K, _Entry[V]] = {}
        # Oldest first: popitem(last=False) is the FIFO tail the paper evicts from.
        self._small: OrderedDict[K, _Entry[V]] = OrderedDict()
        self._main: OrderedDict[K, _Entry[V]] = OrderedDict()
        self._ghost: OrderedDict[K, int] = OrderedDict()  # key -> charged bytes
        self._bytes_used = 0
        self._small_bytes = 0
        self._main_bytes = 0
        self._ghost_bytes = 0

        self.stats = CacheStats()
        self.last_rejection: Rejection | None = None

    # ------------------------------------------------------------------ reads

    def get(self, key: K) -> V | None:
        """The cached value, or None. A hit marks the entry as read (freq + 1, capped)."""
        entry = self._entries.get(key)
        if entry is None:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        if entry.freq < MAX_FREQUENCY:
            entry.freq += 1
        return entry.value

    def peek(self, key: K) -> V | None:
        """The cached value, or None, without marking it read or counting a hit.

        For warming and introspection: looking does not make an entry hotter.
        """
        entry = self._entries.get(key)
        return None if entry is None else entry.value

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def snapshot_keys(self) -> list[K]:
        """A snapshot of the cached keys (safe to delete while iterating)."""
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    @property
    def bytes_used(self) -> int:
        """Sum of the sizes of live entries; never above capacity_bytes."""
        return self._bytes_used

    @property
    def max_entry_bytes(self) -> int:
        """The largest size put accepts (the configured cap or the small queue, whichever is less)."""
        return self._largest_admissible

    @property
    def small_bytes(self) -> int:
        return self._small_bytes

    @property
    def main_bytes(self) -> int:
        return self._main_bytes

    @property
    def ghost_len(self) -> int:
        """How many evicted keys the ghost remembers."""
        return len(self._ghost)

    @property
    def ghost_bytes(self) -> int:
        """Charged bytes of the remembered keys; never above ghost_capacity_bytes."""
        return self._ghost_bytes

    @property
    def ghost_capacity_bytes(self) -> int:
        """The ghost remembers about one main queue's worth of evicted objects."""
        return self._main_target

    def remembers(self, key: K) -> bool:
        """True if the ghost remembers key (it was evicted from small recently)."""
        return key in self._ghost

    def rejection_for_size(self, size: int) -> Rejection | None:
        """Why an entry of this many bytes would be rejected, or None if it fits."""
        if self._max_entry_bytes is not None and size > self._max_entry_bytes:
            return Rejection.LARGER_THAN_MAX_ENTRY
        if size > self._small_target:
            return Rejection.LARGER_THAN_SMALL_QUEUE
        return None

    # ----------------------------------------------------------------- writes

    def put(self, key: K, value: V, size: int) -> bool:
        """Store value under key, evicting as S3-FIFO decides to make room.

        A key already cached is replaced: same queue, same frequency, bytes
        adjusted; it stays in place unless it grew past the free room, in which
        case it restarts at its queue's newest end (it is never evicted by its
        own replacement).

        Returns:
            True if stored. False if rejected (reason in ``last_rejection``);
            a rejected replacement also drops the old value, so a stale value
            never outlives a newer one that did not fit.

        Raises:
            ValueError: if size is negative.
        """
        if size < 0:
            raise ValueError(f"size must not be negative, got {size}")
        entry = self._entries.get(key)
        if size > self._largest_admissible:
            if entry is not None:
                self._unlink(key, entry)
            return self._reject(self.rejection_for_size(size) or Rejection.LARGER_THAN_MAX_ENTRY)
        if entry is None:
            self._insert(key, value, size)
        else:
            self._replace(key, entry, value, size)
        return True

    def admit_if_room(self, key: K, value: V, size: int, *, expected_reads: int = 1) -> bool:
        """Insert key only if that evicts no entry read since it was cached (for warming).

        A warmed entry is cached because it is predicted to be read, so it starts
        with frequency ``expected_reads`` (capped at MAX_FREQUENCY): it survives
        its first pass through the small queue, and later entries of the same
        warm list cannot take its room. ``expected_reads=0`` admits it as cold.

        Room may come from free bytes and from entries with frequency 0 at the
        old ends of the small and main queues, exactly the ones the policy
        would evict next anyway. If that is not enough, or the key is already
        cached, or the size would be rejected by put, nothing changes.

        Returns:
            True if inserted; False otherwise (reason in ``last_rejection``).

        Raises:
            ValueError: if size is negative.
        """
        if size < 0:
            raise ValueError(f"size must not be negative, got {size}")
        if expected_reads < 0:
            raise ValueError(f"expected_reads must not be negative, got {expected_reads}")
        reason = self.rejection_for_size(size)
        if reason is None and key in self._entries:
            reason = Rejection.ALREADY_CACHED
        victims: list[tuple[K, _Entry[V]]] = []
        if reason is None:
            shortfall = self._bytes_used + size - self._capacity
            if shortfall > 0:
                found = self._cold_victims(shortfall)
                if found is None:
                    reason = Rejection.WOULD_EVICT_HOTTER
                else:
                    victims = found
        if reason is not None:
            return self._reject(reason)
        for victim_key, victim in victims:
            self._unlink(victim_key, victim)
            if not victim.in_main:
                self._remember(victim_key, victim.size)
            self._evicted(victim_key, victim)
        self._insert(key, value, size)
        self._entries[key].freq = min(expected_reads, MAX_FREQUENCY)
        return True

    def delete(self, key: K) -> bool:
        """Remove key (an invalidation). True if it was cached. The ghost is left alone."""
        entry = self._entries.get(key)
        if entry is None:
            return False
        self._unlink(key, entry)
        return True

    # -------------------------------------------------------------- internals

    def _reject(self, reason: Rejection) -> bool:
        self.stats.rejected += 1
        self.last_rejection = reason
        return False

    def _insert(self, key: K, value: V, size: int) -> None:
        charge = self._ghost.pop(key, None)
        if charge is not None:
            self._ghost_bytes -= charge
            self.stats.ghost_hits += 1
        if self._bytes_used + size > self._capacity:
            self._make_room(size)
        # _link, inlined: the miss path (tests/bench/bench_edge_eviction.py times it).
        entry = _Entry(value, size, in_main=charge is not None)
        self._entries[key] = entry
        self._bytes_used += size
        if entry.in_main:
            self._main[key] = entry
            self._main_bytes += size
        else:
            self._small[key] = entry
            self._small_bytes += size

    def _replace(self, key: K, entry: _Entry[V], value: V, size: int) -> None:
        growth = size - entry.size
        if self._bytes_used + growth <= self._capacity:
            entry.value = value
            entry.size = size
            self._bytes_used += growth
            if entry.in_main:
                self._main_bytes += growth
            else:
                self._small_bytes += growth
            return
        # Detached while room is made, so the replacement cannot evict itself.
        self._unlink(key, entry)
        self._make_room(size)
        entry.value = value
        entry.size = size
        self._link(key, entry)

    def _link(self, key: K, entry: _Entry[V]) -> None:
        self._entries[key] = entry
        self._bytes_used += entry.size
        if entry.in_main:
            self._main[key] = entry
            self._main_bytes += entry.size
        else:
            self._small[key] = entry
            self._small_bytes += entry.size

    def _unlink(self, key: K, entry: _Entry[V]) -> None:
        del self._entries[key]
        self._bytes_used -= entry.size
        if entry.in_main:
            del self._main[key]
            self._main_bytes -= entry.size
        else:
            del self._small[key]
            self._small_bytes -= entry.size

    def _make_room(self, size: int) -> None:
        # Terminates: size <= small target < capacity, and each round either
        # evicts an entry or empties small into main (then main evicts).
        while self._bytes_used + size > self._capacity:
            if self._small_bytes >= self._small_target or not self._main:
                self._evict_from_small()
            else:
                self._evict_from_main()

    def _evict_from_small(self) -> None:
        """Paper's evictS: promote read entries to main until one unread entry is evicted."""
        small = self._small
        while small:
            key, entry = small.popitem(last=False)
            self._small_bytes -= entry.size
            if entry.freq > 0:
                # Read while in small: it is not a one-hit wonder. It keeps its
                # frequency, as in the paper's pseudocode, which buys it that
                # many reinsertions in main.
                entry.in_main = True
                self._main[key] = entry
                self._main_bytes += entry.size
                if self._main_bytes > self._main_target:
                    self._evict_from_main()
            else:
                del self._entries[key]
                self._bytes_used -= entry.size
                self._remember(key, entry.size)
                self.stats.evictions += 1
                if self._on_evict is not None:
                    self._on_evict(key, entry.value)
                return

    def _evict_from_main(self) -> None:
        """Paper's evictM: reinsert read entries (freq - 1) until one unread entry is evicted."""
        while self._main:
            key, entry = self._main.popitem(last=False)
            if entry.freq > 0:
                entry.freq -= 1
                self._main[key] = entry
            else:
                self._main_bytes -= entry.size
                del self._entries[key]
                self._bytes_used -= entry.size
                self._evicted(key, entry)
                return

    def _remember(self, key: K, size: int) -> None:
        charge = size if size > GHOST_MIN_CHARGE_BYTES else GHOST_MIN_CHARGE_BYTES
        ghost = self._ghost
        ghost[key] = charge
        self._ghost_bytes += charge
        while self._ghost_bytes > self._main_target and ghost:
            self._ghost_bytes -= ghost.popitem(last=False)[1]

    def _cold_victims(self, shortfall: int) -> list[tuple[K, _Entry[V]]] | None:
        """The unread entries at the old ends of small then main that free shortfall bytes, or None."""
        victims: list[tuple[K, _Entry[V]]] = []
        freed = 0
        for queue in (self._small, self._main):
            for key, entry in queue.items():
                if entry.freq > 0:
                    break
                victims.append((key, entry))
                freed += entry.size
                if freed >= shortfall:
                    return victims
        return None

    def _evicted(self, key: K, entry: _Entry[V]) -> None:
        self.stats.evictions += 1
        if self._on_evict is not None:
            self._on_evict(key, entry.value)
