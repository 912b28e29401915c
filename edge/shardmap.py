"""Routing by the shard map: which upstreams, in which order, answer a request at this POP.

The origin's metadata service answers ``GET /v1/shardmap`` with::

    {"version": 7, "generated_at": "…", "origin": {"url": "http://…:8100"},
     "shards": {"eu-west-1": {"region": "eu-west", "url": "http://…:8110",
                              "events": ["evt-000123", …], "healthy": true}, …},
     "events": {"evt-000123": {"eu-west": ["eu-west-1", "us-east-2", "origin"], …}, …}}

(origin/placement.py ``build_shard_map`` rules M1–M3: each list is the
region's shard, the secondary region's shard, then ``origin``; a region
missing from an event's entry routes to the origin.)

The pure core — :func:`parse_shard_map`, :func:`event_of_target`,
:meth:`ShardMap.targets` — turns a request target and the POP's region into
base URLs in failover order. Rules:

R1  ``/v1/events/{event_id}[/…]`` and ``/v1/items/{item_id}[/…]`` name one
    event (an item's event by the catalog's id convention, :func:`event_of_item`);
    their list is the map's list for (event, region), shard ids turned into
    URLs, shards marked unhealthy left out, always ending with the origin.
R2  Anything else (listings, holds, orders, unknown paths) goes to the origin:
    a shard answers only for the events it mirrors, and its 404 for another
    event would be a wrong answer, not a failure to route around.
R3  Without a map (none fetched yet, or no ``shardmap_url``), every request
    goes to the configured upstreams, exactly as before the map existed.

Failover along the list is :class:`edge.upstream.UpstreamPool`'s: one circuit
breaker per base URL, next target on refused connections, timeouts and 5xx
(a shard answers 503 while it lags), so a down shard costs no failed request.
A coalesced miss is one upstream fetch whatever its route.

:class:`ShardMapPoller` is the adapter: it fetches the map every
``interval`` with ``If-None-Match``, keeps the last good map when the
service is unreachable or sends a bad document (logged, counted), and swaps
the table by replacing one reference, so a request sees the old or the new
map, never half of each.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

import aiohttp
from yarl import URL

from edge.errors import PeerError
from edge.upstream import read_capped

log = logging.getLogger("boxoffice.edge.shardmap")

SECOND: Final = 1.0
MiB: Final = 1024 * 1024
ORIGIN: Final = "origin"  # the last entry of every route list (origin.placement.ORIGIN)
DEFAULT_INTERVAL: Final = 5 * SECOND
DEFAULT_TIMEOUT: Final = 3 * SECOND
# 3,000 events x a dozen regions of short id lists is well under 2 MiB; a
# document near the cap is a bug upstream, not a bigger catalog.
MAX_DOCUMENT_BYTES: Final = 16 * MiB
# Catalog ids are short ASCII words (origin/catalog.py); anything else in a path
# segment is not an id we can route by, so it goes to the origin (R2).
_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class InvalidShardMap(PeerError):
    """The shard map document does not follow the contract; the message says where."""


def event_of_item(item_id: str) -> str | None:
    """The event an item belongs to, by the catalog's id convention, or None when it does not follow it.

    This is a convention, not a lookup: origin/catalog.py names items
    ``itm-{event number}-{n}`` after their event ``evt-{event number}``
    (``itm-000123-04`` → ``evt-000123``). It is the only place the POP relies
    on it; an id that does not match routes to the origin (R2).
    """
    if not item_id.startswith("itm-"):
        return None
    number, dash, suffix = item_id[4:].rpartition("-")
    if not dash or not number or not suffix:
        return None
    return f"evt-{number}"


def event_of_target(target: str) -> str | None:
    """The event a request target is about (R1), or None (R2). Pure string work, no decoding."""
    path = target.split("?", 1)[0].split("#", 1)[0]
    parts = path.split("/")
    # "", "v1", "events"|"items", id, …
    if len(parts) < 4 or parts[0] != "" or parts[1] != "v1" or not _ID.match(parts[3]):
        return None
    if parts[2] == "events":
        return parts[3]
    if parts[2] == "items":
        return event_of_item(parts[3])
    return None


@dataclass(frozen=True, slots=True)
class Shard:
    shard_id: str
    region: str
    url: str  # base URL without a trailing slash
    events: frozenset[str]
    healthy: bool


@dataclass(frozen=True, slots=True)
class ShardMap:
    """One parsed, validated map document (immutable; swapped whole)."""

    version: int
    generated_at: str | None
    origin_url: str
    shards: Mapping[str, Shard]
    routes: Mapping[str, Mapping[str, tuple[str, ...]]]  # event → region → shard ids ending with ORIGIN

    def targets(self, event_id: str | None, region: str) -> tuple[str, ...]:
        """Base URLs for a request about `event_id` from `region`, in failover order (R1, R2)."""
        if event_id is None:
            return (self.origin_url,)
        ids = self.routes.get(event_id, {}).get(region)
        if ids is None:
            return (self.origin_url,)
        urls: list[str] = []
        for shard_id in ids:
            if shard_id == ORIGIN:
                url = self.origin_url
            else:
                shard = self.shards[shard_id]
                if not shard.healthy:
                    continue
                url = shard.url
            if url not in urls:
                urls.append(url)
        return tuple(urls)


def parse_shard_map(doc: object) -> ShardMap:
    """Validate a ``/v1/shardmap`` document. Raises InvalidShardMap naming the first problem."""
    if not isinstance(doc, dict):
        raise InvalidShardMap("the shard map is not a JSON object")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise InvalidShardMap("version: must be an integer >= 0")
    generated_at = doc.get("generated_at")
    if generated_at is not None and not isinstance(generated_at, str):
        raise InvalidShardMap("generated_at: must be a string when present")
    origin = doc.get("origin")
    if not isinstance(origin, dict):
        raise InvalidShardMap("origin: must be an object with a url")
    origin_url = _base_url(origin.get("url"), "origin.url")

    raw_shards = doc.get("shards")
    if not isinstance(raw_shards, dict):
        raise InvalidShardMap("shards: must be an object of shard id → shard")
    shards: dict[str, Shard] = {}
    for shard_id, raw in raw_shards.items():
        where = f"shards[{shard_id[:80]!r}]"
        if shard_id == ORIGIN or not _ID.match(shard_id):
            raise InvalidShardMap(f"{where}: not a usable shard id")
        if not isinstance(raw, dict):
            raise InvalidShardMap(f"{where}: must be an object")
        region, events, healthy = raw.get("region"), raw.get("events", []), raw.get("healthy", True)
        if not isinstance(region, str) or not region:
            raise InvalidShardMap(f"{where}.region: must be a non-empty string")
        if not isinstance(events, list) or not all(isinstance(event, str) for event in events):
            raise InvalidShardMap(f"{where}.events: must be a list of event ids")
        if not isinstance(healthy, bool):
            raise InvalidShardMap(f"{where}.healthy: must be true or false")
        shards[shard_id] = Shard(
            shard_id, region, _base_url(raw.get("url"), f"{where}.url"), frozenset(events), healthy
        )

    raw_events = doc.get("events")
    if not isinstance(raw_events, dict):
        raise InvalidShardMap("events: must be an object of event id → region → shard ids")
    routes: dict[str, Mapping[str, tuple[str, ...]]] = {}
    for event_id, per_region in raw_events.items():
        if not isinstance(per_region, dict):
            raise InvalidShardMap(f"events[{event_id[:80]!r}]: must be an object of region → shard ids")
        event_routes: dict[str, tuple[str, ...]] = {}
        for region, ids in per_region.items():
            where = f"events[{event_id[:80]!r}][{region[:40]!r}]"
            if not isinstance(ids, list) or not ids or not all(isinstance(one, str) for one in ids):
                raise InvalidShardMap(f"{where}: must be a non-empty list of shard ids")
            if ids[-1] != ORIGIN or ORIGIN in ids[:-1]:
                raise InvalidShardMap(f"{where}: must end with {ORIGIN!r}, and name it only there")
            unknown = [one for one in ids[:-1] if one not in shards]
            if unknown:
                raise InvalidShardMap(f"{where}: names unknown shard {unknown[0][:80]!r}")
            event_routes[region] = tuple(ids)
        routes[event_id] = MappingProxyType(event_routes)
    return ShardMap(version, generated_at, origin_url, MappingProxyType(shards), MappingProxyType(routes))


def _base_url(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidShardMap(f"{where}: must be a string")
    try:
        url = URL(value)
    except ValueError as exc:
        raise InvalidShardMap(f"{where}: {value[:200]!r} is not a URL") from exc
    if url.scheme not in ("http", "https") or not url.host or url.query_string or url.fragment:
        raise InvalidShardMap(f"{where}: {value[:200]!r} must be an http(s) base URL without query or fragment")
    return str(url).rstrip("/")


class Router:
    """The POP's route choice: the current map (if any) for this region, else the configured upstreams (R3)."""

    def __init__(self, region: str, fallback: Sequence[str], current: Callable[[], ShardMap | None]) -> None:
        self.region = region
        self.fallback = tuple(fallback)
        self._current = current

    def targets(self, target: str) -> tuple[str, ...]:
        shard_map = self._current()
        if shard_map is None:
            return self.fallback
        return shard_map.targets(event_of_target(target), self.region)


