"""The Redis second level against a real redis-server."""

from __future__ import annotations

import socket

import redis.asyncio as redis_asyncio

from edge.cachekey import primary_key_for_url
from edge.l2 import Blob, RedisL2, decode, encode
from edge.messages import Headers, StoredResponse
from tests.support.servers import RedisServer

KEY = primary_key_for_url("http://www.boxoffice.test/v1/items/itm-1")
BLOB = Blob(
    StoredResponse(200, Headers([("Cache-Control", "max-age=60"), ("ETag", '"v1"')]), 1000.0, 1000.5),
    b'{"id":"itm-1"}',
    Headers([("Accept", "*/*")]),
)


def test_encoding_round_trips_and_refuses_garbage() -> None:
    assert decode(encode(BLOB)) == BLOB
    assert decode(b"no newline") is None
    assert decode(b"{not json}\nbody") is None
    assert decode(b'{"status": 200}\nbody') is None


async def test_put_get_delete_with_ttl(redis_server: RedisServer) -> None:
    l2 = RedisL2(redis_server.url, site="www.boxoffice.test")
    await l2.start()
    try:
        assert await l2.get(KEY) is None
        await l2.put(KEY, BLOB, usable_until=1090.0, now=1000.0)
        assert await l2.get(KEY) == BLOB
        client = redis_asyncio.Redis.from_url(redis_server.url)
        try:
            ttl = await client.ttl("bo:edge:www.boxoffice.test:" + KEY.url)
            assert 0 < ttl <= 90
        finally:
            await client.aclose()
        await l2.put(KEY, BLOB, usable_until=999.0, now=1000.0)  # already unusable: not stored again
        await l2.delete(KEY)
        assert await l2.get(KEY) is None
        assert (l2.stats.hits, l2.stats.misses, l2.stats.stores) == (1, 2, 1)
    finally:
        await l2.close()


async def test_unreachable_redis_is_a_miss_not_an_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    l2 = RedisL2(f"redis://127.0.0.1:{port}/0", site="www.boxoffice.test")
    await l2.start()
    try:
        assert await l2.get(KEY) is None
        await l2.put(KEY, BLOB, usable_until=2000.0, now=1000.0)
        await l2.delete(KEY)
        assert l2.stats.errors == 3
    finally:
        await l2.close()
