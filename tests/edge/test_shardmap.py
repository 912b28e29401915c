"""edge.shardmap: parsing and route choice (the pure core), then a POP routing by a real map on loopback.

The integration tests run the POP in-process (tests/support/edgepop.py) in
front of scripted loopback upstreams standing for the origin and two regional
shards, and a loopback metadata service serving the map with an ETag. Shards
are stopped for real (their listening socket closed) to test failover.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from edge.settings import EdgeSettings
from edge.shardmap import (
    InvalidShardMap,
    Router,
    ShardMap,
    ShardMapPoller,
    event_of_item,
    event_of_target,
    parse_shard_map,
)
from ops.settings import SettingsError
from tests.support.edgepop import WAIT_BOUND, MakePop, Reply, Scripted, fetch, until

MakeServer = Callable[..., Awaitable[TestServer]]
MakeUpstream = Callable[[], Awaitable[Scripted]]

EU_SHARD = "http://127.0.0.1:8110"
US_SHARD = "http://127.0.0.1:8111"
ORIGIN_URL = "http://127.0.0.1:8100"


def document(eu: str = EU_SHARD, us: str = US_SHARD, origin: str = ORIGIN_URL, version: int = 1) -> dict[str, Any]:
    """A map as origin/placement.py's rules M1–M3 build it: evt-000001 placed in eu-west and us-east."""
    return {
        "version": version,
        "generated_at": "2026-11-25T12:00:00Z",
        "origin": {"url": origin},
        "shards": {
            "eu-west-1": {"region": "eu-west", "url": eu, "events": ["evt-000001"], "healthy": True},
            "us-east-1": {"region": "us-east", "url": us, "events": ["evt-000001", "evt-000002"], "healthy": True},
        },
        "events": {
            "evt-000001": {
                "eu-west": ["eu-west-1", "us-east-1", "origin"],
                "us-east": ["us-east-1", "eu-west-1", "origin"],
            },
            "evt-000002": {"us-east": ["us-east-1", "origin"], "eu-west": ["us-east-1", "origin"]},
        },
    }


# The pure core ----------------------------------------------------------------------


def test_item_ids_map_to_their_event_by_the_catalog_convention() -> None:
    assert event_of_item("itm-000123-04") == "evt-000123"
    assert event_of_item("itm-000123-104") == "evt-000123"  # an event with over 99 items
    assert event_of_item("itm-1-ga") == "evt-1"  # the origin tests' tiny catalog
    assert event_of_item("itm-000123") is None
    assert event_of_item("evt-000123") is None
    assert event_of_item("itm--04") is None


@pytest.mark.parametrize(
    ("target", "event"),
    [
        ("/v1/items/itm-000123-04", "evt-000123"),
        ("/v1/items/itm-000123-04?fields=name", "evt-000123"),
        ("/v1/events/evt-000123", "evt-000123"),
        ("/v1/events/evt-000123/items?limit=5", "evt-000123"),
        ("/v1/events?region=eu-west", None),
        ("/v1/events/", None),
        ("/v1/holds", None),
        ("/v1/items/not%20an%20id", None),
        ("/v1/items/abc", None),
        ("/v2/items/itm-000123-04", None),
        ("/_edge/health", None),
    ],
)
def test_event_of_target(target: str, event: str | None) -> None:
    assert event_of_target(target) == event


def test_a_good_document_parses_and_routes_per_region() -> None:
    shard_map = parse_shard_map(document())
    assert shard_map.version == 1 and shard_map.origin_url == ORIGIN_URL
    assert shard_map.shards["us-east-1"].events == frozenset({"evt-000001", "evt-000002"})
    assert shard_map.targets("evt-000001", "eu-west") == (EU_SHARD, US_SHARD, ORIGIN_URL)
    assert shard_map.targets("evt-000001", "us-east") == (US_SHARD, EU_SHARD, ORIGIN_URL)
    assert shard_map.targets("evt-000002", "eu-west") == (US_SHARD, ORIGIN_URL)
    # M3: a region missing from the event's entry, an unplaced event, and a target naming no event go to the origin.
    assert shard_map.targets("evt-000001", "ap-south") == (ORIGIN_URL,)
    assert shard_map.targets("evt-000999", "eu-west") == (ORIGIN_URL,)
    assert shard_map.targets(None, "eu-west") == (ORIGIN_URL,)


