"""A regional shard against a real primary on loopback: bootstrap, follow, re-snapshot, placement, writes.

The primary is the origin app on an in-process aiohttp server over SQLite; the
shard's own store runs on SQLite and on a real PostgreSQL (the `store` fixture).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from ops.settings import Seconds
from origin.changefeed import Position
from origin.hlc import HybridClock
from origin.http import Origin, OriginMetrics, create_app
from origin.ledger import Ledger, parse_hold_request
from origin.model import GENERAL_ADMISSION, Event, Item, PriceTier
from origin.replica import row_hash
from origin.settings import OriginSettings
from origin.shard import UPSTREAM_SOURCE, Shard, ShardMetrics, upstream_session
from origin.store.base import Store
from origin.store.factory import store_from_url
from tests.origin.conftest import LIMITS, START, tiny_catalog

MakeServer = Callable[..., Awaitable[TestServer]]
WAIT_STEPS = 400  # × 0.05 s: the bound of every wait_until loop
PLACED = ("evt-1", "evt-3")


def catalog() -> tuple[list[Any], list[Event], list[Item]]:
    """The tiny catalog plus evt-3 (eu-west) with four GA pools."""
    venues, events, items = tiny_catalog()
    tiers = (PriceTier("A", 5000, "EUR"),)
    events.append(
        Event("evt-3", "Third", "Trio", "pop", "ven-1", "eu-west", START + timedelta(days=5), START, 0.1, tiers)
    )
    for n in range(4):
        items.append(
            Item(f"itm-3-{n}", "evt-3", GENERAL_ADMISSION, f"Pool {n}", "Floor", None, (), 20, "A", 5000, "EUR",
                 20, (), 1, "0000000000000-00000-seed", START)
        )  # fmt: skip
    return venues, events, items


async def wait_until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    for _ in range(WAIT_STEPS):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"gave up waiting: {what}")


async def docs_of(store: Store, events: Sequence[str]) -> list[dict[str, Any]]:
    return [item.to_document() for event in events for item in await store.event_items(event)]


@dataclasses.dataclass
class Primary:
    store: Store
    ledger: Ledger
    server: TestServer

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def hold(self, item_id: str, qty: int = 1) -> dict[str, Any]:
        request = parse_hold_request({"item_id": item_id, "qty": qty, "user_id": "u1"}, LIMITS)
        result = await self.ledger.place_hold(request, None)
        return result.body


async def start_primary(path: Path, aiohttp_server: MakeServer) -> Primary:
    store = store_from_url(f"sqlite:{path}")
    await store.open()
    if not await store.events(None, None, 1):
        venues, events, items = catalog()
        await store.load_catalog(venues, events, items, START)
    import time

    settings = OriginSettings(feed_max_wait=Seconds(5.0))
    ledger = Ledger(store, HybridClock("primary", time.time), time.time, LIMITS)
    server = await aiohttp_server(create_app(Origin(settings, store, ledger, time.time), background=False))
    return Primary(store, ledger, server)


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as exits:
        yield exits


@pytest.fixture
async def primary(tmp_path: Path, aiohttp_server: MakeServer, stack: AsyncExitStack) -> Primary:
    started = await start_primary(tmp_path / "primary.db", aiohttp_server)
    stack.push_async_callback(started.store.close)
    return started


def shard_settings(upstream: str, **overrides: Any) -> OriginSettings:
    base: dict[str, Any] = {
        "role": "shard",
        "shard_id": "s1",
        "region": "eu-west",
        "upstream": upstream,
        "events": PLACED,
        "database": "sqlite:unused.db",
        "follow_wait": 0.2,
        "max_lag": 5.0,
        "upstream_timeout": 5.0,
        "feed_max_wait": 5.0,
    }
    base.update(overrides)
    return OriginSettings(**base)


async def start_shard(
    store: Store, settings: OriginSettings, aiohttp_server: MakeServer, stack: AsyncExitStack
) -> tuple[Shard, TestServer]:
    session = await stack.enter_async_context(upstream_session())
    metrics = OriginMetrics()
    shard = Shard(settings, store, session, ShardMetrics(metrics.registry))
    ledger = Ledger(store, HybridClock("shard", lambda: 0.0), lambda: 0.0, LIMITS)
    origin = Origin(settings, store, ledger, lambda: 0.0, metrics=metrics, shard=shard)
    server = await aiohttp_server(create_app(origin))
    stack.push_async_callback(server.close)  # before the session closes (LIFO)
    return shard, server


async def converged(shard_store: Store, primary: Primary, events: Sequence[str] = PLACED) -> bool:
    return row_hash(await docs_of(shard_store, events)) == row_hash(await docs_of(primary.store, events))


async def synced(shard_store: Store, primary: Primary) -> bool:
    """Converged *and* checkpointed at the primary's head (a restart then resumes, not re-bootstraps)."""
    head = (await primary.store.feed_bounds()).head_position.encode()
    return await shard_store.checkpoint(UPSTREAM_SOURCE) == head and await converged(shard_store, primary)


