"""Review regressions for the POP's miss path: JSON from peers (an upstream, the Redis second level)
that is nested too deep to parse must be relayed or ignored, never turned into a 500.

Real loopback POP, scripted upstream and a real redis-server.
"""

from __future__ import annotations

import aiohttp
import redis.asyncio as redis_asyncio

from edge.cachekey import primary_key_for_url
from edge.l2 import KEY_PREFIX, decode
from tests.support.edgepop import SITE, MakePop, Reply, Scripted, cacheable, fetch
from tests.support.servers import RedisServer

# Valid JSON nested past the parser's recursion limit (1,000 frames by default).
DEEP = b"[" * 5_000 + b"]" * 5_000


async def test_review2_an_item_document_nested_too_deep_is_relayed_not_a_500(
    make_pop: MakePop, upstream: Scripted, client: aiohttp.ClientSession
) -> None:
    upstream.routes["/v1/items/itm-000001-01"] = Reply(headers=cacheable(600), body=DEEP)
    running = await make_pop([upstream.url])
    got = await fetch(client, running, "/v1/items/itm-000001-01")
    assert got.status == 200 and got.body == DEEP


def test_review2_a_second_level_blob_nested_too_deep_is_garbage() -> None:
    assert decode(DEEP + b"\nbody") is None


async def test_review2_a_poisoned_second_level_entry_is_a_miss_not_a_500(
    make_pop: MakePop, upstream: Scripted, client: aiohttp.ClientSession, redis_server: RedisServer
) -> None:
    path = "/v1/items/itm-000002-01"
    upstream.routes[path] = Reply(headers=cacheable(600), body=b'{"id":"itm-000002-01","version":1}')
    running = await make_pop([upstream.url], redis=redis_server.url)
    key = primary_key_for_url(f"http://{SITE}{path}")
    writer = redis_asyncio.Redis.from_url(redis_server.url)
    try:
        await writer.set(f"{KEY_PREFIX}{SITE}:{key.url}", DEEP + b"\nbody", ex=60)
    finally:
        await writer.aclose()
    got = await fetch(client, running, path)
    assert got.status == 200 and got.body == b'{"id":"itm-000002-01","version":1}'
