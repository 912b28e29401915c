"""The metadata service: the shard map the origin primary serves at ``/v1/shardmap``.

The shard manager decides placement (``origin.placement``) and PUTs the result
here; POPs route by its ``events`` table and each shard reads the events it
mirrors from ``shards[its id].events``. The document::

    {"version": 7,                                  # +1 on every change, never reused within an epoch
     "epoch": "3f9c0a1b7d2e4c65",                   # drawn when a new map file is created
     "generated_at": "2026-11-01T12:00:00Z",        # when this version was stored
     "origin": {"url": "http://127.0.0.1:8100"},
     "shards": {"eu-west-1": {"region": "eu-west", "url": "http://127.0.0.1:8110",
                              "events": ["evt-1", "evt-9"], "healthy": true}},
     "events": {"evt-1": {"eu-west": ["eu-west-1", "origin"],
                          "eu-central": ["eu-west-1", "origin"]}}}

``events[E][R]`` lists the shards that answer event E for region R in order
(primary, secondary) and always ends with ``"origin"``; a region missing from
an event's entry, and an event missing from the table, route to the origin.
With no stored map every request routes to the origin (version 0, no shards).

The manager sends ``shards``, ``events`` and optionally ``origin``; the service
owns ``epoch``, ``version`` and ``generated_at``. A PUT equal to the stored map
changes nothing (same version, same ETag), so the manager can publish every
round.
The map lives in one JSON file written atomically (temporary file, fsync,
rename), so a restarted origin serves the last map it acknowledged.

**Epochs.** Versions count within one file. If the file is lost (a new disk,
a wiped data directory) the next map is version 1 again, and a POP holding
the ETag of the lost history's version 1 would be told 304 for a different
map. So each history has a random ``epoch``, drawn when there is no file to
read and stored with every version; the ETag names it. A file written before
epochs existed is given one when it is loaded, and written back with it, so
the ETag stays the same across restarts.

    GET /v1/shardmap    ETag "shardmap-{epoch}-v{version}", If-None-Match → 304, short max-age
    PUT /v1/shardmap    Authorization: Bearer <token>; optional If-Match → 412 on a lost race
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from aiohttp import web

from origin.errors import BadRequest, ClientError, StoredDataError
from origin.metadata_edits import bearer_matches
from origin.placement import ORIGIN
from origin.validators import none_match

log = logging.getLogger("boxoffice.origin.metadata")

SHARDMAP_PATH: Final = "/v1/shardmap"
SHARDMAP_FILE: Final = "shardmap.json"
# A placement is at most a few thousand (region, event) pairs; 200 events per
# shard (placement.DEFAULT_MAX_EVENTS_PER_SHARD) across every region's shards
# is a few hundred KiB. The origin's own request limit (16 KiB) is sized for
# holds, so this route reads its body against this limit instead.
MAX_SHARDMAP_BODY: Final = 8 * 1024 * 1024
MAX_SHARDS: Final = 1_000
MAX_EVENTS: Final = 100_000
MAX_ID_LENGTH: Final = 128  # the same bound as the origin's path ids
MAX_URL_LENGTH: Final = 2_048
# POPs poll the map; a short max-age keeps failover within a few seconds while
# If-None-Match keeps the polls cheap.
DEFAULT_MAX_AGE: Final = 2.0
# 64 random bits: two lost-and-rebuilt histories of one service never share an epoch.
EPOCH_BYTES: Final = 8
# What a stored epoch may look like: ours are hex; anything that is safe inside a quoted ETag.
_EPOCH: Final = re.compile(r"[0-9A-Za-z_-]{1,64}")
JSON_TYPE: Final = "application/json"


class InvalidShardMap(BadRequest):
    """A PUT body is not a valid shard map; the message names the first bad field."""

    code = "invalid_shardmap"


class Unauthorized(ClientError):
    status = 401
    code = "unauthorized"


class PreconditionFailed(ClientError):
    status = 412
    code = "precondition_failed"


@dataclass(frozen=True, slots=True)
class StoredMap:
    """One version of the map, with its encoded body and ETag ready to serve."""

    document: Mapping[str, Any]
    body: bytes
    etag: str

    @property
    def version(self) -> int:
        version: int = self.document["version"]
        return version

    @property
    def epoch(self) -> str:
        epoch: str = self.document["epoch"]
        return epoch


def new_epoch() -> str:
    """A fresh history's epoch (random hex)."""
    return secrets.token_hex(EPOCH_BYTES)


