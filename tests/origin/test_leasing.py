"""The origin's lease books on a real store (SQLite and PostgreSQL) and over HTTP.

Time is a FakeTime the test moves: the origin's clock for grants, renewals,
sale stamps and the sweeper, so expiry is driven, never waited for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from origin.errors import IdempotencyKeyReused, InsufficientStock
from origin.escrow import SaleReport
from origin.http import Origin, create_app
from origin.inventory import ItemLeased
from origin.lease import LeaseHeld, LeaseLapsed, LeasePolicy, StaleEpoch
from origin.leasing import Leasing, book_of
from origin.ledger import Ledger, parse_hold_request
from origin.model import format_time
from origin.settings import OriginSettings
from origin.store.base import Store
from tests.origin.conftest import LIMITS, FakeTime

POLICY = LeasePolicy(lease_duration=timedelta(seconds=30), clock_skew_margin=timedelta(seconds=2))
TOKEN = "shard-secret"


@pytest.fixture
def leasing(seeded: Store, ledger: Ledger) -> Leasing:
    return Leasing(seeded, ledger, POLICY, TOKEN)


async def origin_hold(ledger: Ledger, item_id: str, qty: int, seats: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"item_id": item_id, "qty": qty, "user_id": "u-origin"}
    if seats is not None:
        body["seats"] = seats
    return (await ledger.place_hold(parse_hold_request(body, LIMITS), None)).body


def report(
    leasing: Leasing, item_id: str, epoch: int, report_id: str, qty: int, seats: tuple[str, ...] = (), shard: str = "s1"
) -> SaleReport:
    return SaleReport(item_id, shard, epoch, report_id, qty, seats, leasing.now())


async def check_book(store: Store, item_id: str) -> tuple[int, int, int]:
    """(origin free, allotted, sold) of the stored book; book_of raises if row and book disagree."""
    item = await store.item(item_id)
    assert item is not None
    allotments = [held for held in await store.allotments(None) if held.item_id == item_id]
    book = book_of(item, 0, allotments)
    allotted = sum(held.units for held in book.allotments)
    assert book.origin_free + allotted + book.sold == book.capacity
    return book.origin_free, allotted, book.sold


async def test_ga_allotment_limits_origin_holds_but_not_public_availability(
    seeded: Store, ledger: Ledger, leasing: Leasing
) -> None:
    granted = await leasing.grant("itm-1-ga", "s1", 7)
    assert granted.status == 201 and granted.body["lease"]["epoch"] == 1 and granted.body["lease"]["units"] == 7
    item = await seeded.item("itm-1-ga")
    assert item is not None and item.available == 10 and item.version == 1  # a grant does not change the row
    with pytest.raises(InsufficientStock):
        await origin_hold(ledger, "itm-1-ga", 4)
    await origin_hold(ledger, "itm-1-ga", 3)
    assert await check_book(seeded, "itm-1-ga") == (0, 7, 3)
    with pytest.raises(LeaseHeld):
        await leasing.grant("itm-1-ga", "s1", 1)
    with pytest.raises(InsufficientStock):
        await leasing.grant("itm-1-ga", "s2", 1)


async def test_seated_block_is_leased_whole_and_origin_refuses_holds(
    seeded: Store, ledger: Ledger, leasing: Leasing
) -> None:
    granted = await leasing.grant("itm-1-s", "s1", None)
    assert granted.body["lease"]["seats"] == ["1", "2", "3", "4", "5", "6"]
    with pytest.raises(ItemLeased) as refused:
        await origin_hold(ledger, "itm-1-s", 1)
    assert refused.value.status == 409 and refused.value.code == "leased"
    with pytest.raises(LeaseHeld):
        await leasing.grant("itm-1-s", "s2", None)
    # A sale of seats outside the lease is refused; of leased seats, accepted.
    bad = await leasing.report_sale(report(leasing, "itm-1-s", 1, "hld-s1-x", 2, ("5", "9")), "hld-s1-x", "u1")
    assert bad.status == 409 and bad.body["error"]["code"] == "insufficient_stock"
    sold = await leasing.report_sale(report(leasing, "itm-1-s", 1, "hld-s1-a", 2, ("2", "3")), "hld-s1-a", "u1")
    assert sold.status == 201 and sold.body["order"]["seats"] == ["2", "3"]
    again = await leasing.report_sale(report(leasing, "itm-1-s", 1, "hld-s1-b", 1, ("3",)), "hld-s1-b", "u1")
    assert again.status == 409  # seat 3 is sold: never in two orders
    item = await seeded.item("itm-1-s")
    assert item is not None and item.available_seats == ("1", "4", "5", "6")
    (held,) = await seeded.allotments("s1")
    assert held.seats == ("1", "4", "5", "6") and held.units == 4
    # Returned whole: the origin sells the rest again.
    await leasing.return_units("itm-1-s", "s1", 1, None)
    await origin_hold(ledger, "itm-1-s", 1, ["6"])
    assert await seeded.allotments(None) == []


async def test_sale_report_makes_an_order_and_a_change_record_once(
    seeded: Store, ledger: Ledger, leasing: Leasing
) -> None:
    await leasing.grant("itm-1-ga", "s1", 5)
    head = (await seeded.feed_bounds()).head
    sale = report(leasing, "itm-1-ga", 1, "hld-s1-1", 2)
    first = await leasing.report_sale(sale, "hld-s1-1", "buyer")
    assert first.status == 201 and first.body["verdict"] == "accepted" and not first.replayed
    order = await seeded.order(first.body["order"]["id"])
    assert order is not None and order.qty == 2 and order.user_id == "buyer" and order.hold_id == "hld-s1-1"
    duplicate = await leasing.report_sale(sale, "hld-s1-1", "buyer")
    assert duplicate.replayed and duplicate.body == first.body
    assert (await seeded.counts())["orders"] == 1
    records = await seeded.changes(head, 10)
    assert [(record.item_id, record.patch.get("available")) for record in records] == [("itm-1-ga", 8)]
    assert await check_book(seeded, "itm-1-ga") == (5, 3, 2)
    with pytest.raises(IdempotencyKeyReused):
        await leasing.report_sale(report(leasing, "itm-1-ga", 1, "hld-s1-1", 3), "hld-s1-1", "buyer")


async def test_stale_epoch_and_lapsed_reports_are_refused_and_stay_refused(
    seeded: Store, leasing: Leasing, fake_time: FakeTime
) -> None:
    await leasing.grant("itm-1-ga", "s1", 5)
    await leasing.return_units("itm-1-ga", "s1", 1, None)
    regrant = await leasing.grant("itm-1-ga", "s1", 5)  # the shard missed this: it still writes epoch 1
    assert regrant.body["lease"]["epoch"] == 2
    stale = report(leasing, "itm-1-ga", 1, "hld-s1-old", 1)
    refused = await leasing.report_sale(stale, "hld-s1-old", "u1")
    assert refused.status == 409 and refused.body["error"]["code"] == StaleEpoch.code
    assert (await leasing.report_sale(stale, "hld-s1-old", "u1")).body == refused.body
    # Written after the expiry by the shard's clock: refused, even though the allotment is live.
    late = SaleReport("itm-1-ga", "s1", 2, "hld-s1-late", 1, (), leasing.now() + POLICY.lease_duration)
    lapsed = await leasing.report_sale(late, "hld-s1-late", "u1")
    assert lapsed.status == 409 and lapsed.body["error"]["code"] == LeaseLapsed.code
    fake_time.advance(31)
    with pytest.raises(LeaseLapsed):
        await leasing.renew("itm-1-ga", "s1", 2)
    assert (await seeded.counts())["orders"] == 0
    assert await check_book(seeded, "itm-1-ga") == (5, 5, 0)


async def test_lapsed_allotment_is_frozen_until_expiry_plus_margin(
    seeded: Store, ledger: Ledger, leasing: Leasing, fake_time: FakeTime
) -> None:
    await leasing.grant("itm-1-ga", "s1", 6)
    fake_time.advance(20)
    renewed = await leasing.renew("itm-1-ga", "s1", 1)
    assert renewed.body["lease"]["expires_at"] == format_time(leasing.now() + POLICY.lease_duration)
    fake_time.advance(30.5)  # expired, within the margin: frozen
    assert await leasing.expire_lapsed() == 0
    with pytest.raises(InsufficientStock):
        await origin_hold(ledger, "itm-1-ga", 5)
    fake_time.advance(2)
    assert await leasing.expire_lapsed() == 1
    assert await seeded.allotments(None) == []
    await origin_hold(ledger, "itm-1-ga", 8)
    assert await check_book(seeded, "itm-1-ga") == (2, 0, 8)


async def test_refill_and_return_round_trip_with_idempotent_retries(seeded: Store, leasing: Leasing) -> None:
    await leasing.grant("itm-2-ga", "s1", 10)
    first = await leasing.refill("itm-2-ga", "s1", 1, 15, key="refill-1")
    retried = await leasing.refill("itm-2-ga", "s1", 1, 15, key="refill-1")
    assert retried.replayed and retried.body == first.body and first.body["lease"]["units"] == 25
    assert await check_book(seeded, "itm-2-ga") == (25, 25, 0)
    partial = await leasing.return_units("itm-2-ga", "s1", 1, 20, key="return-1")
    assert partial.body["lease"]["units"] == 5 and partial.body["returned"] == 20
    assert (await leasing.return_units("itm-2-ga", "s1", 1, 20, key="return-1")).replayed
    whole = await leasing.return_units("itm-2-ga", "s1", 1, None)
    assert whole.body == {"lease": None, "returned": 5}
    assert await check_book(seeded, "itm-2-ga") == (50, 0, 0)
    with pytest.raises(StaleEpoch):
        await leasing.refill("itm-2-ga", "s1", 1, 1)
    listed = await leasing.leases("s1")
    assert listed == []


# HTTP --------------------------------------------------------------------------------


@pytest.fixture
async def primary(seeded: Store, ledger: Ledger, leasing: Leasing, aiohttp_server: Any) -> AsyncIterator[TestServer]:
    origin = Origin(OriginSettings(shard_token=TOKEN), seeded, ledger, ledger.physical_time, leasing=leasing)
    server: TestServer = await aiohttp_server(create_app(origin, background=False))
    yield server
    await server.close()


async def call(
    client: ClientSession, server: TestServer, path: str, body: Any = None, token: str = TOKEN, key: str | None = None
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    method = "GET" if body is None else "POST"
    async with client.request(method, server.make_url(path), json=body, headers=headers) as response:
        return response.status, await response.json()


async def test_http_lease_api(primary: TestServer, leasing: Leasing) -> None:
    async with ClientSession() as client:
        status, doc = await call(client, primary, "/v1/leases", {"item_id": "itm-1-ga", "shard_id": "s1"}, token="bad")
        assert status == 401 and doc["error"]["code"] == "unauthorized"
        status, doc = await call(client, primary, "/v1/leases", {"item_id": "itm-1-ga", "shard_id": "s1", "qty": 1})
        assert status == 400 and "qty" in doc["error"]["message"]
        status, doc = await call(client, primary, "/v1/leases", {"item_id": "itm-1-ga", "shard_id": "s1"})
        assert status == 400 and "units" in doc["error"]["message"]
        body = {"item_id": "itm-1-ga", "shard_id": "s1", "units": 4}
        status, grant = await call(client, primary, "/v1/leases", body, key="g1")
        assert status == 201 and grant["lease"]["units"] == 4 and grant["lease"]["kind"] == "general_admission"
        assert await call(client, primary, "/v1/leases", body, key="g1") == (201, grant)  # a lost answer, replayed
        status, doc = await call(client, primary, "/v1/leases?shard_id=s1")
        assert status == 200 and doc["leases"] == [grant["lease"]]
        renew = {"shard_id": "s1", "epoch": 1}
        status, doc = await call(client, primary, "/v1/leases/itm-1-ga/renew", renew)
        assert status == 200 and doc["lease"]["epoch"] == 1
        status, doc = await call(client, primary, "/v1/leases/itm-1-ga/renew", {"shard_id": "s1", "epoch": 7})
        assert status == 409 and doc["error"]["code"] == "stale_epoch"
        status, doc = await call(client, primary, "/v1/leases/itm-1-ga/steal", renew)
        assert status == 404
        sale = {
            "shard_id": "s1",
            "epoch": 1,
            "report_id": "hld-s1-h1",
            "qty": 3,
            "written_at": format_time(leasing.now()),
            "user_id": "buyer",
        }
        status, first = await call(client, primary, "/v1/leases/itm-1-ga/sales", sale)
        assert status == 201 and first["order"]["qty"] == 3
        assert await call(client, primary, "/v1/leases/itm-1-ga/sales", sale) == (201, first)
        status, item = await call(client, primary, "/v1/items/itm-1-ga")
        assert item["available"] == 7
        status, doc = await call(client, primary, "/v1/leases/itm-1-ga/sales", {**sale, "written_at": "yesterday"})
        assert status == 400 and "written_at" in doc["error"]["message"]
        status, doc = await call(client, primary, "/v1/leases/itm-1-ga/return", {"shard_id": "s1", "epoch": 1})
        assert status == 200 and doc["returned"] == 1
        status, doc = await call(client, primary, "/v1/holds", {"item_id": "itm-1-ga", "qty": 7, "user_id": "u"})
        assert status == 201


async def test_unconfigured_token_refuses_every_lease_call(seeded: Store, ledger: Ledger, aiohttp_server: Any) -> None:
    leasing = Leasing(seeded, ledger, POLICY, "")
    origin = Origin(OriginSettings(), seeded, ledger, ledger.physical_time, leasing=leasing)
    server: TestServer = await aiohttp_server(create_app(origin, background=False))
    async with ClientSession() as client:
        status, _ = await call(client, server, "/v1/leases?shard_id=s1", token="")
        assert status == 401
    await server.close()
