"""Writes against the primary, and a follower of a shard's own change feed.

- :func:`paced_holds`: open-loop one-unit holds at a fixed rate (each one is
  one change record at the primary: orders change no item, so they would not
  move a row); a hold's moment is when its 201 came back, just after its commit.
- :class:`FeedWatcher`: long-polls a shard's ``/v1/changes`` and notes when each
  (item, version) first appears there. A shard appends its own record in the
  transaction that writes the row, so the record being readable means the
  shard serves that version.
- :func:`burst_holds`: a number of one-unit holds as fast as a few connections
  go (the changes made while a shard is down).

Items are picked round-robin among those with stock left, tracked locally
from each hold's answer, so a steady run is not slowed by 409s.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import itertools
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp

SECOND: Final = 1.0
REQUEST_TIMEOUT: Final = 10 * SECOND
# Open-loop writes in flight at once; beyond it the schedule slips (and the slip is printed).
MAX_IN_FLIGHT: Final = 256
# Long-poll wait on the shard's feed; a batch comes back as soon as a record is committed.
FEED_WAIT: Final = 5 * SECOND
FEED_BATCH: Final = 1_000
# A hold that the bench's item tracker did not foresee failing (409) is retried on the next item, at most this often.
MAX_HOLD_TRIES: Final = 5


@dataclass
class StockPicker:
    """Round-robin over items with stock left; `available` is updated from hold answers."""

    available: dict[str, int]
    _cycle: Iterator[str] = field(init=False)

    def __post_init__(self) -> None:
        self._cycle = itertools.cycle(sorted(self.available))

    def next(self) -> str:
        for _ in range(len(self.available)):
            item_id = next(self._cycle)
            if self.available[item_id] > 0:
                self.available[item_id] -= 1  # reserved now; the answer corrects it
                return item_id
        raise RuntimeError("every item is sold out: use a bigger catalog or fewer writes")

    def update(self, item_id: str, available: int) -> None:
        """A hold's answer: never raise the count (a reservation made since stays taken)."""
        self.available[item_id] = min(self.available[item_id], available)


@dataclass(frozen=True, slots=True)
class Write:
    item_id: str
    version: int
    sent_at: float
    answered_at: float


@dataclass
class WriteLog:
    writes: list[Write] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    slip: float = 0.0  # how late the last write left against its schedule, seconds

    def fail(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1


async def hold_one(session: aiohttp.ClientSession, base_url: str, picker: StockPicker, log: WriteLog) -> None:
    """One one-unit hold on the next item with stock; records its item version and timing."""
    for _ in range(MAX_HOLD_TRIES):
        item_id = picker.next()
        body = {"item_id": item_id, "qty": 1, "user_id": f"bench-{uuid.uuid4().hex[:12]}"}
        sent_at = time.monotonic()
        try:
            async with session.post(
                f"{base_url}/v1/holds",
                json=body,
                headers={"Idempotency-Key": uuid.uuid4().hex},
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            ) as response:
                doc: Any = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.fail(type(exc).__name__)
            return
        answered_at = time.monotonic()
        if status == 201:
            item = doc["item"]
            picker.update(item_id, int(item["available"]))
            log.writes.append(Write(item_id, int(item["version"]), sent_at, answered_at))
            return
        if status == 409:
            picker.available[item_id] = 0
            log.fail("409")
            continue
        log.fail(str(status))
        return


async def paced_holds(base_url: str, picker: StockPicker, rate: float, duration: float) -> WriteLog:
    """Holds started at `rate` per second for `duration` seconds (open loop), then awaited."""
    log = WriteLog()
    count = int(rate * duration)
    gate = asyncio.Semaphore(MAX_IN_FLIGHT)
    connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT)
    async with aiohttp.ClientSession(connector=connector) as session, asyncio.TaskGroup() as tasks:

        async def one() -> None:
            try:
                await hold_one(session, base_url, picker, log)
            finally:
                gate.release()

        started = time.monotonic()
        for number in range(count):
            due = started + number / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await gate.acquire()
            log.slip = max(0.0, time.monotonic() - due)
            tasks.create_task(one())
    return log


async def burst_holds(base_url: str, picker: StockPicker, count: int, connections: int) -> WriteLog:
    """`count` holds over `connections` concurrent loops, as fast as the primary takes them."""
    log = WriteLog()
    remaining = iter(range(count))
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session, asyncio.TaskGroup() as tasks:

        async def loop() -> None:
            for _ in remaining:
                await hold_one(session, base_url, picker, log)

        for _ in range(connections):
            tasks.create_task(loop())
    return log


@dataclass
class FeedWatcher:
    """Follows a shard's `/v1/changes` from `since`; `seen[(item, version)]` is the first arrival time."""

    base_url: str
    since: str
    seen: dict[tuple[str, int], float] = field(default_factory=dict)
    records: int = 0
    errors: int = 0
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, stop: asyncio.Event) -> None:
        """Follow until `stop` is set; a failed poll is counted and retried."""
        timeout = aiohttp.ClientTimeout(total=FEED_WAIT + REQUEST_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                params = {"since": self.since, "limit": str(FEED_BATCH), "wait": f"{FEED_WAIT:g}"}
                try:
                    async with session.get(f"{self.base_url}/v1/changes", params=params) as response:
                        response.raise_for_status()
                        doc = await response.json()
                except (aiohttp.ClientError, TimeoutError):
                    self.errors += 1
                    await asyncio.sleep(0.05)
                    continue
                now = time.monotonic()
                for record in doc["changes"]:
                    self.seen.setdefault((record["item_id"], int(record["version"])), now)
                self.records += len(doc["changes"])
                self.since = doc["next"]
                self.progress.set()

    async def wait_for(self, wanted: set[tuple[str, int]], within: float) -> None:
        """Return once every (item, version) of `wanted` was seen, or after `within` seconds."""
        deadline = time.monotonic() + within
        while not wanted <= self.seen.keys() and (remaining := deadline - time.monotonic()) > 0:
            self.progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progress.wait(), remaining)


async def region_items(session: aiohttp.ClientSession, base_url: str, region: str) -> list[dict[str, Any]]:
    """Every item document of `region`, read with the snapshot pages a shard reads (plain JSON)."""
    items: list[dict[str, Any]] = []
    after: str | None = None
    for _ in range(10_000):
        params = {"filter": f"region:{region}", "limit": "1000"} | ({"after": after} if after else {})
        async with session.get(f"{base_url}/v1/snapshot", params=params) as response:
            response.raise_for_status()
            page = await response.json()
        items.extend(page["items"])
        after = page["next_after"]
        if after is None:
            return items
    raise RuntimeError("snapshot paging did not end")


async def snapshot_wire_bytes(session: aiohttp.ClientSession, base_url: str, region: str) -> tuple[int, int]:
    """(gzip bytes, pages) of a full copy of `region` as a shard downloads it, body bytes only.

    `session` must be made with ``auto_decompress=False`` so the bytes are those on the wire.
    """
    total = 0
    after: str | None = None
    for pages in range(1, 10_000):
        params = {"filter": f"region:{region}", "limit": "1000"} | ({"after": after} if after else {})
        async with session.get(
            f"{base_url}/v1/snapshot", params=params, headers={"Accept-Encoding": "gzip"}
        ) as response:
            response.raise_for_status()
            if response.headers.get("Content-Encoding") != "gzip":
                raise RuntimeError("the snapshot was not gzip'd")
            raw = await response.read()
        total += len(raw)
        after = json.loads(gzip.decompress(raw))["next_after"]
        if after is None:
            return total, pages
    raise RuntimeError("snapshot paging did not end")
