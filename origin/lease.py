"""The one-writer rule: leases and escrow allotments of stock, fenced by epoch.

Every unit of an item's stock has exactly one writer. By default that is the
origin. For a hot event the origin hands stock to a regional shard so that the
shard can sell near its buyers:

* a *seated* block is leased whole (``exclusive``): while the lease lasts the
  shard is the block's only writer and the origin sells none of its seats;
* a *general-admission* pool is split: the origin escrows an *allotment* of
  units to each shard that asks and keeps selling from what stays free.

A :class:`Book` is the origin's record of one item: free units, units sold and
one :class:`Allotment` per shard holding stock. Each grant draws a new epoch
from the item's counter; every later write by the shard names that epoch, and a
write whose (shard, epoch) is not a live allotment is refused
(:class:`StaleEpoch`) — the epoch is a fencing token, so a shard that paused,
was partitioned or restarted from old state can never write over a newer grant.
A sale is stamped with the writer's clock (``written_at``): the shard stops
selling at its lease expiry by its own clock.

A dead shard cannot return its stock, and a live but partitioned one may still
be selling until its expiry *by its clock*, which may run behind ours by up to
``clock_skew_margin``. So a lapsed allotment stays frozen — nobody sells it —
until expiry + margin; only then does :func:`expire` give its units back to the
origin. That is a brief undersell, never an oversell. Safety never rests on
clocks: once an allotment has ended, its epoch fences every late write. The
margin only makes sure that the origin never takes an allotment back while the
shard's own clock still says its lease is valid, so its honest sales land.

Phases of one allotment by the origin's clock ``now``:

* ACTIVE: ``now < expires_at``;
* FROZEN: ``expires_at ≤ now < expires_at + clock_skew_margin``;
* RECLAIMABLE: ``now ≥ expires_at + clock_skew_margin`` (until :func:`expire`).

Rules (each operation returns a new Book or raises; a refusal changes nothing):

=============  ==========================================  =======================================
operation      allowed when                                then
=============  ==========================================  =======================================
grant          the shard holds no allotment; seated: no    epoch += 1; seated: all free units
               allotment at all and free > 0; GA:          move to the shard; GA: `units` move;
               1 ≤ units ≤ free                            expires at now + lease_duration
sell           (shard, epoch) is live; written_at <        units −= qty; sold += qty
               expires_at; 1 ≤ qty ≤ units
origin_sell    seated: no allotment; 1 ≤ qty ≤ free        free −= qty; sold += qty
refill         (shard, epoch) is live and ACTIVE;          free −= units; allotment += units
               1 ≤ units ≤ free
return_units   (shard, epoch) is live, any phase; seated:  units go back to free; returning all
               whole block only                            (units=None) ends the allotment
renew          (shard, epoch) is live and ACTIVE           expires at max(old, now + duration)
expire         (the origin's sweeper, any time)            RECLAIMABLE allotments end; their
                                                           units go back to free
=============  ==========================================  =======================================

Refusals: a (shard, epoch) that is not live → :class:`StaleEpoch`; a lapsed
lease → :class:`LeaseLapsed`; a grant over a held lease or an origin sale of a
leased block → :class:`LeaseHeld`; not enough units → InsufficientStock; a
quantity below 1 or a partial return of a block → BadRequest.

Invariants (:func:`check_invariants`): 0 ≤ sold ≤ capacity; free ≥ 0 and every
allotment ≥ 0; free + Σ allotments + sold = capacity; the epoch only grows and
every live allotment's epoch is distinct and at most it; a seated block has at
most one allotment, and none of its units stay with the origin while leased.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Final

from origin.errors import BadRequest, ClientError, InsufficientStock, StoredDataError
from origin.model import GENERAL_ADMISSION, Item, ItemKind

ORIGIN: Final = "origin"  # the holder of every unit not in an allotment

# A shard renews about every third of this, so two lost renewals in a row are
# survivable; a dead shard's stock is frozen for at most this plus the margin.
DEFAULT_LEASE_DURATION: Final = timedelta(seconds=30)
# NTP keeps hosts within milliseconds of each other; two seconds covers a
# badly synchronised host with room to spare.
DEFAULT_CLOCK_SKEW_MARGIN: Final = timedelta(seconds=2)


class LeaseRefused(ClientError):
    """A write the one-writer rule does not allow."""

    status = 409
    code = "lease_refused"


class StaleEpoch(LeaseRefused):
    """The writer's (shard, epoch) no longer holds stock: a newer grant or the origin does."""

    code = "stale_epoch"


