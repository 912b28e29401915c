"""Many buyers race for the last units of one event: nothing is ever sold twice.

Two independent Store instances open the same database (two connection pools
for PostgreSQL; two writer connections for SQLite, contending on the file
lock), as two origin workers would.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

from origin.errors import HoldExpired, InsufficientStock
from origin.hlc import HybridClock
from origin.ledger import HoldRequest, Ledger
from origin.store.base import Store
from origin.store.factory import store_from_url
from tests.origin.conftest import LIMITS, FakeTime

BUYERS = 80


async def test_racing_buyers_never_oversell(seeded: Store, store_url: str, fake_time: FakeTime) -> None:
    second = store_from_url(store_url)
    await second.open()
    try:
        ledgers = [
            Ledger(seeded, HybridClock("w1", fake_time), fake_time, LIMITS),
            Ledger(second, HybridClock("w2", fake_time), fake_time, LIMITS),
        ]
        rng = random.Random(7)
        plans = [(rng.choice(ledgers), rng.choice(["itm-1-ga", "itm-1-s"]), rng.randint(1, 3)) for _ in range(BUYERS)]

        async def buy(ledger: Ledger, item_id: str, qty: int, user: int) -> dict[str, object] | None:
            try:
                held = await ledger.place_hold(HoldRequest(item_id, qty, f"u{user}", None, None), None)
                if user % 5 == 0:
                    return None  # abandons the cart; the hold stays until expiry
                ordered = await ledger.place_order(held.body["hold"]["id"], f"order-{user}")
                # A retry of the same order (lost response) must not buy again.
                await ledger.place_order(held.body["hold"]["id"], f"order-{user}")
            except (InsufficientStock, HoldExpired):
                return None
            order: dict[str, object] = ordered.body["order"]
            return order

        results = await asyncio.gather(*(buy(*plan, user) for user, plan in enumerate(plans)))
        orders = [order for order in results if order is not None]

        sold: Counter[str] = Counter()
        seats_sold: list[object] = []
        for order in orders:
            sold[str(order["item_id"])] += int(str(order["qty"]))
            if order["item_id"] == "itm-1-s":
                seats_sold.extend(order["seats"])  # type: ignore[arg-type]
        assert sold["itm-1-ga"] <= 10 and sold["itm-1-s"] <= 6
        assert len(seats_sold) == len(set(seats_sold)) == sold["itm-1-s"]
        assert sold["itm-1-ga"] + sold["itm-1-s"] > 0

        # Once the abandoned holds expire, availability is exactly capacity minus sales.
        fake_time.advance(LIMITS.hold_ttl.total_seconds() + 1)
        await ledgers[0].expire_due_holds(1000)
        ga = await seeded.item("itm-1-ga")
        seated = await seeded.item("itm-1-s")
        assert ga is not None and seated is not None
        assert ga.available == 10 - sold["itm-1-ga"]
        assert seated.available == 6 - sold["itm-1-s"]
        assert set(seated.available_seats).isdisjoint(seats_sold)
        # The feed holds one record per version, in order, with no gaps.
        records = await seeded.changes(0, 10_000)
        assert [r.pos.seq for r in records] == list(range(1, len(records) + 1))
        for item in (ga, seated):
            versions = [r.version for r in records if r.item_id == item.id]
            assert versions == list(range(1, item.version + 1))
    finally:
        await second.close()
