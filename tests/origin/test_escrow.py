"""The shard's escrow: each rule scripted, then random shard histories checked against the origin's book."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from origin.errors import BadRequest, HoldExpired, InsufficientStock, NotFound
from origin.escrow import (
    Escrow,
    EscrowPolicy,
    LocalPhase,
    NotOwner,
    ReturnRequest,
    SaleReport,
    Verdict,
    expire_holds,
    new_escrow,
    on_grant,
    on_refill,
    on_renewed,
    on_sale_accepted,
    on_sale_refused,
    on_verdict,
    phase,
    refill_request,
    release_hold,
    renew_request,
    restart,
    return_request,
    sale_request,
    settle_report,
    take_hold,
)
from origin.lease import Book, LeaseLapsed, LeasePolicy, StaleEpoch, check_invariants, expire, grant, new_book
from origin.lease import refill as lease_refill
from origin.lease import return_units as origin_return
from origin.model import GENERAL_ADMISSION, SEATED
from tests.origin.conftest import START

SECOND = timedelta(seconds=1)
LEASES = LeasePolicy(lease_duration=30 * SECOND, clock_skew_margin=2 * SECOND)
POLICY = EscrowPolicy(
    safety_margin=5 * SECOND, renew_before=20 * SECOND, low_watermark=3, refill_units=5, high_watermark=8
)
TTL = 60 * SECOND
SELL_BY = START + LEASES.lease_duration - POLICY.safety_margin
SEATS = ("1", "2", "3", "4", "5", "6")


def ga_escrow(units: int = 10) -> tuple[Book, Escrow]:
    book = grant(new_book("ga", GENERAL_ADMISSION, 100), "s1", START, LEASES, units=units)
    allotment = book.allotment("s1")
    assert allotment is not None
    return book, on_grant(new_escrow("ga", "s1", exclusive=False), allotment)


def block_escrow() -> tuple[Book, Escrow]:
    book = grant(new_book("blk", SEATED, len(SEATS)), "s1", START, LEASES)
    allotment = book.allotment("s1")
    assert allotment is not None
    return book, on_grant(new_escrow("blk", "s1", exclusive=True), allotment, SEATS)


def units_backed(book: Book, escrow: Escrow) -> int:
    allotment = book.allotment(escrow.shard)
    return 0 if allotment is None or allotment.epoch != escrow.epoch else allotment.units


# --- phases, holds ----------------------------------------------------------------------------------


def test_phases_follow_the_shards_clock_and_close_a_safety_margin_early() -> None:
    _, escrow = ga_escrow()
    assert phase(new_escrow("ga", "s1", exclusive=False), START, POLICY) is LocalPhase.NONE
    assert phase(escrow, SELL_BY - SECOND, POLICY) is LocalPhase.SELLING
    assert phase(escrow, SELL_BY, POLICY) is LocalPhase.CLOSING
    with pytest.raises(NotOwner):
        take_hold(escrow, "h1", 1, None, SELL_BY, TTL, POLICY)


def test_ga_holds_take_and_give_back_free_units_locally() -> None:
    _, escrow = ga_escrow(10)
    escrow = take_hold(escrow, "h1", 4, None, START, TTL, POLICY)
    escrow = take_hold(escrow, "h2", 2, None, START, 10 * SECOND, POLICY)
    assert (escrow.free, escrow.held) == (4, 6)
    with pytest.raises(NotOwner):  # the origin may still have units: forward
        take_hold(escrow, "h3", 5, None, START, TTL, POLICY)
    with pytest.raises(BadRequest):
        take_hold(escrow, "h1", 1, None, START, TTL, POLICY)  # id reused
    for qty, ttl in ((0, TTL), (1, timedelta(0))):
        with pytest.raises(BadRequest):
            take_hold(escrow, "h4", qty, None, START, ttl, POLICY)
    with pytest.raises(BadRequest):
        take_hold(escrow, "h4", 1, ["1"], START, TTL, POLICY)
    escrow = expire_holds(escrow, START + 10 * SECOND, POLICY)
    assert ([held.id for held in escrow.holds], escrow.free) == (["h1"], 6)
    escrow = release_hold(escrow, "h1")
    assert (escrow.holds, escrow.free) == ((), 10)
    with pytest.raises(NotFound):
        release_hold(escrow, "h1")


def test_seated_holds_take_named_or_first_free_seats_and_return_them_in_block_order() -> None:
    _, escrow = block_escrow()
    escrow = take_hold(escrow, "h1", 2, ["4", "2"], START, TTL, POLICY)
    escrow = take_hold(escrow, "h2", 2, None, START, TTL, POLICY)
    second = escrow.hold("h2")
    assert second is not None and second.seats == ("1", "3")
    assert escrow.free_seats == ("5", "6")
    with pytest.raises(InsufficientStock):  # the shard is the block's only writer: nobody else has them
        take_hold(escrow, "h3", 1, ["4"], START, TTL, POLICY)
    with pytest.raises(InsufficientStock):
        take_hold(escrow, "h3", 3, None, START, TTL, POLICY)
    with pytest.raises(BadRequest):
        take_hold(escrow, "h3", 2, ["5", "5"], START, TTL, POLICY)
    escrow = release_hold(escrow, "h1")
    assert (escrow.free, escrow.free_seats) == (4, ("2", "4", "5", "6"))


def test_closing_ends_every_unreported_hold_but_keeps_reported_ones() -> None:
    _, escrow = ga_escrow(10)
    escrow = take_hold(escrow, "h1", 3, None, START, TTL, POLICY)
    escrow = take_hold(escrow, "h2", 3, None, START, TTL, POLICY)
    escrow, _ = sale_request(escrow, "h2", START + SECOND, POLICY)
    escrow = expire_holds(escrow, SELL_BY, POLICY)
    assert ([held.id for held in escrow.holds], escrow.free) == (["h2"], 7)
    with pytest.raises(BadRequest):
        release_hold(escrow, "h2")


# --- sale reports ---------------------------------------------------------------------------------


def test_a_sale_is_confirmed_only_by_the_origins_verdict_and_duplicates_are_answered_alike() -> None:
    book, escrow = ga_escrow(10)
    escrow = take_hold(escrow, "h1", 4, None, START, TTL, POLICY)
    escrow, report = sale_request(escrow, "h1", START + SECOND, POLICY)
    assert (report.epoch, report.qty, report.written_at, escrow.sold) == (1, 4, START + SECOND, 0)
    resent, again = sale_request(escrow, "h1", START + 9 * SECOND, POLICY)
    assert (resent, again) == (escrow, report)  # a resend is the same report
    book, verdict = settle_report(book, report, {})
    assert verdict.accepted
    same_book, duplicate = settle_report(book, report, {report.sale_id: verdict})
    assert (same_book, duplicate) == (book, verdict)
    assert book.sold == 4
    escrow = on_sale_accepted(escrow, verdict)
    assert (escrow.holds, escrow.sold, escrow.free) == ((), 4, 6)
    assert on_verdict(escrow, verdict) == escrow  # a repeated verdict changes nothing
    assert units_backed(book, escrow) == escrow.free


def test_sale_request_refusals() -> None:
    _, escrow = ga_escrow(10)
    escrow = take_hold(escrow, "h1", 1, None, START, 2 * SECOND, POLICY)
    escrow = take_hold(escrow, "h2", 1, None, START, TTL, POLICY)
    with pytest.raises(NotFound):
        sale_request(escrow, "nope", START, POLICY)
    with pytest.raises(HoldExpired):
        sale_request(escrow, "h1", START + 2 * SECOND, POLICY)
    with pytest.raises(LeaseLapsed):
        sale_request(escrow, "h2", SELL_BY, POLICY)


def test_a_stale_report_is_refused_and_fences_the_escrow() -> None:
    book, escrow = ga_escrow(10)
    escrow = take_hold(escrow, "h1", 2, None, START, TTL, POLICY)
    escrow, report = sale_request(escrow, "h1", START, POLICY)
    book = expire(book, START + LEASES.lease_duration + LEASES.clock_skew_margin, LEASES)  # the origin reclaims
    book, verdict = settle_report(book, report, {})
    assert (verdict.accepted, verdict.code, book.sold) == (False, StaleEpoch.code, 0)
    fenced = on_sale_refused(escrow, verdict)
    assert (fenced.epoch, fenced.expires_at, fenced.holds, fenced.free) == (1, None, (), 0)
    assert phase(fenced, START, POLICY) is LocalPhase.NONE


def test_a_refusal_other_than_stale_writes_the_units_off() -> None:
    _, escrow = ga_escrow(10)
    escrow = take_hold(escrow, "h1", 2, None, START, TTL, POLICY)
    escrow, _ = sale_request(escrow, "h1", START, POLICY)
    refused = on_sale_refused(escrow, Verdict("h1", 1, False, InsufficientStock.code))
    assert (refused.holds, refused.free, refused.written_off, refused.sold) == ((), 8, 2, 0)
    assert on_sale_refused(escrow, Verdict("h1", 2, False, InsufficientStock.code)) == escrow  # another epoch
    assert on_sale_accepted(escrow, Verdict("h1", 1, False, "x")) == escrow


def test_the_first_verdict_is_final_even_after_a_renewal() -> None:
    book, escrow = ga_escrow(10)
    escrow = take_hold(escrow, "h1", 1, None, START, TTL, POLICY)
    _, report = sale_request(escrow, "h1", START, POLICY)
    late = dataclasses.replace(report, written_at=START + 40 * SECOND)
    book2, refused = settle_report(book, late, {})
    assert not refused.accepted and refused.code == LeaseLapsed.code
    assert settle_report(book2, late, {late.sale_id: refused}) == (book2, refused)
    with pytest.raises(BadRequest):
        settle_report(new_book("other", GENERAL_ADMISSION, 1), report, {})


# --- refills, returns, renewals, grants, restarts ---------------------------------------------------------


def test_refill_is_asked_below_the_low_watermark_and_counted_only_when_answered() -> None:
    _, escrow = ga_escrow(3)
    assert refill_request(escrow, START, POLICY) is None
    escrow = take_hold(escrow, "h1", 1, None, START, TTL, POLICY)
    request = refill_request(escrow, START, POLICY)
    assert request is not None and (request.epoch, request.units) == (1, POLICY.refill_units)
    assert refill_request(escrow, SELL_BY, POLICY) is None
    assert on_refill(escrow, 1, 5).free == 7
    assert on_refill(escrow, 2, 5) == escrow  # an answer for another allotment
    with pytest.raises(BadRequest):
        on_refill(escrow, 1, 0)
    _, block = block_escrow()
    assert refill_request(block, START, POLICY) is None
    with pytest.raises(BadRequest):
        on_refill(block, 1, 1)


def test_returns_give_units_back_before_asking() -> None:
    book, escrow = ga_escrow(12)
    escrow, request = return_request(escrow, START, POLICY)
    assert request == ReturnRequest("ga", "s1", 1, 4) and escrow.free == POLICY.high_watermark
    book = origin_return(book, "s1", 1, request.units)
    assert units_backed(book, escrow) == 8
    assert return_request(escrow, START, POLICY) == (escrow, None)
    escrow = take_hold(escrow, "h1", 2, None, START, TTL, POLICY)
    escrow, _ = sale_request(escrow, "h1", START, POLICY)
    # CLOSING with a report pending: only the free units go back ...
    escrow, request = return_request(escrow, SELL_BY, POLICY)
    assert request == ReturnRequest("ga", "s1", 1, 6) and (escrow.free, escrow.held) == (0, 2)
    assert return_request(escrow, SELL_BY, POLICY) == (escrow, None)
    # ... and everything once past expiry, the pending report being beyond hope.
    done, request = return_request(escrow, START + LEASES.lease_duration, POLICY)
    assert request == ReturnRequest("ga", "s1", 1, None) and phase(done, START, POLICY) is LocalPhase.NONE
    assert return_request(done, START, POLICY) == (done, None)


def test_a_closing_block_is_returned_whole_once_no_report_is_pending() -> None:
    _, escrow = block_escrow()
    assert return_request(escrow, START, POLICY) == (escrow, None)
    escrow = take_hold(escrow, "h1", 1, None, START, TTL, POLICY)
    escrow, _ = sale_request(escrow, "h1", START, POLICY)
    assert return_request(escrow, SELL_BY, POLICY) == (escrow, None)
    escrow = on_sale_accepted(escrow, Verdict("h1", 1, True, "accepted"))
    done, request = return_request(escrow, SELL_BY, POLICY)
    assert request == ReturnRequest("blk", "s1", 1, None) and done.free_seats == ()


def test_renewal_is_asked_while_selling_and_only_extends() -> None:
    _, escrow = ga_escrow()
    assert renew_request(escrow, START, POLICY) is None
    assert renew_request(escrow, START + 10 * SECOND, POLICY) is not None
    assert renew_request(escrow, SELL_BY, POLICY) is None
    later = START + 60 * SECOND
    assert on_renewed(escrow, 1, later).expires_at == later
    assert on_renewed(escrow, 1, START).expires_at == escrow.expires_at
    assert on_renewed(escrow, 2, later) == escrow


def test_a_new_grant_voids_the_old_epochs_holds_and_late_grants_are_refused() -> None:
    book, escrow = ga_escrow(5)
    escrow = take_hold(escrow, "h1", 2, None, START, TTL, POLICY)
    book = origin_return(book, "s1", 1)
    book = grant(book, "s1", START, LEASES, units=7)
    allotment = book.allotment("s1")
    assert allotment is not None
    regranted = on_grant(escrow, allotment)
    assert (regranted.epoch, regranted.free, regranted.holds) == (2, 7, ())
    with pytest.raises(StaleEpoch):
        on_grant(regranted, allotment)
    with pytest.raises(BadRequest):
        on_grant(new_escrow("ga", "s2", exclusive=False), allotment)
    with pytest.raises(BadRequest):
        on_grant(new_escrow("ga", "s1", exclusive=False), allotment, ["1"])
    with pytest.raises(BadRequest):
        on_grant(new_escrow("blk", "s1", exclusive=True), allotment, ["1"])
    with pytest.raises(BadRequest):
        new_escrow("ga", "origin", exclusive=False)


def test_restart_returns_the_old_allotment_and_fences_its_reports() -> None:
    book, escrow = ga_escrow(5)
    escrow = take_hold(escrow, "h1", 2, None, START, TTL, POLICY)
    _, report = sale_request(escrow, "h1", START, POLICY)  # in flight when the shard crashes
    fresh, request = restart("ga", "s1", exclusive=False, held_at_origin=book.allotment("s1"))
    assert request == ReturnRequest("ga", "s1", 1, None)
    assert (fresh.epoch, fresh.holds, phase(fresh, START, POLICY)) == (1, (), LocalPhase.NONE)
    book = origin_return(book, "s1", request.epoch, request.units)
    book, verdict = settle_report(book, report, {})
    assert not verdict.accepted and book.sold == 0
    assert restart("ga", "s1", exclusive=False, held_at_origin=None) == (new_escrow("ga", "s1", exclusive=False), None)
    with pytest.raises(BadRequest):
        restart("ga", "s2", exclusive=False, held_at_origin=grant(book, "s1", START, LEASES, units=1).allotment("s1"))


def test_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="watermark"):
        EscrowPolicy(low_watermark=5, high_watermark=4)
    with pytest.raises(ValueError, match="negative"):
        EscrowPolicy(safety_margin=-SECOND)


# --- random shard histories against the origin's book ----------------------------------------------

ACTIONS = ("hold", "release", "order", "deliver", "expire", "refill", "return", "sweep")
steps = st.lists(
    st.tuples(
        st.sampled_from(ACTIONS),
        st.integers(min_value=0, max_value=6),
        st.integers(min_value=0, max_value=4_000),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(seated=st.booleans(), units=st.integers(min_value=1, max_value=12), history=steps)
def test_every_unit_the_shard_counts_is_backed_by_its_allotment(
    seated: bool, units: int, history: list[tuple[str, int, int]]
) -> None:
    """One shard, reports delivered late, reordered, duplicated, verdicts lost: never more than its allotment."""
    book = new_book("it", SEATED if seated else GENERAL_ADMISSION, 12)
    book = grant(book, "s1", START, LEASES, units=None if seated else units)
    allotment = book.allotment("s1")
    assert allotment is not None
    seats = tuple(str(n) for n in range(1, allotment.units + 1)) if seated else ()
    escrow = on_grant(new_escrow("it", "s1", exclusive=seated), allotment, seats)
    now = START
    outbox: dict[str, SaleReport] = {}
    verdicts: dict[str, Verdict] = {}
    for number, (action, pick, ms) in enumerate(history):
        now += timedelta(milliseconds=ms)
        holds = [held.id for held in escrow.holds]
        try:
            if action == "hold":
                escrow = take_hold(escrow, f"h{number}", pick, None, now, TTL, POLICY)
            elif action == "release" and holds:
                escrow = release_hold(escrow, holds[pick % len(holds)])
            elif action == "order" and holds:
                escrow, report = sale_request(escrow, holds[pick % len(holds)], now, POLICY)
                outbox[report.sale_id] = report
            elif action == "deliver" and outbox:
                report = list(outbox.values())[pick % len(outbox)]  # any order, any number of times
                book, verdict = settle_report(book, report, verdicts)
                verdicts[verdict.sale_id] = verdict
                if pick % 2 == 0:  # else the answer is lost; a later copy gets the same verdict
                    escrow = on_verdict(escrow, verdict)
            elif action == "expire":
                escrow = expire_holds(escrow, now, POLICY)
            elif action == "refill":
                request = refill_request(escrow, now, POLICY)
                if request is not None and book.origin_free >= request.units:
                    book = lease_refill(book, "s1", request.epoch, request.units, now)
                    escrow = on_refill(escrow, request.epoch, request.units)
            elif action == "return":
                escrow, returned = return_request(escrow, now, POLICY)
                if returned is not None:
                    book = origin_return(book, "s1", returned.epoch, returned.units)
            else:
                book = expire(book, now, LEASES)
        except (NotOwner, InsufficientStock, BadRequest, NotFound, HoldExpired, LeaseLapsed, StaleEpoch):
            # StaleEpoch: the origin's sweeper reclaimed a lapsed allotment before the shard's return
            # arrived; the shard had already given the units up locally, so the refusal changes nothing.
            pass
        check_invariants(book)
        accepted = {sale_id for sale_id, verdict in verdicts.items() if verdict.accepted}
        unconfirmed = sum(held.qty for held in escrow.holds if held.id not in accepted)
        if units_backed(book, escrow):
            assert escrow.free + unconfirmed <= units_backed(book, escrow)
        else:
            assert phase(escrow, now, POLICY) is not LocalPhase.SELLING
        assert escrow.sold <= book.sold == sum(outbox[sale_id].qty for sale_id in accepted)
        if seated:
            held_seats = [seat for held in escrow.holds for seat in held.seats]
            assert len(escrow.free_seats) == escrow.free
            assert len(set(held_seats) | set(escrow.free_seats)) == len(held_seats) + escrow.free
