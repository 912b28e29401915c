"""Benchmark of push invalidation: a hold at the origin until every POP's follower has applied it.

    .venv/bin/python tests/bench/bench_edge_staleness.py [--holds 300] [--rate 50] [--followers 3]

Starts a real origin process (`boxoffice origin serve --database sqlite:TMP
--seed-demo --demo-events 200 --no-access-log` on a free loopback port), runs
N `edge.feedfollow.FeedFollower`s in this process (standing in for N POPs,
each with its own HTTP session and long-poll), then places holds of one unit
at a steady rate over HTTP, round robin over items with enough stock so that
no two holds on one item are in flight at once (the item version each hold
produces is in its response). For every hold and follower it records the
time from the hold's HTTP response (body read) to that follower's
`on_change` for the same item and version, on one monotonic clock.

Prints p50/p99/max per follower and over all of them, how many changes
arrived before the hold's own response (negative times, counted as they
are), and any change not delivered within the drain bound. Bounded: the whole
run is cancelled after RUN_BOUND seconds.

Results: docs/benchmarks.md ("Edge push invalidation").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

REPO: Final = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
from origin_cluster import fresh_sqlite, start_origin  # noqa: E402

from edge.feedfollow import FeedFollower  # noqa: E402

SECOND: Final = 1.0
MS: Final = 1000.0
RUN_BOUND: Final = 60 * SECOND
# After the last hold, how long changes may take to reach every follower before they count as missing.
DRAIN_BOUND: Final = 10 * SECOND
READY_BOUND: Final = 10 * SECOND
HOLD_TIMEOUT: Final = 5 * SECOND
# Each item takes at most this many holds, so stock never runs out mid-run.
HOLDS_PER_ITEM: Final = 5
DEMO_EVENTS: Final = 200


@dataclass
class Pop:
    """One stand-in POP: when it was told of each (item, version)."""

    name: str
    seen_at: dict[tuple[str, int], float] = field(default_factory=dict)
    resets: list[str] = field(default_factory=list)

    def on_change(self, item_id: str, version: int, patch: dict[str, Any]) -> None:
        self.seen_at.setdefault((item_id, version), time.perf_counter())

    def on_reset(self, reason: str) -> None:
        self.resets.append(reason)


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


async def pick_items(session: aiohttp.ClientSession, base: str, needed: int) -> list[str]:
    async with session.get(f"{base}/v1/snapshot", params={"limit": "1000"}) as response:
        doc = await response.json()
    items = [item["id"] for item in doc["items"] if item["available"] >= HOLDS_PER_ITEM]
    if len(items) < needed:
        raise RuntimeError(f"only {len(items)} items with {HOLDS_PER_ITEM}+ units; need {needed}")
    return items[:needed]


@contextlib.asynccontextmanager
async def following(base: str, pops: list[Pop]) -> AsyncIterator[list[FeedFollower]]:
    followers = [FeedFollower(base, pop.on_change, pop.on_reset) for pop in pops]
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(follower.run()) for follower in followers]
        try:
            yield followers
        finally:
            for task in tasks:
                task.cancel()


async def until(condition: Any, what: str, bound: float) -> None:
    deadline = time.monotonic() + bound
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {bound:.0f} s: {what}")
        await asyncio.sleep(0.01)


async def run(base: str, holds: int, rate: float, follower_count: int) -> None:
    pops = [Pop(f"pop{n}") for n in range(follower_count)]
    responses: dict[tuple[str, int], float] = {}
    hold_latencies: list[float] = []
    timeout = aiohttp.ClientTimeout(total=HOLD_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session, following(base, pops) as followers:
        items = await pick_items(session, base, math.ceil(holds / HOLDS_PER_ITEM))
        await until(lambda: all(f.lag_seconds == 0.0 for f in followers), "followers at the head", READY_BOUND)

        async def one_hold(n: int) -> None:
            body = {"item_id": items[n % len(items)], "qty": 1, "user_id": f"bench-{n}"}
            sent = time.perf_counter()
            async with session.post(f"{base}/v1/holds", json=body) as response:
                doc = await response.json()
            answered = time.perf_counter()
            if response.status != 201:
                raise RuntimeError(f"hold {n} answered {response.status}: {doc}")
            responses[(doc["item"]["id"], doc["item"]["version"])] = answered
            hold_latencies.append(answered - sent)

        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for n in range(holds):
                await asyncio.sleep(max(0.0, started + n / rate - time.perf_counter()))
                group.create_task(one_hold(n))
        elapsed = time.perf_counter() - started
        with contextlib.suppress(RuntimeError):
            await until(lambda: all(key in pop.seen_at for pop in pops for key in responses), "drain", DRAIN_BOUND)
        statuses = [follower.status() for follower in followers]

    print(f"holds: {len(responses)} in {elapsed:.1f} s ({len(responses) / elapsed:.1f}/s), followers: {len(pops)}")
    print(f"hold latency (request to response): p50 {percentile(hold_latencies, 0.5) * MS:.2f} ms, "
          f"p99 {percentile(hold_latencies, 0.99) * MS:.2f} ms")  # fmt: skip
    every: list[float] = []
    missing = 0
    print("staleness = follower on_change - hold response, ms:")
    for pop, status in zip(pops, statuses, strict=True):
        delays = [pop.seen_at[key] - answered for key, answered in responses.items() if key in pop.seen_at]
        missing += len(responses) - len(delays)
        every.extend(delays)
        print(f"  {pop.name}: n={len(delays)} p50 {percentile(delays, 0.5) * MS:.2f} "
              f"p99 {percentile(delays, 0.99) * MS:.2f} max {max(delays) * MS:.2f} "
              f"resets {len(pop.resets)} applied {status.applied}")  # fmt: skip
    early = sum(1 for delay in every if delay < 0)
    print(f"  all: n={len(every)} p50 {percentile(every, 0.5) * MS:.2f} p99 {percentile(every, 0.99) * MS:.2f} "
          f"max {max(every) * MS:.2f} min {min(every) * MS:.2f}")  # fmt: skip
    print(f"  before the hold's own response: {early} of {len(every)}; missing after {DRAIN_BOUND:.0f} s: {missing}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holds", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50.0, help="holds per second")
    parser.add_argument("--followers", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: nproc {os.cpu_count()}, {cpu_model()}, {platform.system()} {platform.release()}, "
          f"Python {platform.python_version()}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-staleness-") as workdir:
        database = fresh_sqlite(Path(workdir), "origin")
        origin = start_origin(database, Path(workdir), "origin",
                              ("--seed-demo", "--demo-events", str(DEMO_EVENTS)))  # fmt: skip
        try:
            print(f"origin: {origin.base_url}, sqlite, {DEMO_EVENTS} demo events")

            async def bounded() -> None:
                async with asyncio.timeout(RUN_BOUND):
                    await run(origin.base_url, args.holds, args.rate, args.followers)

            try:
                import uvloop
            except ImportError:
                print("event loop: asyncio")
                asyncio.run(bounded())
            else:
                print("event loop: uvloop (as the POP runs)")
                uvloop.run(bounded())
        finally:
            origin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
