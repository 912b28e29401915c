"""Stock decisions: `take` against a model of what must happen, and `give_back` as its exact inverse."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from origin.errors import BadRequest, InsufficientStock, StoredDataError
from origin.inventory import Taken, give_back, take
from origin.model import GENERAL_ADMISSION, SEATED, Item
from tests.origin.conftest import START, tiny_catalog

FUZZ = settings(max_examples=200, deadline=None)
HLC = "1790000000000-00000-test"
LATER = START + timedelta(minutes=1)

GA_ITEM, SEATED_ITEM = tiny_catalog()[2][0], tiny_catalog()[2][1]


@st.composite
def ga_items(draw: st.DrawFn) -> Item:
    capacity = draw(st.integers(min_value=0, max_value=60))
    available = draw(st.integers(min_value=0, max_value=capacity))
    return dataclasses.replace(GA_ITEM, capacity=capacity, available=available)


@st.composite
def seated_items(draw: st.DrawFn) -> Item:
    seats = tuple(draw(st.lists(st.text(alphabet="ABC123", min_size=1, max_size=3), max_size=16, unique=True)))
    free_mask = draw(st.lists(st.booleans(), min_size=len(seats), max_size=len(seats)))
    available_seats = tuple(seat for seat, free in zip(seats, free_mask, strict=True) if free)
    return dataclasses.replace(
        SEATED_ITEM, seats=seats, capacity=len(seats), available=len(available_seats), available_seats=available_seats
    )


@st.composite
def requests(draw: st.DrawFn, item: Item) -> tuple[int, list[str] | None]:
    """A quantity and maybe named seats: valid ones often, every kind of wrong one too."""
    in_stock = len(item.available_seats) if item.kind == SEATED else item.available
    qty = draw(
        st.integers(min_value=1, max_value=max(in_stock, 1))
        | st.integers(min_value=-1, max_value=max(item.capacity, 1) + 2)
    )
    shape = draw(st.sampled_from(["none", "free", "distinct", "any"]))
    if shape == "none":
        return qty, None
    if shape == "free":  # what a buyer picking from the seat map sends
        return qty, draw(st.permutations(item.available_seats))[:qty]
    pool = draw(st.sampled_from([list(item.seats), [*item.seats, "Z9", "nope"]]).filter(bool) | st.just(["1", "Z9"]))
    count = max(0, qty + draw(st.sampled_from([0, 0, 0, 1, -1])))
    if shape == "distinct":
        return qty, draw(st.permutations(pool))[:count]  # maybe too few
    return qty, draw(st.lists(st.sampled_from(pool), min_size=count, max_size=count))


def expected_outcome(item: Item, qty: int, seats: list[str] | None) -> type[Exception] | None:
    """The decision table of `take`, written out independently."""
    if qty < 1:
        return BadRequest
    if item.kind == GENERAL_ADMISSION:
        if seats:
            return BadRequest
        return InsufficientStock if qty > item.available else None
    if seats is None:
        return InsufficientStock if qty > len(item.available_seats) else None
    if len(seats) != qty or len(set(seats)) != qty or not set(seats) <= set(item.seats):
        return BadRequest
    return None if set(seats) <= set(item.available_seats) else InsufficientStock


def check_take(item: Item, qty: int, seats: list[str] | None) -> None:
    expected = expected_outcome(item, qty, seats)
    if expected is not None:
        with pytest.raises(expected):
            take(item, qty, seats, hlc=HLC, now=LATER)
        return
    taken = take(item, qty, seats, hlc=HLC, now=LATER)
    after = taken.item
    assert after.available == item.available - qty
    assert (after.version, after.hlc, after.updated_at) == (item.version + 1, HLC, LATER)
    assert dataclasses.replace(after, available=0, available_seats=(), version=0, hlc="", updated_at=START) == (
        dataclasses.replace(item, available=0, available_seats=(), version=0, hlc="", updated_at=START)
    )
    if item.kind == GENERAL_ADMISSION:
        assert taken.seats == ()
    else:
        check_seats(item, qty, seats, taken)
    restored = give_back(after, qty, taken.seats, hlc=HLC, now=LATER)
    assert (restored.available, restored.available_seats) == (item.available, item.available_seats)
    assert restored.version == after.version + 1


def check_seats(item: Item, qty: int, seats: list[str] | None, taken: Taken) -> None:
    after, chosen = taken.item, set(taken.seats)
    assert len(taken.seats) == len(chosen) == qty
    assert chosen <= set(item.available_seats)
    assert chosen.isdisjoint(after.available_seats)
    assert chosen | set(after.available_seats) == set(item.available_seats)
    assert after.available == len(after.available_seats)
    assert list(after.available_seats) == [seat for seat in item.seats if seat in set(after.available_seats)]
    if seats is not None:
        assert taken.seats == tuple(seats)
        return
    # Without named seats a party sits together whenever the block allows it.
    position = {seat: index for index, seat in enumerate(item.seats)}
    free = [position[seat] for seat in item.available_seats]
    together_possible = any(free[start + qty - 1] - free[start] == qty - 1 for start in range(len(free) - qty + 1))
    indexes = sorted(position[seat] for seat in taken.seats)
    assert (indexes[-1] - indexes[0] == qty - 1) == together_possible


@FUZZ
@given(st.data())
def test_take_on_general_admission(data: st.DataObject) -> None:
    item = data.draw(ga_items())
    qty, seats = data.draw(requests(item))
    check_take(item, qty, seats)


@FUZZ
@given(st.data())
def test_take_on_seated_blocks(data: st.DataObject) -> None:
    item = data.draw(seated_items())
    qty, seats = data.draw(requests(item))
    check_take(item, qty, seats)


def test_take_prefers_seats_together() -> None:
    seats = tuple("123456")
    item = dataclasses.replace(SEATED_ITEM, seats=seats, available=4, available_seats=("1", "3", "4", "5"))
    assert take(item, 3, None, hlc=HLC, now=LATER).seats == ("3", "4", "5")
    assert take(item, 2, None, hlc=HLC, now=LATER).seats == ("3", "4")
    # No run of four: the lowest free seats.
    assert take(item, 4, None, hlc=HLC, now=LATER).seats == ("1", "3", "4", "5")


@pytest.mark.parametrize("qty", [0, -1])
@pytest.mark.parametrize("item", [GA_ITEM, SEATED_ITEM], ids=["ga", "seated"])
def test_take_refuses_a_quantity_below_one(item: Item, qty: int) -> None:
    with pytest.raises(BadRequest, match="qty"):
        take(item, qty, None, hlc=HLC, now=LATER)


@FUZZ
@given(st.data())
def test_give_back_of_seats_that_were_not_taken_is_refused(data: st.DataObject) -> None:
    item = data.draw(seated_items().filter(lambda item: item.available_seats))
    free_seat = data.draw(st.sampled_from(item.available_seats))
    taken_seats = [seat for seat in item.seats if seat not in item.available_seats]
    returned = data.draw(st.lists(st.sampled_from(taken_seats), unique=True)) if taken_seats else []
    returned.append(free_seat)
    with pytest.raises(StoredDataError):
        give_back(item, len(returned), returned, hlc=HLC, now=LATER)


def test_give_back_refuses_unknown_duplicate_or_miscounted_seats() -> None:
    item = take(SEATED_ITEM, 3, ["1", "2", "3"], hlc=HLC, now=LATER).item
    for qty, seats in [(1, ["99"]), (2, ["1", "1"]), (1, ["1", "2"]), (3, ["1", "2"])]:
        with pytest.raises(StoredDataError):
            give_back(item, qty, seats, hlc=HLC, now=LATER)
    assert give_back(item, 2, ["3", "1"], hlc=HLC, now=LATER).available_seats == ("1", "3", "4", "5", "6")


@FUZZ
@given(ga_items(), st.integers(min_value=1, max_value=80))
def test_give_back_to_general_admission_never_exceeds_capacity(item: Item, qty: int) -> None:
    if item.available + qty > item.capacity:
        with pytest.raises(StoredDataError):
            give_back(item, qty, (), hlc=HLC, now=LATER)
    else:
        assert give_back(item, qty, (), hlc=HLC, now=LATER).available == item.available + qty


def test_take_names_the_item_when_seats_are_unknown() -> None:
    with pytest.raises(BadRequest, match="itm-1-s has no seat"):
        take(SEATED_ITEM, 1, ["77"], hlc=HLC, now=LATER)
    with pytest.raises(BadRequest, match="general admission"):
        take(GA_ITEM, 1, ["1"], hlc=HLC, now=LATER)
