"""The regional shard role: bootstrap from an upstream's snapshot, then follow its change feed.

A shard is the origin's read API over the events placed in its region. It
keeps them current from an *upstream* (the primary, or another shard) like this:

1. **Bootstrap.** Read filtered snapshot pages (``filter=event:…`` or
   ``filter=region:R``) and remember the position of the *first* page: later
   pages may be newer, and replaying the feed from the first position leaves
   newer rows alone because a row only moves to a higher version
   (origin.replica). The checkpoint is written with the last page, so a shard
   that dies mid-bootstrap bootstraps again instead of following from a
   position whose rows it never received.
2. **Follow.** Long-poll ``/v1/changes?since=checkpoint``; apply each batch in
   one transaction that also moves the checkpoint and appends the shard's own
   change records (its POPs follow the shard's ``/v1/changes``; the shard's
   store has its own epoch).
3. **Gaps.** A record the replica core calls a GAP rolls the batch back; the
   shard refetches those items from ``GET /v1/items/{id}``, applies them, and
   retries the batch, whose gap records are then duplicates. Nothing is skipped.
4. **Re-snapshot** on ``410`` or an upstream epoch change. After an epoch
   change rows are *replaced* (versions of two histories do not compare); rows
   the new snapshot lacks are deleted.
5. **Event metadata** (names, descriptions, display prices) merges by
   last-write-wins (origin.lww): an event record (``op`` = ``event``) and the
   event documents of every snapshot page are merged field by field with our
   copy by their HLC stamps, so a duplicate, an older record or an older
   snapshot changes nothing. What a merge changed is republished in the
   shard's own feed as an event record.
6. **Placement.** Events added to the shard's set are copied with a filtered
   snapshot read *after* the current checkpoint, so the feed that continues
   from the checkpoint only replays records the snapshot already covers.
   Dropped events are deleted, with delete records in the shard's own feed.

Sync state table (``SyncState``; one loop in :meth:`Shard.run` moves it):

================  =========================================  ==================
state             on                                         next
================  =========================================  ==================
BOOTSTRAPPING     snapshot complete, checkpoint written      FOLLOWING
FOLLOWING         410, epoch change, or upstream history     RESNAPSHOTTING
                  behind our checkpoint
RESNAPSHOTTING    snapshot complete, checkpoint written      FOLLOWING
any               upstream or store error                    same state, after a
                                                             jittered backoff
================  =========================================  ==================

Reads are served only once bootstrapped, not while re-snapshotting (rows may
mix two histories), and while the lag in seconds (how long since the shard was
last caught up with the head the upstream showed it) is at most ``max_lag``;
otherwise they, and ``/v1/health``, answer 503 with Retry-After so POPs fail over.

The upstream's HTTP client and the parsers that check its answers are in
origin.upstream. A read of an event the shard map places here but whose copy
is not complete answers 503 too (:meth:`Shard.placement_error`), never 404.

Writes are not sold here yet: :func:`forward_write` sends them to the upstream
unchanged (selling within a lease is a later step and replaces that function).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

import aiohttp
from aiohttp import web

from ops.metrics import Registry
from origin import lww
from origin.changefeed import EVENT_RECORD_VERSION, OP_DELETE, OP_EVENT, ChangeRecord, Position, item_patch
from origin.errors import OriginError, PositionGone, ServerError, StoredDataError
from origin.model import Event, Item
from origin.replica import Outcome, apply_record, replace_row
from origin.settings import OriginSettings
from origin.store.base import MAX_PAGE_ROWS, Store, Transaction

# The upstream client and parsers moved to origin.upstream; re-exported here for
# the callers and tests that import them from origin.shard.
from origin.upstream import FOLLOW_BATCH as FOLLOW_BATCH
from origin.upstream import MAX_UPSTREAM_BODY as MAX_UPSTREAM_BODY
from origin.upstream import ChangesDoc as ChangesDoc
from origin.upstream import SnapshotDoc as SnapshotDoc
from origin.upstream import Upstream as Upstream
from origin.upstream import UpstreamError as UpstreamError
from origin.upstream import _inflate as _inflate
from origin.upstream import parse_changes as parse_changes
from origin.upstream import parse_snapshot as parse_snapshot
from origin.upstream import read_capped
from origin.upstream import shard_events as shard_events
from origin.upstream import upstream_session as upstream_session

# Event ids per snapshot filter: 200 ids of ~10 characters keep the request
# line far below aiohttp's 8 KiB limit (1,000 ids were refused with 400).
MAX_FILTER_IDS: Final = 200

log = logging.getLogger("boxoffice.shard")

# The checkpoint row of the one upstream a shard follows.
UPSTREAM_SOURCE: Final = "upstream"
# Backoff after a failed step: doubles from the first to the cap, with full
# jitter so shards restarted together do not hammer the upstream in step.
BACKOFF_FIRST: Final = 0.2
BACKOFF_CAP: Final = 10.0
# Failures counted towards the backoff: 2**32 × BACKOFF_FIRST is far past the
# cap, while an unbounded count overflows the float product after ~1,024
# failures (a few hours of upstream outage) and would end the sync loop.
MAX_BACKOFF_DOUBLINGS: Final = 32
# Event ids whose region was asked of the upstream and is not ours; bounded so
# a long-lived region shard does not grow without limit.
MAX_FOREIGN_EVENTS: Final = 100_000
# Headers a forwarded write carries upstream and back.
_FORWARD_REQUEST_HEADERS: Final = ("Idempotency-Key", "Content-Type")
_FORWARD_RESPONSE_HEADERS: Final = ("Location", "Idempotent-Replayed", "Cache-Control", "Retry-After")


class SyncState(enum.Enum):
    BOOTSTRAPPING = "bootstrapping"
    FOLLOWING = "following"
    RESNAPSHOTTING = "resnapshotting"


class ShardNotReady(ServerError):
    """Reads are refused until the shard is bootstrapped and within its lag bound."""

    status = 503
    code = "shard_not_ready"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Resnapshot(Exception):
    """Internal: the feed cannot continue from our checkpoint."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class _Gaps(Exception):
    """Internal: a batch met records whose predecessors are missing; roll back and refetch."""

    def __init__(self, item_ids: set[str]) -> None:
        super().__init__(f"{len(item_ids)} item(s) need a refetch")
        self.item_ids = item_ids


