"""The storage interface every inventory backend implements.

A backend offers plain reads and one kind of write: a :class:`Transaction`,
inside which the ledger (``origin.ledger``) locks rows, decides with the pure
cores, writes, and appends change records. The contract each backend keeps:

* ``item_for_update`` / ``hold_for_update`` / ``event_for_update`` lock the
  row until commit, so two transactions touching one item (or one event's
  metadata, origin.metadata_edits) run one after the other;
* ``append_change`` hands out feed sequence numbers with no gaps *in commit
  order* — a reader that has seen sequence N will never later find a committed
  record below N. The ledger calls it last, just before commit, to keep the
  serialising section short;
* ``claim_idempotency_key`` waits for a concurrent transaction holding the same
  key, so a retried request is answered from the first one's result.

A follower (a regional shard, origin.shard) writes through the same
transactions: ``put_replica_item``/``delete_item`` change its copy of a row
(origin.replica decided the row only moves to a higher version),
``append_change`` records what it applied in its *own* feed, and
``set_checkpoint`` moves its position in the upstream's feed, all committed
together, so a crash never leaves rows and checkpoint disagreeing.

Leases (origin.leasing) keep an item's lease book beside its row: the last
epoch issued and one :class:`StoredAllotment` per shard holding stock. They are
read and written only after ``item_for_update`` locked the item, so the item
row's lock serialises every change to its book, and the book is written in the
same transaction as the item row it splits.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from origin.changefeed import CHANGE_OPS, ChangeOp, ChangeRecord, Position
from origin.errors import StoredDataError
from origin.model import Event, Hold, Item, Order, Venue

# Rows per page of a snapshot or an event listing. A page of item documents is
# about 0.5 KiB each, so 1,000 keep one response near half a MiB.
MAX_PAGE_ROWS: Final = 1_000
# Records per change-feed batch.
MAX_CHANGE_BATCH: Final = 1_000


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A write's response remembered under its Idempotency-Key."""

    fingerprint: str
    status: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class FeedBounds:
    epoch: str
    retained_after: int  # highest pruned sequence number (0 when nothing was pruned)
    head: int  # highest committed sequence number

    @property
    def head_position(self) -> Position:
        return Position(self.epoch, self.head)


@dataclass(frozen=True, slots=True)
class SnapshotPage:
    position: Position  # the feed position this page is consistent with
    items: tuple[Item, ...]
    next_after: str | None  # pass as `after` for the next page; None on the last page


@dataclass(frozen=True, slots=True)
class StoredAllotment:
    """One shard's share of an item's stock, as the origin records it (origin.lease.Allotment + seats)."""

    item_id: str
    shard: str
    epoch: int
    units: int  # unsold units the shard may sell
    seats: tuple[str, ...]  # a leased seated block: its unsold seats; empty for GA
    expires_at: datetime  # by the origin's clock, millisecond precision


def allotment_row(row: Sequence[Any]) -> StoredAllotment:
    """Decode (item_id, shard, epoch, units, seats JSON, expires_ms)."""
    item_id, shard, epoch, units, seats, expires_ms = row
    try:
        labels = json.loads(seats)
    except ValueError as exc:
        raise StoredDataError(f"allotment of {item_id} to {shard}: seats do not parse: {exc}") from exc
    if not isinstance(labels, list) or not all(isinstance(seat, str) for seat in labels):
        raise StoredDataError(f"allotment of {item_id} to {shard}: seats are not a list of labels")
    expires_at = datetime.fromtimestamp(int(expires_ms) / 1000, UTC)
    return StoredAllotment(str(item_id), str(shard), int(epoch), int(units), tuple(labels), expires_at)


class Transaction(abc.ABC):
    """One write transaction. Methods raise ServerError subclasses only."""

    @abc.abstractmethod
    async def item_for_update(self, item_id: str) -> Item | None: ...

    @abc.abstractmethod
    async def put_item(self, item: Item) -> None: ...

    @abc.abstractmethod
    async def event_for_update(self, event_id: str) -> Event | None:
        """Read an event and lock it until commit (metadata edits and merges read-modify-write it)."""

    @abc.abstractmethod
    async def hold_for_update(self, hold_id: str) -> Hold | None: ...

    @abc.abstractmethod
    async def put_hold(self, hold: Hold) -> None: ...

    @abc.abstractmethod
    async def put_order(self, order: Order) -> None: ...

    @abc.abstractmethod
    async def append_change(
        self, item_id: str, version: int, hlc: str, op: ChangeOp, patch: dict[str, Any], now: datetime
    ) -> int:
        """Append a change record; returns its sequence number."""

    @abc.abstractmethod
    async def claim_idempotency_key(self, scope: str, fingerprint: str, now: datetime) -> StoredResponse | None:
        """Claim `scope` for this transaction, or return the response stored under it."""

    @abc.abstractmethod
    async def complete_idempotency_key(self, scope: str, status: int, body: dict[str, Any]) -> None: ...

    # Lease books (origin.leasing); call after item_for_update locked the item
    @abc.abstractmethod
    async def lease_state(self, item_id: str) -> tuple[int, list[StoredAllotment]]:
        """The item's last issued epoch (0: never granted) and its allotments, in shard order."""

    @abc.abstractmethod
    async def put_lease_state(self, item_id: str, epoch: int, allotments: Sequence[StoredAllotment]) -> None:
        """Replace the item's epoch and allotments."""

    # Follower writes (origin.shard) --------------------------------------
    @abc.abstractmethod
    async def put_replica_item(self, item: Item, region: str) -> None:
        """Insert or replace the follower's copy of `item` (the caller checked its version)."""

    @abc.abstractmethod
    async def delete_item(self, item_id: str) -> None: ...

    @abc.abstractmethod
    async def put_event(self, event: Event) -> None:
        """Insert or replace an event document."""

    @abc.abstractmethod
    async def put_venue(self, venue: Venue) -> None:
        """Insert or replace a venue document."""

    @abc.abstractmethod
    async def drop_event(self, event_id: str) -> list[Item]:
        """Delete an event and its items; returns the items deleted (for the follower's delete records)."""

    @abc.abstractmethod
    async def checkpoint(self, source: str) -> str | None:
        """The position text stored for `source`, read inside this transaction."""

    @abc.abstractmethod
    async def set_checkpoint(self, source: str, position: str) -> None: ...

    @abc.abstractmethod
    async def clear_checkpoint(self, source: str) -> None: ...