def test_a_shard_marked_unhealthy_is_left_out_even_if_a_list_names_it() -> None:
    doc = document()
    doc["shards"]["eu-west-1"]["healthy"] = False
    assert parse_shard_map(doc).targets("evt-000001", "eu-west") == (US_SHARD, ORIGIN_URL)


def test_the_router_uses_the_configured_upstreams_until_a_map_arrives() -> None:
    current: list[ShardMap | None] = [None]
    router = Router("eu-west", ("http://shard:1", "http://primary:2"), lambda: current[0])
    assert router.targets("/v1/items/itm-000001-01") == ("http://shard:1", "http://primary:2")
    current[0] = parse_shard_map(document())
    assert router.targets("/v1/items/itm-000001-01") == (EU_SHARD, US_SHARD, ORIGIN_URL)
    assert router.targets("/v1/events?region=eu-west") == (ORIGIN_URL,)


def _broken(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    doc = copy.deepcopy(document())
    change(doc)
    return doc


@pytest.mark.parametrize(
    ("doc", "names"),
    [
        ([], "not a JSON object"),
        (_broken(lambda d: d.pop("version")), "version"),
        (_broken(lambda d: d.update(version=True)), "version"),
        (_broken(lambda d: d.update(origin={"url": "ftp://x"})), "origin.url"),
        (_broken(lambda d: d.update(origin="http://x")), "origin"),
        (_broken(lambda d: d["shards"]["eu-west-1"].update(url="http://x/?q=1")), "shards['eu-west-1'].url"),
        (_broken(lambda d: d["shards"]["eu-west-1"].update(healthy="yes")), "healthy"),
        (_broken(lambda d: d["shards"]["eu-west-1"].update(events="evt-000001")), "events"),
        (_broken(lambda d: d["shards"]["eu-west-1"].pop("region")), "region"),
        (_broken(lambda d: d["shards"].update(origin={"region": "x", "url": "http://x"})), "shard id"),
        (_broken(lambda d: d["events"]["evt-000001"].update({"eu-west": ["eu-west-1"]})), "must end with 'origin'"),
        (_broken(lambda d: d["events"]["evt-000001"].update({"eu-west": ["origin", "origin"]})), "only there"),
        (_broken(lambda d: d["events"]["evt-000001"].update({"eu-west": ["eu-west-9", "origin"]})), "eu-west-9"),
        (_broken(lambda d: d["events"]["evt-000001"].update({"eu-west": []})), "non-empty list"),
        (_broken(lambda d: d.update(events=[])), "events"),
    ],
)
def test_bad_documents_are_rejected_naming_the_problem(doc: object, names: str) -> None:
    with pytest.raises(InvalidShardMap) as caught:
        parse_shard_map(doc)
    assert names in caught.value.message


def test_settings_need_a_region_with_a_shard_map_and_a_known_feed() -> None:
    with pytest.raises(SettingsError, match=r"edge\.region"):
        EdgeSettings(shardmap_url="http://127.0.0.1:8100/v1/shardmap").validate()
    with pytest.raises(SettingsError, match=r"edge\.feed:"):
        EdgeSettings(feed="kafka").validate()
    with pytest.raises(SettingsError, match=r"edge\.feed_redis"):
        EdgeSettings(feed="redis").validate()
    EdgeSettings(shardmap_url="http://127.0.0.1:8100/v1/shardmap", region="eu-west").validate()


# The metadata service on loopback ---------------------------------------------------------


@dataclass
class MapService:
    """Serves `doc` at /v1/shardmap with a strong ETag per version; 304 on a matching If-None-Match."""

    doc: Any
    raw: bytes | None = None  # when set, served as is (a broken document)
    seen_if_none_match: list[str | None] = field(default_factory=list)
    server: TestServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/v1/shardmap"))

    async def handle(self, request: web.Request) -> web.Response:
        self.seen_if_none_match.append(request.headers.get("If-None-Match"))
        if self.raw is not None:
            return web.Response(body=self.raw, content_type="application/json")
        etag = f'"{self.doc["version"]}"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=json.dumps(self.doc).encode(), content_type="application/json",
                            headers={"ETag": etag})  # fmt: skip


