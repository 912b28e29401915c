"""Event records (edits of an event's metadata) at the POP, from a real primary, through both followers.

The primary is the origin app on loopback over SQLite with long cache
lifetimes, so only an eviction can make the POP show an edit. The HTTP
follower long-polls the primary's feed; the Redis Streams follower reads
entries in the publisher's own format (origin.streamformat.entry_fields)
from a real redis-server.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as redis_asyncio
from aiohttp.test_utils import TestServer

from edge.feedfollow import FeedFollower
from edge.streamentry import parse_entry, stream_key
from edge.streamfollow import StreamFollower
from ops.settings import Seconds
from origin.changefeed import OP_EVENT
from origin.hlc import HybridClock
from origin.http import Origin, create_app
from origin.ledger import Ledger
from origin.lww import STAMPS_KEY
from origin.settings import OriginSettings
from origin.store.base import Store
from origin.store.factory import store_from_url
from origin.streamformat import entry_fields, parse_changes
from tests.origin.conftest import LIMITS, START
from tests.origin.test_shard import catalog
from tests.support.edgepop import MakePop, RunningPop, fetch, until
from tests.support.servers import RedisServer

MakeServer = Callable[..., Awaitable[TestServer]]
TOKEN = "admin-secret"
FRESH_FOR = Seconds(600)  # far longer than any test: a changed page shows only if the POP evicted it


class Primary:
    def __init__(self, store: Store, server: TestServer) -> None:
        self.store = store
        self.server = server

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def rename(self, client: aiohttp.ClientSession, event_id: str, name: str) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with client.patch(f"{self.url}/v1/events/{event_id}", json={"name": name}, headers=headers) as resp:
            assert resp.status == 200, await resp.text()


@pytest.fixture
async def primary(tmp_path: Path, aiohttp_server: MakeServer) -> AsyncIterator[Primary]:
    store = store_from_url(f"sqlite:{tmp_path / 'primary.db'}")
    await store.open()
    async with AsyncExitStack() as exits:
        exits.push_async_callback(store.close)
        venues, events, items = catalog()
        await store.load_catalog(venues, events, items, START)
        settings = OriginSettings(
            feed_max_wait=Seconds(5.0), admin_token=TOKEN, item_max_age=FRESH_FOR, event_max_age=FRESH_FOR
        )
        ledger = Ledger(store, HybridClock("primary", time.time), time.time, LIMITS)
        server = await aiohttp_server(create_app(Origin(settings, store, ledger, time.time), background=False))
        yield Primary(store, server)


def name_in(body: bytes, event_id: str) -> str | None:
    """The event's name on an event page or in a listing."""
    doc: dict[str, Any] = json.loads(body)
    if "event" in doc:
        return str(doc["event"]["name"])
    return next((str(event["name"]) for event in doc["events"] if event["id"] == event_id), None)


async def cache_pages(client: aiohttp.ClientSession, running: RunningPop) -> None:
    """The event page, a listing and an item page, each cached (the second read is a HIT)."""
    for path in ("/v1/events/evt-1", "/v1/events?region=eu-west", "/v1/items/itm-1-ga"):
        assert (await fetch(client, running, path)).x_cache == "MISS"
        assert (await fetch(client, running, path)).x_cache == "HIT"


async def assert_edit_shown(client: aiohttp.ClientSession, running: RunningPop) -> None:
    page = await fetch(client, running, "/v1/events/evt-1")
    assert (page.x_cache, name_in(page.body, "evt-1")) == ("MISS", "Band Live (moved)")
    listing = await fetch(client, running, "/v1/events?region=eu-west")
    assert (listing.x_cache, name_in(listing.body, "evt-1")) == ("MISS", "Band Live (moved)")
    # Item pages are unchanged by an event record: still served from the cache.
    assert (await fetch(client, running, "/v1/items/itm-1-ga")).x_cache == "HIT"


async def test_the_http_follower_evicts_the_event_page_and_listings_on_an_event_record(
    primary: Primary, make_pop: MakePop, client: aiohttp.ClientSession
) -> None:
    running = await make_pop([primary.url], follow_feed=True, feed_wait=Seconds(0.5))
    follower = running.follower
    assert isinstance(follower, FeedFollower)
    await until(lambda: follower.connected, "following the primary's feed")
    await cache_pages(client, running)
    applied = follower.applied
    await primary.rename(client, "evt-1", "Band Live (moved)")
    await until(lambda: follower.applied == applied + 1, "the event record applied")
    await assert_edit_shown(client, running)


async def test_the_redis_follower_evicts_them_on_the_publishers_entry(
    primary: Primary,
    make_pop: MakePop,
    client: aiohttp.ClientSession,
    redis_server: RedisServer,
) -> None:
    source = f"t{uuid.uuid4().hex[:12]}"
    running = await make_pop(
        [primary.url], follow_feed=True, feed="redis", feed_redis=redis_server.url, feed_source=source, pop="pop-e"
    )
    follower = running.follower
    assert isinstance(follower, StreamFollower)
    await until(lambda: follower.connected and follower.resets == 1, "joined, with the start purge")
    await cache_pages(client, running)
    head = (await primary.store.feed_bounds()).head
    await primary.rename(client, "evt-1", "Band Live (moved)")
    # What origin.streams publishes: the primary's /v1/changes answer, parsed and turned into entries.
    async with client.get(f"{primary.url}/v1/changes", params={"since": f"{primary.store.epoch}:{head}"}) as resp:
        answer = parse_changes(await resp.json())
    assert [record.op for record in answer.records] == [OP_EVENT]
    fields = entry_fields(answer.records[0])
    assert fields["op"] == OP_EVENT
    redis = redis_asyncio.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await redis.xadd(stream_key(source), fields)  # type: ignore[arg-type]
    finally:
        await redis.aclose()
    await until(lambda: follower.applied == 1, "the event entry applied")
    await assert_edit_shown(client, running)


def test_a_stream_entry_of_an_event_record_parses_with_its_op_and_stamps() -> None:
    stamp = "0001764000000000-00000-primary"
    fields = {
        "pos": "e1:7",
        "item_id": "evt-1",
        "version": "1",
        "hlc": stamp,
        "op": OP_EVENT,
        "patch": f'{{"name":"New","{STAMPS_KEY}":{{"name":"{stamp}"}}}}',
    }
    entry = parse_entry("1-0", fields)
    assert (entry.op, entry.item_id, entry.version) == (OP_EVENT, "evt-1", 1)
    assert entry.patch == {"name": "New", STAMPS_KEY: {"name": stamp}}
    assert not entry.is_reset