@dataclass
class ShardMetrics:
    registry: Registry

    def __post_init__(self) -> None:
        r = self.registry
        self.applied = r.counter("shard_records_total", "Upstream change records by outcome", ("outcome",))
        self.rows_copied = r.counter("shard_snapshot_rows_total", "Item rows received in snapshot pages")
        self.bytes_received = r.counter("shard_bytes_received_total", "Upstream response bytes on the wire")
        self.resnapshots = r.counter("shard_resnapshots_total", "Full re-snapshots by reason", ("reason",))
        self.gaps = r.counter("shard_gaps_total", "Items refetched after a gap in their versions")
        self.errors = r.counter("shard_sync_errors_total", "Failed sync steps by error code", ("code",))
        self.lag_records = r.gauge("shard_lag_records", "Upstream head minus checkpoint, in records")
        self.lag_seconds = r.gauge("shard_lag_seconds", "Seconds since the shard was last caught up")


# Lag ---------------------------------------------------------------------------


@dataclass
class Lag:
    """Lag bookkeeping; the clock is monotonic seconds, passed in."""

    records: int = 0
    caught_up_at: float | None = None
    head: Position | None = None

    def observe(self, checkpoint: Position, head: Position, now: float) -> None:
        self.head = head
        self.records = max(0, head.seq - checkpoint.seq) if head.epoch == checkpoint.epoch else head.seq
        if self.records == 0:
            self.caught_up_at = now

    def seconds(self, now: float) -> float | None:
        return None if self.caught_up_at is None else max(0.0, now - self.caught_up_at)


# The follower --------------------------------------------------------------------