class LeaseLapsed(LeaseRefused):
    """The lease has expired: its stock is frozen until the origin takes it back."""

    code = "lease_lapsed"


class LeaseHeld(LeaseRefused):
    """The stock is already leased (a block to a shard, or this shard already holds an allotment)."""

    code = "lease_held"


class Phase(enum.Enum):
    ACTIVE = "active"
    FROZEN = "frozen"
    RECLAIMABLE = "reclaimable"


@dataclass(frozen=True, slots=True)
class LeasePolicy:
    lease_duration: timedelta = DEFAULT_LEASE_DURATION
    clock_skew_margin: timedelta = DEFAULT_CLOCK_SKEW_MARGIN

    def __post_init__(self) -> None:
        if self.lease_duration <= timedelta(0):
            raise ValueError(f"lease_duration must be positive, got {self.lease_duration}")
        if self.clock_skew_margin < timedelta(0):
            raise ValueError(f"clock_skew_margin must not be negative, got {self.clock_skew_margin}")


@dataclass(frozen=True, slots=True)
class Allotment:
    shard: str
    epoch: int  # the fencing token every write by this shard must carry
    units: int  # unsold units the shard may sell
    expires_at: datetime  # by the origin's clock


@dataclass(frozen=True, slots=True)
class Book:
    item_id: str
    exclusive: bool  # a seated block: leased whole to one shard at a time
    capacity: int
    origin_free: int  # units the origin may sell or grant
    sold: int = 0
    epoch: int = 0  # the last epoch issued for this item; 0 = never granted
    allotments: tuple[Allotment, ...] = ()  # in shard order, one per shard

    @property
    def owner(self) -> str:
        """The block's writer for a seated item ("origin" or a shard id); always "origin" for GA's free pool."""
        if self.exclusive and self.allotments:
            return self.allotments[0].shard
        return ORIGIN

    def allotment(self, shard: str) -> Allotment | None:
        return next((allotment for allotment in self.allotments if allotment.shard == shard), None)


def open_book(item: Item) -> Book:
    """A book for `item` with everything that is not taken owned by the origin."""
    return new_book(item.id, item.kind, item.capacity, sold=item.capacity - item.available)


def new_book(item_id: str, kind: ItemKind, capacity: int, *, sold: int = 0) -> Book:
    if capacity < 0 or not 0 <= sold <= capacity:
        raise BadRequest(f"item {item_id}: need 0 ≤ sold ≤ capacity, got sold={sold} capacity={capacity}")
    return Book(item_id, kind != GENERAL_ADMISSION, capacity, capacity - sold, sold)


def phase(allotment: Allotment, now: datetime, policy: LeasePolicy) -> Phase:
    if now < allotment.expires_at:
        return Phase.ACTIVE
    if now < allotment.expires_at + policy.clock_skew_margin:
        return Phase.FROZEN
    return Phase.RECLAIMABLE


