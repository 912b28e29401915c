"""Review of the lease live path: an unanswered sale report after the lease closed, a garbage lease list.

Real servers on loopback (the primary with its lease API and a selling shard,
from tests.origin.test_shard_sales); answers are lost by the shard's own
client, the way a timeout after the origin committed would lose them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web

from ops.settings import Seconds
from origin.hlc import HybridClock
from origin.http import Origin, create_app
from origin.leaseclient import LeaseClient
from origin.leasing import Leasing
from origin.ledger import Ledger
from origin.settings import OriginSettings
from origin.shard import UpstreamError, upstream_session
from origin.shardsales import ShardSales
from origin.store.base import Store
from origin.store.factory import store_from_url
from tests.origin.conftest import LIMITS, FakeTime
from tests.origin.test_shard_sales import POLICY, TOKEN, MakeServer, Primary, post, start_shard, wait_until


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


class _LosesSaleAnswers(LeaseClient):
    """Sends every call; while `losing`, a sale report's answer is dropped after the origin handled it."""

    losing = True

    async def call(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, key: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        answer = await super().call(method, path, body, key)
        if self.losing and path.endswith("/sales"):
            raise UpstreamError(f"{method} {path}: answer lost")
        return answer


async def test_order_retried_after_the_lease_closed_gets_the_sale_the_origin_made(
    primary: Primary, shard_store: Store, fake_time: FakeTime, aiohttp_server: MakeServer, stack: AsyncExitStack
) -> None:
    node = await start_shard(primary, shard_store, fake_time, aiohttp_server, stack, lease_items=("itm-1-ga",))
    await wait_until(lambda: node.granted("itm-1-ga"), "grant")
    sales = node.sales
    lossy = _LosesSaleAnswers(sales.session, primary.url, TOKEN, 5.0)
    sales.client = lossy
    shard_url = str(node.server.make_url("")).rstrip("/")
    async with ClientSession() as client:
        status, held = await post(client, f"{shard_url}/v1/holds", {"item_id": "itm-1-ga", "qty": 2, "user_id": "u1"})
        assert status == 201
        hold_id = held["hold"]["id"]
        status, failed = await post(client, f"{shard_url}/v1/orders", {"hold_id": hold_id})
        assert status == 502 and "retry" in failed["error"]["message"]
        assert (await primary.store.counts())["orders"] == 1  # the origin sold it; the shard never heard

        # The lease runs out before the buyer retries: the shard returns it and is granted anew.
        fake_time.advance(40)
        await sales.tend()
        assert sales.escrows["itm-1-ga"].epoch == 2

        lossy.losing = False
        status, ordered = await post(client, f"{shard_url}/v1/orders", {"hold_id": hold_id})
        assert status == 201, ordered
        assert ordered["order"]["hold_id"] == hold_id and ordered["order"]["qty"] == 2
        assert (await primary.store.counts())["orders"] == 1  # the same sale, not a second one
        assert await post(client, f"{shard_url}/v1/orders", {"hold_id": hold_id}) == (201, ordered)


async def test_unanswered_report_of_a_closed_lease_is_refused_when_it_never_arrived(
    primary: Primary, shard_store: Store, fake_time: FakeTime, aiohttp_server: MakeServer, stack: AsyncExitStack
) -> None:
    """The other half: the report was lost on the way, so the retry is refused (stale epoch), never sold late."""

    class _Unreachable(LeaseClient):
        down = True

        async def call(
            self, method: str, path: str, body: Mapping[str, Any] | None = None, key: str | None = None
        ) -> tuple[int, dict[str, Any]]:
            if self.down and path.endswith("/sales"):
                raise UpstreamError(f"{method} {path}: connection refused")
            return await super().call(method, path, body, key)

    node = await start_shard(primary, shard_store, fake_time, aiohttp_server, stack, lease_items=("itm-1-ga",))
    await wait_until(lambda: node.granted("itm-1-ga"), "grant")
    unreachable = _Unreachable(node.sales.session, primary.url, TOKEN, 5.0)
    node.sales.client = unreachable
    shard_url = str(node.server.make_url("")).rstrip("/")
    async with ClientSession() as client:
        _, held = await post(client, f"{shard_url}/v1/holds", {"item_id": "itm-1-ga", "qty": 1, "user_id": "u1"})
        status, _ = await post(client, f"{shard_url}/v1/orders", {"hold_id": held["hold"]["id"]})
        assert status == 502
        fake_time.advance(40)
        await node.sales.tend()
        unreachable.down = False
        status, refused = await post(client, f"{shard_url}/v1/orders", {"hold_id": held["hold"]["id"]})
        assert status == 409 and refused["error"]["code"] == "stale_epoch"
    assert (await primary.store.counts())["orders"] == 0


async def test_a_lease_list_the_shard_cannot_read_does_not_end_its_lease_loop(
    tmp_path: Path, aiohttp_server: MakeServer, stack: AsyncExitStack
) -> None:
    """A lease document without an item id raised KeyError out of restart(), ending the loop silently."""
    calls: list[str] = []

    async def leases(request: web.Request) -> web.Response:
        calls.append(request.path_qs)
        garbage = {"shard_id": "s1", "epoch": 1, "units": 1, "seats": [], "kind": "general_admission",
                   "expires_at": "2026-11-01T12:00:00Z"}  # fmt: skip
        return web.json_response({"leases": [garbage]})

    app = web.Application()
    app.router.add_get("/v1/leases", leases)
    upstream = await aiohttp_server(app)
    store = store_from_url(f"sqlite:{tmp_path / 'shard.db'}")
    await store.open()
    stack.push_async_callback(store.close)
    session = await stack.enter_async_context(upstream_session())
    settings = OriginSettings(
        role="shard", shard_id="s1", region="eu-west", upstream=str(upstream.make_url("")), database="sqlite:x.db",
        shard_token=TOKEN, lease_tick=Seconds(0.01),
    )  # fmt: skip
    sales = ShardSales(settings, store, session)
    task = asyncio.create_task(sales.run())
    try:
        for _ in range(400):
            if task.done() or len(calls) >= 3:
                break
            await asyncio.sleep(0.05)
        assert not task.done(), task.exception() if task.done() else None
        assert len(calls) >= 3 and not sales.restarted
        assert sales.last_error is not None and "KeyError" in sales.last_error
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
