"""Push invalidation: follow an upstream's change feed and tell the POP what changed.

How it works: :class:`FeedFollower` takes a position from ``GET
/v1/snapshot?limit=1`` (the rows are not needed: the POP's cache fills on
demand), then long-polls ``GET /v1/changes?since=POS&limit=N&wait=W`` and
calls ``on_change(item_id, version, patch)`` for each record, in feed order,
advancing its position record by record. The POP evicts (or replaces) the
item's document and its event page there.

Whenever the follower cannot vouch that it saw every change since the POP's
cached entries were fetched, it calls ``on_reset(reason)`` and the POP purges
every item entry. That happens:

- at start, after the first snapshot position (entries cached before that
  position may predate changes we will never be shown);
- on ``410 Gone`` (the position was pruned, is ahead of the head, or belongs to
  another history): a new position is taken from the snapshot *first*, then
  ``on_reset`` runs, so that anything fetched after the purge is at least as
  new as the position the feed continues from;
- on a gap inside a batch (a sequence number skipped: the origin's feed is
  gapless, so this is a broken upstream; never skipped silently);
- once per outage, when the feed has been unreachable for ``max_outage``, or
  the POP's callbacks kept failing that long (an outage ends only once a batch
  was applied, never merely because the upstream answered).
  Choice: we purge *during* the outage rather than keep serving entries whose
  invalidation we can no longer promise. The POP's reads fail over to the
  secondary shard or the primary, so purged entries refill from a source that
  is current; what is lost is the ``stale-if-error`` fallback for items of
  that shard, which we accept because availability that may be minutes old
  without saying so is exactly what push invalidation exists to prevent. On
  recovery the follower resumes from its old position (every missed change
  is delivered then, or the upstream answers 410 and we reset again).

Delivery is at-least-once: a record at or below our position (a duplicate) is
ignored, and a failure in the middle of a batch resumes after the last record
applied. Connection errors, timeouts, 5xx, malformed answers and failing
callbacks back off exponentially with jitter (``backoff_initial`` doubling up
to ``backoff_max``), and the backoff starts over only once a batch was
applied: a callback that keeps raising is retried ever more slowly, not every
``backoff_initial``. Every request has a finite timeout (the long-poll
``wait`` plus ``request_margin``). The resets, failures, backoff and outage
rules are shared with the Redis Streams follower in edge.followcore; this
module is the HTTP transport.

Race the POP must close itself: a miss fetched before a change commits may
arrive after ``on_change`` evicted the item; the POP should not store an item
document whose ``version`` is below the last version announced for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from yarl import URL

from edge.errors import PeerError
from edge.followcore import (
    DEFAULT_BACKOFF_INITIAL,
    DEFAULT_BACKOFF_MAX,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_OUTAGE,
    SECOND,
    CallbackFailed,
    FollowerCore,
    FollowHealth,
    OnChange,
    OnReset,
    parse_position,
    validate_retry_options,
)
from edge.upstream import read_capped
from ops.backoff import Backoff
from origin.changefeed import Position
from origin.hlc import Stamp

log = logging.getLogger("boxoffice.edge.feed")

MiB: Final = 1024 * 1024

# The origin refuses `limit` above 1,000 (origin.store.base.MAX_CHANGE_BATCH)
# and answers 500 records by default; 500 keeps one answer under ~1 MB.
DEFAULT_BATCH_LIMIT: Final = 500
MAX_BATCH_LIMIT: Final = 1_000
# Below the origin's default `feed_max_wait` (30 s), which answers 400 beyond it.
DEFAULT_LONG_POLL_WAIT: Final = 10 * SECOND
# Time for the upstream to answer after `wait` ran out, and for the body to arrive.
DEFAULT_REQUEST_MARGIN: Final = 5 * SECOND
# 1,000 records with whole-document patches (a new item) are ~2 MB; 16 MiB
# refuses a runaway answer without refusing any legitimate one.
MAX_RESPONSE_BYTES: Final = 16 * MiB
# One long-poll at a time, plus the snapshot request.
_CONNECTIONS: Final = 2


@dataclass(frozen=True, slots=True)
class FollowOptions:
    """Limits and timeouts of one follower; every one is a setting of the POP."""

    batch_limit: int = DEFAULT_BATCH_LIMIT
    long_poll_wait: float = DEFAULT_LONG_POLL_WAIT
    request_margin: float = DEFAULT_REQUEST_MARGIN
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    backoff_initial: float = DEFAULT_BACKOFF_INITIAL
    backoff_max: float = DEFAULT_BACKOFF_MAX
    max_outage: float | None = DEFAULT_MAX_OUTAGE  # None: never purge because of an outage
    max_response_bytes: int = MAX_RESPONSE_BYTES

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        if not 1 <= self.batch_limit <= MAX_BATCH_LIMIT:
            raise ValueError(f"batch_limit: must be 1 to {MAX_BATCH_LIMIT}")
        for name in ("long_poll_wait", "request_margin", "connect_timeout", "backoff_initial", "backoff_max"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: must be a finite number of seconds >= 0")
        if self.request_margin <= 0 or self.connect_timeout <= 0 or self.backoff_initial <= 0:
            raise ValueError("request_margin, connect_timeout and backoff_initial must be positive")
        validate_retry_options(self.backoff_initial, self.backoff_max, self.max_outage)
        if self.max_response_bytes < 1024:
            raise ValueError("max_response_bytes: must be at least 1024")


@dataclass(frozen=True, slots=True)
class FeedRecord:
    pos: Position
    item_id: str
    version: int
    hlc_wall: float | None  # POSIX seconds of the record's HLC stamp; None when it does not parse
    patch: dict[str, Any]


@dataclass(frozen=True, slots=True)
class FeedBatch:
    records: list[FeedRecord]
    next: Position
    head: Position


def parse_batch(doc: object) -> FeedBatch:
    """A `/v1/changes` answer. Raises PeerError on anything but the contract's shape.

    The HLC stamp only feeds the lag figure, so one that does not parse is
    recorded as unknown instead of stopping invalidation.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("changes"), list):
        raise PeerError("change feed answer is not an object with a `changes` list")
    records = []
    for index, raw in enumerate(doc["changes"]):
        if not isinstance(raw, dict):
            raise PeerError(f"change {index} is not an object")
        item_id, version, patch = raw.get("item_id"), raw.get("version"), raw.get("patch")
        if not isinstance(item_id, str) or not item_id:
            raise PeerError(f"change {index} has no item_id")
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise PeerError(f"change {index} ({item_id}) has no integer version")
        if not isinstance(patch, dict):
            raise PeerError(f"change {index} ({item_id}) has a patch that is not an object")
        hlc_wall = None
        if isinstance(raw.get("hlc"), str):
            try:
                hlc_wall = Stamp.decode(raw["hlc"]).wall_ms / 1000
            except (ValueError, OverflowError):  # OverflowError: a wall time too large for a float
                hlc_wall = None
        records.append(FeedRecord(parse_position(raw.get("pos"), f"change {index} pos"), item_id, version,
                                  hlc_wall, patch))  # fmt: skip
    return FeedBatch(records, parse_position(doc.get("next"), "next"), parse_position(doc.get("head"), "head"))