def grant(
    book: Book,
    shard: str,
    now: datetime,
    policy: LeasePolicy,
    units: int | None = None,
    *,
    origin_holding: bool = False,
) -> Book:
    """Lease the block (seated; `units` must be None) or escrow `units` (GA) to `shard`.

    `origin_holding` says the origin has live holds on this item. A seated
    block is then refused (LeaseHeld): a hold that expired during the lease
    would hand its seats back into a block another writer owns.

    The new allotment, with its epoch, is ``result.allotment(shard)``.
    Raises LeaseHeld, InsufficientStock or BadRequest (rules table).
    """
    if shard == ORIGIN:
        raise BadRequest("the origin cannot be granted its own stock")
    if book.allotment(shard) is not None:
        raise LeaseHeld(f"item {book.item_id}: shard {shard} already holds stock; renew or refill it")
    if book.exclusive:
        if units is not None:
            raise BadRequest(f"item {book.item_id} is a seated block: it is leased whole, do not pass units")
        if book.allotments:
            raise LeaseHeld(f"item {book.item_id} is leased to {book.owner}")
        if origin_holding:
            raise LeaseHeld(f"item {book.item_id} has live holds at the origin; lease it once they end")
        units = book.origin_free
        if units == 0:
            raise InsufficientStock(f"item {book.item_id} has no free seats to lease")
    elif units is None or units < 1:
        raise BadRequest(f"item {book.item_id}: an allotment needs units ≥ 1, got {units}")
    elif units > book.origin_free:
        raise InsufficientStock(f"item {book.item_id} has {book.origin_free} free, {units} asked")
    epoch = book.epoch + 1
    allotment = Allotment(shard, epoch, units, now + policy.lease_duration)
    return replace(
        book,
        origin_free=book.origin_free - units,
        epoch=epoch,
        allotments=tuple(sorted((*book.allotments, allotment), key=lambda held: held.shard)),
    )


def sell(book: Book, shard: str, epoch: int, qty: int, written_at: datetime) -> Book:
    """Apply a shard's sale of `qty` units, made at `written_at` by the shard's clock.

    Raises StaleEpoch, LeaseLapsed, InsufficientStock or BadRequest.
    """
    allotment = _live(book, shard, epoch)
    if written_at >= allotment.expires_at:
        raise LeaseLapsed(f"item {book.item_id}: shard {shard}'s lease expired at {allotment.expires_at}")
    _check_qty(book, qty, allotment.units, f"shard {shard} holds")
    return replace(book, sold=book.sold + qty, allotments=_with(book, replace(allotment, units=allotment.units - qty)))


def origin_sell(book: Book, qty: int) -> Book:
    """The origin sells `qty` of its free units. Raises LeaseHeld, InsufficientStock or BadRequest."""
    if book.exclusive and book.allotments:
        raise LeaseHeld(f"item {book.item_id} is leased to {book.owner}; forward the write")
    _check_qty(book, qty, book.origin_free, "the origin has")
    return replace(book, origin_free=book.origin_free - qty, sold=book.sold + qty)


def origin_release(book: Book, qty: int) -> Book:
    """Give back `qty` units the origin had taken for a hold that expired or was cancelled.

    Raises LeaseHeld (a seated block leased meanwhile cannot happen when grants
    respect `origin_holding`) or BadRequest.
    """
    if qty < 1 or qty > book.sold:
        raise BadRequest(f"item {book.item_id}: cannot release {qty} of {book.sold} taken units")
    if book.exclusive and book.allotments:
        raise LeaseHeld(f"item {book.item_id} is leased to {book.owner}; its seats are not the origin's")
    return replace(book, origin_free=book.origin_free + qty, sold=book.sold - qty)


def refill(book: Book, shard: str, epoch: int, units: int, now: datetime) -> Book:
    """Move `units` more of the origin's free units into the shard's active allotment.

    Raises StaleEpoch, LeaseLapsed, InsufficientStock or BadRequest.
    """
    allotment = _live(book, shard, epoch)
    if now >= allotment.expires_at:
        raise LeaseLapsed(f"item {book.item_id}: shard {shard}'s lease expired; ask for a new grant")
    _check_qty(book, units, book.origin_free, "the origin has")
    return replace(
        book,
        origin_free=book.origin_free - units,
        allotments=_with(book, replace(allotment, units=allotment.units + units)),
    )