@dataclass
class Shard:
    """One shard's follower. :meth:`run` is its only long-running task."""

    settings: OriginSettings
    store: Store
    session: aiohttp.ClientSession
    metrics: ShardMetrics
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    rng: random.Random = field(default_factory=random.Random)
    state: SyncState = SyncState.BOOTSTRAPPING
    bootstrapped: bool = False
    checkpoint: Position | None = None
    mirrored: set[str] = field(default_factory=set)
    desired: frozenset[str] | None = None  # None: every event of the region
    last_error: str | None = None
    lag: Lag = field(default_factory=Lag)
    _foreign: set[str] = field(default_factory=set)
    _regions: dict[str, str] = field(default_factory=dict)

    NOT_READY_RETRY_AFTER: ClassVar[int] = 2

    def __post_init__(self) -> None:
        self.upstream = Upstream(self.session, self.settings.upstream, self.settings.upstream_timeout, self.metrics)
        if self.settings.events and not self.settings.shardmap_url:
            self.desired = frozenset(self.settings.events)
        self.metrics.lag_records.set(0)
        self.metrics.lag_seconds.set(0)

    # Public view -----------------------------------------------------------------
    def ready_error(self) -> ShardNotReady | None:
        """Why reads must be refused right now, or None when they may be served."""
        if not self.bootstrapped:
            return ShardNotReady(f"shard is {self.state.value}: not bootstrapped yet", self.NOT_READY_RETRY_AFTER)
        if self.state is SyncState.RESNAPSHOTTING:
            # Mid re-snapshot the rows may mix two histories; POPs go to the secondary meanwhile.
            return ShardNotReady("shard is re-snapshotting from its upstream", self.NOT_READY_RETRY_AFTER)
        behind = self.lag.seconds(self.clock())
        if behind is None or behind > self.settings.max_lag:
            shown = "unknown" if behind is None else f"{behind:.1f} s"
            return ShardNotReady(
                f"shard lags its upstream by {shown} (max_lag {self.settings.max_lag:g} s)", self.NOT_READY_RETRY_AFTER
            )
        return None

    def placement_error(self, event_id: str | None) -> ShardNotReady | None:
        """A 503 for an event placed on this shard whose copy is not complete yet, or None.

        A POP caches a 404; an event the shard map just placed here is not
        missing, only not copied yet, so it is refused with Retry-After and
        the POP fails over. `event_id` None is a miss whose event is unknown
        (an item id): refused while any placed event is still being copied.
        """
        if self.desired is None:
            return None
        pending = self.desired - self.mirrored
        if not pending or (event_id is not None and event_id not in pending):
            return None
        what = f"event {event_id}" if event_id is not None else f"{len(pending)} newly placed event(s)"
        return ShardNotReady(f"shard is still copying {what}", self.NOT_READY_RETRY_AFTER)

    def health(self) -> dict[str, Any]:
        behind = self.lag.seconds(self.clock())
        self.metrics.lag_seconds.set(behind or 0.0)
        return {
            "role": "shard",
            "shard_id": self.settings.shard_id,
            "region": self.settings.region,
            "upstream": self.settings.upstream,
            "state": self.state.value,
            "serving": self.ready_error() is None,
            "checkpoint": None if self.checkpoint is None else self.checkpoint.encode(),
            "upstream_head": None if self.lag.head is None else self.lag.head.encode(),
            "lag": {"records": self.lag.records, "seconds": None if behind is None else round(behind, 3)},
            "events": sorted(self.mirrored),
            "last_error": self.last_error,
        }

    # Main loop -------------------------------------------------------------------
    async def run(self) -> None:
        """Sync until cancelled; every failure is logged and retried after a jittered backoff."""
        await self._load_local_state()
        async with asyncio.TaskGroup() as tasks:
            if self.settings.shardmap_url:
                tasks.create_task(self._poll_shardmap())
            tasks.create_task(self._sync_forever())

    async def _sync_forever(self) -> None:
        failures = 0
        while True:
            try:
                await self.step()
            except Exception as exc:
                # Bad upstream answers are UpstreamError; anything else is our bug,
                # logged with its traceback, and still only delays the next try.
                failures = min(failures + 1, MAX_BACKOFF_DOUBLINGS)
                self.last_error = exc.message if isinstance(exc, OriginError) else f"{type(exc).__name__}: {exc}"
                self.metrics.errors.inc(exc.code if isinstance(exc, OriginError) else "internal_error")
                if not isinstance(exc, OriginError):
                    log.exception("shard sync step crashed")
                delay = self.rng.uniform(0, min(BACKOFF_CAP, BACKOFF_FIRST * 2**failures))
                log.warning("shard sync failed (%s); retrying in %.2f s", self.last_error, delay)
                await asyncio.sleep(delay)
            else:
                failures = 0

    async def step(self) -> None:
        """One unit of work: bootstrap, re-snapshot, reconcile placement, or apply one feed batch."""
        if self.desired is None and self.settings.shardmap_url:
            await asyncio.sleep(min(1.0, self.settings.shardmap_interval))  # no shard map read yet
            return
        if self.checkpoint is None:
            await self.full_snapshot("bootstrap")
            return
        try:
            await self._reconcile_placement()
            await self._follow_once()
        except (_Resnapshot, PositionGone) as exc:
            reason = exc.reason if isinstance(exc, _Resnapshot) else "gone"
            log.warning("re-snapshotting from %s: %s", self.settings.upstream, exc)
            self.metrics.resnapshots.inc(reason)
            self.state = SyncState.RESNAPSHOTTING
            await self.full_snapshot(reason)

    async def _load_local_state(self) -> None:
        raw = await self.store.checkpoint(UPSTREAM_SOURCE)
        self.checkpoint = None if raw is None else Position.parse(raw)
        events = await _all_events(self.store)
        self.mirrored = {event.id for event in events}
        self._regions = {event.id: event.region for event in events}
        if self.checkpoint is not None:
            self.bootstrapped = True
            self.state = SyncState.FOLLOWING
            log.info("resuming from checkpoint %s with %d event(s)", raw, len(self.mirrored))

    # Snapshots ---------------------------------------------------------------------
    def _filter(self, event_ids: Iterable[str] | None) -> list[str]:
        if event_ids is None:
            return [f"region:{self.settings.region}"]
        ids = sorted(event_ids)
        if not ids:
            # The snapshot's position is needed even with nothing to copy; no event has this id.
            return ["event:-"]
        step = MAX_FILTER_IDS
        return ["event:" + ",".join(ids[i : i + step]) for i in range(0, len(ids), step)]

    async def full_snapshot(self, reason: str) -> None:
        """Copy every mirrored row, replace what a new history changed, drop what it lacks, checkpoint."""
        previous = self.checkpoint
        events = None if self.desired is None else set(self.desired)
        seen_items: set[str] = set()
        seen_events: set[str] = set()
        first: Position | None = None
        for snapshot_filter in self._filter(events):
            after: str | None = None
            while True:
                page = await self.upstream.snapshot(snapshot_filter, after)
                if first is None:
                    first = page.position
                elif page.position.epoch != first.epoch:
                    raise UpstreamError("upstream epoch changed during a snapshot; starting over")
                force = previous is None or previous.epoch != first.epoch
                async with self.store.transaction() as tx:
                    seen_events.update(await self._put_metadata(tx, page, keep=events))
                    await self._put_rows(tx, page.items, force=force, seen=seen_items)
                if page.next_after is None:
                    break
                after = page.next_after
        assert first is not None
        wanted = seen_events if events is None else events
        async with self.store.transaction() as tx:
            for event_id in sorted(self.mirrored - wanted):
                await self._drop_event(tx, event_id)
            for event_id in sorted(wanted):
                for item in await self.store.event_items(event_id):
                    if item.id not in seen_items:
                        await tx.delete_item(item.id)
                        await self._append_delete(tx, item)
            await tx.set_checkpoint(UPSTREAM_SOURCE, first.encode())
        self.mirrored = set(wanted)
        self.checkpoint = first
        self.bootstrapped = True
        self.state = SyncState.FOLLOWING
        self.lag.observe(first, first, self.clock())
        log.info("%s complete at %s: %d row(s), %d event(s)", reason, first.encode(), len(seen_items), len(wanted))

    async def _put_metadata(
        self, tx: Transaction, page: SnapshotDoc, keep: frozenset[str] | set[str] | None
    ) -> set[str]:
        # Venue documents come from the upstream, the one writer of them, so
        # the newest snapshot page wins. Event metadata merges by
        # last-write-wins (origin.lww): a snapshot read before an edit we
        # already applied from the feed must not undo it.
        for venue in page.venues:
            await tx.put_venue(venue)
        placed = {event.id for event in page.events if keep is None or event.id in keep}
        for event in page.events:
            if event.id in placed:
                await self._merge_event(tx, await tx.event_for_update(event.id), event.to_document(), whole=True)
                self._regions[event.id] = event.region
        return placed

    async def _put_rows(self, tx: Transaction, items: Sequence[Item], *, force: bool, seen: set[str]) -> None:
        for item in items:
            seen.add(item.id)
            self.metrics.rows_copied.inc()
            current = await tx.item_for_update(item.id)
            old = None if current is None else current.to_document()
            new = replace_row(old, item.to_document(), force=force)
            if new is not None:
                await self._write_row(tx, old, Item.from_document(new))

    async def _write_row(self, tx: Transaction, old: dict[str, Any] | None, item: Item) -> None:
        await tx.put_replica_item(item, self._regions.get(item.event_id, ""))
        await tx.append_change(
            item.id, item.version, item.hlc, "upsert", item_patch(old, item.to_document()), self.now()
        )

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.wall_clock(), UTC)

    async def _append_delete(self, tx: Transaction, item: Item) -> None:
        # One above the row's version, so a consumer's replica core applies it
        # (a delete at the row's own version would read as a duplicate).
        await tx.append_change(item.id, item.version + 1, item.hlc, OP_DELETE, {}, self.now())

    async def _drop_event(self, tx: Transaction, event_id: str) -> None:
        for item in await tx.drop_event(event_id):
            await self._append_delete(tx, item)

    # Placement -----------------------------------------------------------------------
    async def _reconcile_placement(self) -> None:
        if self.desired is None:
            return
        added = self.desired - self.mirrored
        dropped = self.mirrored - self.desired
        if dropped:
            async with self.store.transaction() as tx:
                for event_id in sorted(dropped):
                    await self._drop_event(tx, event_id)
            self.mirrored -= dropped
            log.info("dropped %d event(s): %s", len(dropped), ", ".join(sorted(dropped)))
        if added:
            await self._add_events(added)

    async def _add_events(self, added: frozenset[str]) -> None:
        """Copy newly placed events with a filtered snapshot; the feed then continues from our checkpoint."""
        assert self.checkpoint is not None
        seen: set[str] = set()
        for snapshot_filter in self._filter(added):
            after: str | None = None
            while True:
                page = await self.upstream.snapshot(snapshot_filter, after)
                if page.position.epoch != self.checkpoint.epoch:
                    raise _Resnapshot("epoch", f"upstream epoch is now {page.position.epoch}")
                if page.position.seq < self.checkpoint.seq:
                    raise _Resnapshot("behind", "upstream snapshot is older than our checkpoint")
                async with self.store.transaction() as tx:
                    await self._put_metadata(tx, page, keep=added)
                    await self._put_rows(tx, page.items, force=False, seen=seen)
                if page.next_after is None:
                    break
                after = page.next_after
        self.mirrored |= added
        log.info("added %d event(s) with %d row(s): %s", len(added), len(seen), ", ".join(sorted(added)))

    async def _poll_shardmap(self) -> None:
        while True:
            try:
                doc = await self.upstream.get_json(self.settings.shardmap_url)
                self.desired = frozenset(shard_events(doc, self.settings.shard_id))
            except OriginError as exc:
                self.metrics.errors.inc("shardmap")
                log.warning("shard map %s: %s", self.settings.shardmap_url, exc.message)
            except Exception:
                self.metrics.errors.inc("shardmap")
                log.exception("reading the shard map %s crashed", self.settings.shardmap_url)
            await asyncio.sleep(self.settings.shardmap_interval)

    # Following ---------------------------------------------------------------------
    async def _follow_once(self) -> None:
        assert self.checkpoint is not None
        wait = min(self.settings.follow_wait, self.settings.max_lag / 3)
        batch = await self.upstream.changes(self.checkpoint, wait)
        if batch.head.epoch != self.checkpoint.epoch:
            raise _Resnapshot("epoch", f"upstream epoch is now {batch.head.epoch}")
        if batch.head.seq < self.checkpoint.seq:
            raise _Resnapshot("behind", f"upstream head {batch.head.seq} is behind our checkpoint")
        if batch.records:
            if self.desired is None:
                await self._learn_events(batch.records)
            for _ in range(2):
                try:
                    await self.apply_batch(batch)
                    break
                except _Gaps as gaps:
                    await self._refetch(gaps.item_ids)
            else:
                raise UpstreamError("records still skip versions after refetching their items")
        self.checkpoint = batch.next
        self.lag.observe(batch.next, batch.head, self.clock())
        self.metrics.lag_records.set(self.lag.records)
        self.metrics.lag_seconds.set(self.lag.seconds(self.clock()) or 0.0)

    async def apply_batch(self, batch: ChangesDoc) -> None:
        """Apply one feed batch and move the checkpoint to its end, in one transaction.

        Raises _Gaps (after rolling back) when a record skips versions of an item we hold.
        """
        gaps: set[str] = set()
        outcomes: dict[Outcome, int] = {}
        async with self.store.transaction() as tx:
            for record in batch.records:
                if record.op == OP_EVENT:
                    outcome = await self._apply_event_record(tx, record)
                    outcomes[outcome] = outcomes.get(outcome, 0) + 1
                    continue
                current = await tx.item_for_update(record.item_id)
                old = None if current is None else current.to_document()
                applied = apply_record(old, record, mirrors=self.mirrored)
                outcomes[applied.outcome] = outcomes.get(applied.outcome, 0) + 1
                if applied.outcome is Outcome.GAP:
                    gaps.add(record.item_id)
                elif applied.deleted and current is not None:
                    await tx.delete_item(record.item_id)
                    await tx.append_change(record.item_id, record.version, record.hlc, OP_DELETE, {}, self.now())
                elif applied.outcome is Outcome.APPLIED and applied.row is not None:
                    try:
                        item = Item.from_document(applied.row)
                    except StoredDataError as exc:
                        raise UpstreamError(f"record {record.pos.encode()} yields a bad item: {exc.message}") from exc
                    await self._write_row(tx, old, item)
            if gaps:
                raise _Gaps(gaps)
            await tx.set_checkpoint(UPSTREAM_SOURCE, batch.next.encode())
        for outcome, count in outcomes.items():
            self.metrics.applied.inc(outcome.value, amount=count)

    async def _apply_event_record(self, tx: Transaction, record: ChangeRecord) -> Outcome:
        """Merge an event record into our copy of the event (origin.lww); republish what it changed.

        A duplicate or older record merges to what we hold and changes nothing.
        """
        if record.item_id not in self.mirrored:
            return Outcome.NOT_OURS
        current = await tx.event_for_update(record.item_id)
        if current is None:
            return Outcome.NOT_OURS
        try:
            unstamped = [name for name, field in lww.metadata_of(record.patch).items() if field.stamp is None]
            if unstamped:
                # Every edit is stamped (lww.record_patch). An unstamped value would merge by
                # the JSON tie-break alone: it could change a never-edited field of ours, and
                # record_patch would republish nothing of it.
                raise ValueError(f"{unstamped[0]!r} has no stamp in {lww.STAMPS_KEY}")
            changed = await self._merge_event(tx, current, record.patch, whole=False)
        except ValueError as exc:
            raise UpstreamError(f"record {record.pos.encode()} has a bad event patch: {exc}") from exc
        return Outcome.APPLIED if changed else Outcome.DUPLICATE

    async def _merge_event(
        self, tx: Transaction, current: Event | None, incoming: dict[str, Any], *, whole: bool
    ) -> bool:
        """Write `current` merged with `incoming`; True when it changed.

        `incoming` is a whole event document from the upstream (`whole`: its
        fields other than metadata replace ours) or an event record's patch.

        When a held event changed, the shard's own feed gets an event record
        with the fields that changed, so its POPs and followers see the edit.
        Raises ValueError on stamps that do not decode (origin.lww).
        """
        before = None if current is None else current.to_document()
        if before is None:
            after = dict(incoming)
        else:
            merged = lww.merge(lww.metadata_of(before), lww.metadata_of(incoming))
            after = lww.with_metadata(incoming if whole else before, merged)
        if after == before:
            return False
        try:
            event = Event.from_document(after)
        except StoredDataError as exc:
            raise ValueError(exc.message) from exc
        await tx.put_event(event)
        patch = lww.record_patch(before, after)
        if before is not None and patch:
            stamp = max(patch[lww.STAMPS_KEY].values())  # the newest edit it carries
            await tx.append_change(event.id, EVENT_RECORD_VERSION, stamp, OP_EVENT, patch, self.now())
        return True

    async def _refetch(self, item_ids: set[str]) -> None:
        self.metrics.gaps.inc(amount=len(item_ids))
        fetched = {item_id: await self.upstream.item(item_id) for item_id in sorted(item_ids)}
        async with self.store.transaction() as tx:
            for item_id, item in fetched.items():
                current = await tx.item_for_update(item_id)
                if item is None:
                    if current is not None:
                        await tx.delete_item(item_id)
                        await self._append_delete(tx, current)
                    continue
                await self._put_rows(tx, [item], force=False, seen=set())

    async def _learn_events(self, records: Sequence[ChangeRecord]) -> None:
        """Region mode: ask the upstream about events first seen in a creation record."""
        unknown = {
            record.patch["event_id"]
            for record in records
            if isinstance(record.patch.get("event_id"), str)
            and record.patch["event_id"] not in self.mirrored
            and record.patch["event_id"] not in self._foreign
        }
        for event_id in sorted(unknown):
            found = await self.upstream.event(event_id)
            if found is None or found[0].region != self.settings.region:
                if len(self._foreign) >= MAX_FOREIGN_EVENTS:
                    self._foreign.clear()
                self._foreign.add(event_id)
                continue
            event, venue = found
            async with self.store.transaction() as tx:
                if venue is not None:
                    await tx.put_venue(venue)
                await self._merge_event(tx, await tx.event_for_update(event.id), event.to_document(), whole=True)
            self._regions[event_id] = event.region
            self.mirrored.add(event_id)


