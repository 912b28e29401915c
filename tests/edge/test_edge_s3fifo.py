"""S3-FIFO response store (edge/s3fifo.py) and its LRU baseline (edge/lru.py)."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from edge.lru import LruCache
from edge.s3fifo import GHOST_MIN_CHARGE_BYTES, MAX_FREQUENCY, CacheStats, Rejection, S3FifoCache

# --------------------------------------------------------------------------
# Stateful: any sequence of calls against a dict model.
# The model learns about evictions through on_evict, so after every step the
# cache must hold exactly the model's entries: get returns the last stored
# value or None, never an older one.
# --------------------------------------------------------------------------

CAPACITY = 1_000  # small queue: 100 bytes, so sizes up to 150 exercise rejection
KEYS = st.integers(min_value=0, max_value=60)
SIZES = st.integers(min_value=0, max_value=150)


class S3FifoMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model: dict[int, tuple[str, int]] = {}
        self.evicted_in_step: list[int] = []
        self.cache: S3FifoCache[int, str] = S3FifoCache(CAPACITY, on_evict=self.on_evict)
        self.counter = 0

    def on_evict(self, key: int, value: str) -> None:
        assert self.model.pop(key)[0] == value
        self.evicted_in_step.append(key)

    def next_value(self, key: int) -> str:
        self.counter += 1
        return f"{key}#{self.counter}"

    @rule(key=KEYS, size=SIZES)
    def put(self, key: int, size: int) -> None:
        value = self.next_value(key)
        self.evicted_in_step.clear()
        stored = self.cache.put(key, value, size)
        assert stored == (size <= self.cache.max_entry_bytes)
        assert key not in self.evicted_in_step  # a replacement never evicts itself
        if stored:
            self.model[key] = (value, size)
        else:
            self.model.pop(key, None)
            assert self.cache.last_rejection is Rejection.LARGER_THAN_SMALL_QUEUE

    @rule(key=KEYS)
    def get(self, key: int) -> None:
        expected = self.model.get(key)
        assert self.cache.get(key) == (None if expected is None else expected[0])

    @rule(key=KEYS)
    def peek(self, key: int) -> None:
        expected = self.model.get(key)
        stats_before = dataclasses.replace(self.cache.stats)
        assert self.cache.peek(key) == (None if expected is None else expected[0])
        assert self.cache.stats == stats_before

    @rule(key=KEYS)
    def delete(self, key: int) -> None:
        assert self.cache.delete(key) == (key in self.model)
        self.model.pop(key, None)
        assert key not in self.cache

    @rule(key=KEYS, size=SIZES)
    def admit_if_room(self, key: int, size: int) -> None:
        value = self.next_value(key)
        was_cached = key in self.model
        bytes_before, len_before = self.cache.bytes_used, len(self.cache)
        self.evicted_in_step.clear()
        if self.cache.admit_if_room(key, value, size):
            assert not was_cached
            self.model[key] = (value, size)
        else:
            assert self.evicted_in_step == []
            assert (self.cache.bytes_used, len(self.cache)) == (bytes_before, len_before)
            if was_cached:
                assert self.model[key][0] == self.cache.peek(key)

    @precondition(lambda self: len(self.model) > 0)
    @rule(data=st.data())
    def read_a_cached_key_repeatedly(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.model)))
        for _ in range(data.draw(st.integers(1, 4))):
            assert self.cache.get(key) == self.model[key][0]

    @invariant()
    def holds_exactly_the_model(self) -> None:
        assert len(self.cache) == len(self.model)
        assert all(key in self.cache for key in self.model)

    @invariant()
    def byte_bound(self) -> None:
        used = sum(size for _, size in self.model.values())
        assert self.cache.bytes_used == used <= self.cache.capacity_bytes
        assert self.cache.small_bytes + self.cache.main_bytes == used

    @invariant()
    def ghost_bounded_and_disjoint(self) -> None:
        assert self.cache.ghost_bytes <= self.cache.ghost_capacity_bytes
        assert self.cache.ghost_len <= self.cache.ghost_capacity_bytes // GHOST_MIN_CHARGE_BYTES
        assert not any(self.cache.remembers(key) for key in self.model)


TestS3FifoStateful = S3FifoMachine.TestCase
TestS3FifoStateful.settings = settings(max_examples=200, stateful_step_count=80, deadline=None)


class LruMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model: dict[int, tuple[str, int]] = {}
        self.cache: LruCache[int, str] = LruCache(CAPACITY, max_entry_bytes=100, on_evict=self.on_evict)
        self.counter = 0

    def on_evict(self, key: int, value: str) -> None:
        assert self.model.pop(key)[0] == value

    @rule(key=KEYS, size=SIZES)
    def put(self, key: int, size: int) -> None:
        self.counter += 1
        value = f"{key}#{self.counter}"
        if self.cache.put(key, value, size):
            self.model[key] = (value, size)
        else:
            self.model.pop(key, None)

    @rule(key=KEYS)
    def get(self, key: int) -> None:
        expected = self.model.get(key)
        assert self.cache.get(key) == (None if expected is None else expected[0])

    @rule(key=KEYS)
    def delete(self, key: int) -> None:
        assert self.cache.delete(key) == (key in self.model)
        self.model.pop(key, None)

    @invariant()
    def holds_exactly_the_model(self) -> None:
        assert len(self.cache) == len(self.model)
        assert self.cache.bytes_used == sum(size for _, size in self.model.values()) <= CAPACITY


TestLruStateful = LruMachine.TestCase
TestLruStateful.settings = settings(max_examples=50, stateful_step_count=80, deadline=None)


# --------------------------------------------------------------------------
# Scan resistance: a hot working set survives a one-time scan of cold keys.
# --------------------------------------------------------------------------

ENTRY = 100


def read_through(cache: S3FifoCache[str, str] | LruCache[str, str], keys: list[str]) -> float:
    """get each key, put it on a miss; the hit ratio of these reads."""
    hits = 0
    for key in keys:
        if cache.get(key) is None:
            cache.put(key, key, ENTRY)
        else:
            hits += 1
    return hits / len(keys)


@pytest.mark.parametrize("hot_share", [0.5, 0.8])
def test_one_time_scan_does_not_evict_the_hot_set(hot_share: float) -> None:
    capacity = 100 * ENTRY
    hot = [f"hot-{i}" for i in range(int(100 * hot_share))]
    scan = [f"scan-{i}" for i in range(5_000)]  # 50x the cache, each key read once
    rng = random.Random(4)
    warm_up = [rng.choice(hot) for _ in range(20 * len(hot))]
    s3fifo: S3FifoCache[str, str] = S3FifoCache(capacity)
    lru: LruCache[str, str] = LruCache(capacity)
    for cache in (s3fifo, lru):
        read_through(cache, warm_up)
        assert read_through(cache, hot) == 1.0  # both hold the hot set before the scan
        read_through(cache, scan)

    assert read_through(s3fifo, hot) >= 0.95
    assert read_through(lru, hot) == 0.0  # LRU: the scan flushed every hot entry
    assert s3fifo.stats.ghost_hits == 0  # scanned keys never came back, so none reached main


def test_scan_interleaved_with_zipf_traffic_keeps_s3fifo_ahead_of_lru() -> None:
    rng = random.Random(2023)
    objects = 2_000
    weights = [1 / (rank + 1) ** 0.8 for rank in range(objects)]
    popular = rng.choices(range(objects), weights=weights, k=60_000)
    trace: list[str] = []
    scan_id = 0
    for position, obj in enumerate(popular):
        trace.append(f"obj-{obj}")
        if position % 10_000 == 9_999:  # a crawler reads 1,000 never-seen URLs once
            trace.extend(f"scan-{scan_id + i}" for i in range(1_000))
            scan_id += 1_000
    capacity = objects * ENTRY // 10
    s3fifo: S3FifoCache[str, str] = S3FifoCache(capacity)
    lru: LruCache[str, str] = LruCache(capacity)
    assert read_through(s3fifo, trace) > read_through(lru, trace) + 0.05


# --------------------------------------------------------------------------
# Policy details.
# --------------------------------------------------------------------------


def test_unread_entries_leave_through_small_into_the_ghost_and_come_back_to_main() -> None:
    cache: S3FifoCache[str, int] = S3FifoCache(1_000)  # small 100 B: ten 10 B entries
    for i in range(20):
        cache.put(f"k{i}", i, 100 // 2)
    assert cache.stats.evictions == 0  # 20 x 50 B = 1,000 B fits exactly
    cache.put("new", 0, 50)
    assert "k0" not in cache and cache.remembers("k0")
    assert cache.main_bytes == 0
    assert cache.put("k0", 0, 50)
    assert cache.stats.ghost_hits == 1
    assert not cache.remembers("k0")
    assert cache.main_bytes == 50  # straight to main


def test_ghost_remembers_about_one_main_queue_of_keys() -> None:
    cache: S3FifoCache[int, int] = S3FifoCache(100_000)  # main: 90,000 B
    for key in range(10_000):
        cache.put(key, key, 1_000)
    assert cache.stats.evictions == 10_000 - 100
    assert cache.ghost_bytes <= cache.ghost_capacity_bytes == 90_000
    assert cache.ghost_len == 90  # the 90 most recently evicted keys
    assert cache.remembers(10_000 - 101) and not cache.remembers(10_000 - 192)


def test_read_entries_are_promoted_to_main_and_survive_reinsertion() -> None:
    cache: S3FifoCache[str, int] = S3FifoCache(1_000)
    cache.put("hot", 1, 50)
    for _ in range(MAX_FREQUENCY + 5):
        assert cache.get("hot") == 1
    for i in range(200):
        cache.put(f"cold-{i}", i, 50)
    assert "hot" in cache
    assert cache.main_bytes >= 50


def test_main_reinserts_read_entries_and_evicts_the_first_unread_one() -> None:
    evicted: list[str] = []
    cache: S3FifoCache[str, int] = S3FifoCache(1_000, on_evict=lambda key, _: evicted.append(key))
    for i in range(20):
        cache.put(f"k{i}", i, 50)
    for i in range(18):
        cache.get(f"k{i}")
    cache.put("n0", 0, 50)  # small over its share: k0..k17 (read) move to main, k18 (unread) leaves
    assert evicted == ["k18"]
    assert cache.main_bytes == 18 * 50
    cache.put("k18", 18, 50)  # remembered by the ghost: straight to main; k19 leaves small
    assert evicted == ["k18", "k19"]
    assert cache.stats.ghost_hits == 1
    cache.put("k19", 19, 50)  # small is under its share now, so main evicts: every k0..k17
    # was read and is reinserted with one read spent; k18, never read in main, goes.
    assert evicted == ["k18", "k19", "k18"]
    cache.get("k3")
    cache.put("n1", 1, 50)  # small still under its share: main evicts k0, unread since reinsertion
    assert evicted[-1] == "k0"
    assert all(f"k{i}" in cache for i in range(1, 18))


def test_replacing_a_key_adjusts_bytes_in_place() -> None:
    cache: S3FifoCache[str, str] = S3FifoCache(1_000)
    assert cache.put("a", "v1", 40)
    assert cache.put("b", "b", 40)
    assert cache.put("a", "v2", 10)
    assert (cache.get("a"), cache.bytes_used, len(cache)) == ("v2", 50, 2)
    assert cache.put("a", "v3", 90)
    assert (cache.get("a"), cache.bytes_used, len(cache)) == ("v3", 130, 2)
    assert cache.stats.evictions == 0


def test_replacement_that_needs_room_evicts_others_never_itself() -> None:
    evicted: list[str] = []
    cache: S3FifoCache[str, str] = S3FifoCache(1_000, on_evict=lambda key, _: evicted.append(key))
    assert cache.put("first", "v1", 10)  # the oldest entry: first in line for eviction
    for i in range(19):
        cache.put(f"k{i}", "x", 50)
    assert cache.bytes_used == 960
    assert cache.put("first", "v2", 100)
    assert cache.peek("first") == "v2"
    assert "first" not in evicted
    assert evicted  # someone else made room
    assert cache.bytes_used <= 1_000


def test_replacement_keeps_frequency() -> None:
    cache: S3FifoCache[str, str] = S3FifoCache(1_000)
    cache.put("hot", "v1", 50)
    cache.get("hot")
    cache.put("hot", "v2", 50)
    for i in range(100):
        cache.put(f"cold-{i}", "x", 50)
    assert cache.peek("hot") == "v2"  # it was read, so it was promoted rather than dropped


@pytest.mark.parametrize(
    ("max_entry_bytes", "size", "reason"),
    [
        (None, 101, Rejection.LARGER_THAN_SMALL_QUEUE),
        (500, 101, Rejection.LARGER_THAN_SMALL_QUEUE),
        (60, 61, Rejection.LARGER_THAN_MAX_ENTRY),
    ],
)
def test_oversize_entries_are_rejected_with_a_reason(max_entry_bytes: int | None, size: int, reason: Rejection) -> None:
    cache: S3FifoCache[str, str] = S3FifoCache(1_000, max_entry_bytes=max_entry_bytes)
    assert cache.put("ok", "v", 10)
    assert not cache.put("big", "v", size)
    assert cache.last_rejection is reason
    assert cache.rejection_for_size(size) is reason
    assert "big" not in cache
    assert (cache.bytes_used, cache.stats.rejected) == (10, 1)
    assert cache.put("fits", "v", cache.max_entry_bytes)


def test_rejected_replacement_drops_the_old_value() -> None:
    cache: S3FifoCache[str, str] = S3FifoCache(1_000)
    cache.put("doc", "old", 50)
    assert not cache.put("doc", "new but huge", 5_000)
    assert cache.get("doc") is None
    assert cache.bytes_used == 0


def test_negative_sizes_and_bad_configuration_raise() -> None:
    cache: S3FifoCache[str, str] = S3FifoCache(1_000)
    with pytest.raises(ValueError, match="size"):
        cache.put("a", "v", -1)
    with pytest.raises(ValueError, match="size"):
        cache.admit_if_room("a", "v", -1)
    with pytest.raises(ValueError, match="capacity_bytes"):
        S3FifoCache[str, str](0)
    with pytest.raises(ValueError, match="small queue"):
        S3FifoCache[str, str](5)
    with pytest.raises(ValueError, match="small_fraction"):
        S3FifoCache[str, str](1_000, small_fraction=1.0)


def test_get_peek_delete_and_stats() -> None:
    evicted: list[tuple[str, str]] = []
    cache: S3FifoCache[str, str] = S3FifoCache(1_000, on_evict=lambda k, v: evicted.append((k, v)))
    assert cache.get("a") is None
    cache.put("a", "A", 10)
    assert cache.peek("a") == "A"
    assert cache.get("a") == "A"
    assert cache.stats == CacheStats(hits=1, misses=1)
    assert cache.stats.hit_ratio == 0.5
    assert cache.delete("a")
    assert not cache.delete("a")
    assert evicted == []  # delete is not an eviction
    assert not cache.remembers("a")  # nor does it teach the ghost anything


# --------------------------------------------------------------------------
# admit_if_room: warming never evicts an entry that has been read.
# --------------------------------------------------------------------------


def test_admit_if_room_uses_free_space() -> None:
    cache: S3FifoCache[str, str] = S3FifoCache(1_000)
    assert cache.admit_if_room("w", "W", 100)
    assert cache.peek("w") == "W"
    assert cache.stats.evictions == 0


def test_admit_if_room_refuses_to_evict_read_entries() -> None:
    cache: S3FifoCache[str, str] = S3FifoCache(1_000)
    for i in range(20):
        cache.put(f"k{i}", "x", 50)
        cache.get(f"k{i}")
    assert not cache.admit_if_room("w", "W", 50)
    assert cache.last_rejection is Rejection.WOULD_EVICT_HOTTER
    assert "w" not in cache
    assert (len(cache), cache.bytes_used, cache.stats.evictions) == (20, 1_000, 0)


def test_admit_if_room_evicts_only_unread_entries() -> None:
    evicted: list[str] = []
    cache: S3FifoCache[str, str] = S3FifoCache(1_000, on_evict=lambda key, _: evicted.append(key))
    for i in range(20):
        cache.put(f"k{i}", "x", 50)
        if i >= 2:
            cache.get(f"k{i}")
    assert cache.admit_if_room("w1", "W", 100)  # k0 and k1 were never read
    assert sorted(evicted) == ["k0", "k1"]
    assert not cache.admit_if_room("w2", "W", 50)  # next in line: k2, read
    assert cache.last_rejection is Rejection.WOULD_EVICT_HOTTER


def test_admit_if_room_cold_entries_stay_cold_when_only_peeked() -> None:
    cache: S3FifoCache[str, str] = S3FifoCache(1_000)
    for i in range(20):
        assert cache.admit_if_room(f"warm-{i}", "x", 50, expected_reads=0)
        assert cache.peek(f"warm-{i}") == "x"
    assert cache.admit_if_room("warm-next", "x", 50, expected_reads=0)  # peeked entries are still fair game
    assert "warm-0" not in cache


def test_admit_if_room_warmed_entries_are_not_displaced_by_the_rest_of_their_warm_list() -> None:
    cache: S3FifoCache[str, str] = S3FifoCache(1_000)
    for i in range(20):
        assert cache.admit_if_room(f"warm-{i}", "x", 50)
    assert not cache.admit_if_room("warm-next", "x", 50)
    assert cache.last_rejection is Rejection.WOULD_EVICT_HOTTER
    assert all(f"warm-{i}" in cache for i in range(20))
    for i in range(20):  # ordinary misses push them through small into main, not out
        cache.put(f"miss-{i}", "y", 50)
    assert sum(f"warm-{i}" in cache for i in range(20)) >= 10


def test_admit_if_room_refuses_negative_expected_reads() -> None:
    cache: S3FifoCache[str, str] = S3FifoCache(1_000)
    with pytest.raises(ValueError, match="expected_reads"):
        cache.admit_if_room("a", "x", 10, expected_reads=-1)


def test_admit_if_room_never_overwrites_a_live_entry() -> None:
    cache: S3FifoCache[str, str] = S3FifoCache(1_000)
    cache.put("a", "live", 10)
    assert not cache.admit_if_room("a", "warmed", 10)
    assert cache.last_rejection is Rejection.ALREADY_CACHED
    assert cache.peek("a") == "live"
    assert cache.stats.rejected == 1


def test_admit_if_room_rejects_oversize_like_put() -> None:
    cache: S3FifoCache[str, str] = S3FifoCache(1_000)
    assert not cache.admit_if_room("b", "huge", 101)
    assert cache.last_rejection is Rejection.LARGER_THAN_SMALL_QUEUE
    assert "b" not in cache


def test_lru_basics() -> None:
    cache: LruCache[str, str] = LruCache(100, max_entry_bytes=60)
    assert cache.put("a", "A", 50)
    assert cache.put("b", "B", 50)
    assert cache.get("a") == "A"  # b is now least recent
    assert cache.put("c", "C", 50)
    assert "b" not in cache and "a" in cache
    assert not cache.put("d", "D", 61)
    assert cache.last_rejection is Rejection.LARGER_THAN_MAX_ENTRY
    assert cache.peek("c") == "C"
    assert cache.delete("c") and not cache.delete("c")
    assert (len(cache), cache.bytes_used, cache.capacity_bytes) == (1, 50, 100)
