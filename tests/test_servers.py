"""The server fixtures hand out real, private PostgreSQL and Redis servers."""

from __future__ import annotations

import asyncpg
import redis.asyncio

from tests.support.servers import PostgresServer, RedisServer

SYSTEM_POSTGRES_PORT = 5432
SYSTEM_REDIS_PORT = 6379
CONNECT_TIMEOUT = 10.0


async def test_postgres_dsn_is_a_fresh_database_on_a_private_server(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    assert postgres_server.port != SYSTEM_POSTGRES_PORT
    connection = await asyncpg.connect(postgres_dsn, timeout=CONNECT_TIMEOUT)
    try:
        version = await connection.fetchval("SELECT version()")
        assert str(version).startswith("PostgreSQL ")
        assert await connection.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0

        await connection.execute("CREATE TABLE seats (id int PRIMARY KEY, label text NOT NULL)")
        await connection.executemany("INSERT INTO seats (id, label) VALUES ($1, $2)", [(1, "A1"), (2, "Ä2")])
        rows = await connection.fetch("SELECT id, label FROM seats ORDER BY id")
        assert [(row["id"], row["label"]) for row in rows] == [(1, "A1"), (2, "Ä2")]
    finally:
        await connection.close()


async def test_each_test_gets_its_own_database(postgres_dsn: str) -> None:
    # A table made by another test must not be visible here.
    connection = await asyncpg.connect(postgres_dsn, timeout=CONNECT_TIMEOUT)
    try:
        assert await connection.fetchval("SELECT to_regclass('public.seats')") is None
    finally:
        await connection.close()


async def test_redis_server_is_private_and_answers(redis_server: RedisServer) -> None:
    assert redis_server.port != SYSTEM_REDIS_PORT
    client = redis.asyncio.Redis.from_url(redis_server.url, socket_timeout=CONNECT_TIMEOUT)
    try:
        assert await client.set("boxoffice:test:key", "value") is True
        assert await client.get("boxoffice:test:key") == b"value"

        stream = "boxoffice:test:stream"
        await client.delete(stream)
        first_id = await client.xadd(stream, {"event": "hold", "seat": "A1"})
        await client.xadd(stream, {"event": "order", "seat": "A1"})
        assert await client.xlen(stream) == 2
        entries = await client.xrange(stream, count=1)
        assert entries is not None
        assert entries[0][0] == first_id
        assert entries[0][1] == {b"event": b"hold", b"seat": b"A1"}
    finally:
        await client.aclose()