async def start_map_service(aiohttp_server: MakeServer, doc: Any) -> MapService:
    service = MapService(doc)
    app = web.Application()
    app.router.add_get("/v1/shardmap", service.handle)
    service.server = await aiohttp_server(app, shutdown_timeout=0.1)
    return service


@dataclass
class Stack:
    origin: Scripted
    eu: Scripted
    us: Scripted
    maps: MapService


async def make_stack(make_upstream: MakeUpstream, aiohttp_server: MakeServer) -> Stack:
    origin, eu, us = await make_upstream(), await make_upstream(), await make_upstream()
    maps = await start_map_service(aiohttp_server, document(eu.url, us.url, origin.url))
    return Stack(origin, eu, us, maps)


async def test_the_poller_swaps_maps_honours_304_and_keeps_the_last_good_map(
    make_upstream: MakeUpstream, aiohttp_server: MakeServer
) -> None:
    stack = await make_stack(make_upstream, aiohttp_server)
    poller = ShardMapPoller(stack.maps.url, interval=0.05)
    async with aiohttp.ClientSession() as session:
        assert await poller.refresh(session) is True
        assert poller.current is not None and poller.current.version == 1
        first = poller.current

        # Unchanged: a conditional request answered 304 keeps the very same table.
        assert await poller.refresh(session) is False
        assert stack.maps.seen_if_none_match == [None, '"1"']
        assert poller.not_modified == 1 and poller.current is first

        # A broken document (not JSON, then JSON that breaks the contract) is refused; the map stays.
        stack.maps.raw = b"{not json"
        assert await poller.refresh(session) is False
        stack.maps.raw = json.dumps({"version": 2, "origin": {"url": "nope"}}).encode()
        assert await poller.refresh(session) is False
        assert poller.rejected == 2 and poller.current is first
        assert poller.last_error is not None and "origin.url" in poller.last_error

        # A new version is swapped in whole.
        stack.maps.raw = None
        stack.maps.doc = document(stack.us.url, stack.us.url, stack.origin.url, version=2)
        assert await poller.refresh(session) is True
        assert poller.current.version == 2 and poller.last_error is None

        # The metadata service goes away: the last good map stays in use.
        assert stack.maps.server is not None
        await stack.maps.server.close()
        assert await poller.refresh(session) is False
        assert poller.failures == 1 and poller.current.version == 2
        assert poller.status().to_document()["version"] == 2


async def test_the_pop_routes_by_region_and_fails_over_from_a_stopped_shard_with_no_failed_request(
    make_upstream: MakeUpstream, aiohttp_server: MakeServer, make_pop: MakePop, client: aiohttp.ClientSession
) -> None:
    stack = await make_stack(make_upstream, aiohttp_server)
    running = await make_pop([stack.origin.url], region="eu-west", shardmap_url=stack.maps.url)
    shardmap = running.app.shardmap
    assert shardmap is not None

    # Before the first map: the configured upstreams, exactly as without a map (R3).
    assert (await fetch(client, running, "/v1/items/itm-000001-01")).status == 200
    assert stack.origin.counts["/v1/items/itm-000001-01"] == 1 and stack.eu.total == 0

    poll = asyncio.create_task(shardmap.run())
    try:
        await until(lambda: shardmap.current is not None, "the first shard map")
        got = await fetch(client, running, "/v1/items/itm-000001-02")
        assert got.status == 200 and stack.eu.counts["/v1/items/itm-000001-02"] == 1
        assert (await fetch(client, running, "/v1/events/evt-000002")).status == 200
        assert stack.us.counts["/v1/events/evt-000002"] == 1  # eu-west's route for evt-000002 is us-east-1
        assert (await fetch(client, running, "/v1/events?region=eu-west")).status == 200
        assert stack.origin.counts["/v1/events?region=eu-west"] == 1  # no single event: the origin (R2)

        # A lagging shard answers 503: the secondary answers instead.
        stack.eu.routes["/v1/items/itm-000001-03"] = Reply(status=503, body=b"lagging")
        got = await fetch(client, running, "/v1/items/itm-000001-03")
        assert got.status == 200 and stack.us.counts["/v1/items/itm-000001-03"] == 1

        # The region's shard stops for real: every request still succeeds, from the secondary.
        assert stack.eu.server is not None
        eu_url = stack.eu.url
        await stack.eu.server.close()
        paths = [f"/v1/items/itm-000001-{n:02d}" for n in range(10, 40)]
        statuses = [(await fetch(client, running, path)).status for path in paths]
        assert statuses == [200] * len(paths)
        assert all(stack.us.counts[path] == 1 for path in paths)
        assert all(stack.origin.counts[path] == 0 for path in paths)

        health = json.loads((await fetch(client, running, "/_edge/health")).body)
        assert health["shardmap"]["version"] == 1 and health["region"] == "eu-west"
        assert health["upstreams"][eu_url]["state"] == "open"  # its breaker stops the connection attempts
        metrics = (await fetch(client, running, "/metrics")).body.decode()
        assert "edge_shardmap_version 1" in metrics
    finally:
        poll.cancel()
        with pytest.raises(asyncio.CancelledError):
            await poll


