"""Two POP workers sharing the Redis second level (real redis-server)."""

from __future__ import annotations

import uuid

import aiohttp

from tests.support.edgepop import MakePop, Scripted, fetch
from tests.support.servers import RedisServer


async def test_a_miss_in_one_worker_is_a_hit_in_the_other(
    upstream: Scripted, make_pop: MakePop, client: aiohttp.ClientSession, redis_server: RedisServer
) -> None:
    first = await make_pop([upstream.url], redis=redis_server.url)
    second = await make_pop([upstream.url], redis=redis_server.url)
    assert (await fetch(client, first, "/shared")).x_cache == "MISS"
    assert first.app.pop.l2 is not None
    for _ in range(50):  # the second-level write is best-effort, in the background
        if first.app.pop.l2.stats.stores:
            break
        await first.app.pop.drain()
    got = await fetch(client, second, "/shared")
    assert got.x_cache == "HIT-L2"
    assert got.body == b"body of /shared"
    assert upstream.counts["/shared"] == 1
    # Now in the second worker's own cache: an ordinary hit.
    assert (await fetch(client, second, "/shared")).x_cache == "HIT"
    # A purge anywhere removes it from Redis too.
    first.app.pop.purge_url("/shared")
    await first.app.pop.drain()
    third = await make_pop([upstream.url], redis=redis_server.url)
    assert (await fetch(client, third, "/shared")).x_cache == "MISS"
    assert upstream.counts["/shared"] == 2


async def test_an_event_edit_keeps_a_listing_held_only_in_redis_from_being_served(
    upstream: Scripted, make_pop: MakePop, client: aiohttp.ClientSession, redis_server: RedisServer
) -> None:
    # Paths of this test alone: the session's Redis keeps what earlier tests stored.
    run = uuid.uuid4().hex[:8]
    listing = f"/v1/events?region=eu-west&run={run}"
    item = f"/v1/items/itm-{run}-01"
    first = await make_pop([upstream.url], redis=redis_server.url)
    second = await make_pop([upstream.url], redis=redis_server.url)
    assert (await fetch(client, first, listing)).x_cache == "MISS"
    assert first.app.pop.l2 is not None
    for _ in range(50):  # the second-level write is best-effort, in the background
        if first.app.pop.l2.stats.stores:
            break
        await first.app.pop.drain()
    # The second worker never cached the listing itself; an event record reaches it.
    second.app.pop.on_event_changed("evt-000001")
    assert (await fetch(client, second, listing)).x_cache == "MISS"  # not the pre-edit copy from Redis
    assert upstream.counts[listing] == 2
    # An item page in Redis is unaffected by an event edit.
    assert (await fetch(client, first, item)).x_cache == "MISS"
    for _ in range(50):
        if first.app.pop.l2.stats.stores >= 2:
            break
        await first.app.pop.drain()
    assert (await fetch(client, second, item)).x_cache == "HIT-L2"
