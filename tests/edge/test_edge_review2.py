"""Regression tests from a second review: change-feed resets, the Redis second level, purges, settings, Age, CLI."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import aiohttp
import pytest

from edge import cli
from edge.cachekey import primary_key
from edge.entry import make_entry
from edge.messages import Headers, StoredResponse
from edge.settings import EdgeSettings
from ops.settings import SettingsError
from tests.support.edgepop import TOKEN, MakePop, Reply, Scripted, cacheable, fetch, until
from tests.support.servers import RedisServer


def item(item_id: str, version: int, **extra: object) -> bytes:
    return json.dumps({"id": item_id, "version": version, **extra}).encode()


async def test_review2_a_reset_evicts_items_and_event_pages_never_linked(
    upstream: Scripted, make_pop: MakePop, client: aiohttp.ClientSession
) -> None:
    # An item document without event_id is never recorded; an event page whose items were never read either.
    upstream.routes["/v1/items/a"] = Reply(headers=cacheable(600), body=item("a", 1))
    upstream.routes["/v1/events/e"] = Reply(headers=cacheable(600), body=b'{"id": "e"}')
    running = await make_pop([upstream.url])
    for path in ("/v1/items/a", "/v1/events/e"):
        assert (await fetch(client, running, path)).x_cache == "MISS"
        assert (await fetch(client, running, path)).x_cache == "HIT"
    running.pop.on_feed_reset("test")
    for path in ("/v1/items/a", "/v1/events/e"):
        assert (await fetch(client, running, path)).x_cache == "MISS", path


async def test_review2_a_reset_does_not_let_redis_serve_what_it_evicted(
    upstream: Scripted, make_pop: MakePop, client: aiohttp.ClientSession, redis_server: RedisServer
) -> None:
    upstream.routes["/v1/items/a"] = Reply(headers=cacheable(600), body=item("a", 1))
    first = await make_pop([upstream.url], redis=redis_server.url)
    second = await make_pop([upstream.url], redis=redis_server.url)
    assert (await fetch(client, first, "/v1/items/a")).x_cache == "MISS"
    await until(lambda: first.pop.l2 is not None and first.pop.l2.stats.stores == 1, "the L2 write")
    second.pop.on_feed_reset("gap in the feed")  # changes were missed: nothing stored before now is trusted
    assert (await fetch(client, second, "/v1/items/a")).x_cache == "MISS"


async def test_review2_a_purge_reaches_redis_even_when_background_work_is_full(
    upstream: Scripted, make_pop: MakePop, client: aiohttp.ClientSession, redis_server: RedisServer
) -> None:
    first = await make_pop([upstream.url], redis=redis_server.url)
    second = await make_pop([upstream.url], redis=redis_server.url)
    assert (await fetch(client, first, "/doc")).x_cache == "MISS"
    await until(lambda: first.pop.l2 is not None and first.pop.l2.stats.stores == 1, "the L2 write")
    gate = asyncio.Event()
    pending = [asyncio.ensure_future(gate.wait()) for _ in range(1000)]
    first.pop._background.update(pending)  # type: ignore[arg-type]
    try:
        purged = await fetch(client, first, "/_edge/purge", "POST", json={"urls": ["/doc"]},
                             headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        assert purged.status == 200
    finally:
        first.pop._background.difference_update(pending)  # type: ignore[arg-type]
        gate.set()
    await asyncio.sleep(0.1)
    assert (await fetch(client, second, "/doc")).x_cache == "MISS"


async def test_review2_an_event_page_purged_while_being_fetched_is_not_stored(
    upstream: Scripted, make_pop: MakePop, client: aiohttp.ClientSession
) -> None:
    gate = asyncio.Event()
    upstream.routes["/v1/events/e"] = Reply(headers=cacheable(600), body=b'{"seats": 10}', gate=gate)
    running = await make_pop([upstream.url])
    pending = asyncio.ensure_future(fetch(client, running, "/v1/events/e"))
    await until(lambda: upstream.counts["/v1/events/e"] == 1, "the upstream fetch")
    running.pop.on_item_changed("a", 2, {"event_id": "e"})  # the feed: this page changed
    gate.set()
    assert (await pending).status == 200
    upstream.routes["/v1/events/e"] = Reply(headers=cacheable(600), body=b'{"seats": 9}')
    assert (await fetch(client, running, "/v1/events/e")).body == b'{"seats": 9}'


@pytest.mark.parametrize("name", ["request_timeout", "coalesce_timeout", "upstream_connect_timeout",
                                  "upstream_read_timeout", "keepalive_timeout", "feed_wait"])  # fmt: skip
def test_review2_non_positive_timeouts_are_refused(name: str) -> None:
    with pytest.raises(SettingsError):
        dataclasses.replace(EdgeSettings(), **{name: 0.0}).validate()


def test_review2_age_is_capped_at_two_to_the_31() -> None:
    key = primary_key("GET", "http", "www.boxoffice.test", "/x")
    stored = StoredResponse(200, Headers([("Age", "2147483648"), ("Cache-Control", "max-age=60")]), 1000.0, 1000.0)
    entry = make_entry(key, stored, b"", Headers([]))
    assert entry.age(5000.0) == 2147483648


def test_review2_workers_started_are_terminated_when_a_later_one_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[FakeProcess] = []

    class FakeProcess:
        def __init__(self, **_: object) -> None:
            self.terminated = False

        def start(self) -> None:
            if len(started) == 2:
                raise OSError("fork failed")
            started.append(self)

        def terminate(self) -> None:
            self.terminated = True

        def join(self, timeout: float | None = None) -> None:
            pass

    class FakeContext:
        Process = FakeProcess

    monkeypatch.setattr(cli.multiprocessing, "get_context", lambda _: FakeContext())
    monkeypatch.setattr(cli, "_run", lambda _: None)
    assert cli.main(["serve", "--workers", "4"]) == 1
    assert len(started) == 2 and all(p.terminated for p in started)