def empty_document(origin_url: str, epoch: str) -> dict[str, Any]:
    """The map before any placement: version 0 of a new epoch, every event routes to the origin."""
    return {
        "version": 0,
        "epoch": epoch,
        "generated_at": _rfc3339(datetime.fromtimestamp(0, UTC)),
        "origin": {"url": origin_url},
        "shards": {},
        "events": {},
    }


def validate_placement(doc: Any) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """Check the manager's part of a map: returns (shards, events, origin url or None), normalised.

    Raises InvalidShardMap naming the first bad field. Shard event lists come
    back sorted and deduplicated; every route must end with ``"origin"``, name
    only known shards, once each, and only shards that mirror the event.
    """
    if not isinstance(doc, dict):
        raise InvalidShardMap("the body must be a JSON object with shards and events")
    # The service's own fields are ignored, so a manager may send back a document it read.
    unknown = sorted(set(doc) - {"shards", "events", "origin", "version", "epoch", "generated_at"})
    if unknown:
        raise InvalidShardMap(f"unknown field {unknown[0]!r}: send shards, events and optionally origin")
    origin_url: str | None = None
    if "origin" in doc:
        origin = doc["origin"]
        if not isinstance(origin, dict) or set(origin) != {"url"}:
            raise InvalidShardMap('origin must be {"url": "http://…"}')
        origin_url = _check_url(origin["url"], "origin.url")

    raw_shards = doc.get("shards")
    if not isinstance(raw_shards, dict):
        raise InvalidShardMap("shards must be an object: shard id → {region, url, events, healthy}")
    if len(raw_shards) > MAX_SHARDS:
        raise InvalidShardMap(f"shards: at most {MAX_SHARDS} shards")
    shards: dict[str, Any] = {}
    for shard_id in sorted(raw_shards):
        shards[shard_id] = _check_shard(shard_id, raw_shards[shard_id])

    raw_events = doc.get("events")
    if not isinstance(raw_events, dict):
        raise InvalidShardMap("events must be an object: event id → region → [shard ids…, 'origin']")
    if len(raw_events) > MAX_EVENTS:
        raise InvalidShardMap(f"events: at most {MAX_EVENTS} events")
    events: dict[str, Any] = {}
    for event_id in sorted(raw_events):
        _check_id(event_id, "events key")
        routes = raw_events[event_id]
        if not isinstance(routes, dict):
            raise InvalidShardMap(f"events[{event_id!r}] must be an object: region → [shard ids…, 'origin']")
        checked: dict[str, list[str]] = {}
        for region in sorted(routes):
            _check_id(region, f"events[{event_id!r}] key")
            checked[region] = _check_route(event_id, region, routes[region], shards)
        events[event_id] = checked
    return shards, events, origin_url


def _check_shard(shard_id: Any, raw: Any) -> dict[str, Any]:
    _check_id(shard_id, "shards key")
    where = f"shards[{shard_id!r}]"
    if shard_id == ORIGIN:
        raise InvalidShardMap(f"{where}: {ORIGIN!r} is reserved for the primary")
    if not isinstance(raw, dict):
        raise InvalidShardMap(f"{where} must be an object with region, url, events, healthy")
    missing = sorted({"region", "url", "events", "healthy"} - set(raw))
    if missing:
        raise InvalidShardMap(f"{where}.{missing[0]} is required")
    extra = sorted(set(raw) - {"region", "url", "events", "healthy"})
    if extra:
        raise InvalidShardMap(f"{where}.{extra[0]}: unknown field")
    _check_id(raw["region"], f"{where}.region")
    if not isinstance(raw["healthy"], bool):
        raise InvalidShardMap(f"{where}.healthy must be true or false")
    events = raw["events"]
    if not isinstance(events, list) or len(events) > MAX_EVENTS:
        raise InvalidShardMap(f"{where}.events must be a list of at most {MAX_EVENTS} event ids")
    for event_id in events:
        _check_id(event_id, f"{where}.events[]")
    return {
        "region": raw["region"],
        "url": _check_url(raw["url"], f"{where}.url"),
        "events": sorted(set(events)),
        "healthy": raw["healthy"],
    }