# The adapter ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShardMapStatus:
    url: str
    version: int | None
    generated_at: str | None
    fetched: int
    not_modified: int
    rejected: int
    failures: int
    last_error: str | None
    age_seconds: float | None  # since the last answer (200 or 304) confirmed the map

    def to_document(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "version": self.version,
            "generated_at": self.generated_at,
            "fetched": self.fetched,
            "not_modified": self.not_modified,
            "rejected": self.rejected,
            "failures": self.failures,
            "last_error": self.last_error,
            "age_seconds": None if self.age_seconds is None else round(self.age_seconds, 1),
        }


class ShardMapPoller:
    """Keeps :attr:`current` up to date with ``GET {url}`` every `interval` seconds until cancelled.

    Args:
        url: the metadata service's shard map URL (``http://…/v1/shardmap``).
        interval: seconds between two fetches (a tenth of it is jitter, so
            that POPs started together do not poll in step).
        timeout: one fetch, connect to last byte.
        rand: floats in [0, 1), for the jitter.
    """

    def __init__(
        self,
        url: str,
        *,
        interval: float = DEFAULT_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not (math.isfinite(interval) and interval > 0 and math.isfinite(timeout) and timeout > 0):
            raise ValueError("interval and timeout must be positive numbers of seconds")
        self.url = url
        self.interval = interval
        self.timeout = timeout
        self._rand = rand
        self.current: ShardMap | None = None
        self._etag: str | None = None
        self._confirmed_at: float | None = None  # monotonic
        self.fetched = 0
        self.not_modified = 0
        self.rejected = 0
        self.failures = 0
        self.last_error: str | None = None

    def status(self) -> ShardMapStatus:
        current = self.current
        return ShardMapStatus(
            url=self.url,
            version=None if current is None else current.version,
            generated_at=None if current is None else current.generated_at,
            fetched=self.fetched,
            not_modified=self.not_modified,
            rejected=self.rejected,
            failures=self.failures,
            last_error=self.last_error,
            age_seconds=None if self._confirmed_at is None else time.monotonic() - self._confirmed_at,
        )

    async def run(self) -> None:
        """Poll until cancelled. Raises only CancelledError."""
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=1)) as session:
            while True:
                await self.refresh(session)
                await asyncio.sleep(self.interval * (0.9 + 0.1 * self._rand()))

    async def refresh(self, session: aiohttp.ClientSession) -> bool:
        """One fetch; True when a new map was swapped in. Never raises but CancelledError."""
        headers = {"Accept": "application/json"}
        if self._etag is not None and self.current is not None:
            headers["If-None-Match"] = self._etag
        try:
            async with session.get(self.url, headers=headers, allow_redirects=False) as response:
                if response.status == 304 and self.current is not None:
                    self.not_modified += 1
                    self._confirmed_at = time.monotonic()
                    return False
                if response.status != 200:
                    raise PeerError(f"{self.url} answered {response.status}")
                body = await read_capped(
                    response, MAX_DOCUMENT_BYTES, lambda: PeerError(f"the shard map is over {MAX_DOCUMENT_BYTES} bytes")
                )
                etag = response.headers.get("ETag")
        except (aiohttp.ClientError, TimeoutError, PeerError) as exc:
            self.failures += 1
            self._note_error(f"shard map unreachable, keeping version {self._version()}: {type(exc).__name__}: {exc}")
            return False
        try:
            new = parse_shard_map(json.loads(body))
        except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
            self.rejected += 1
            self._note_error(f"shard map is not JSON, keeping version {self._version()}: {exc}")
            return False
        except InvalidShardMap as exc:
            self.rejected += 1
            self._note_error(f"shard map rejected, keeping version {self._version()}: {exc.message}")
            return False
        old = self.current
        if old is not None and new.version < old.version:
            log.warning("shard map version went back from %d to %d (metadata service restarted?)",
                        old.version, new.version)  # fmt: skip
        self.current = new  # one reference: requests see the old map or the new one, never a mix
        self._etag = etag
        self._confirmed_at = time.monotonic()
        self.fetched += 1
        self.last_error = None
        if old is None or old.version != new.version:
            log.info("shard map version %d: %d shards, %d events", new.version, len(new.shards), len(new.routes))
        return True

    def _version(self) -> str:
        return "none" if self.current is None else str(self.current.version)

    def _note_error(self, message: str) -> None:
        if message != self.last_error:
            log.warning("%s", message)
        self.last_error = message[:500]