@dataclass(frozen=True, slots=True, kw_only=True)
class FollowerStatus(FollowHealth):
    """What `/_edge/health` and `/metrics` report about one HTTP follower."""

    upstream: str

    def to_document(self) -> dict[str, Any]:
        return {"upstream": self.upstream, **self._health_document()}


class _PositionGone(Exception):
    """The upstream answered 410: re-snapshot and purge."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FeedFollower(FollowerCore):
    """Follows one upstream's change feed over HTTP long-poll until cancelled.

    Args:
        upstream: base URL of the origin or shard, e.g. ``http://127.0.0.1:8100``.
        on_change: called once per change record, in feed order, with the item
            id, its new version and the RFC 7396 merge patch. Must not block.
        on_reset: called with a reason when the POP must purge every item entry.
        options: limits and timeouts (validated here).
        position: resume from this ``EPOCH:SEQ`` instead of a fresh snapshot
            position (no start-up reset then).
        physical_time: POSIX seconds, for the lag figure.
        rand: floats in [0, 1) for the backoff jitter.
    """

    def __init__(
        self,
        upstream: str,
        on_change: OnChange,
        on_reset: OnReset,
        *,
        options: FollowOptions | None = None,
        position: str | None = None,
        physical_time: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.options = options or FollowOptions()
        self.options.validate()
        self.upstream = upstream.rstrip("/")
        self._changes_url = URL(self.upstream + "/v1/changes")
        self._snapshot_url = URL(self.upstream + "/v1/snapshot")
        super().__init__(
            self.upstream,
            None if position is None else parse_position(position, "position"),
            on_change,
            on_reset,
            backoff=Backoff(self.options.backoff_initial, self.options.backoff_max, rand),
            max_outage=self.options.max_outage,
            pending_reset=None if position is not None else "start: following from a new snapshot",
            physical_time=physical_time,
        )
        self._consecutive_gone = 0

    def status(self) -> FollowerStatus:
        return self._status(FollowerStatus, upstream=self.upstream)

    # The loop ---------------------------------------------------------------

    async def run(self) -> None:
        """Follow the feed until cancelled. Raises only CancelledError."""
        options = self.options
        timeout = aiohttp.ClientTimeout(
            total=options.long_poll_wait + options.request_margin, sock_connect=options.connect_timeout
        )
        connector = aiohttp.TCPConnector(limit=_CONNECTIONS)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector, auto_decompress=True) as session:
            while True:
                try:
                    if self._position is None or self._pending_reset is not None:
                        await self._take_snapshot_position(session)
                    await self._poll(session)
                except _PositionGone as gone:
                    log.warning("feed %s: %s; re-snapshotting and purging", self.upstream, gone.reason)
                    self._connected = True  # reachable; the backoff goes on until a batch is applied
                    self._pending_reset = gone.reason
                    self._position = None
                    self._caught_up = False
                    self._consecutive_gone += 1
                    if self._consecutive_gone > 1:
                        # A fresh snapshot position that is gone at once: a broken upstream, not a pruned feed.
                        await asyncio.sleep(self._backoff.next_delay())
                except (aiohttp.ClientError, TimeoutError, PeerError, CallbackFailed) as exc:
                    await self._fail_and_wait(exc)

    async def _take_snapshot_position(self, session: aiohttp.ClientSession) -> None:
        """Take the snapshot position, then (and only then) run the pending reset."""
        if self._position is None:
            doc = await self._get_json(session, self._snapshot_url, {"limit": "1"})
            if not isinstance(doc, dict):
                raise PeerError("snapshot answer is not an object")
            self._position = parse_position(doc.get("position"), "snapshot position")
            # The snapshot position is the head as of this answer: we are at it.
            self._verified_at = self._physical_time()
            self._caught_up = True
            self._connected = True
        self._run_pending_reset()

    async def _poll(self, session: aiohttp.ClientSession) -> None:
        assert self._position is not None
        # Long-poll only when we know we are at the head. Otherwise (resumed, or
        # after a failure) ask without waiting: records come back at once if we
        # are behind, and an empty answer tells us we are caught up.
        wait = self.options.long_poll_wait if self._caught_up else 0.0
        params = {"since": self._position.encode(), "limit": str(self.options.batch_limit), "wait": f"{wait:g}"}
        batch = parse_batch(await self._get_json(session, self._changes_url, params))
        received_at = self._physical_time()
        self._connected = True
        self._consecutive_gone = 0
        self._apply(batch)
        self._caught_up = batch.next == batch.head
        if not batch.records and not self._caught_up:
            # Behind the head yet handed nothing: asking again at once would spin.
            raise PeerError(f"no changes after {batch.next.encode()} although the head is {batch.head.encode()}")
        # Only now, not when the upstream answered: a callback that keeps failing must keep backing off, and
        # keep the outage clock running, although every request before it succeeds.
        self._recovered()
        if self._caught_up:
            # To within one answer's transit: the upstream read its head just before answering.
            self._verified_at = received_at

    def _apply(self, batch: FeedBatch) -> None:
        since = self._position
        assert since is not None
        if batch.next.epoch != since.epoch or any(record.pos.epoch != since.epoch for record in batch.records):
            raise PeerError(f"the answer to since={since.encode()} holds positions of another history")
        for record in batch.records:
            if record.pos.seq <= since.seq:
                continue  # delivered again (at-least-once); applying is idempotent, skipping is too
            if record.pos.seq != since.seq + 1:
                self._reset(f"gap in the feed: {since.encode()} then {record.pos.encode()}")
            self._apply_change(record.item_id, record.version, record.patch)
            since = self._position = record.pos
            self._applied_stamp(record.hlc_wall)
        if batch.next.seq < since.seq:
            raise PeerError(f"next {batch.next.encode()} is behind the last change {since.encode()}")
        if batch.next.seq > since.seq:
            self._reset(f"gap in the feed: {since.encode()} then next {batch.next.encode()} with no records between")
        self._position = batch.next

    async def _get_json(self, session: aiohttp.ClientSession, url: URL, params: dict[str, str]) -> Any:
        async with session.get(url, params=params) as response:
            limit = self.options.max_response_bytes
            body = await read_capped(
                response, limit, lambda: PeerError(f"{response.url.path} answer is over {limit} bytes")
            )
            if response.status == 410:
                raise _PositionGone(_error_message(body) or "410 Gone from the change feed")
            if response.status != 200:
                message = _error_message(body) or response.reason or ""
                raise PeerError(f"{url.path} answered {response.status}: {message}"[:300])
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
            raise PeerError(f"{url.path} answered invalid JSON: {exc}") from None

    # Failures -------------------------------------------------------------

    async def _fail_and_wait(self, exc: Exception) -> None:
        await asyncio.sleep(self._failed(exc))
        self._check_outage()


def _error_message(body: bytes) -> str | None:
    try:
        doc = json.loads(body)
        message = doc["error"]["message"]
    except (ValueError, RecursionError, KeyError, TypeError):
        return None
    return message if isinstance(message, str) else None
