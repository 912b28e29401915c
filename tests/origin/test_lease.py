"""The one-writer rule: each lease rule scripted, then random interleavings against an oracle."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from origin.errors import BadRequest, InsufficientStock, StoredDataError
from origin.lease import (
    ORIGIN,
    Book,
    LeaseHeld,
    LeaseLapsed,
    LeasePolicy,
    LeaseRefused,
    Phase,
    StaleEpoch,
    check_invariants,
    expire,
    grant,
    new_book,
    open_book,
    origin_release,
    origin_sell,
    phase,
    refill,
    renew,
    return_units,
    sell,
)
from origin.model import GENERAL_ADMISSION, SEATED
from tests.origin.conftest import START, tiny_catalog

SECOND = timedelta(seconds=1)
POLICY = LeasePolicy(lease_duration=30 * SECOND, clock_skew_margin=2 * SECOND)
EXPIRES = START + POLICY.lease_duration


def ga(capacity: int = 100) -> Book:
    return new_book("ga-1", GENERAL_ADMISSION, capacity)


def block(seats: int = 10) -> Book:
    return new_book("blk-1", SEATED, seats)


def epoch_of(book: Book, shard: str) -> int:
    allotment = book.allotment(shard)
    assert allotment is not None
    return allotment.epoch


# --- grant ---------------------------------------------------------------------------------------


def test_ga_grant_escrows_units_under_a_new_epoch() -> None:
    book = grant(ga(), "s1", START, POLICY, units=30)
    book = grant(book, "s2", START, POLICY, units=20)
    assert book.origin_free == 50
    assert [(held.shard, held.epoch, held.units) for held in book.allotments] == [("s1", 1, 30), ("s2", 2, 20)]
    assert book.allotments[0].expires_at == EXPIRES
    assert book.owner == ORIGIN
    check_invariants(book)


def test_ga_grant_refusals() -> None:
    book = grant(ga(10), "s1", START, POLICY, units=4)
    with pytest.raises(LeaseHeld):
        grant(book, "s1", START, POLICY, units=1)  # refill instead
    with pytest.raises(InsufficientStock):
        grant(book, "s2", START, POLICY, units=7)
    for units in (None, 0):
        with pytest.raises(BadRequest):
            grant(book, "s2", START, POLICY, units=units)
    with pytest.raises(BadRequest):
        grant(book, ORIGIN, START, POLICY, units=1)


def test_seated_block_is_leased_whole_to_one_shard() -> None:
    book = origin_sell(block(10), 3)
    leased = grant(book, "s1", START, POLICY)
    assert (leased.owner, leased.origin_free, leased.allotments[0].units) == ("s1", 0, 7)
    with pytest.raises(LeaseHeld):
        grant(leased, "s2", START, POLICY)
    with pytest.raises(LeaseHeld):
        origin_sell(leased, 1)  # the origin forwards to the owner
    with pytest.raises(BadRequest):
        grant(book, "s1", START, POLICY, units=2)
    with pytest.raises(BadRequest):
        return_units(leased, "s1", 1, 2)  # a block goes back whole
    back = return_units(leased, "s1", 1)
    assert (back.owner, back.origin_free, back.allotments) == (ORIGIN, 7, ())
    with pytest.raises(InsufficientStock):
        grant(origin_sell(block(2), 2), "s1", START, POLICY)


def test_open_book_starts_with_the_origin_owning_what_is_unsold() -> None:
    item = dataclasses.replace(tiny_catalog()[2][0], capacity=500, available=480)
    book = open_book(item)
    assert (book.exclusive, book.origin_free, book.sold, book.epoch) == (item.kind != GENERAL_ADMISSION, 480, 20, 0)
    with pytest.raises(BadRequest):
        new_book("x", GENERAL_ADMISSION, 5, sold=6)


# --- sell, refill, return, renew -------------------------------------------------------------------


def test_sell_within_the_allotment() -> None:
    book = grant(ga(), "s1", START, POLICY, units=5)
    book = sell(book, "s1", 1, 5, START + 10 * SECOND)
    assert (book.sold, book.allotments[0].units, book.origin_free) == (5, 0, 95)
    with pytest.raises(InsufficientStock):
        sell(book, "s1", 1, 1, START)
    with pytest.raises(BadRequest):
        sell(book, "s1", 1, 0, START)


def test_a_stale_epoch_is_fenced_out_even_with_an_early_timestamp() -> None:
    book = grant(ga(), "s1", START, POLICY, units=5)
    book = return_units(book, "s1", 1)
    book = grant(book, "s1", START, POLICY, units=5)  # epoch 2
    writes: list[Callable[[], Book]] = [
        lambda: sell(book, "s1", 1, 1, START),
        lambda: refill(book, "s1", 1, 1, START),
        lambda: return_units(book, "s1", 1),
        lambda: renew(book, "s1", 1, START, POLICY),
        lambda: sell(book, "s2", 2, 1, START),  # another shard's epoch
        lambda: sell(book, "s1", 3, 1, START),  # an epoch never issued
    ]
    for write in writes:
        with pytest.raises(StaleEpoch):
            write()


def test_a_sale_stamped_at_or_after_expiry_is_refused() -> None:
    book = grant(ga(), "s1", START, POLICY, units=5)
    assert sell(book, "s1", 1, 1, EXPIRES - SECOND).sold == 1  # made in the lease, arriving late: fine
    with pytest.raises(LeaseLapsed):
        sell(book, "s1", 1, 1, EXPIRES)


def test_refill_and_partial_return_go_through_the_origin() -> None:
    book = grant(ga(10), "s1", START, POLICY, units=2)
    book = refill(book, "s1", 1, 5, START + SECOND)
    assert (book.origin_free, book.allotments[0].units) == (3, 7)
    with pytest.raises(InsufficientStock):
        refill(book, "s1", 1, 4, START)
    with pytest.raises(LeaseLapsed):
        refill(book, "s1", 1, 1, EXPIRES)
    book = return_units(book, "s1", 1, 6)
    assert (book.origin_free, book.allotments[0].units) == (9, 1)
    with pytest.raises(InsufficientStock):
        return_units(book, "s1", 1, 2)
    assert book.epoch == 1  # refills and returns keep the lease's epoch


def test_renew_extends_an_active_lease_only() -> None:
    book = grant(ga(), "s1", START, POLICY, units=1)
    renewed = renew(book, "s1", 1, START + 20 * SECOND, POLICY)
    assert renewed.allotments[0].expires_at == START + 50 * SECOND
    assert renew(renewed, "s1", 1, START + SECOND, POLICY).allotments[0].expires_at == START + 50 * SECOND
    with pytest.raises(LeaseLapsed):
        renew(book, "s1", 1, EXPIRES, POLICY)


# --- expiry --------------------------------------------------------------------------------------


def test_a_dead_shards_stock_stays_frozen_until_expiry_plus_margin() -> None:
    book = sell(grant(ga(10), "s1", START, POLICY, units=6), "s1", 1, 2, START)
    allotment = book.allotments[0]
    assert phase(allotment, EXPIRES - SECOND, POLICY) is Phase.ACTIVE
    assert phase(allotment, EXPIRES, POLICY) is Phase.FROZEN
    frozen = expire(book, EXPIRES + POLICY.clock_skew_margin - SECOND, POLICY)
    assert frozen == book  # undersell: neither the shard nor the origin sells those 4
    with pytest.raises(InsufficientStock):
        origin_sell(frozen, 5)
    reclaimed = expire(book, EXPIRES + POLICY.clock_skew_margin, POLICY)
    assert (reclaimed.origin_free, reclaimed.sold, reclaimed.allotments) == (8, 2, ())
    with pytest.raises(StaleEpoch):
        sell(reclaimed, "s1", 1, 1, START)  # the shard wakes up with its old epoch
    regranted = grant(reclaimed, "s1", EXPIRES + 3 * SECOND, POLICY, units=8)
    assert epoch_of(regranted, "s1") == 2


def test_a_frozen_lease_may_still_be_returned_but_not_renewed() -> None:
    book = grant(block(4), "s1", START, POLICY)
    with pytest.raises(LeaseLapsed):
        renew(book, "s1", 1, EXPIRES + SECOND, POLICY)
    assert return_units(book, "s1", 1).owner == ORIGIN


# --- invariants and settings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "broken",
    [
        dataclasses.replace(ga(10), sold=11, origin_free=-1),
        dataclasses.replace(ga(10), origin_free=9),
        dataclasses.replace(grant(ga(10), "s1", START, POLICY, units=2), epoch=0),
        dataclasses.replace(
            grant(ga(10), "s1", START, POLICY, units=2),
            origin_free=6,
            allotments=(*grant(ga(10), "s1", START, POLICY, units=2).allotments,) * 2,
        ),
        dataclasses.replace(grant(block(4), "s1", START, POLICY), origin_free=1, capacity=5),
    ],
)
def test_check_invariants_catches_a_broken_book(broken: Book) -> None:
    with pytest.raises(StoredDataError):
        check_invariants(broken)


def test_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="lease_duration"):
        LeasePolicy(lease_duration=timedelta(0))
    with pytest.raises(ValueError, match="clock_skew_margin"):
        LeasePolicy(clock_skew_margin=-SECOND)


# --- random interleavings ------------------------------------------------------------------------

SHARDS = ("s1", "s2", "s3")
MARGIN_MS = int(POLICY.clock_skew_margin / timedelta(milliseconds=1))
shards = st.sampled_from(SHARDS)
quantities = st.integers(min_value=0, max_value=12)


class LeaseMachine(RuleBasedStateMachine):
    """Shards with skewed clocks grant, sell, refill, return, renew, crash and restart.

    Every write is checked against an oracle computed from the book before it,
    and a shard that follows the protocol (sells only while its own clock says
    its lease is valid) never has a sale refused for its lease.
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = START
        self.book = ga(0)
        self.sold = 0
        self.epoch_seen = 0
        self.issued: set[tuple[str, int]] = set()
        self.beliefs: dict[str, tuple[int, datetime]] = {}  # shard → (epoch, expiry) it was told
        self.alive = dict.fromkeys(SHARDS, True)
        self.skew = dict.fromkeys(SHARDS, timedelta(0))

    @initialize(
        seated=st.booleans(),
        capacity=st.integers(min_value=0, max_value=40),
        skews=st.lists(
            st.one_of(st.sampled_from([-MARGIN_MS, MARGIN_MS]), st.integers(-MARGIN_MS, MARGIN_MS)),
            min_size=len(SHARDS),
            max_size=len(SHARDS),
        ),
    )
    def open(self, seated: bool, capacity: int, skews: list[int]) -> None:
        self.book = new_book("item", SEATED if seated else GENERAL_ADMISSION, capacity)
        self.skew = {shard: timedelta(milliseconds=ms) for shard, ms in zip(SHARDS, skews, strict=True)}

    def live(self, shard: str, epoch: int) -> bool:
        allotment = self.book.allotment(shard)
        return allotment is not None and allotment.epoch == epoch

    def attempt(self, write: Callable[[], Book], allowed: bool) -> Book | None:
        """Run `write`; it must succeed exactly when the oracle says it is allowed."""
        refused: Exception | None = None
        try:
            book = write()
        except (LeaseRefused, InsufficientStock, BadRequest) as error:
            refused = error
        if refused is not None:
            assert not allowed, f"refused an allowed write: {refused}"
            return None
        assert allowed, "accepted a write the rules forbid"
        self.book = book
        return book

    # Small steps land inside the skew margin around an expiry; large ones cross whole leases.
    # The origin's sweeper runs now and then: sometimes right after the clock moves.
    @rule(
        ms=st.one_of(st.integers(min_value=0, max_value=3 * MARGIN_MS), st.integers(min_value=0, max_value=40_000)),
        sweep=st.booleans(),
    )
    def advance_clock(self, ms: int, sweep: bool) -> None:
        self.now += timedelta(milliseconds=ms)
        if sweep:
            self.book = expire(self.book, self.now, POLICY)

    @precondition(lambda self: bool(self.book.allotments))
    @rule(data=st.data(), offset_ms=st.integers(-MARGIN_MS, 2 * MARGIN_MS), sweep=st.booleans())
    def advance_clock_to_around_an_expiry(self, data: st.DataObject, offset_ms: int, sweep: bool) -> None:
        held = data.draw(st.sampled_from(self.book.allotments))
        self.now = max(self.now, held.expires_at + timedelta(milliseconds=offset_ms))
        if sweep:
            self.book = expire(self.book, self.now, POLICY)

    @rule()
    def origin_sweeps(self) -> None:
        self.book = expire(self.book, self.now, POLICY)

    @rule(shard=shards, units=st.integers(min_value=0, max_value=15))
    def grant_stock(self, shard: str, units: int) -> None:
        if not self.alive[shard]:
            return
        book = self.book
        if book.exclusive:
            allowed = not book.allotments and book.origin_free > 0
            result = self.attempt(lambda: grant(book, shard, self.now, POLICY), allowed)
        else:
            allowed = book.allotment(shard) is None and 1 <= units <= book.origin_free
            result = self.attempt(lambda: grant(book, shard, self.now, POLICY, units=units), allowed)
        if result is not None:
            held = result.allotment(shard)
            assert held is not None
            assert held.epoch > max((epoch for _, epoch in self.issued), default=0)
            self.issued.add((shard, held.epoch))
            self.beliefs[shard] = (held.epoch, held.expires_at)

    @precondition(lambda self: bool(self.beliefs))
    @rule(data=st.data(), qty=quantities)
    def shard_sells_by_protocol(self, data: st.DataObject, qty: int) -> None:
        shard = data.draw(st.sampled_from(sorted(self.beliefs)))
        if not self.alive[shard]:
            return
        epoch, expires_at = self.beliefs[shard]
        shard_now = self.now + self.skew[shard]
        if shard_now >= expires_at:
            return  # the shard's own clock says its lease is over: it does not sell
        # The margin's promise: a sale made inside the lease still finds its allotment.
        held = self.book.allotment(shard)
        assert held is not None
        assert held.epoch == epoch
        book = self.book
        if self.attempt(lambda: sell(book, shard, epoch, qty, shard_now), 1 <= qty <= held.units):
            self.sold += qty

    @rule(
        data=st.data(),
        qty=quantities,
        written_ago_ms=st.one_of(st.integers(-MARGIN_MS, MARGIN_MS), st.integers(-MARGIN_MS, 60_000)),
    )
    def any_sale_arrives(self, data: st.DataObject, qty: int, written_ago_ms: int) -> None:
        """A duplicated, delayed or stale sale from anyone: the oracle decides, stale always loses."""
        writers = st.tuples(shards, st.integers(min_value=0, max_value=12))
        if self.issued:
            writers = st.one_of(st.sampled_from(sorted(self.issued)), writers)
        shard, epoch = data.draw(writers)
        written_at = self.now - timedelta(milliseconds=written_ago_ms)
        held = self.book.allotment(shard)
        allowed = held is not None and held.epoch == epoch and written_at < held.expires_at and 1 <= qty <= held.units
        book = self.book
        try:
            self.book = sell(book, shard, epoch, qty, written_at)
        except StaleEpoch:
            assert not self.live(shard, epoch)
            return
        except (LeaseLapsed, InsufficientStock, BadRequest):
            assert not allowed
            return
        assert allowed
        self.sold += qty

    @rule(shard=shards, epoch=st.integers(min_value=0, max_value=12), units=quantities, which=st.integers(0, 2))
    def stale_control_write_is_fenced(self, shard: str, epoch: int, units: int, which: int) -> None:
        if self.live(shard, epoch):
            return
        book = self.book
        with pytest.raises(StaleEpoch):
            if which == 0:
                refill(book, shard, epoch, max(units, 1), self.now)
            elif which == 1:
                return_units(book, shard, epoch, None if units == 0 else units)
            else:
                renew(book, shard, epoch, self.now, POLICY)

    @rule(qty=quantities)
    def origin_sells(self, qty: int) -> None:
        book = self.book
        allowed = not (book.exclusive and book.allotments) and 1 <= qty <= book.origin_free
        if self.attempt(lambda: origin_sell(book, qty), allowed):
            self.sold += qty

    @precondition(lambda self: bool(self.beliefs))
    @rule(data=st.data(), units=quantities)
    def shard_refills(self, data: st.DataObject, units: int) -> None:
        shard = data.draw(st.sampled_from(sorted(self.beliefs)))
        epoch, _ = self.beliefs[shard]
        book = self.book
        held = book.allotment(shard)
        allowed = (
            self.alive[shard]
            and self.live(shard, epoch)
            and held is not None
            and self.now < held.expires_at
            and 1 <= units <= book.origin_free
        )
        if self.alive[shard]:
            self.attempt(lambda: refill(book, shard, epoch, units, self.now), allowed)

    @precondition(lambda self: bool(self.beliefs))
    @rule(data=st.data(), units=quantities)
    def shard_returns(self, data: st.DataObject, units: int) -> None:
        shard = data.draw(st.sampled_from(sorted(self.beliefs)))
        if not self.alive[shard]:
            return
        epoch, _ = self.beliefs[shard]
        book = self.book
        held = book.allotment(shard)
        everything = units == 0 or book.exclusive
        allowed = self.live(shard, epoch) and held is not None and (everything or units <= held.units)
        returned = self.attempt(lambda: return_units(book, shard, epoch, None if everything else units), allowed)
        if returned is not None and everything:
            del self.beliefs[shard]

    @precondition(lambda self: bool(self.beliefs))
    @rule(data=st.data())
    def shard_renews(self, data: st.DataObject) -> None:
        shard = data.draw(st.sampled_from(sorted(self.beliefs)))
        if not self.alive[shard]:
            return
        epoch, _ = self.beliefs[shard]
        book = self.book
        held = book.allotment(shard)
        allowed = self.live(shard, epoch) and held is not None and self.now < held.expires_at
        renewed = self.attempt(lambda: renew(book, shard, epoch, self.now, POLICY), allowed)
        if renewed is not None:
            after = renewed.allotment(shard)
            assert after is not None
            self.beliefs[shard] = (epoch, after.expires_at)

    @rule(shard=shards)
    def shard_crashes(self, shard: str) -> None:
        self.alive[shard] = False

    @rule(shard=shards)
    def shard_restarts(self, shard: str) -> None:
        self.alive[shard] = True  # with the epoch it persisted, possibly stale by now

    @invariant()
    def never_oversold_and_units_conserved(self) -> None:
        check_invariants(self.book)
        assert self.book.sold == self.sold <= self.book.capacity
        assert self.book.origin_free + sum(held.units for held in self.book.allotments) + self.sold == (
            self.book.capacity
        )

    @invariant()
    def a_shard_inside_its_lease_by_its_clock_still_holds_its_allotment(self) -> None:
        # Crashed or not: a partitioned shard may look dead and still be selling.
        for shard, (epoch, expires_at) in self.beliefs.items():
            if self.now + self.skew[shard] < expires_at:
                assert self.live(shard, epoch), f"{shard} still sells under epoch {epoch}, the origin took it back"

    @invariant()
    def epochs_only_grow_and_every_holder_was_granted(self) -> None:
        assert self.book.epoch >= self.epoch_seen
        self.epoch_seen = self.book.epoch
        assert {(held.shard, held.epoch) for held in self.book.allotments} <= self.issued


LeaseMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestLeaseInterleavings = LeaseMachine.TestCase


def test_a_seated_block_with_live_origin_holds_is_not_leased() -> None:
    book = block()
    with pytest.raises(LeaseHeld, match="live holds"):
        grant(book, "eu-west-1", START, POLICY, origin_holding=True)
    leased = grant(book, "eu-west-1", START, POLICY)
    assert leased.owner == "eu-west-1"


def test_origin_release_gives_back_an_expired_origin_hold() -> None:
    book = origin_sell(ga(10), 3)
    back = origin_release(book, 2)
    assert (back.origin_free, back.sold) == (9, 1)
    with pytest.raises(BadRequest):
        origin_release(back, 2)
    check_invariants(back)