async def test_bootstrap_then_follow_converges(
    store: Store, primary: Primary, aiohttp_server: MakeServer, stack: AsyncExitStack
) -> None:
    shard, server = await start_shard(store, shard_settings(primary.url), aiohttp_server, stack)
    await wait_until(lambda: converged(store, primary), "bootstrap")
    assert shard.metrics.rows_copied.value() == 6  # evt-1 (2) + evt-3 (4), not evt-2
    await primary.hold("itm-1-ga", 2)
    await primary.hold("itm-1-s", 3)
    await primary.hold("itm-2-ga", 1)  # not placed here
    await wait_until(lambda: converged(store, primary), "follow")
    assert await store.item("itm-2-ga") is None
    assert (await store.item("itm-1-ga")) == (await primary.store.item("itm-1-ga"))
    async with ClientSession() as client:
        events = await (await client.get(server.make_url("/v1/events"))).json()
        assert [event["id"] for event in events["events"]] == ["evt-1", "evt-3"]
        event = await (await client.get(server.make_url("/v1/events/evt-1"))).json()
        assert event["venue"]["city"] == "Lisbon" and len(event["items"]) == 2
        item = await client.get(server.make_url("/v1/items/itm-1-ga"))
        assert item.status == 200 and (await item.json())["available"] == 8
        health = await (await client.get(server.make_url("/v1/health"))).json()
        assert health["role"] == "shard" and health["state"] == "following" and health["events"] == list(PLACED)
        assert health["lag"]["records"] == 0 and health["serving"] is True
        metrics = await (await client.get(server.make_url("/metrics"))).text()
        assert "shard_lag_seconds" in metrics and 'shard_records_total{outcome="applied"}' in metrics
    assert shard.metrics.bytes_received.value() > 0


async def test_redelivered_batches_change_nothing(
    primary: Primary, tmp_path: Path, aiohttp_server: MakeServer, stack: AsyncExitStack
) -> None:
    store = store_from_url(f"sqlite:{tmp_path / 'shard.db'}")
    await store.open()
    stack.push_async_callback(store.close)
    shard, server = await start_shard(store, shard_settings(primary.url), aiohttp_server, stack)
    await primary.hold("itm-1-ga")
    await primary.hold("itm-3-0")
    await wait_until(lambda: synced(store, primary), "follow")
    await server.close()  # the follower stops; the batches below are delivered by hand
    own_head = (await store.feed_bounds()).head
    before = row_hash(await docs_of(store, PLACED))
    # The whole feed again, twice: every record is a re-delivery.
    batch = await shard.upstream.changes(Position(primary.store.epoch, 0), 0)
    assert len(batch.records) == 9
    await shard.apply_batch(batch)
    await shard.apply_batch(batch)
    assert row_hash(await docs_of(store, PLACED)) == before
    assert (await store.feed_bounds()).head == own_head  # no own records for duplicates
    assert shard.metrics.applied.value("duplicate") == 2 * 8  # itm-2-ga's record is not ours
    assert shard.metrics.applied.value("not_ours") == 2


