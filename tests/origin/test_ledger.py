"""Holds, orders, expiry and idempotency on both backends."""

from __future__ import annotations

import pytest

from origin.errors import (
    BadRequest,
    HoldExpired,
    HoldNotActive,
    IdempotencyKeyReused,
    InsufficientStock,
    NotFound,
)
from origin.ledger import HoldRequest, Ledger, parse_hold_request, parse_order_request
from origin.store.base import Store
from tests.origin.conftest import LIMITS, FakeTime


def hold(item_id: str, qty: int, seats: tuple[str, ...] | None = None, user: str = "u1") -> HoldRequest:
    return HoldRequest(item_id, qty, user, seats, None)


async def test_hold_takes_stock_and_records_a_minimal_change(
    ledger: Ledger, seeded: Store, fake_time: FakeTime
) -> None:
    fake_time.advance(1)
    result = await ledger.place_hold(hold("itm-1-ga", 3), None)
    assert result.status == 201
    assert result.body["hold"]["status"] == "active" and result.body["hold"]["qty"] == 3
    item = await seeded.item("itm-1-ga")
    assert item is not None and item.available == 7 and item.version == 2
    [record] = await seeded.changes(3, 10)
    assert record.item_id == "itm-1-ga" and record.version == 2 and record.hlc == item.hlc
    assert set(record.patch) == {"available", "updated_at"}


async def test_seated_hold_prefers_adjacent_seats_and_honours_named_seats(ledger: Ledger, seeded: Store) -> None:
    named = await ledger.place_hold(hold("itm-1-s", 2, ("2", "4")), None)
    assert named.body["hold"]["seats"] == ["2", "4"]
    together = await ledger.place_hold(hold("itm-1-s", 2), None)
    assert together.body["hold"]["seats"] == ["5", "6"]  # 1 and 3 are not adjacent
    with pytest.raises(InsufficientStock):
        await ledger.place_hold(hold("itm-1-s", 1, ("2",)), None)
    with pytest.raises(BadRequest):
        await ledger.place_hold(hold("itm-1-s", 1, ("99",)), None)
    item = await seeded.item("itm-1-s")
    assert item is not None and item.available_seats == ("1", "3")


async def test_short_stock_and_unknown_item(ledger: Ledger) -> None:
    with pytest.raises(InsufficientStock):
        await ledger.place_hold(hold("itm-1-ga", 11), None)
    with pytest.raises(NotFound):
        await ledger.place_hold(hold("itm-nope", 1), None)


async def test_order_from_hold_then_not_again(ledger: Ledger, seeded: Store) -> None:
    held = await ledger.place_hold(hold("itm-1-s", 2), None)
    hold_id = held.body["hold"]["id"]
    ordered = await ledger.place_order(hold_id, None)
    assert ordered.status == 201
    order = ordered.body["order"]
    assert order["seats"] == ["1", "2"] and order["total"] == 18000 and order["currency"] == "EUR"
    stored = await seeded.order(order["id"])
    assert stored is not None and stored.hold_id == hold_id
    with pytest.raises(HoldNotActive):
        await ledger.place_order(hold_id, None)
    with pytest.raises(NotFound):
        await ledger.place_order("hld-nope", None)


async def test_expired_hold_returns_stock_and_refuses_the_order(
    ledger: Ledger, seeded: Store, fake_time: FakeTime
) -> None:
    held = await ledger.place_hold(hold("itm-1-s", 3), None)
    fake_time.advance(LIMITS.hold_ttl.total_seconds() + 1)
    with pytest.raises(HoldExpired):
        await ledger.place_order(held.body["hold"]["id"], None)
    item = await seeded.item("itm-1-s")
    assert item is not None and item.available == 6 and item.available_seats == ("1", "2", "3", "4", "5", "6")
    with pytest.raises(HoldExpired):
        await ledger.place_order(held.body["hold"]["id"], None)


async def test_sweeper_expires_due_holds_only(ledger: Ledger, seeded: Store, fake_time: FakeTime) -> None:
    first = await ledger.place_hold(hold("itm-1-ga", 4), None)
    fake_time.advance(300)
    await ledger.place_hold(hold("itm-1-ga", 2), None)
    fake_time.advance(301)  # the first is 601 s old, the second 301 s
    assert await ledger.expire_due_holds(100) == 1
    assert await ledger.expire_due_holds(100) == 0
    expired = await seeded.hold(first.body["hold"]["id"])
    assert expired is not None and expired.status == "expired"
    item = await seeded.item("itm-1-ga")
    assert item is not None and item.available == 8


async def test_ordered_hold_is_never_expired(ledger: Ledger, seeded: Store, fake_time: FakeTime) -> None:
    held = await ledger.place_hold(hold("itm-1-ga", 4), None)
    await ledger.place_order(held.body["hold"]["id"], None)
    fake_time.advance(3600)
    assert await ledger.expire_due_holds(100) == 0
    item = await seeded.item("itm-1-ga")
    assert item is not None and item.available == 6


async def test_idempotency_key_replays_and_never_buys_twice(ledger: Ledger, seeded: Store) -> None:
    first = await ledger.place_hold(hold("itm-1-ga", 2), "key-1")
    again = await ledger.place_hold(hold("itm-1-ga", 2), "key-1")
    assert again.replayed and again.body == first.body
    item = await seeded.item("itm-1-ga")
    assert item is not None and item.available == 8
    with pytest.raises(IdempotencyKeyReused):
        await ledger.place_hold(hold("itm-1-ga", 3), "key-1")
    hold_id = first.body["hold"]["id"]
    order = await ledger.place_order(hold_id, "key-2")
    replay = await ledger.place_order(hold_id, "key-2")
    assert replay.replayed and replay.body == order.body


async def test_failed_write_leaves_the_key_free(ledger: Ledger) -> None:
    with pytest.raises(InsufficientStock):
        await ledger.place_hold(hold("itm-1-ga", 11), "key-3")
    result = await ledger.place_hold(hold("itm-1-ga", 1), "key-3")
    assert result.status == 201 and not result.replayed


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "JSON object"),
        ({"item_id": "a", "user_id": "u"}, "qty"),
        ({"item_id": "a", "user_id": "u", "qty": 0}, "qty"),
        ({"item_id": "a", "user_id": "u", "qty": 9}, "qty"),
        ({"item_id": "a", "user_id": "u", "qty": True}, "qty"),
        ({"item_id": "", "user_id": "u", "qty": 1}, "item_id"),
        ({"item_id": "a", "qty": 1}, "user_id"),
        ({"item_id": "a", "user_id": "u", "qty": 1, "seats": "1"}, "seats"),
        ({"item_id": "a", "user_id": "u", "qty": 1, "ttl_seconds": 99999}, "ttl_seconds"),
        ({"item_id": "a", "user_id": "u", "qty": 1, "colour": "red"}, "colour"),
    ],
)
def test_hold_request_validation_names_the_field(body: object, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_hold_request(body, LIMITS)


def test_order_request_validation() -> None:
    assert parse_order_request({"hold_id": "hld-1"}) == "hld-1"
    with pytest.raises(BadRequest, match="hold_id"):
        parse_order_request({})
    with pytest.raises(BadRequest, match="unknown field"):
        parse_order_request({"hold_id": "hld-1", "hold": "x"})
