"""Benchmark of the edge response store's eviction policy: S3-FIFO against plain LRU.

    .venv/bin/python tests/bench/bench_edge_eviction.py [--quick]

Replays synthetic traces through edge.s3fifo.S3FifoCache and edge.lru.LruCache
as a read-through cache (get; on a miss, put the object with its size):

- zipf: 1,000,000 requests over 20,000 objects, popularity Zipf(0.8) (object
  of popularity rank r requested with probability proportional to 1 / r^0.8),
  sizes log-uniform between 500 B and 5 KB, uncorrelated with popularity.
- zipf+scans: the same requests with a one-time scan (a crawler, a warming run
  gone wrong) of 10,000 never-seen objects after every 100,000 requests:
  1,100,000 requests in all, 100,000 of them to keys read exactly once.

Cache sizes are 1%, 5% and 10% of the working set's bytes (the 20,000 objects).
Prints, per trace and size, object and byte hit ratios of each policy (over
all requests, scans included), the difference in points, and requests per
second of the replay loop in this process (one core; a request is a get plus a
put on a miss), then the cost of one get on a hit (the POP's hot path) with
both caches holding 10,000 entries. Seeded: the hit ratios are the same on
every run; the timings are not.
--quick replays a tenth of the requests.

Results: docs/benchmarks.md ("Edge cache eviction").
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import numpy as np

REPO: Final = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from edge.lru import LruCache  # noqa: E402
from edge.s3fifo import S3FifoCache  # noqa: E402

SEED: Final = 2023
OBJECTS: Final = 20_000
REQUESTS: Final = 1_000_000
ZIPF_ALPHA: Final = 0.8
MIN_SIZE: Final = 500
MAX_SIZE: Final = 5_000
SCAN_EVERY: Final = 100_000
SCAN_LENGTH: Final = 10_000
CACHE_SHARES: Final = (0.01, 0.05, 0.10)


class Cache(Protocol):
    def get(self, key: int) -> int | None: ...
    def put(self, key: int, value: int, size: int) -> bool: ...


@dataclass(frozen=True, slots=True)
class Trace:
    name: str
    keys: list[int]
    sizes: list[int]  # the size of each request's object
    working_set_bytes: int


@dataclass(frozen=True, slots=True)
class Result:
    object_hit_ratio: float
    byte_hit_ratio: float
    requests_per_second: float


def make_traces(requests: int) -> list[Trace]:
    rng = np.random.default_rng(SEED)
    popularity = 1.0 / np.arange(1, OBJECTS + 1) ** ZIPF_ALPHA
    ranks = rng.choice(OBJECTS, size=requests, p=popularity / popularity.sum())
    object_of_rank = rng.permutation(OBJECTS)  # popularity rank -> object id
    sizes = np.exp(rng.uniform(math.log(MIN_SIZE), math.log(MAX_SIZE), OBJECTS)).astype(np.int64)
    keys = object_of_rank[ranks]
    zipf = Trace("zipf", keys.tolist(), sizes[keys].tolist(), int(sizes.sum()))

    scan_keys: list[int] = []
    scan_sizes: list[int] = []
    next_scan_id = OBJECTS
    scanned_sizes = np.exp(rng.uniform(math.log(MIN_SIZE), math.log(MAX_SIZE), requests // SCAN_EVERY * SCAN_LENGTH))
    scanned = 0
    for start in range(0, requests, SCAN_EVERY):
        scan_keys += zipf.keys[start : start + SCAN_EVERY]
        scan_sizes += zipf.sizes[start : start + SCAN_EVERY]
        if start + SCAN_EVERY <= requests:
            scan_keys += range(next_scan_id, next_scan_id + SCAN_LENGTH)
            scan_sizes += scanned_sizes[scanned : scanned + SCAN_LENGTH].astype(np.int64).tolist()
            next_scan_id += SCAN_LENGTH
            scanned += SCAN_LENGTH
    with_scans = Trace("zipf+scans", scan_keys, scan_sizes, zipf.working_set_bytes)
    return [zipf, with_scans]


def replay(cache: Cache, trace: Trace) -> Result:
    get, put = cache.get, cache.put
    hits = 0
    hit_bytes = 0
    started = time.perf_counter()
    for key, size in zip(trace.keys, trace.sizes, strict=True):
        if get(key) is None:
            put(key, size, size)
        else:
            hits += 1
            hit_bytes += size
    elapsed = time.perf_counter() - started
    return Result(hits / len(trace.keys), hit_bytes / sum(trace.sizes), len(trace.keys) / elapsed)


def nanoseconds_per_hit(cache: Cache, entries: int = 10_000, rounds: int = 50) -> float:
    for key in range(entries):
        cache.put(key, key, MIN_SIZE)
    keys = list(range(entries))
    get = cache.get
    best = math.inf
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(rounds):
            for key in keys:
                get(key)
        best = min(best, time.perf_counter() - started)
    return best / (rounds * entries) * 1e9


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="replay a tenth of the requests")
    args = parser.parse_args()
    requests = REQUESTS // 10 if args.quick else REQUESTS

    began = time.perf_counter()
    traces = make_traces(requests)
    print(f"machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu_model()}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, seed {SEED}")
    print(
        f"{OBJECTS:,} objects, Zipf({ZIPF_ALPHA}), {MIN_SIZE}-{MAX_SIZE} B log-uniform, "
        f"working set {traces[0].working_set_bytes / 1e6:.1f} MB; {requests:,} requests"
    )
    print()
    print(
        "| trace | cache | S3-FIFO obj | LRU obj | Δ obj (pts) | S3-FIFO byte | LRU byte | Δ byte (pts) "
        "| S3-FIFO req/s | LRU req/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for trace in traces:
        for share in CACHE_SHARES:
            capacity = int(trace.working_set_bytes * share)
            s3fifo = replay(S3FifoCache[int, int](capacity), trace)
            lru = replay(LruCache[int, int](capacity), trace)
            print(
                f"| {trace.name} | {share:.0%} ({capacity / 1e6:.2f} MB) "
                f"| {s3fifo.object_hit_ratio:.1%} | {lru.object_hit_ratio:.1%} "
                f"| {100 * (s3fifo.object_hit_ratio - lru.object_hit_ratio):+.1f} "
                f"| {s3fifo.byte_hit_ratio:.1%} | {lru.byte_hit_ratio:.1%} "
                f"| {100 * (s3fifo.byte_hit_ratio - lru.byte_hit_ratio):+.1f} "
                f"| {s3fifo.requests_per_second / 1e6:.2f} M | {lru.requests_per_second / 1e6:.2f} M |",
                flush=True,
            )
    print()
    capacity = 100 * 10_000 * MIN_SIZE  # room to spare: nothing is evicted while timing hits
    s3fifo_ns = nanoseconds_per_hit(S3FifoCache[int, int](capacity))
    lru_ns = nanoseconds_per_hit(LruCache[int, int](capacity))
    print(f"get on a hit (best of 5, 10,000 entries): S3-FIFO {s3fifo_ns:.0f} ns, LRU {lru_ns:.0f} ns")
    print()
    print(f"total {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
