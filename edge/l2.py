"""The optional second cache level: Redis, shared by a POP's worker processes.

Each worker keeps its own in-process S3-FIFO (the first level). On a miss
there, a worker asks Redis before going upstream, and every response it
stores goes to Redis too, with a TTL that ends with the response's last
usable moment (freshness plus stale-while-revalidate). Purges and change-feed
evictions delete from Redis as well. Redis is consulted only on a first-level
miss, never on the hit path.

Redis trouble never fails a request: a timeout or connection error counts as
a second-level miss (and is counted), and the request goes upstream.

This talks to Redis with redis-py's asyncio client directly rather than
through aiocache: aiocache 0.12's Redis backend calls `setex`, which redis-py 8
deprecates (a warning on every store), and its serializer layer costs more per
lookup than the lookup itself.

Encoding: one JSON line (status, header lines, request/response times, the
selecting request's header lines) then the body bytes.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as redis_asyncio
from redis.exceptions import RedisError

from edge.cachekey import CacheKey
from edge.messages import Headers, StoredResponse

log = logging.getLogger("boxoffice.edge")

DEFAULT_TIMEOUT: Final = 0.05  # a Redis round trip on the POP's own host is well under 1 ms
MAX_TTL: Final = 24 * 3600
KEY_PREFIX: Final = "bo:edge:"


@dataclass(frozen=True, slots=True)
class Blob:
    stored: StoredResponse
    body: bytes
    request_headers: Headers


@dataclass
class L2Stats:
    hits: int = 0
    misses: int = 0
    stores: int = 0
    errors: int = 0


class RedisL2:
    def __init__(self, url: str, *, site: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._url = url
        self._prefix = f"{KEY_PREFIX}{site}:"
        self._timeout = timeout
        self._client: Any = None
        self.stats = L2Stats()

    async def start(self) -> None:
        self._client = redis_asyncio.Redis.from_url(
            self._url, socket_timeout=self._timeout, socket_connect_timeout=self._timeout
        )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _key(self, key: CacheKey) -> str:
        return self._prefix + key.url

    async def get(self, key: CacheKey) -> Blob | None:
        if self._client is None:
            return None
        try:
            raw = await self._client.get(self._key(key))
        except (RedisError, OSError, TimeoutError) as exc:
            self._error("get", exc)
            return None
        blob = decode(raw) if raw is not None else None
        if blob is None:
            self.stats.misses += 1
        else:
            self.stats.hits += 1
        return blob

    async def put(self, key: CacheKey, blob: Blob, usable_until: float, now: float) -> None:
        if self._client is None:
            return
        ttl = min(MAX_TTL, math.ceil(usable_until - now))
        if ttl <= 0:
            return
        try:
            await self._client.set(self._key(key), encode(blob), ex=ttl)
            self.stats.stores += 1
        except (RedisError, OSError, TimeoutError) as exc:
            self._error("set", exc)

    async def delete(self, key: CacheKey) -> None:
        if self._client is None:
            return
        try:
            await self._client.delete(self._key(key))
        except (RedisError, OSError, TimeoutError) as exc:
            self._error("delete", exc)

    def _error(self, operation: str, exc: BaseException) -> None:
        self.stats.errors += 1
        if self.stats.errors in (1, 10, 100) or self.stats.errors % 1000 == 0:
            log.warning("redis second level: %s failed (%d errors so far): %s", operation, self.stats.errors, exc)


def encode(blob: Blob) -> bytes:
    head = {
        "status": blob.stored.status,
        "headers": list(blob.stored.headers),
        "request_time": blob.stored.request_time,
        "response_time": blob.stored.response_time,
        "request_headers": list(blob.request_headers),
    }
    return json.dumps(head, separators=(",", ":")).encode() + b"\n" + blob.body


def decode(raw: bytes) -> Blob | None:
    """The blob, or None for anything we did not write (another version, corruption)."""
    head, newline, body = raw.partition(b"\n")
    if not newline:
        return None
    try:
        doc = json.loads(head)
        stored = StoredResponse(
            int(doc["status"]),
            Headers((str(name), str(value)) for name, value in doc["headers"]),
            float(doc["request_time"]),
            float(doc["response_time"]),
        )
        request_headers = Headers((str(name), str(value)) for name, value in doc["request_headers"])
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    return Blob(stored, body, request_headers)
