"""A shard selling within its leases, against a real primary on loopback.

The primary is the origin app (with the lease API) on an in-process aiohttp
server over the `seeded` store (SQLite and PostgreSQL); the shard is a second
app over its own SQLite store, following the primary and selling locally.
Both read one FakeTime as their wall clock, so lease expiry is driven by the
test; the shard's lease loop ticks rarely and the test calls ``tend()`` itself.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from ops.settings import Seconds
from origin.escrow import LocalPhase, phase
from origin.hlc import HybridClock
from origin.http import Origin, OriginMetrics, create_app
from origin.lease import LeasePolicy
from origin.leasing import Leasing, book_of
from origin.ledger import Ledger
from origin.model import format_time
from origin.settings import OriginSettings
from origin.shard import Shard, ShardMetrics, upstream_session
from origin.shardsales import ShardSales
from origin.store.base import Store
from origin.store.factory import store_from_url
from tests.origin.conftest import LIMITS, FakeTime

MakeServer = Callable[..., Awaitable[TestServer]]
TOKEN = "shard-secret"
POLICY = LeasePolicy(lease_duration=timedelta(seconds=30), clock_skew_margin=timedelta(seconds=2))
WAIT_STEPS = 400  # × 0.05 s: the bound of every wait_until loop
ROUNDS = 25  # rounds of the random interleaving, four concurrent operations each


async def wait_until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(WAIT_STEPS):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"gave up waiting: {what}")


@dataclass
class Primary:
    origin: Origin
    leasing: Leasing
    server: TestServer

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def store(self) -> Store:
        return self.origin.store

    def hold_requests(self) -> float:
        """Hold requests that reached the primary, whatever their answer."""
        counter = self.origin.metrics.requests
        return sum(counter.value("/v1/holds", status) for status in ("201", "400", "404", "409"))


@dataclass
class ShardNode:
    sales: ShardSales
    shard: Shard
    server: TestServer

    async def granted(self, *item_ids: str) -> bool:
        await self.sales.tend()
        now = self.sales.now()
        return all(
            item_id in self.sales.escrows
            and phase(self.sales.escrows[item_id], now, self.sales.policy) is LocalPhase.SELLING
            for item_id in item_ids
        )


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as exits:
        yield exits


@pytest.fixture
async def primary(seeded: Store, fake_time: FakeTime, aiohttp_server: MakeServer) -> Primary:
    ledger = Ledger(seeded, HybridClock("primary", fake_time), fake_time, LIMITS)
    leasing = Leasing(seeded, ledger, POLICY, TOKEN)
    settings = OriginSettings(feed_max_wait=Seconds(5.0), shard_token=TOKEN)
    origin = Origin(settings, seeded, ledger, fake_time, leasing=leasing)
    server = await aiohttp_server(create_app(origin, background=False))
    return Primary(origin, leasing, server)


@pytest.fixture
async def shard_store(tmp_path: Path, stack: AsyncExitStack) -> Store:
    store = store_from_url(f"sqlite:{tmp_path / 'shard.db'}")
    await store.open()
    stack.push_async_callback(store.close)
    return store


async def start_shard(
    primary: Primary,
    store: Store,
    fake_time: FakeTime,
    aiohttp_server: MakeServer,
    stack: AsyncExitStack,
    **overrides: Any,
) -> ShardNode:
    values: dict[str, Any] = {
        "role": "shard",
        "shard_id": "s1",
        "region": "eu-west",
        "upstream": primary.url,
        "events": ("evt-1",),
        "database": "sqlite:unused.db",
        "follow_wait": 0.2,
        "max_lag": 5.0,
        "upstream_timeout": 5.0,
        "feed_max_wait": 5.0,
        "shard_token": TOKEN,
        "lease_items": ("itm-1-ga", "itm-1-s"),
        "lease_units": 5,
        "lease_low_watermark": 2,
        "lease_refill_units": 3,
        "lease_high_watermark": 20,
        "lease_tick": 3600.0,  # the test tends the leases itself
    }
    values.update(overrides)
    settings = OriginSettings(**values)
    settings.validate()
    session = await stack.enter_async_context(upstream_session())
    metrics = OriginMetrics()
    shard = Shard(settings, store, session, ShardMetrics(metrics.registry))
    sales = ShardSales(settings, store, session, wall_clock=fake_time)
    ledger = Ledger(store, HybridClock("shard", fake_time), fake_time, LIMITS)
    origin = Origin(settings, store, ledger, fake_time, metrics=metrics, shard=shard, sales=sales)
    server = await aiohttp_server(create_app(origin))
    stack.push_async_callback(server.close)  # before the session closes (LIFO)
    return ShardNode(sales, shard, server)


async def post(client: ClientSession, url: str, body: Any, token: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with client.post(url, json=body, headers=headers) as response:
        return response.status, await response.json()


async def get(client: ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with client.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        return response.status, await response.json()


async def test_local_hold_then_order_through_the_origin(
    primary: Primary, shard_store: Store, fake_time: FakeTime, aiohttp_server: MakeServer, stack: AsyncExitStack
) -> None:
    node = await start_shard(primary, shard_store, fake_time, aiohttp_server, stack)
    await wait_until(lambda: node.granted("itm-1-ga", "itm-1-s"), "grants")
    shard_url = str(node.server.make_url("")).rstrip("/")
    async with ClientSession() as client:
        status, held = await post(client, f"{shard_url}/v1/holds", {"item_id": "itm-1-ga", "qty": 2, "user_id": "u1"})
        assert status == 201 and held["shard_id"] == "s1" and held["hold"]["id"].startswith("hld-s1-")
        status, seated = await post(
            client, f"{shard_url}/v1/holds", {"item_id": "itm-1-s", "qty": 2, "user_id": "u2", "seats": ["2", "3"]}
        )
        assert status == 201 and seated["hold"]["seats"] == ["2", "3"]
        status, taken = await post(
            client, f"{shard_url}/v1/holds", {"item_id": "itm-1-s", "qty": 1, "user_id": "u3", "seats": ["3"]}
        )
        assert status == 409 and taken["error"]["code"] == "insufficient_stock"
        assert primary.hold_requests() == 0  # every hold so far was local
        status, doc = await get(client, f"{shard_url}/v1/holds/{held['hold']['id']}")
        assert status == 200 and doc["qty"] == 2

        status, ordered = await post(client, f"{shard_url}/v1/orders", {"hold_id": held["hold"]["id"]})
        assert status == 201 and ordered["order"]["qty"] == 2
        order_id = ordered["order"]["id"]
        assert (await get(client, f"{primary.url}/v1/orders/{order_id}"))[0] == 200
        assert (await get(client, f"{shard_url}/v1/orders/{order_id}"))[1]["id"] == order_id  # forwarded
        assert await post(client, f"{shard_url}/v1/orders", {"hold_id": held["hold"]["id"]}) == (201, ordered)
        status, seat_order = await post(client, f"{shard_url}/v1/orders", {"hold_id": seated["hold"]["id"]})
        assert status == 201 and seat_order["order"]["seats"] == ["2", "3"]

        origin_item = await primary.store.item("itm-1-ga")
        assert origin_item is not None and origin_item.available == 8

        async def shard_copy_caught_up() -> bool:
            copy = await shard_store.item("itm-1-ga")
            seats = await shard_store.item("itm-1-s")
            return copy is not None and copy.available == 8 and seats is not None and "2" not in seats.available_seats

        await wait_until(shard_copy_caught_up, "the feed carries the shard's sales back to it")

        # More than the shard has free (3): forwarded to the origin, which has 5 of its own.
        status, forwarded = await post(
            client, f"{shard_url}/v1/holds", {"item_id": "itm-1-ga", "qty": 4, "user_id": "u4"}
        )
        assert status == 201 and "shard_id" not in forwarded and not forwarded["hold"]["id"].startswith("hld-s1-")
        assert primary.hold_requests() == 1
        status, health = await get(client, f"{shard_url}/v1/health")
        assert {lease["item_id"]: lease["sold"] for lease in health["sales"]["leases"]} == {"itm-1-ga": 2, "itm-1-s": 2}


async def test_stale_epoch_sale_is_refused_then_the_shard_is_granted_anew(
    primary: Primary, shard_store: Store, fake_time: FakeTime, aiohttp_server: MakeServer, stack: AsyncExitStack
) -> None:
    node = await start_shard(primary, shard_store, fake_time, aiohttp_server, stack, lease_items=("itm-1-ga",))
    await wait_until(lambda: node.granted("itm-1-ga"), "grant")
    shard_url = str(node.server.make_url("")).rstrip("/")
    async with ClientSession() as client:
        _, held = await post(client, f"{shard_url}/v1/holds", {"item_id": "itm-1-ga", "qty": 1, "user_id": "u1"})
        # The origin re-grants behind the shard's back (the shard missed the end of epoch 1).
        await primary.leasing.return_units("itm-1-ga", "s1", 1, None)
        await primary.leasing.grant("itm-1-ga", "s1", 5)
        status, refused = await post(client, f"{shard_url}/v1/orders", {"hold_id": held["hold"]["id"]})
        assert status == 409 and refused["error"]["code"] == "stale_epoch"
        assert node.sales.escrows["itm-1-ga"].expires_at is None  # fenced: holds nothing
        assert (await primary.store.counts())["orders"] == 0
        # The loop returns the unknown epoch-2 allotment whole and asks again: epoch 3.
        await wait_until(lambda: node.granted("itm-1-ga"), "a fresh grant")
        assert node.sales.escrows["itm-1-ga"].epoch == 3
        _, again = await post(client, f"{shard_url}/v1/holds", {"item_id": "itm-1-ga", "qty": 1, "user_id": "u1"})
        status, _ = await post(client, f"{shard_url}/v1/orders", {"hold_id": again["hold"]["id"]})
        assert status == 201
    item = await primary.store.item("itm-1-ga")
    assert item is not None
    assert [(held.epoch, held.units) for held in await primary.store.allotments("s1")] == [(3, 4)]
    assert book_of(item, 3, await primary.store.allotments("s1")).origin_free == 5  # 10 − 1 sold − 4 allotted


async def test_crashed_shard_stock_is_frozen_until_expiry_plus_margin(
    primary: Primary, shard_store: Store, fake_time: FakeTime, aiohttp_server: MakeServer, stack: AsyncExitStack
) -> None:
    node = await start_shard(primary, shard_store, fake_time, aiohttp_server, stack, lease_items=("itm-1-ga",))
    await wait_until(lambda: node.granted("itm-1-ga"), "grant")
    shard_url = str(node.server.make_url("")).rstrip("/")
    async with ClientSession() as client:
        await post(client, f"{shard_url}/v1/holds", {"item_id": "itm-1-ga", "qty": 2, "user_id": "u1"})
        await node.server.close()  # a crash: nothing is returned

        hold = {"item_id": "itm-1-ga", "qty": 6, "user_id": "u-origin"}
        assert (await post(client, f"{primary.url}/v1/holds", hold))[0] == 409
        fake_time.advance(30)  # expired, inside the clock-skew margin
        assert await primary.leasing.expire_lapsed() == 0
        assert (await post(client, f"{primary.url}/v1/holds", hold))[0] == 409
        fake_time.advance(2)
        assert await primary.leasing.expire_lapsed() == 1
        status, _ = await post(client, f"{primary.url}/v1/holds", {**hold, "qty": 5})
        assert status == 201

        # The restarted shard finds nothing left at the origin and is granted a new epoch.
        restarted = await start_shard(primary, shard_store, fake_time, aiohttp_server, stack, lease_items=("itm-1-ga",))
        await wait_until(lambda: restarted.granted("itm-1-ga"), "a grant after the restart")
        assert restarted.sales.escrows["itm-1-ga"].epoch == 2


async def test_restart_returns_the_old_allotment_and_fences_its_reports(
    primary: Primary, shard_store: Store, fake_time: FakeTime, aiohttp_server: MakeServer, stack: AsyncExitStack
) -> None:
    node = await start_shard(primary, shard_store, fake_time, aiohttp_server, stack, lease_items=("itm-1-ga",))
    await wait_until(lambda: node.granted("itm-1-ga"), "grant")
    await node.server.close()  # crash with the allotment of epoch 1 live at the origin
    restarted = await start_shard(primary, shard_store, fake_time, aiohttp_server, stack, lease_items=("itm-1-ga",))
    await wait_until(lambda: restarted.granted("itm-1-ga"), "a grant after the restart")
    assert restarted.sales.escrows["itm-1-ga"].epoch == 2
    async with ClientSession() as client:
        # A sale report of the past life, still in flight: refused, and the units stay counted once.
        late = {
            "shard_id": "s1",
            "epoch": 1,
            "report_id": "hld-s1-past",
            "qty": 1,
            "written_at": format_time(restarted.sales.now()),
        }
        status, verdict = await post(client, f"{primary.url}/v1/leases/itm-1-ga/sales", late, token=TOKEN)
        assert status == 409 and verdict["error"]["code"] == "stale_epoch"
        _, leases = await get(client, f"{primary.url}/v1/leases?shard_id=s1")
        assert [(lease["epoch"], lease["units"]) for lease in leases["leases"]] == [(2, 5)]


async def test_refill_below_the_watermark_and_return_when_closing(
    primary: Primary, shard_store: Store, fake_time: FakeTime, aiohttp_server: MakeServer, stack: AsyncExitStack
) -> None:
    node = await start_shard(primary, shard_store, fake_time, aiohttp_server, stack, lease_items=("itm-1-ga",))
    await wait_until(lambda: node.granted("itm-1-ga"), "grant")
    shard_url = str(node.server.make_url("")).rstrip("/")
    async with ClientSession() as client:
        for _ in range(2):
            status, _ = await post(client, f"{shard_url}/v1/holds", {"item_id": "itm-1-ga", "qty": 2, "user_id": "u"})
            assert status == 201
        assert node.sales.escrows["itm-1-ga"].free == 1
        await node.sales.tend()  # below the low watermark (2): ask for 3 more
        assert node.sales.escrows["itm-1-ga"].free == 4
        _, leases = await get(client, f"{primary.url}/v1/leases?shard_id=s1")
        assert [lease["units"] for lease in leases["leases"]] == [8]

        fake_time.advance(26)  # within the safety margin of the expiry: CLOSING
        await node.sales.tend()  # holds end, everything goes back, and a fresh grant follows
        _, leases = await get(client, f"{primary.url}/v1/leases?shard_id=s1")
        assert [(lease["epoch"], lease["units"]) for lease in leases["leases"]] == [(2, 5)]
        assert node.sales.escrows["itm-1-ga"].epoch == 2 and node.sales.escrows["itm-1-ga"].holds == ()


async def test_concurrent_holds_at_origin_and_shard_never_oversell(
    primary: Primary, shard_store: Store, fake_time: FakeTime, aiohttp_server: MakeServer, stack: AsyncExitStack
) -> None:
    node = await start_shard(primary, shard_store, fake_time, aiohttp_server, stack)
    await wait_until(lambda: node.granted("itm-1-ga", "itm-1-s"), "grants")
    shard_url = str(node.server.make_url("")).rstrip("/")
    rng = random.Random(7)
    orders: list[dict[str, Any]] = []
    outcomes: dict[int, int] = {}

    async def buy(client: ClientSession, base: str, item_id: str, qty: int, seats: list[str] | None) -> None:
        body: dict[str, Any] = {"item_id": item_id, "qty": qty, "user_id": "buyer"}
        if seats is not None:
            body["seats"] = seats
        status, held = await post(client, f"{base}/v1/holds", body)
        outcomes[status] = outcomes.get(status, 0) + 1
        if status != 201:
            assert status == 409, held
            return
        status, ordered = await post(client, f"{base}/v1/orders", {"hold_id": held["hold"]["id"]})
        outcomes[status] = outcomes.get(status, 0) + 1
        if status == 201:
            orders.append(ordered["order"])

    async with ClientSession() as client:
        for _ in range(ROUNDS):
            batch = []
            for _ in range(4):
                base = rng.choice([shard_url, primary.url])
                if rng.random() < 0.5:
                    batch.append(buy(client, base, "itm-1-ga", rng.randint(1, 3), None))
                else:
                    seats = rng.sample([str(n) for n in range(1, 7)], rng.randint(1, 2))
                    batch.append(buy(client, base, "itm-1-s", len(seats), seats))
            await asyncio.gather(*batch, node.sales.tend())

    for item_id, capacity in (("itm-1-ga", 10), ("itm-1-s", 6)):
        sold = [order for order in orders if order["item_id"] == item_id]
        assert sum(order["qty"] for order in sold) <= capacity
        item = await primary.store.item(item_id)
        assert item is not None
        held = [held for held in await primary.store.allotments(None) if held.item_id == item_id]
        book_of(item, 0, held)  # available ≥ allotted: the origin's book and row agree
    seats = [seat for order in orders if order["item_id"] == "itm-1-s" for seat in order["seats"]]
    assert len(seats) == len(set(seats))
    assert (await primary.store.counts())["orders"] == len(orders)
    assert outcomes.get(201, 0) > 0 and outcomes.get(409, 0) > 0  # both paths were exercised