async def test_410_then_resnapshot_and_restart_resumes_without_one(
    primary: Primary, tmp_path: Path, aiohttp_server: MakeServer, stack: AsyncExitStack
) -> None:
    store = store_from_url(f"sqlite:{tmp_path / 'shard.db'}")
    await store.open()
    stack.push_async_callback(store.close)
    _, server = await start_shard(store, shard_settings(primary.url), aiohttp_server, stack)
    await wait_until(lambda: synced(store, primary), "bootstrap")
    await server.close()

    # Restart: the checkpoint survives, so no snapshot rows are transferred again.
    await primary.hold("itm-1-s", 2)
    second, server = await start_shard(store, shard_settings(primary.url), aiohttp_server, stack)
    await wait_until(lambda: synced(store, primary), "resume")
    assert second.metrics.rows_copied.value() == 0 and second.metrics.resnapshots.value("gone") == 0
    await server.close()

    # Retention passes the checkpoint while the shard is away: 410, re-snapshot.
    await primary.hold("itm-3-1", 4)
    await primary.store.prune(keep_changes=0, changes_before=START, idempotency_before=START)
    third, _ = await start_shard(store, shard_settings(primary.url), aiohttp_server, stack)
    await wait_until(lambda: converged(store, primary), "re-snapshot")
    assert third.metrics.resnapshots.value("gone") == 1
    assert third.metrics.rows_copied.value() == 6


async def test_upstream_epoch_change_replaces_rows(
    store: Store, primary: Primary, tmp_path: Path, aiohttp_server: MakeServer, stack: AsyncExitStack
) -> None:
    _, server = await start_shard(store, shard_settings(primary.url), aiohttp_server, stack)
    await wait_until(lambda: synced(store, primary), "bootstrap")
    for _ in range(3):
        await primary.hold("itm-1-ga")
    await wait_until(lambda: synced(store, primary), "follow")
    await server.close()
    assert (await store.item("itm-1-ga")).version == 4  # type: ignore[union-attr]

    # A different history (a restored primary): versions are lower, and still win.
    other = await start_primary(tmp_path / "restored.db", aiohttp_server)
    stack.push_async_callback(other.store.close)
    await other.hold("itm-3-2")
    shard, _ = await start_shard(store, shard_settings(other.url), aiohttp_server, stack)
    await wait_until(lambda: converged(store, other), "replaced by the new history")
    assert (await store.item("itm-1-ga")).version == 1  # type: ignore[union-attr]
    resnapshots = sum(shard.metrics.resnapshots.value(reason) for reason in ("gone", "epoch"))
    assert resnapshots == 1, (shard.health(), shard.metrics.registry.render())
    assert (await store.checkpoint(UPSTREAM_SOURCE) or "").startswith(other.store.epoch + ":")


