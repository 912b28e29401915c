"""Stock decisions for one item: what a hold takes and what a release gives back.

These functions never touch storage. A backend locks the item row, calls them
with the current item, and writes the returned item in the same transaction, so
the decision and the write are atomic and two buyers can never get the same
unit. Seated blocks sell named seats; general-admission pools sell a count.

Stock a shard holds (origin.lease) stays in the item's ``available`` count —
readers see everything somebody may still sell — but the origin's own holds
may only take what is not allotted: ``available − allotted`` units of a GA
pool, and nothing of a seated block while it is leased (409 ``leased``; the
buyer goes to the shard that owns it, which the shard map names).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Final

from origin.errors import BadRequest, ClientError, InsufficientStock, StoredDataError
from origin.model import GENERAL_ADMISSION, Item

# Box offices cap tickets per transaction (commonly 4–10) to slow scalpers;
# this is the hard ceiling, the configured limit may be lower.
MAX_QTY_PER_HOLD: Final = 50


class ItemLeased(ClientError):
    """A seated block is leased whole to a shard: the origin takes no hold on it until the lease ends."""

    status = 409
    code = "leased"


@dataclasses.dataclass(frozen=True, slots=True)
class Taken:
    item: Item  # the item after the hold, version and stamp bumped
    seats: tuple[str, ...]  # seats the hold owns; empty for GA


def take(
    item: Item,
    qty: int,
    requested_seats: Sequence[str] | None,
    *,
    hlc: str,
    now: datetime,
    allotted: int = 0,
    leased: bool = False,
) -> Taken:
    """Take `qty` units of `item` for a hold.

    For a seated block, `requested_seats` names the seats wanted (all or none
    are taken); without it the first contiguous run of free seats is chosen, or
    else the lowest free seats. `allotted` is how many of the available units
    shards hold and `leased` whether any shard holds stock of the item. Raises
    InsufficientStock when the stock is not there, ItemLeased for a leased
    seated block, and BadRequest for a request that can never succeed on this item.
    """
    if qty < 1:  # parse_hold_request refuses it too; a zero-seat run would crash _choose_seats
        raise BadRequest(f"qty must be at least 1, got {qty}")
    if item.kind == GENERAL_ADMISSION:
        if requested_seats:
            raise BadRequest(f"item {item.id} is general admission: do not name seats")
        if qty > item.available - allotted:
            raise InsufficientStock(
                f"item {item.id} has {item.available - allotted} left here ({allotted} more with shards), {qty} asked"
            )
        return Taken(_bump(item, available=item.available - qty, hlc=hlc, now=now), ())

    if leased:
        raise ItemLeased(f"item {item.id} is leased to a shard: hold its seats there")
    if requested_seats is not None:
        seats = tuple(requested_seats)
        if len(seats) != qty or len(set(seats)) != qty:
            raise BadRequest("seats must name exactly qty distinct seats")
        unknown = [seat for seat in seats if seat not in item.seats]
        if unknown:
            raise BadRequest(f"item {item.id} has no seat(s) {', '.join(unknown[:5])}")
        free = set(item.available_seats)
        if any(seat not in free for seat in seats):
            raise InsufficientStock(f"requested seats of item {item.id} are taken")
    else:
        if qty > len(item.available_seats):
            raise InsufficientStock(f"item {item.id} has {len(item.available_seats)} seats left, {qty} asked")
        seats = _choose_seats(item, qty)
    chosen = set(seats)
    remaining = tuple(seat for seat in item.available_seats if seat not in chosen)
    return Taken(
        _bump(item, available=len(remaining), available_seats=remaining, hlc=hlc, now=now),
        seats,
    )


def give_back(item: Item, qty: int, seats: Sequence[str], *, hlc: str, now: datetime) -> Item:
    """Return the stock of an expired hold to `item`.

    Raises StoredDataError when the stock was not taken from this item: that
    would mean stored state broke the one-writer rule and must not be papered
    over by inventing capacity.
    """
    if item.kind == GENERAL_ADMISSION:
        if item.available + qty > item.capacity:
            raise StoredDataError(f"returning {qty} to item {item.id} would exceed its capacity")
        return _bump(item, available=item.available + qty, hlc=hlc, now=now)
    returned = set(seats)
    if len(returned) != qty or returned & set(item.available_seats) or not returned <= set(item.seats):
        raise StoredDataError(f"seats {sorted(returned)} were not held from item {item.id}")
    free = returned | set(item.available_seats)
    remaining = tuple(seat for seat in item.seats if seat in free)
    return _bump(item, available=len(remaining), available_seats=remaining, hlc=hlc, now=now)


def sell_leased(item: Item, qty: int, seats: Sequence[str], *, hlc: str, now: datetime) -> Item:
    """`item` after a shard sold `qty` units (the named `seats` of a seated block) from its allotment.

    The caller (origin.leasing) checked the allotment; this only keeps the row
    consistent. Raises StoredDataError when the units are not in the row.
    """
    if item.kind == GENERAL_ADMISSION:
        if seats or not 1 <= qty <= item.available:
            raise StoredDataError(f"item {item.id} cannot record a sale of {qty}: {item.available} available")
        return _bump(item, available=item.available - qty, hlc=hlc, now=now)
    sold = set(seats)
    if len(sold) != qty or not sold <= set(item.available_seats):
        raise StoredDataError(f"seats {sorted(sold)} of item {item.id} are not available to record a sale")
    remaining = tuple(seat for seat in item.available_seats if seat not in sold)
    return _bump(item, available=len(remaining), available_seats=remaining, hlc=hlc, now=now)


def _choose_seats(item: Item, qty: int) -> tuple[str, ...]:
    # Prefer seats next to each other: a party of four wants four together.
    position = {seat: index for index, seat in enumerate(item.seats)}
    free = item.available_seats
    for start in range(len(free) - qty + 1):
        run = free[start : start + qty]
        if position[run[-1]] - position[run[0]] == qty - 1:
            return run
    return free[:qty]


def _bump(
    item: Item,
    *,
    available: int,
    hlc: str,
    now: datetime,
    available_seats: tuple[str, ...] | None = None,
) -> Item:
    return dataclasses.replace(
        item,
        available=available,
        available_seats=item.available_seats if available_seats is None else available_seats,
        version=item.version + 1,
        hlc=hlc,
        updated_at=now,
    )
