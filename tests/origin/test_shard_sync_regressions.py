"""Regressions found by tests/bench/bench_sync.py: long filters, large bodies, a feed answer past its head."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from origin.changefeed import ChangeRecord
from origin.hlc import HybridClock
from origin.http import Origin, create_app
from origin.ledger import Ledger, parse_hold_request
from origin.settings import OriginSettings
from origin.store.factory import store_from_url
from origin.store.sqlite import SQLiteStore
from origin.upstream import read_capped
from tests.origin.conftest import LIMITS, START
from tests.origin.test_shard import (
    PLACED,
    Primary,
    catalog,
    converged,
    shard_settings,
    start_primary,
    start_shard,
    wait_until,
)

MakeServer = Any


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as exits:
        yield exits


@pytest.fixture
async def primary(tmp_path: Path, aiohttp_server: MakeServer, stack: AsyncExitStack) -> Primary:
    started = await start_primary(tmp_path / "primary.db", aiohttp_server)
    stack.push_async_callback(started.store.close)
    return started


async def test_a_shard_with_hundreds_of_events_bootstraps(
    primary: Primary, tmp_path: Path, aiohttp_server: MakeServer, stack: AsyncExitStack
) -> None:
    # 900 ids in one `filter=event:…` made a request line over aiohttp's 8 KiB: 400 for ever.
    many = (*PLACED, *(f"evt-9{n:05d}" for n in range(900)))
    store = store_from_url(f"sqlite:{tmp_path / 'shard.db'}")
    await store.open()
    stack.push_async_callback(store.close)
    shard, _ = await start_shard(
        store, shard_settings(str(primary.server.make_url("")), events=many), aiohttp_server, stack
    )
    await wait_until(lambda: converged(store, primary), "the shard bootstrapped its placed events")

    async def following() -> bool:
        return bool(shard.health()["state"] == "following")

    await wait_until(following, "the shard follows the feed after its bootstrap")
    assert shard.health()["last_error"] in (None, "")


async def test_read_capped_reads_a_large_body_whole_and_stops_past_the_cap(aiohttp_server: MakeServer) -> None:
    body = bytes(range(256)) * (12 * 1024)  # 3 MiB, many socket reads

    async def big(_: web.Request) -> web.StreamResponse:
        return web.Response(body=body)

    app = web.Application()
    app.router.add_get("/big", big)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/big")) as response:
            assert await read_capped(response.content, len(body)) == body
        async with session.get(server.make_url("/big")) as response:
            assert len(await read_capped(response.content, 1000)) == 1001


class _RacingStore(SQLiteStore):
    """A store where a write commits between the feed's bounds and its records."""

    ledger: Ledger | None = None

    async def changes(self, after: int, limit: int) -> list[ChangeRecord]:
        ledger, self.ledger = self.ledger, None
        if ledger is not None:
            request = parse_hold_request({"item_id": catalog()[2][0].id, "qty": 1, "user_id": "u1"}, LIMITS)
            await ledger.place_hold(request, None)
        return await super().changes(after, limit)


async def test_a_feed_answer_never_passes_its_head(tmp_path: Path, aiohttp_server: MakeServer) -> None:
    store = _RacingStore(str(tmp_path / "racing.db"))
    await store.open()
    try:
        venues, events, items = catalog()
        await store.load_catalog(venues, events, items, START)
        ledger = Ledger(store, HybridClock("primary", time.time), time.time, LIMITS)
        server = await aiohttp_server(create_app(Origin(OriginSettings(), store, ledger, time.time), background=False))
        bounds = await store.feed_bounds()
        store.ledger = ledger
        async with aiohttp.ClientSession() as session:
            url = server.make_url("/v1/changes").with_query(since=f"{store.epoch}:{bounds.retained_after}")
            async with session.get(url) as response:
                doc = await response.json()
        head = int(doc["head"].rpartition(":")[2])
        assert doc["changes"], "the first poll returns the catalog's records"
        assert all(int(change["pos"].rpartition(":")[2]) <= head for change in doc["changes"])
        assert int(doc["next"].rpartition(":")[2]) <= head
    finally:
        await store.close()
