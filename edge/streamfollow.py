"""Push invalidation from a Redis Streams change feed: the POP's consumer of `boxoffice:changes:{source}`.

An alternative to :class:`edge.feedfollow.FeedFollower` (HTTP long-poll) with
the same callbacks into the POP (``on_change(item_id, version, patch)`` and
``on_reset(reason)``) and the same promise: whenever the follower cannot vouch
that it saw every change since the POP's cached entries were fetched, it calls
``on_reset`` and the POP purges every item and event page.

The contract with the publisher (one stream per feed source, ``origin`` or a
shard id): entries carry the string fields ``pos`` (``EPOCH:SEQ``),
``item_id``, ``version``, ``hlc``, ``op`` and ``patch`` (JSON merge patch). An
entry with ``op = reset`` is a *reset marker*: the publisher re-snapshotted
(its upstream answered 410 or changed epoch), so no consumer can vouch for its
cache. Each POP reads with its own consumer group ``pop:{pop_id}``, created at
``$`` the first time (a new POP needs no history), as consumer
``{pop_id}:{pid}``, with XREADGROUP BLOCK, and XACKs after applying.

When the POP purges (the rules, in the order they are checked):

- at start, after joining the group (entries cached before may predate
  changes we will never be shown) — ``start_reset=False`` turns this off;
- on a reset marker;
- when an entry's position is not the successor of the last one applied: a
  gap (trimmed before we read it, or a publisher that lost entries) or a
  different epoch without a marker; duplicates (at or below the last
  position) are acknowledged and skipped, as in the HTTP follower;
- on an entry that does not parse (we cannot tell what it changed) or that
  was trimmed while pending (XREADGROUP answers its id with no fields);
- when the group or the stream vanished (NOGROUP), when XINFO GROUPS reports
  the group's lag as unknown (nil), or when the lag exceeds the stream's
  length (entries were trimmed past the group before it read them). The
  group is then moved to ``$`` *first* and ``on_reset`` runs after, so
  anything fetched after the purge is at least as new as where reading
  resumes — the same order as the HTTP follower's snapshot-then-reset;
- once per outage, when Redis has been unreachable for ``max_outage`` (see
  edge.feedfollow for why we purge during an outage rather than after), or
  the POP's callbacks kept failing that long: an outage ends only once a
  batch was applied, never merely because Redis answered.

Delivery is at-least-once: entries are acknowledged only after the callbacks
ran; after any failure the follower first re-reads its own pending entries
(id ``0``), then new ones (``>``). Redis errors and failing callbacks back off
exponentially with jitter (:class:`ops.backoff.Backoff`); the backoff
starts over only once a batch was applied. Every wait is bounded: the BLOCK
time plus a socket margin.

This module is the adapter: the decisions about one entry (:func:`judge`) and
about the group's lag (:func:`lag_problem`), the entry format and the options
are the pure core in edge.streamentry; the callbacks, resets, failures,
backoff, outages and lag figure are shared with the HTTP follower in
edge.followcore (:class:`FollowerCore`).

Consumer names carry the process id, so a restarted POP is a new consumer;
the pending entries of predecessors idle for ``stale_consumer_idle`` are
dropped with their consumer (the start purge covers them).

Lag, for ``/_edge/health`` and ``/metrics``: ``lag_entries`` from XINFO GROUPS
(Redis 7.0: entries not yet delivered to the group), read at most every
``lag_interval``; ``lag_seconds`` as in the HTTP follower, an upper bound on
how long a committed change may have gone unapplied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis_asyncio
from redis.exceptions import RedisError, ResponseError

from edge.errors import PeerError
from edge.followcore import CallbackFailed, FollowerCore, FollowHealth, OnChange, OnReset
from edge.streamentry import (
    GroupLag,
    StreamOptions,
    group_name,
    judge,
    lag_problem,
    parse_entry,
    parse_stream_id,
    stream_key,
)
from ops.backoff import Backoff

# The pure core moved to edge.streamentry; its public names are still importable from here.
__all__ = [
    "GroupLag",
    "StreamFollower",
    "StreamOptions",
    "StreamStatus",
    "group_name",
    "judge",
    "lag_problem",
    "parse_entry",
    "parse_stream_id",
    "stream_key",
]

log = logging.getLogger("boxoffice.edge.feed")


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamStatus(FollowHealth):
    """What `/_edge/health` and `/metrics` report about the stream follower."""

    stream: str
    group: str
    consumer: str
    lag_entries: int | None
    entries_read: int | None

    def to_document(self) -> dict[str, Any]:
        return {
            "kind": "redis",
            "stream": self.stream,
            "group": self.group,
            "consumer": self.consumer,
            "lag_entries": self.lag_entries,
            "entries_read": self.entries_read,
            **self._health_document(),
        }


class _GroupGone(Exception):
    """NOGROUP: the stream or our group vanished."""


class StreamFollower(FollowerCore):
    """Follows one Redis stream through the POP's consumer group until cancelled.

    Args:
        redis_url: ``redis://host:port/db`` of the feed's Redis.
        source: the feed's name (``origin`` or a shard id); the stream is
            ``boxoffice:changes:{source}``.
        pop_id: the POP's id; the group is ``pop:{pop_id}``.
        on_change: called once per change entry, in stream order. Must not block.
        on_reset: called with a reason when the POP must purge every item entry.
        options: limits and timeouts (validated here).
        consumer: the consumer name; ``{pop_id}:{pid}`` by default.
        physical_time: POSIX seconds, for the lag figure.
        rand: floats in [0, 1) for the backoff jitter.
    """

    def __init__(
        self,
        redis_url: str,
        source: str,
        pop_id: str,
        on_change: OnChange,
        on_reset: OnReset,
        *,
        options: StreamOptions | None = None,
        consumer: str | None = None,
        physical_time: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.options = options or StreamOptions()
        self.options.validate()
        if not source or not pop_id:
            raise ValueError("source and pop_id must not be empty")
        self.redis_url = redis_url
        self.stream = stream_key(source)
        self.group = group_name(pop_id)
        self.consumer = consumer or f"{pop_id}:{os.getpid()}"
        super().__init__(
            self.stream,
            None,
            on_change,
            on_reset,
            backoff=Backoff(self.options.backoff_initial, self.options.backoff_max, rand),
            max_outage=self.options.max_outage,
            pending_reset="start: joined the consumer group" if self.options.start_reset else None,
            physical_time=physical_time,
        )
        self._joined = False
        self._read_pending = True  # re-read our own unacknowledged entries before new ones
        self._lag: GroupLag | None = None
        self._lag_checked_at: float | None = None  # monotonic

    # State for health and metrics -------------------------------------------

    @property
    def lag_entries(self) -> int | None:
        return None if self._lag is None else self._lag.lag

    def status(self) -> StreamStatus:
        return self._status(
            StreamStatus,
            stream=self.stream,
            group=self.group,
            consumer=self.consumer,
            lag_entries=self.lag_entries,
            entries_read=None if self._lag is None else self._lag.entries_read,
        )

    # The loop ---------------------------------------------------------------

    async def run(self) -> None:
        """Follow the stream until cancelled. Raises only CancelledError."""
        options = self.options
        client = redis_asyncio.Redis.from_url(
            self.redis_url,
            decode_responses=True,
            # Entries are peer data: bytes that are not UTF-8 must reach parse_entry (which refuses them)
            # rather than raise UnicodeDecodeError out of the read and stop the follower on every retry.
            encoding_errors="surrogateescape",
            socket_timeout=options.block + options.socket_margin,
            socket_connect_timeout=options.connect_timeout,
        )
        try:
            while True:
                _raise_if_cancelled()
                try:
                    if not self._joined:
                        await self._join(client)
                    self._run_pending_reset()
                    await self._check_lag(client)
                    await self._read(client)
                except _GroupGone:
                    await self._restart_from_head(client, "the stream or the consumer group vanished (NOGROUP)")
                except (RedisError, OSError, TimeoutError, CallbackFailed) as exc:
                    await self._fail_and_wait(exc)
        finally:
            await client.aclose()

    async def _join(self, client: redis_asyncio.Redis) -> None:
        """Create the group at ``$`` unless it exists; drop dead predecessors' consumers."""
        try:
            await client.xgroup_create(self.stream, self.group, id="$", mkstream=True)
            log.info("feed %s: created consumer group %s", self.stream, self.group)
        except ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise
        for consumer in await client.xinfo_consumers(self.stream, self.group):
            name, idle_ms = consumer.get("name"), _int_or_none(consumer.get("idle"))
            stale = idle_ms is not None and idle_ms >= self.options.stale_consumer_idle * 1000
            if isinstance(name, str) and name != self.consumer and stale:
                # Its unacknowledged entries go with it; the start purge covers them.
                await client.xgroup_delconsumer(self.stream, self.group, name)
        self._joined = True
        self._read_pending = True
        self._connected = True

    async def _restart_from_head(self, client: redis_asyncio.Redis, reason: str) -> None:
        """Move the group to ``$`` (re-creating it if needed), then purge: the order of the module docstring."""
        log.warning("feed %s: %s; continuing from the head and purging", self.stream, reason)
        try:
            try:
                await client.xgroup_create(self.stream, self.group, id="$", mkstream=True)
            except ResponseError as exc:
                if not str(exc).startswith("BUSYGROUP"):
                    raise
                await client.xgroup_setid(self.stream, self.group, id="$")
            # Our unacknowledged entries predate the purge; drop them with the consumer.
            await client.xgroup_delconsumer(self.stream, self.group, self.consumer)
        except (RedisError, OSError, TimeoutError) as exc:
            # Not moved yet: the reset stays pending and the next attempt starts with the join.
            self._joined = False
            self._pending_reset = reason
            await self._fail_and_wait(exc)
            return
        self._position = None
        self._lag = None
        self._read_pending = False
        self._connected = True
        try:
            self._reset(reason)
        except CallbackFailed as exc:
            await self._fail_and_wait(exc)

    async def _check_lag(self, client: redis_asyncio.Redis) -> None:
        """Read the group's lag at most every `lag_interval`; a lag we cannot trust restarts from the head."""
        now = time.monotonic()
        if self._lag_checked_at is not None and now - self._lag_checked_at < self.options.lag_interval:
            return
        async with client.pipeline(transaction=True) as pipe:
            pipe.xinfo_groups(self.stream)
            pipe.xinfo_stream(self.stream)
            try:
                groups, stream = await pipe.execute()
            except ResponseError as exc:
                if "no such key" in str(exc).lower():
                    raise _GroupGone from exc
                raise
        mine = next((group for group in groups if group.get("name") == self.group), None)
        if mine is None:
            raise _GroupGone
        self._lag_checked_at = now
        try:
            first = stream.get("first-entry")
            lag = GroupLag(
                lag=_int_or_none(mine.get("lag")),
                entries_read=_int_or_none(mine.get("entries-read")),
                pending=_int_or_none(mine.get("pending")) or 0,
                last_delivered=parse_stream_id(mine.get("last-delivered-id")),
                length=_int_or_none(stream.get("length")) or 0,
                entries_added=_int_or_none(stream.get("entries-added")) or 0,
                first_entry=None if not first else parse_stream_id(first[0]),
                last_generated=parse_stream_id(stream.get("last-generated-id")),
            )
        except PeerError as exc:
            raise RedisError(f"XINFO answered something unexpected: {exc.message}") from exc
        problem = lag_problem(lag)
        if problem is not None:
            await self._restart_from_head(client, problem)
            return
        self._lag = lag
        if lag.lag == 0:
            self._verified_at = self._physical_time()

    async def _read(self, client: redis_asyncio.Redis) -> None:
        options = self.options
        from_id = "0" if self._read_pending else ">"
        # BLOCK only at the head (behind, we want an answer at once); never BLOCK 0, which waits forever.
        block_ms = None if self._read_pending or not self._caught_up else max(1, int(options.block * 1000))
        try:
            answer = await client.xreadgroup(self.group, self.consumer, {self.stream: from_id}, count=options.batch,
                                             block=block_ms)  # fmt: skip
        except ResponseError as exc:
            if _is_nogroup(exc):
                raise _GroupGone from exc
            raise
        received_at = self._physical_time()
        self._connected = True
        entries: list[tuple[str, dict[str, str]]] = []
        streams: Any = answer or []  # RESP2: [[key, [(id, fields), …]]]
        for _stream, batch in streams:
            entries.extend(batch)
        if self._read_pending and not entries:
            self._read_pending = False  # our own backlog is done; now the new entries
            self._recovered()
            return
        await self._apply(client, entries)
        # Only now, not when Redis answered: a callback that keeps failing must keep backing off, and keep
        # the outage clock running, although every read before it succeeds.
        self._recovered()
        if from_id == ">":
            was_caught_up = self._caught_up
            self._caught_up = len(entries) < options.batch
            if not entries and was_caught_up:
                # A BLOCK that ran out with nothing new: nothing was published meanwhile.
                self._verified_at = received_at

    async def _apply(self, client: redis_asyncio.Redis, entries: list[tuple[str, dict[str, str]]]) -> None:
        done: list[str] = []
        try:
            for entry_id, fields in entries:
                try:
                    entry = parse_entry(entry_id, fields or {})
                except PeerError as exc:
                    # We cannot tell what this entry changed: purge rather than guess.
                    self._reset(f"unusable entry: {exc.message}")
                    self._position = None
                    done.append(entry_id)
                    continue
                verdict = judge(self._position, entry)
                if verdict.reset is not None:
                    self._reset(verdict.reset)
                if verdict.apply:
                    self._apply_change(entry.item_id, entry.version, entry.patch)
                # Only once applied: an entry whose callback failed is read again and must not look like a duplicate.
                if entry.is_reset or verdict.apply:
                    self._position = entry.pos
                    self._applied_stamp(entry.hlc_wall)
                done.append(entry_id)
        finally:
            if done:
                # A failed XACK only means these entries come again, as duplicates that are skipped.
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await client.xack(self.stream, self.group, *done)

    # Failures -------------------------------------------------------------

    async def _fail_and_wait(self, exc: Exception) -> None:
        # After any failure: our own unacknowledged entries first, and a fresh look at the group's lag.
        self._read_pending = True
        self._lag_checked_at = None
        await asyncio.sleep(self._failed(exc))
        self._check_outage()


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation that a library swallowed.

    redis-py 8's asyncio client can return a command's answer although the
    task was cancelled while that answer was being read (seen with XREADGROUP
    BLOCK); the loop would then carry on forever, and the next read would
    hang on a connection the cancellation left behind. `cancelling()` still
    counts the request, so we honour it here.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _is_nogroup(exc: ResponseError) -> bool:
    return str(exc).startswith("NOGROUP")


def _int_or_none(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None
