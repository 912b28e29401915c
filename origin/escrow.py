"""The shard's side of a lease or allotment: local holds, fenced sale reports, refills and returns.

A shard that the origin granted stock (:mod:`origin.lease`) keeps one
:class:`Escrow` per item: the epoch and expiry it was told, the units (and, for
a seated block, the seat labels) nobody holds, and its local holds. Holds are
taken and expire locally, with no round trip. An order is different: a hold
becomes an order only through a **sale report** to the origin, fenced by the
epoch (``lease.sell``; duplicates answered by :func:`settle_report`), and the
buyer is told "confirmed" only once the origin accepted it. So a shard that
crashes can lose holds (a brief undersell) but never an order the origin does
not know about.

Which clock decides what:

* **The lease's expiry is a point on the origin's clock**, set at grant and
  renewal. The shard compares it with *its own* clock and stops taking holds
  and writing sales ``safety_margin`` early (phase CLOSING). The origin freezes
  the stock until expiry + ``clock_skew_margin`` by its clock, so while clocks
  differ by less than that margin the origin never takes back stock that the
  shard still believes it may sell, and a report written in SELLING has at
  least ``safety_margin`` to arrive before it could be fenced. Clocks decide
  only liveness: safety comes from the epoch, which fences every late report.
* **A hold's expiry is the shard's own clock**: the hold is local state and
  nobody else can see it. A hold may outlive the current lease (holds are
  minutes, leases are renewed every few seconds), but it can only become an
  order while the lease is SELLING; once the shard's clock reaches CLOSING,
  every hold not already reported ends, as if it had expired.
* **A sale is stamped with the shard's clock** (``written_at``); the origin
  refuses a stamp at or after the expiry.

What happens to local state when the lease ends:

* **Lapse** (CLOSING by the shard's clock, no renewal): unreported holds end
  (:func:`expire_holds`), and :func:`return_request` hands the rest back —
  the whole allotment once no report is pending, else the free GA units.
* **A different epoch** (a new grant after the old one ended, or a report
  refused for a stale epoch): every hold of the old epoch is void. Its units
  went back to the origin with the old allotment; they are not carried over.
* **Crash**: holds and pending reports are volatile and are lost. The
  restarted shard cannot know which of its reports are still in flight, so it
  does not adopt its old allotment: :func:`restart` learns the epoch from the
  origin and returns that allotment whole, which fences every report of its
  past life, and then asks for a fresh grant.

Every unit the shard counts as free or held is backed by its allotment at the
origin: the shard adds units only when the origin answered (grant, refill) and
removes them before it asks (return), and a refused sale's units are written
off rather than resold. Lost messages therefore only make the shard hold less
than the origin thinks — undersell, never oversell.

Phases by the shard's clock ``now`` (:func:`phase`):

* NONE: the shard holds no stock of this item (never granted, returned or fenced);
* SELLING: ``now < expires_at − safety_margin``;
* CLOSING: otherwise, until the allotment is returned or fenced.

Rules (each function returns a new Escrow, or a request to send, or raises;
a refusal changes nothing):

================  ==================================  ==========================================
function          allowed when                        then
================  ==================================  ==========================================
take_hold         SELLING and enough free units       units (seats) move from free to a new hold
                  (seats); else NotOwner: forward     expiring at now + ttl
release_hold      the hold exists and is unreported   its units go back to free
expire_holds      any time                            unreported holds past expiry, or all of
                                                      them when not SELLING, go back to free
sale_request      the hold is unexpired and SELLING,  the hold is marked reported at now; a
                  or already reported (a resend)      resend gives the same report again
on_sale_accepted  the verdict names the live epoch    the hold ends as an order; sold += qty
on_sale_refused   the verdict names the live epoch    stale epoch: the escrow is fenced (NONE);
                                                      else the hold ends, its units written off
refill_request    GA, SELLING, free < low_watermark   ask for refill_units
on_refill         the answer names the live epoch     free += units
return_request    CLOSING and no report pending (or   everything goes back (NONE); GA: free
                  past expiry): all; GA: free above   units above the high watermark, or all
                  high_watermark, or any when CLOSING  free ones when CLOSING, go back
renew_request     SELLING, less than renew_before     ask to renew
                  left
on_renewed        the answer names the live epoch     expires_at = max(old, new)
on_grant          the grant's epoch is newer          the old epoch's holds are void; the grant's
                                                      units (seats) are free
restart           (after a crash)                     NONE at the origin's epoch; return that
                                                      allotment whole
================  ==================================  ==========================================

Answers that name another epoch, or a hold the shard no longer has, are late
or duplicated and change nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Final

from origin import lease
from origin.errors import BadRequest, HoldExpired, InsufficientStock, NotFound
from origin.lease import Allotment, Book, LeaseLapsed, LeaseRefused, StaleEpoch

# Leases last 30 s and renew with 20 s left, i.e. about every 10 s: two lost
# renewals in a row still leave the lease SELLING.
DEFAULT_RENEW_BEFORE: Final = timedelta(seconds=20)
# Time for a sale report written at the last moment to reach the origin
# (a few round trips with retries) before the shard's own expiry.
DEFAULT_SAFETY_MARGIN: Final = timedelta(seconds=5)


class NotOwner(LeaseRefused):
    """This shard may not sell the stock asked for right now: forward the write to the owner."""

    code = "not_owner"


class LocalPhase(enum.Enum):
    NONE = "none"
    SELLING = "selling"
    CLOSING = "closing"


@dataclass(frozen=True, slots=True)
class EscrowPolicy:
    safety_margin: timedelta = DEFAULT_SAFETY_MARGIN
    renew_before: timedelta = DEFAULT_RENEW_BEFORE
    low_watermark: int = 10  # GA: ask for more when fewer units than this are free
    refill_units: int = 40  # GA: how many to ask for
    high_watermark: int = 120  # GA: give back free units above this (demand fell)

    def __post_init__(self) -> None:
        if self.safety_margin < timedelta(0) or self.renew_before < timedelta(0):
            raise ValueError("safety_margin and renew_before must not be negative")
        if not 0 <= self.low_watermark <= self.high_watermark or self.refill_units < 1:
            raise ValueError(
                f"need 0 ≤ low_watermark ≤ high_watermark and refill_units ≥ 1, got "
                f"{self.low_watermark}, {self.high_watermark}, {self.refill_units}"
            )


@dataclass(frozen=True, slots=True)
class LocalHold:
    id: str  # also the sale id of its report: unique across shards (the adapter prefixes the shard)
    qty: int
    seats: tuple[str, ...]  # empty for GA
    expires_at: datetime  # by the shard's clock
    reported_at: datetime | None = None  # when its sale report was written; it no longer expires


@dataclass(frozen=True, slots=True)
class Escrow:
    item_id: str
    shard: str
    exclusive: bool  # a seated block, leased whole
    epoch: int = 0  # the last epoch learnt from the origin; 0 = never
    expires_at: datetime | None = None  # by the origin's clock; None = holds nothing (NONE)
    free: int = 0
    block_seats: tuple[str, ...] = ()  # seated: every seat of the grant, in block order
    free_seats: tuple[str, ...] = ()  # seated: the free ones, in block order
    holds: tuple[LocalHold, ...] = ()
    sold: int = 0  # units sold under this epoch, as the origin confirmed
    written_off: int = 0  # units of refused sales: still in the allotment, never resold

    def hold(self, hold_id: str) -> LocalHold | None:
        return next((held for held in self.holds if held.id == hold_id), None)

    @property
    def held(self) -> int:
        return sum(held.qty for held in self.holds)


@dataclass(frozen=True, slots=True)
class SaleReport:
    item_id: str
    shard: str
    epoch: int
    sale_id: str
    qty: int
    seats: tuple[str, ...]
    written_at: datetime  # by the shard's clock


@dataclass(frozen=True, slots=True)
class Verdict:
    sale_id: str
    epoch: int
    accepted: bool
    code: str  # "accepted" or the refusal's error code


@dataclass(frozen=True, slots=True)
class RefillRequest:
    item_id: str
    shard: str
    epoch: int
    units: int


@dataclass(frozen=True, slots=True)
class ReturnRequest:
    item_id: str
    shard: str
    epoch: int
    units: int | None  # None: everything, ending the allotment


@dataclass(frozen=True, slots=True)
class RenewRequest:
    item_id: str
    shard: str
    epoch: int


def new_escrow(item_id: str, shard: str, *, exclusive: bool) -> Escrow:
    if shard == lease.ORIGIN:
        raise BadRequest("the origin does not keep an escrow")
    return Escrow(item_id, shard, exclusive)


def phase(escrow: Escrow, now: datetime, policy: EscrowPolicy) -> LocalPhase:
    if escrow.expires_at is None:
        return LocalPhase.NONE
    if now < escrow.expires_at - policy.safety_margin:
        return LocalPhase.SELLING
    return LocalPhase.CLOSING


def take_hold(
    escrow: Escrow,
    hold_id: str,
    qty: int,
    seats: Sequence[str] | None,
    now: datetime,
    ttl: timedelta,
    policy: EscrowPolicy,
) -> Escrow:
    """Hold `qty` units (the named `seats`, or the first free ones) locally until now + ttl.

    Raises BadRequest (bad qty, seats, ttl or a reused id), NotOwner when the
    shard is not SELLING or (GA) has too few units — the origin may have
    them — and InsufficientStock when the shard owns the whole block and the
    seats are not free.
    """
    if qty < 1 or ttl <= timedelta(0):
        raise BadRequest(f"item {escrow.item_id}: need qty ≥ 1 and a positive ttl, got {qty}, {ttl}")
    if escrow.hold(hold_id) is not None:
        raise BadRequest(f"hold id {hold_id} is already in use")
    if phase(escrow, now, policy) is not LocalPhase.SELLING:
        raise NotOwner(f"shard {escrow.shard} is not selling item {escrow.item_id}; forward to the owner")
    if not escrow.exclusive:
        if seats:
            raise BadRequest(f"item {escrow.item_id} is general admission: do not name seats")
        if qty > escrow.free:
            raise NotOwner(f"shard {escrow.shard} has {escrow.free} of item {escrow.item_id}; forward to the origin")
        hold = LocalHold(hold_id, qty, (), now + ttl)
        return replace(escrow, free=escrow.free - qty, holds=(*escrow.holds, hold))
    if seats is None:
        if qty > len(escrow.free_seats):
            raise InsufficientStock(f"item {escrow.item_id} has {len(escrow.free_seats)} seats left, {qty} asked")
        chosen = escrow.free_seats[:qty]
    else:
        chosen = tuple(seats)
        if len(chosen) != qty or len(set(chosen)) != qty:
            raise BadRequest("seats must name exactly qty distinct seats")
        if not set(chosen) <= set(escrow.free_seats):
            raise InsufficientStock(f"requested seats of item {escrow.item_id} are not free")
    taken = set(chosen)
    remaining = tuple(seat for seat in escrow.free_seats if seat not in taken)
    hold = LocalHold(hold_id, qty, chosen, now + ttl)
    return replace(escrow, free=len(remaining), free_seats=remaining, holds=(*escrow.holds, hold))


def release_hold(escrow: Escrow, hold_id: str) -> Escrow:
    """Give an unreported hold's units back (the buyer let go).

    Raises NotFound, or BadRequest once its sale report is out.
    """
    hold = escrow.hold(hold_id)
    if hold is None:
        raise NotFound(f"no hold {hold_id} at shard {escrow.shard}")
    if hold.reported_at is not None:
        raise BadRequest(f"hold {hold_id} is being ordered; its sale report is out")
    return _give_back(escrow, (hold,))


def expire_holds(escrow: Escrow, now: datetime, policy: EscrowPolicy) -> Escrow:
    """End unreported holds past their expiry, or every unreported hold once not SELLING."""
    selling = phase(escrow, now, policy) is LocalPhase.SELLING
    ended = tuple(held for held in escrow.holds if held.reported_at is None and (not selling or now >= held.expires_at))
    return _give_back(escrow, ended) if ended else escrow


def sale_request(escrow: Escrow, hold_id: str, now: datetime, policy: EscrowPolicy) -> tuple[Escrow, SaleReport]:
    """The sale report that turns hold `hold_id` into an order once the origin accepts it.

    Resending for a hold already reported returns the same report (same sale
    id and stamp), so the origin answers duplicates alike. Raises NotFound,
    HoldExpired, or LeaseLapsed when the lease is no longer SELLING.
    """
    hold = escrow.hold(hold_id)
    if hold is None:
        raise NotFound(f"no hold {hold_id} at shard {escrow.shard}")
    if hold.reported_at is None:
        if now >= hold.expires_at:
            raise HoldExpired(f"hold {hold_id} expired")
        if phase(escrow, now, policy) is not LocalPhase.SELLING:
            raise LeaseLapsed(f"shard {escrow.shard}'s lease on item {escrow.item_id} is closing")
        hold = replace(hold, reported_at=now)
        escrow = replace(escrow, holds=tuple(hold if held.id == hold_id else held for held in escrow.holds))
    assert hold.reported_at is not None
    report = SaleReport(escrow.item_id, escrow.shard, escrow.epoch, hold.id, hold.qty, hold.seats, hold.reported_at)
    return escrow, report


def on_sale_accepted(escrow: Escrow, verdict: Verdict) -> Escrow:
    """The origin accepted the sale: the hold is an order now. Late or repeated verdicts change nothing."""
    hold = _reported(escrow, verdict)
    if hold is None or not verdict.accepted:
        return escrow
    remaining = tuple(held for held in escrow.holds if held.id != hold.id)
    return replace(escrow, holds=remaining, sold=escrow.sold + hold.qty)


def on_sale_refused(escrow: Escrow, verdict: Verdict) -> Escrow:
    """The origin refused the sale; the buyer is told no.

    A stale epoch means the allotment is gone: the escrow is fenced and holds
    nothing. Any other refusal writes the hold's units off: the shard's count
    disagreed with the origin's, so it must not sell them again.
    """
    hold = _reported(escrow, verdict)
    if hold is None or verdict.accepted:
        return escrow
    if verdict.code == StaleEpoch.code:
        return _fenced(escrow)
    remaining = tuple(held for held in escrow.holds if held.id != hold.id)
    return replace(escrow, holds=remaining, written_off=escrow.written_off + hold.qty)


def on_verdict(escrow: Escrow, verdict: Verdict) -> Escrow:
    return on_sale_accepted(escrow, verdict) if verdict.accepted else on_sale_refused(escrow, verdict)


def refill_request(escrow: Escrow, now: datetime, policy: EscrowPolicy) -> RefillRequest | None:
    """A GA allotment running low while SELLING asks for `refill_units` more."""
    if escrow.exclusive or phase(escrow, now, policy) is not LocalPhase.SELLING:
        return None
    if escrow.free >= policy.low_watermark:
        return None
    return RefillRequest(escrow.item_id, escrow.shard, escrow.epoch, policy.refill_units)


def on_refill(escrow: Escrow, epoch: int, units: int) -> Escrow:
    """The origin moved `units` more into the allotment of `epoch`. Raises BadRequest for units < 1."""
    if units < 1:
        raise BadRequest(f"a refill moves at least one unit, got {units}")
    if escrow.exclusive:
        raise BadRequest(f"item {escrow.item_id} is a seated block: it is never refilled")
    if epoch != escrow.epoch or escrow.expires_at is None:
        return escrow  # the answer for an allotment that has ended: its units went back with it
    return replace(escrow, free=escrow.free + units)


def return_request(escrow: Escrow, now: datetime, policy: EscrowPolicy) -> tuple[Escrow, ReturnRequest | None]:
    """Decide what to give back; the units leave the escrow before the request is sent.

    CLOSING with no sale report pending (or past expiry by our clock, when a
    pending report could no longer be accepted anyway): everything, and the
    escrow holds nothing. Otherwise, GA only: the free units when CLOSING, or
    those above the high watermark while SELLING.
    """
    current = phase(escrow, now, policy)
    if current is LocalPhase.NONE:
        return escrow, None
    assert escrow.expires_at is not None
    pending = any(held.reported_at is not None for held in escrow.holds)
    if current is LocalPhase.CLOSING and (not pending or now >= escrow.expires_at):
        return _fenced(escrow), ReturnRequest(escrow.item_id, escrow.shard, escrow.epoch, None)
    if escrow.exclusive:
        return escrow, None
    keep = 0 if current is LocalPhase.CLOSING else policy.high_watermark
    units = escrow.free - keep
    if units < 1:
        return escrow, None
    return replace(escrow, free=keep), ReturnRequest(escrow.item_id, escrow.shard, escrow.epoch, units)


def renew_request(escrow: Escrow, now: datetime, policy: EscrowPolicy) -> RenewRequest | None:
    if phase(escrow, now, policy) is not LocalPhase.SELLING:
        return None  # a closing lease may already be lapsed at the origin: return it, ask anew
    assert escrow.expires_at is not None
    if escrow.expires_at - now > policy.renew_before:
        return None
    return RenewRequest(escrow.item_id, escrow.shard, escrow.epoch)


def on_renewed(escrow: Escrow, epoch: int, expires_at: datetime) -> Escrow:
    if epoch != escrow.epoch or escrow.expires_at is None:
        return escrow
    return replace(escrow, expires_at=max(escrow.expires_at, expires_at))


def on_grant(escrow: Escrow, allotment: Allotment, seats: Sequence[str] = ()) -> Escrow:
    """Adopt a new grant; the holds of any older epoch are void.

    `seats` are the leased block's seat labels (one per unit); GA passes none.
    Raises StaleEpoch for a grant not newer than the epoch the shard knows
    (a late answer), BadRequest for a grant of another shard or bad seats.
    """
    if allotment.shard != escrow.shard:
        raise BadRequest(f"a grant for shard {allotment.shard} reached shard {escrow.shard}")
    if allotment.epoch <= escrow.epoch:
        raise StaleEpoch(f"item {escrow.item_id}: grant of epoch {allotment.epoch}, shard knows {escrow.epoch}")
    labels = tuple(seats)
    if escrow.exclusive and (len(labels) != allotment.units or len(set(labels)) != len(labels)):
        raise BadRequest(f"item {escrow.item_id}: a block of {allotment.units} needs as many distinct seats")
    if not escrow.exclusive and labels:
        raise BadRequest(f"item {escrow.item_id} is general admission: a grant names no seats")
    return Escrow(
        escrow.item_id,
        escrow.shard,
        escrow.exclusive,
        epoch=allotment.epoch,
        expires_at=allotment.expires_at,
        free=allotment.units,
        block_seats=labels,
        free_seats=labels,
    )


def restart(
    item_id: str, shard: str, *, exclusive: bool, held_at_origin: Allotment | None
) -> tuple[Escrow, ReturnRequest | None]:
    """The escrow of a restarted shard, from what the origin says it holds.

    The shard knows the epoch again (so late answers of its past life are
    ignored) but holds nothing; if the origin still has an allotment for it,
    it is returned whole, which fences every sale report still in flight.
    """
    escrow = new_escrow(item_id, shard, exclusive=exclusive)
    if held_at_origin is None:
        return escrow, None
    if held_at_origin.shard != shard:
        raise BadRequest(f"the origin's allotment for shard {held_at_origin.shard} reached shard {shard}")
    return replace(escrow, epoch=held_at_origin.epoch), ReturnRequest(item_id, shard, held_at_origin.epoch, None)


def settle_report(book: Book, report: SaleReport, verdicts: Mapping[str, Verdict]) -> tuple[Book, Verdict]:
    """The origin's half: apply a sale report once, and answer every copy of it alike.

    `verdicts` holds the verdicts already given, by sale id; the adapter stores
    a new one in the same transaction as the book. The first verdict is final:
    a refused report retried after a renewal must not turn into a sale the
    shard has already written off.
    """
    if report.item_id != book.item_id:
        raise BadRequest(f"a sale report for item {report.item_id} reached the book of {book.item_id}")
    given = verdicts.get(report.sale_id)
    if given is not None:
        return book, given
    try:
        settled = lease.sell(book, report.shard, report.epoch, report.qty, report.written_at)
    except (LeaseRefused, InsufficientStock, BadRequest) as refusal:
        return book, Verdict(report.sale_id, report.epoch, False, refusal.code)
    return settled, Verdict(report.sale_id, report.epoch, True, "accepted")


def _reported(escrow: Escrow, verdict: Verdict) -> LocalHold | None:
    if verdict.epoch != escrow.epoch or escrow.expires_at is None:
        return None
    hold = escrow.hold(verdict.sale_id)
    return hold if hold is not None and hold.reported_at is not None else None


def _give_back(escrow: Escrow, ended: Sequence[LocalHold]) -> Escrow:
    ids = {held.id for held in ended}
    remaining = tuple(held for held in escrow.holds if held.id not in ids)
    if not escrow.exclusive:
        return replace(escrow, free=escrow.free + sum(held.qty for held in ended), holds=remaining)
    back = {seat for held in ended for seat in held.seats} | set(escrow.free_seats)
    free_seats = tuple(seat for seat in escrow.block_seats if seat in back)  # block order, as granted
    return replace(escrow, free=len(free_seats), free_seats=free_seats, holds=remaining)


def _fenced(escrow: Escrow) -> Escrow:
    return Escrow(escrow.item_id, escrow.shard, escrow.exclusive, epoch=escrow.epoch)