def _check_route(event_id: str, region: str, raw: Any, shards: Mapping[str, Any]) -> list[str]:
    where = f"events[{event_id!r}][{region!r}]"
    if not isinstance(raw, list) or not raw or raw[-1] != ORIGIN:
        raise InvalidShardMap(f"{where} must be a list of shard ids ending with {ORIGIN!r}")
    route = raw[:-1]
    for shard_id in route:  # before set(route): a list or an object in a route is unhashable
        if not isinstance(shard_id, str) or (shard_id not in shards and shard_id != ORIGIN):
            raise InvalidShardMap(f"{where} names {shard_id!r}, which is not in shards")
    if len(route) != len(set(route)) or ORIGIN in route:
        raise InvalidShardMap(f"{where} names a shard twice")
    for shard_id in route:
        if event_id not in shards[shard_id]["events"]:
            raise InvalidShardMap(f"{where} routes to {shard_id!r}, which does not mirror {event_id!r}")
    return [*route, ORIGIN]


def _check_id(value: Any, where: str) -> None:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH or not value.isprintable():
        raise InvalidShardMap(f"{where}: expected a printable id of 1 to {MAX_ID_LENGTH} characters, got {value!r}")


def _check_url(value: Any, where: str) -> str:
    # Printable only: urlsplit drops tabs and newlines silently, and POPs put the URL in requests.
    if not isinstance(value, str) or len(value) > MAX_URL_LENGTH or not value.isprintable() or " " in value:
        raise InvalidShardMap(f"{where} must be an http(s) URL of at most {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number in 0-65535
    except ValueError as exc:
        raise InvalidShardMap(f"{where} is not a URL ({exc}), got {value!r}") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidShardMap(f"{where} must be an absolute http(s) URL, got {value!r}")
    return value.rstrip("/")


class ShardMapService:
    """The stored map: one JSON file, the current version in memory, one writer at a time.

    Args:
        path: the JSON file (its directory is created when the first map is stored).
        origin_url: the primary's URL as shards and POPs reach it; used until a PUT names another.
        token: the bearer token a PUT must carry; empty refuses every PUT.
        clock: seconds since the epoch (``time.time``), for ``generated_at``.
        max_age: Cache-Control max-age of GET, in seconds.
    """

    def __init__(
        self,
        path: Path,
        origin_url: str,
        token: str,
        clock: Callable[[], float],
        max_age: float = DEFAULT_MAX_AGE,
    ) -> None:
        self.path = path
        self._token = token
        self._clock = clock
        self.cache_control = f"public, max-age={int(max_age)}"
        self._lock = asyncio.Lock()
        # No file read yet: a new history. Its epoch is stored with the first map PUT.
        self.current = _stored(empty_document(origin_url, new_epoch()))

    def load(self) -> StoredMap:
        """Read the stored map, if any (call before serving). Raises StoredDataError if it is corrupt.

        A file without an epoch (written before epochs existed) is given one
        and written back, so its ETag does not change at every restart; if
        that write fails, the map is served with the new epoch all the same
        and the next PUT stores it.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return self.current
        try:
            doc = json.loads(raw)
            shards, events, origin_url = validate_placement(
                {key: doc[key] for key in ("shards", "events", "origin") if key in doc}
            )
            version = doc["version"]
            generated_at = doc["generated_at"]
            if not isinstance(version, int) or isinstance(version, bool) or version < 0:
                raise InvalidShardMap("version must be an integer ≥ 0")
            if not isinstance(generated_at, str):
                raise InvalidShardMap("generated_at must be a string")
            epoch = doc.get("epoch")
            if epoch is not None and (not isinstance(epoch, str) or not _EPOCH.fullmatch(epoch)):
                raise InvalidShardMap(f"epoch must be 1 to 64 letters, digits, '-' or '_', got {epoch!r}")
        except (ValueError, KeyError, TypeError) as exc:  # InvalidShardMap is not a ValueError
            raise StoredDataError(f"{self.path} is not a shard map: {exc}") from exc
        except InvalidShardMap as exc:
            raise StoredDataError(f"{self.path} is not a shard map: {exc.message}") from exc
        self.current = _stored(
            {
                "version": version,
                "epoch": epoch or new_epoch(),
                "generated_at": generated_at,
                "origin": {"url": origin_url or self.current.document["origin"]["url"]},
                "shards": shards,
                "events": events,
            }
        )
        if epoch is None:
            try:
                write_atomically(self.path, self.current.body)
            except OSError as exc:
                log.warning("could not store the new epoch of %s (the next PUT will): %s", self.path, exc)
            else:
                log.info("gave the shard map file %s the epoch %s", self.path, self.current.epoch)
        return self.current

    def authorized(self, header: str | None) -> bool:
        return bearer_matches(header, self._token)

    async def replace(self, doc: Any, if_match: str | None = None) -> tuple[StoredMap, bool]:
        """Store the manager's map as the next version unless it equals the current one.

        Returns (the stored map, whether it changed). Raises InvalidShardMap,
        PreconditionFailed when `if_match` is given and is not the current ETag,
        and OSError when the file cannot be written (the old version stays).
        """
        shards, events, origin_url = validate_placement(doc)
        async with self._lock:
            current = self.current
            if if_match is not None and if_match.strip() not in (current.etag, "*"):
                raise PreconditionFailed(f"the shard map is at {current.etag}, not {if_match.strip()}")
            origin = {"url": origin_url or current.document["origin"]["url"]}
            unchanged = (
                shards == current.document["shards"]
                and events == current.document["events"]
                and origin == current.document["origin"]
            )
            if unchanged:
                return current, False
            candidate = _stored(
                {
                    "version": current.version + 1,
                    "epoch": current.epoch,
                    "generated_at": _rfc3339(datetime.fromtimestamp(self._clock(), UTC)),
                    "origin": origin,
                    "shards": shards,
                    "events": events,
                }
            )
            await asyncio.to_thread(write_atomically, self.path, candidate.body)
            self.current = candidate
        return candidate, True


SHARD_MAP: Final = web.AppKey("shard_map", ShardMapService)


def add_shardmap_routes(app: web.Application, service: ShardMapService) -> None:
    """Serve `service` at ``/v1/shardmap`` on `app` (the origin primary's application)."""
    app[SHARD_MAP] = service
    app.router.add_get(SHARDMAP_PATH, get_shardmap)
    app.router.add_put(SHARDMAP_PATH, put_shardmap)


async def get_shardmap(request: web.Request) -> web.StreamResponse:
    service = request.app[SHARD_MAP]
    current = service.current
    headers = {"ETag": current.etag, "Cache-Control": service.cache_control}
    if_none_match = request.headers.get("If-None-Match")
    if if_none_match is not None and none_match(if_none_match, current.etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=current.body, headers=headers, content_type=JSON_TYPE)


async def put_shardmap(request: web.Request) -> web.StreamResponse:
    service = request.app[SHARD_MAP]
    if not service.authorized(request.headers.get("Authorization")):
        response = _error(Unauthorized("send Authorization: Bearer <the shard map token>"))
        response.headers["WWW-Authenticate"] = 'Bearer realm="shardmap"'
        return response
    try:
        doc = await _read_json(request)
        stored, changed = await service.replace(doc, request.headers.get("If-Match"))
    except ClientError as exc:
        return _error(exc)
    if changed:
        log.info(
            "shard map v%d stored: %d shard(s), %d event(s)",
            stored.version,
            len(stored.document["shards"]),
            len(stored.document["events"]),
        )
    body = {"version": stored.version, "changed": changed}
    return web.json_response(body, headers={"ETag": stored.etag, "Cache-Control": "no-store"})


async def _read_json(request: web.Request) -> Any:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_SHARDMAP_BODY:
            raise _TooLarge(f"the shard map must be at most {MAX_SHARDMAP_BODY} bytes")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    # ValueError also covers integers past int()'s digit limit; RecursionError, nesting too deep.
    except (ValueError, RecursionError) as exc:
        raise InvalidShardMap(f"the body is not JSON we accept: {exc}") from None


class _TooLarge(ClientError):
    status = 413
    code = "request_entity_too_large"


def _error(exc: ClientError) -> web.Response:
    doc = {"error": {"status": exc.status, "code": exc.code, "message": exc.message}}
    return web.json_response(doc, status=exc.status, headers={"Cache-Control": "no-store"})


def _stored(document: dict[str, Any]) -> StoredMap:
    body = json.dumps(document, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode()
    return StoredMap(document, body, f'"shardmap-{document["epoch"]}-v{document["version"]}"')


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def write_atomically(path: Path, body: bytes) -> None:
    """Write `body` to `path` so that a crash leaves the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as temp:
            temp.write(body)
            temp.flush()
            os.fsync(temp.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    with contextlib.suppress(OSError):  # the rename is durable once the directory is synced
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