async def _all_events(store: Store) -> list[Event]:
    found: list[Event] = []
    after: str | None = None
    while True:
        events = await store.events(None, after, MAX_PAGE_ROWS)
        found.extend(events)
        if len(events) < MAX_PAGE_ROWS:
            return found
        after = events[-1].id


# Writes ----------------------------------------------------------------------------


async def forward_write(shard: Shard, request: web.Request, body: bytes) -> web.Response:
    """Send a write to the upstream unchanged and relay its answer (status, body, key headers).

    The shard owns no stock yet, so every hold and order goes to the upstream,
    which is its owner or forwards again; the Idempotency-Key travels along so
    a retried request is still answered once. Selling within a lease replaces
    this function.
    """
    url = shard.settings.upstream.rstrip("/") + request.path_qs
    headers = {name: request.headers[name] for name in _FORWARD_REQUEST_HEADERS if name in request.headers}
    headers["Accept-Encoding"] = "gzip"
    timeout = aiohttp.ClientTimeout(total=shard.settings.upstream_timeout)
    try:
        async with shard.session.request(request.method, url, data=body, headers=headers, timeout=timeout) as resp:
            raw = await read_capped(resp.content, MAX_UPSTREAM_BODY)
            payload = _inflate(raw, resp.headers.get("Content-Encoding", ""), url)
            relayed = {name: resp.headers[name] for name in _FORWARD_RESPONSE_HEADERS if name in resp.headers}
            return web.Response(
                body=payload, status=resp.status, headers=relayed, content_type=resp.content_type or "application/json"
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UpstreamError(f"forwarding {request.method} {request.path} upstream failed: {exc}") from exc