class Store(abc.ABC):
    """An inventory database. `open` before use, `close` after."""

    @property
    @abc.abstractmethod
    def epoch(self) -> str:
        """The change-feed history id of this database."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, create the schema if missing, and load the epoch."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A write transaction: commits on normal exit, rolls back on exception."""

    # Reads ---------------------------------------------------------------
    @abc.abstractmethod
    async def item(self, item_id: str) -> Item | None: ...

    @abc.abstractmethod
    async def event(self, event_id: str) -> Event | None: ...

    @abc.abstractmethod
    async def venue(self, venue_id: str) -> Venue | None: ...

    @abc.abstractmethod
    async def events(self, region: str | None, after: str | None, limit: int) -> list[Event]:
        """Events ordered by id, optionally of one region, with ids above `after`."""

    @abc.abstractmethod
    async def event_items(self, event_id: str) -> list[Item]: ...

    @abc.abstractmethod
    async def checkpoint(self, source: str) -> str | None:
        """A follower's committed position in `source`'s feed, or None before its first."""

    @abc.abstractmethod
    async def hold(self, hold_id: str) -> Hold | None: ...

    @abc.abstractmethod
    async def order(self, order_id: str) -> Order | None: ...

    @abc.abstractmethod
    async def due_holds(self, now: datetime, limit: int) -> list[str]:
        """Ids of active holds whose expiry is at or before `now`."""

    @abc.abstractmethod
    async def allotments(self, shard: str | None) -> list[StoredAllotment]:
        """Live allotments (of one shard, or all), ordered by item and shard."""

    @abc.abstractmethod
    async def due_allotments(self, before: datetime, limit: int) -> list[str]:
        """Ids of items with an allotment expiring at or before `before` (the lease sweeper's work)."""

    # Change feed ---------------------------------------------------------
    @abc.abstractmethod
    async def feed_bounds(self) -> FeedBounds: ...

    @abc.abstractmethod
    async def changes(self, after: int, limit: int) -> list[ChangeRecord]:
        """Records with sequence numbers above `after`, in order."""

    @abc.abstractmethod
    async def snapshot(
        self, *, region: str | None, event_ids: Sequence[str] | None, after: str | None, limit: int
    ) -> SnapshotPage:
        """A page of items (ordered by id) read in one consistent view, with its position."""

    # Maintenance ---------------------------------------------------------
    @abc.abstractmethod
    async def load_catalog(
        self, venues: Sequence[Venue], events: Sequence[Event], items: Sequence[Item], now: datetime
    ) -> int:
        """Insert a catalog, appending an upsert record per item; returns items written."""

    @abc.abstractmethod
    async def prune(self, *, keep_changes: int, changes_before: datetime, idempotency_before: datetime) -> int:
        """Drop change records beyond retention and stale idempotency keys; returns records dropped.

        A change record is dropped when it is older than `changes_before` *or*
        more than `keep_changes` records behind the head.
        """

    @abc.abstractmethod
    async def counts(self) -> dict[str, int]:
        """Row counts for health and status output."""


# Shared row codecs --------------------------------------------------------


def dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def load(text: str | bytes) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise StoredDataError(f"stored JSON does not parse: {exc}") from exc
    if not isinstance(value, dict):
        raise StoredDataError("stored JSON is not an object")
    return value


def seats_json(seats: Sequence[str]) -> str:
    return json.dumps(list(seats), separators=(",", ":"), ensure_ascii=False)


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def change_record(epoch: str, seq: int, item_id: str, version: int, hlc: str, op: str, patch: str) -> ChangeRecord:
    if op not in CHANGE_OPS:
        raise StoredDataError(f"change {seq} has unknown op {op!r}")
    return ChangeRecord(Position(epoch, seq), item_id, version, hlc, op, load(patch))  # type: ignore[arg-type]


class HeadWatch:
    """Wakes change-feed long-polls when this process commits a change.

    Commits made by other processes (a second origin worker on the same
    PostgreSQL, `boxoffice origin seed` against a running server) are found by
    re-reading the head every `poll_interval` seconds while waiting.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, max_wait: float) -> None:
        """Return after the next commit notification or `max_wait` seconds."""
        event = self._event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), max_wait)