async def test_coalesced_misses_make_one_upstream_request_on_one_route(
    make_upstream: MakeUpstream, aiohttp_server: MakeServer, make_pop: MakePop, client: aiohttp.ClientSession
) -> None:
    stack = await make_stack(make_upstream, aiohttp_server)
    running = await make_pop([stack.origin.url], region="eu-west", shardmap_url=stack.maps.url)
    assert running.app.shardmap is not None
    async with aiohttp.ClientSession() as session:
        assert await running.app.shardmap.refresh(session)
    gate = asyncio.Event()
    path = "/v1/events/evt-000001"
    stack.eu.routes[path] = Reply(headers=[("Cache-Control", "max-age=600")], body=b"event 1", gate=gate)
    requests = [asyncio.create_task(fetch(client, running, path)) for _ in range(20)]
    await until(lambda: stack.eu.counts[path] == 1 and running.pop.stats.coalesced >= 19, "all waiting on one fetch")
    gate.set()
    answers = await asyncio.wait_for(asyncio.gather(*requests), WAIT_BOUND)
    assert [answer.status for answer in answers] == [200] * 20
    assert {answer.body for answer in answers} == {b"event 1"}
    assert stack.eu.counts[path] == 1 and stack.us.counts[path] == 0 and stack.origin.counts[path] == 0


async def test_a_new_map_moves_the_routes(
    make_upstream: MakeUpstream, aiohttp_server: MakeServer, make_pop: MakePop, client: aiohttp.ClientSession
) -> None:
    stack = await make_stack(make_upstream, aiohttp_server)
    running = await make_pop([stack.origin.url], region="eu-west", shardmap_url=stack.maps.url,
                             shardmap_interval=0.05)  # fmt: skip
    shardmap = running.app.shardmap
    assert shardmap is not None
    poll = asyncio.create_task(shardmap.run())
    try:
        await until(lambda: shardmap.current is not None and shardmap.not_modified >= 1, "the map, then a 304")
        assert (await fetch(client, running, "/v1/items/itm-000001-01")).status == 200
        assert stack.eu.counts["/v1/items/itm-000001-01"] == 1

        # Placement moved evt-000001 out of eu-west: its region now reads from us-east-1.
        moved = document(stack.eu.url, stack.us.url, stack.origin.url, version=2)
        moved["shards"]["eu-west-1"]["events"] = []
        moved["events"]["evt-000001"]["eu-west"] = ["us-east-1", "origin"]
        stack.maps.doc = moved
        await until(lambda: shardmap.current is not None and shardmap.current.version == 2, "the new map")
        assert (await fetch(client, running, "/v1/items/itm-000001-02")).status == 200
        assert stack.us.counts["/v1/items/itm-000001-02"] == 1 and stack.eu.counts["/v1/items/itm-000001-02"] == 0
    finally:
        poll.cancel()
        with pytest.raises(asyncio.CancelledError):
            await poll