async def test_reads_answer_503_while_bootstrapping_and_while_lagging(
    primary: Primary, tmp_path: Path, aiohttp_server: MakeServer, stack: AsyncExitStack, unused_tcp_port: int
) -> None:
    store = store_from_url(f"sqlite:{tmp_path / 'shard.db'}")
    await store.open()
    stack.push_async_callback(store.close)
    dead = f"http://127.0.0.1:{unused_tcp_port}"
    shard, server = await start_shard(store, shard_settings(dead), aiohttp_server, stack)
    async with ClientSession() as client:
        response = await client.get(server.make_url("/v1/items/itm-1-ga"))
        assert response.status == 503 and response.headers["Retry-After"] == "2"
        assert (await response.json())["error"]["code"] == "shard_not_ready"
        await wait_until(lambda: asyncio.sleep(0, shard.last_error is not None), "a failed step")
        health_response = await client.get(server.make_url("/v1/health"))
        health = await health_response.json()
        assert health_response.status == 503
        assert health["state"] == "bootstrapping" and health["status"] == "degraded"
        assert "upstream" in health["last_error"] or "GET" in health["last_error"]
    await server.close()

    # Bootstrapped, then the upstream goes away: reads stop once lag passes max_lag.
    shard, server = await start_shard(store, shard_settings(primary.url, max_lag=0.6), aiohttp_server, stack)
    async with ClientSession() as client:

        async def status() -> int:
            return (await client.get(server.make_url("/v1/items/itm-1-ga"))).status

        await wait_until(lambda: _is(status(), 200), "serving")
        await primary.server.close()
        await wait_until(lambda: _is(status(), 503), "refusing while lagging")
        body = await (await client.get(server.make_url("/v1/events"))).json()
        assert "lags its upstream" in body["error"]["message"]


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_placement_adds_and_drops_events_without_a_full_copy(
    primary: Primary, tmp_path: Path, aiohttp_server: MakeServer, stack: AsyncExitStack
) -> None:
    shard_map: dict[str, Any] = {"version": 1, "shards": {"s1": {"region": "eu-west", "events": ["evt-1"]}}}

    async def get_map(_: web.Request) -> web.Response:
        return web.json_response(shard_map)

    map_app = web.Application()
    map_app.router.add_get("/v1/shardmap", get_map)
    map_server = await aiohttp_server(map_app)
    store = store_from_url(f"sqlite:{tmp_path / 'shard.db'}")
    await store.open()
    stack.push_async_callback(store.close)
    settings = shard_settings(
        primary.url, events=(), shardmap_url=str(map_server.make_url("/v1/shardmap")), shardmap_interval=0.1
    )
    shard, server = await start_shard(store, settings, aiohttp_server, stack)
    await wait_until(lambda: converged(store, primary, ["evt-1"]), "bootstrap evt-1")
    assert shard.metrics.rows_copied.value() == 2

    await primary.hold("itm-1-ga")
    shard_map["shards"]["s1"]["events"] = ["evt-1", "evt-3"]
    await wait_until(lambda: converged(store, primary, PLACED), "evt-3 added")
    assert shard.metrics.rows_copied.value() == 2 + 4  # only the new event's rows crossed
    assert shard.metrics.resnapshots.value("gone") == 0

    own_head = (await store.feed_bounds()).head
    shard_map["shards"]["s1"]["events"] = ["evt-3"]
    await wait_until(lambda: asyncio.sleep(0, "evt-1" not in shard.mirrored), "evt-1 dropped")
    assert await store.event_items("evt-1") == [] and await store.event("evt-1") is None
    deletes = [record for record in await store.changes(own_head, 100) if record.op == "delete"]
    assert sorted(record.item_id for record in deletes) == ["itm-1-ga", "itm-1-s"]
    assert shard.metrics.rows_copied.value() == 6
    async with ClientSession() as client:
        assert (await client.get(server.make_url("/v1/items/itm-1-ga"))).status == 404


async def test_holds_are_forwarded_with_their_idempotency_key(
    primary: Primary, tmp_path: Path, aiohttp_server: MakeServer, stack: AsyncExitStack
) -> None:
    store = store_from_url(f"sqlite:{tmp_path / 'shard.db'}")
    await store.open()
    stack.push_async_callback(store.close)
    _, server = await start_shard(store, shard_settings(primary.url), aiohttp_server, stack)
    body = {"item_id": "itm-3-0", "qty": 2, "user_id": "u9"}
    async with ClientSession() as client:
        first = await client.post(server.make_url("/v1/holds"), json=body, headers={"Idempotency-Key": "k-1"})
        assert first.status == 201
        hold = (await first.json())["hold"]
        again = await client.post(server.make_url("/v1/holds"), json=body, headers={"Idempotency-Key": "k-1"})
        assert again.status == 201 and again.headers["Idempotent-Replayed"] == "true"
        assert (await again.json())["hold"]["id"] == hold["id"]
        short = await client.post(server.make_url("/v1/holds"), json=dict(body, qty=50))
        assert short.status in (400, 409) and "error" in await short.json()
        fetched = await client.get(server.make_url(f"/v1/holds/{hold['id']}"))
        assert fetched.status == 200 and (await fetched.json())["qty"] == 2
    assert (await primary.store.item("itm-3-0")).available == 18  # type: ignore[union-attr]
    await wait_until(lambda: converged(store, primary), "the hold reaches the shard")