def return_units(book: Book, shard: str, epoch: int, units: int | None = None) -> Book:
    """Give `units` of the shard's allotment back to the origin; None returns all and ends it.

    Allowed in any phase: handing stock back early only shortens a freeze.
    Raises StaleEpoch, InsufficientStock or BadRequest.
    """
    allotment = _live(book, shard, epoch)
    if units is None:
        remaining = tuple(held for held in book.allotments if held.shard != shard)
        return replace(book, origin_free=book.origin_free + allotment.units, allotments=remaining)
    if book.exclusive:
        raise BadRequest(f"item {book.item_id} is a seated block: return it whole")
    _check_qty(book, units, allotment.units, f"shard {shard} holds")
    return replace(
        book,
        origin_free=book.origin_free + units,
        allotments=_with(book, replace(allotment, units=allotment.units - units)),
    )


def renew(book: Book, shard: str, epoch: int, now: datetime, policy: LeasePolicy) -> Book:
    """Extend an active lease to ``now + lease_duration`` (never shortening it).

    Raises StaleEpoch or LeaseLapsed: a lapsed lease may be about to be
    reclaimed, so its holder must ask for a new grant.
    """
    allotment = _live(book, shard, epoch)
    if now >= allotment.expires_at:
        raise LeaseLapsed(f"item {book.item_id}: shard {shard}'s lease expired at {allotment.expires_at}")
    expires_at = max(allotment.expires_at, now + policy.lease_duration)
    return replace(book, allotments=_with(book, replace(allotment, expires_at=expires_at)))


def expire(book: Book, now: datetime, policy: LeasePolicy) -> Book:
    """End every RECLAIMABLE allotment and give its unsold units back to the origin."""
    reclaimed = [held for held in book.allotments if phase(held, now, policy) is Phase.RECLAIMABLE]
    if not reclaimed:
        return book
    return replace(
        book,
        origin_free=book.origin_free + sum(held.units for held in reclaimed),
        allotments=tuple(held for held in book.allotments if held not in reclaimed),
    )


def check_invariants(book: Book) -> None:
    """Raise StoredDataError when `book` breaks a rule no sequence of operations can break."""
    problems: list[str] = []
    if not 0 <= book.sold <= book.capacity:
        problems.append(f"sold {book.sold} outside 0..{book.capacity}")
    if book.origin_free < 0 or any(held.units < 0 for held in book.allotments):
        problems.append("negative free or allotted units")
    allotted = sum(held.units for held in book.allotments)
    if book.origin_free + allotted + book.sold != book.capacity:
        problems.append(f"free {book.origin_free} + allotted {allotted} + sold {book.sold} ≠ {book.capacity}")
    shards = [held.shard for held in book.allotments]
    epochs = [held.epoch for held in book.allotments]
    if shards != sorted(set(shards)) or ORIGIN in shards:
        problems.append("allotments not one per shard in shard order")
    if len(set(epochs)) != len(epochs) or any(not 1 <= epoch <= book.epoch for epoch in epochs):
        problems.append(f"allotment epochs {epochs} not distinct within 1..{book.epoch}")
    if book.exclusive and (len(book.allotments) > 1 or (book.allotments and book.origin_free)):
        problems.append("a seated block split between writers")
    if problems:
        raise StoredDataError(f"lease book of item {book.item_id}: {'; '.join(problems)}")


def _live(book: Book, shard: str, epoch: int) -> Allotment:
    allotment = book.allotment(shard)
    if allotment is None or allotment.epoch != epoch:
        current = "none" if allotment is None else str(allotment.epoch)
        raise StaleEpoch(f"item {book.item_id}: shard {shard} wrote with epoch {epoch}, live epoch is {current}")
    return allotment


def _with(book: Book, updated: Allotment) -> tuple[Allotment, ...]:
    return tuple(updated if held.shard == updated.shard else held for held in book.allotments)


def _check_qty(book: Book, qty: int, have: int, who: str) -> None:
    if qty < 1:
        raise BadRequest(f"item {book.item_id}: quantity must be at least 1, got {qty}")
    if qty > have:
        raise InsufficientStock(f"item {book.item_id}: {who} {have}, {qty} asked")