async def test_a_second_consumer_follows_the_shards_own_feed(
    primary: Primary, tmp_path: Path, aiohttp_server: MakeServer, stack: AsyncExitStack
) -> None:
    store = store_from_url(f"sqlite:{tmp_path / 'shard.db'}")
    await store.open()
    stack.push_async_callback(store.close)
    pop_store = store_from_url(f"sqlite:{tmp_path / 'pop.db'}")
    await pop_store.open()
    stack.push_async_callback(pop_store.close)
    _, server = await start_shard(store, shard_settings(primary.url), aiohttp_server, stack)
    await wait_until(lambda: converged(store, primary), "shard bootstrap")
    assert store.epoch != primary.store.epoch
    downstream = shard_settings(str(server.make_url("")).rstrip("/"), events=("evt-3",), shard_id="pop1")
    pop, _ = await start_shard(pop_store, downstream, aiohttp_server, stack)
    await primary.hold("itm-3-3", 3)
    await primary.hold("itm-1-s")
    await wait_until(lambda: converged(pop_store, primary, ["evt-3"]), "the second hop")
    assert (await pop_store.checkpoint(UPSTREAM_SOURCE) or "").startswith(store.epoch + ":")
    assert await pop_store.item("itm-1-s") is None and pop.metrics.applied.value("applied") >= 1


async def test_a_gap_is_refetched_never_skipped(
    primary: Primary, tmp_path: Path, aiohttp_server: MakeServer, stack: AsyncExitStack
) -> None:
    store = store_from_url(f"sqlite:{tmp_path / 'shard.db'}")
    await store.open()
    stack.push_async_callback(store.close)
    _, server = await start_shard(store, shard_settings(primary.url), aiohttp_server, stack)
    await wait_until(lambda: synced(store, primary), "bootstrap")
    await server.close()
    await primary.hold("itm-1-ga")  # version 2
    await primary.hold("itm-1-ga")  # version 3, the head record
    head = (await primary.store.feed_bounds()).head
    # Pretend the version-2 record was lost: the checkpoint jumps past it.
    async with store.transaction() as tx:
        await tx.set_checkpoint(UPSTREAM_SOURCE, Position(primary.store.epoch, head - 1).encode())
    shard, _ = await start_shard(store, shard_settings(primary.url), aiohttp_server, stack)
    await wait_until(lambda: converged(store, primary), "refetched")
    assert shard.metrics.gaps.value() == 1
    assert (await store.item("itm-1-ga")).version == 3  # type: ignore[union-attr]


async def test_region_shard_mirrors_every_event_of_its_region_and_learns_new_ones(
    store: Store, primary: Primary, aiohttp_server: MakeServer, stack: AsyncExitStack
) -> None:
    shard, _ = await start_shard(store, shard_settings(primary.url, events=()), aiohttp_server, stack)
    await wait_until(lambda: synced(store, primary), "bootstrap by region")
    assert shard.mirrored == {"evt-1", "evt-3"} and await store.event("evt-2") is None
    venues, events, _ = catalog()
    new_event = dataclasses.replace(events[0], id="evt-4", name="Added later")
    new_item = dataclasses.replace(tiny_catalog()[2][0], id="itm-4-ga", event_id="evt-4")
    foreign = dataclasses.replace(events[1], id="evt-5")
    foreign_item = dataclasses.replace(tiny_catalog()[2][2], id="itm-5-ga", event_id="evt-5")
    await primary.store.load_catalog(venues, [new_event, foreign], [new_item, foreign_item], START)
    await wait_until(lambda: converged(store, primary, [*PLACED, "evt-4"]), "the new event arrives")
    assert "evt-4" in shard.mirrored and await store.item("itm-5-ga") is None
    assert (await store.event("evt-4")) == new_event
