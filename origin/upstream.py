"""A shard's upstream: the HTTP client of its feed, and the parsers that check every answer.

A shard trusts nothing its upstream sends: every snapshot page, feed batch,
item, event and shard map is validated here (types, positions in order, one
epoch, bodies bounded before and after inflation) and anything else leaves as
:class:`UpstreamError` (502 where a request is answered; a retried step in
the follower, origin.shard). PositionGone (410) means re-snapshot.
"""

from __future__ import annotations

import contextlib
import json
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import aiohttp

from ops.metrics import Counter
from origin.changefeed import CHANGE_OPS, ChangeRecord, Position
from origin.errors import BadRequest, PositionGone, ServerError, StoredDataError
from origin.model import Event, Item, Venue
from origin.store.base import MAX_PAGE_ROWS

# Records per feed request; one batch is one transaction on the shard.
FOLLOW_BATCH: Final = 500
# Largest upstream body accepted after decompression: a full snapshot page is
# about 0.5 MiB (store.base.MAX_PAGE_ROWS), a feed batch less; 32 MiB refuses
# only a peer that is not a boxoffice origin.
MAX_UPSTREAM_BODY: Final = 32 * 1024 * 1024


async def read_capped(content: aiohttp.StreamReader, cap: int) -> bytes:
    """The whole body, or its first `cap` + 1 bytes when it is longer (callers refuse those).

    ``content.read(n)`` returns what has arrived so far, not n bytes: a large
    answer read that way is silently cut short.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in content.iter_any():
        chunks.append(chunk)
        size += len(chunk)
        if size > cap:
            break
    return b"".join(chunks)[: cap + 1]


class UpstreamError(ServerError):
    """The upstream was unreachable, timed out, or answered something we cannot use."""

    status = 502
    code = "upstream_error"


class UpstreamMetrics(Protocol):
    """What the client counts (origin.shard.ShardMetrics provides it)."""

    bytes_received: Counter


@dataclass(frozen=True, slots=True)
class SnapshotDoc:
    position: Position
    items: tuple[Item, ...]
    events: tuple[Event, ...]
    venues: tuple[Venue, ...]
    next_after: str | None


@dataclass(frozen=True, slots=True)
class ChangesDoc:
    records: tuple[ChangeRecord, ...]
    next: Position
    head: Position


# Upstream client -------------------------------------------------------------


class Upstream:
    """The few upstream calls a shard makes, each with a finite timeout, asking for gzip.

    The session is created with ``auto_decompress=False`` so the bytes counted
    are the bytes on the wire; bodies are inflated here with a size bound.
    Every failure leaves as :class:`UpstreamError` (or PositionGone for 410).
    """

    def __init__(self, session: aiohttp.ClientSession, base_url: str, timeout: float, metrics: UpstreamMetrics) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._timeout = timeout
        self._metrics = metrics

    async def get_json(self, url: str, *, extra_wait: float = 0.0, allow_404: bool = False) -> Any:
        timeout = aiohttp.ClientTimeout(total=self._timeout + extra_wait)
        try:
            async with self._session.get(url, headers={"Accept-Encoding": "gzip"}, timeout=timeout) as resp:
                raw = await read_capped(resp.content, MAX_UPSTREAM_BODY)
                status, encoding = resp.status, resp.headers.get("Content-Encoding", "")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"GET {url}: {type(exc).__name__}: {exc}") from exc
        self._metrics.bytes_received.inc(amount=len(raw))
        if status == 404 and allow_404:
            return None
        body = _inflate(raw, encoding, url)
        if status == 410:
            raise PositionGone(f"upstream answered 410 to {url}")
        if status != 200:
            raise UpstreamError(f"GET {url}: status {status}: {body[:200]!r}")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise UpstreamError(f"GET {url}: body is not JSON: {exc}") from exc

    async def snapshot(self, snapshot_filter: str, after: str | None) -> SnapshotDoc:
        query = f"filter={_quote(snapshot_filter)}&limit={MAX_PAGE_ROWS}"
        if after is not None:
            query += f"&after={_quote(after)}"
        return parse_snapshot(await self.get_json(f"{self._base}/v1/snapshot?{query}"))

    async def changes(self, since: Position, wait: float) -> ChangesDoc:
        url = f"{self._base}/v1/changes?since={since.encode()}&limit={FOLLOW_BATCH}&wait={wait:g}"
        return parse_changes(await self.get_json(url, extra_wait=wait))

    async def item(self, item_id: str) -> Item | None:
        doc = await self.get_json(f"{self._base}/v1/items/{_quote(item_id)}", allow_404=True)
        return None if doc is None else _decoded(Item.from_document, doc, "item")

    async def event(self, event_id: str) -> tuple[Event, Venue | None] | None:
        doc = await self.get_json(f"{self._base}/v1/events/{_quote(event_id)}", allow_404=True)
        if doc is None:
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("event"), dict):
            raise UpstreamError(f"event {event_id}: the answer has no event document")
        venue_doc = doc.get("venue")
        venue = _decoded(Venue.from_document, venue_doc, "venue") if isinstance(venue_doc, dict) else None
        return _decoded(Event.from_document, doc["event"], "event"), venue


def _inflate(raw: bytes, encoding: str, url: str) -> bytes:
    if len(raw) > MAX_UPSTREAM_BODY:
        raise UpstreamError(f"GET {url}: body larger than {MAX_UPSTREAM_BODY} bytes")
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding not in ("gzip", "deflate"):
        raise UpstreamError(f"GET {url}: unsupported Content-Encoding {encoding!r}")
    # wbits 47 reads gzip or zlib headers; deflate without a header is the raw form.
    inflater = zlib.decompressobj(47 if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        body = inflater.decompress(raw, MAX_UPSTREAM_BODY + 1)
    except zlib.error as exc:
        raise UpstreamError(f"GET {url}: body does not inflate: {exc}") from exc
    if len(body) > MAX_UPSTREAM_BODY or inflater.unconsumed_tail:
        raise UpstreamError(f"GET {url}: inflated body larger than {MAX_UPSTREAM_BODY} bytes")
    return body


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe=":,")


def _decoded(decode: Callable[[dict[str, Any]], Any], doc: Any, what: str) -> Any:
    if not isinstance(doc, dict):
        raise UpstreamError(f"upstream sent a {what} that is not an object")
    try:
        return decode(doc)
    except (StoredDataError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UpstreamError(f"upstream sent a bad {what} document: {exc}") from exc


def _position(raw: Any, what: str) -> Position:
    if not isinstance(raw, str):
        raise UpstreamError(f"upstream {what} is not a position string")
    try:
        return Position.parse(raw)
    except BadRequest as exc:
        raise UpstreamError(f"upstream {what}: {exc.message}") from exc


def _list(doc: dict[str, Any], key: str) -> list[Any]:
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise UpstreamError(f"upstream {key} is not a list")
    return value


def parse_snapshot(doc: Any) -> SnapshotDoc:
    """Validate a `/v1/snapshot` answer. Raises UpstreamError naming what is wrong."""
    if not isinstance(doc, dict):
        raise UpstreamError("upstream snapshot is not an object")
    next_after = doc.get("next_after")
    if next_after is not None and not isinstance(next_after, str):
        raise UpstreamError("upstream snapshot next_after is not a string")
    return SnapshotDoc(
        position=_position(doc.get("position"), "snapshot position"),
        items=tuple(_decoded(Item.from_document, item, "item") for item in _list(doc, "items")),
        events=tuple(_decoded(Event.from_document, event, "event") for event in _list(doc, "events")),
        venues=tuple(_decoded(Venue.from_document, venue, "venue") for venue in _list(doc, "venues")),
        next_after=next_after,
    )


def parse_changes(doc: Any) -> ChangesDoc:
    """Validate a `/v1/changes` answer: records in order, one epoch. Raises UpstreamError."""
    if not isinstance(doc, dict):
        raise UpstreamError("upstream changes answer is not an object")
    records = []
    for raw in _list(doc, "changes"):
        if not isinstance(raw, dict):
            raise UpstreamError("upstream change record is not an object")
        item_id, version, hlc, op, patch = (raw.get(key) for key in ("item_id", "version", "hlc", "op", "patch"))
        if not (isinstance(item_id, str) and item_id and isinstance(hlc, str) and isinstance(patch, dict)):
            raise UpstreamError("upstream change record lacks item_id, hlc or patch")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise UpstreamError(f"upstream change record for {item_id} has a bad version")
        if op not in CHANGE_OPS:
            raise UpstreamError(f"upstream change record for {item_id} has unknown op {op!r}")
        records.append(ChangeRecord(_position(raw.get("pos"), "record pos"), item_id, version, hlc, op, patch))
    next_position = _position(doc.get("next"), "next")
    head = _position(doc.get("head"), "head")
    positions = [record.pos for record in records]
    if any(pos.epoch != head.epoch for pos in positions) or next_position.epoch != head.epoch:
        raise UpstreamError("upstream changes mix epochs")
    if positions != sorted(positions) or (positions and positions[-1] != next_position) or next_position > head:
        raise UpstreamError("upstream changes are out of order or past their head")
    return ChangesDoc(tuple(records), next_position, head)


def shard_events(doc: Any, shard_id: str) -> set[str]:
    """This shard's events from a shard map document; a shard absent from the map mirrors none.

    Raises UpstreamError when the document is not a shard map.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("shards"), dict):
        raise UpstreamError("shard map has no shards object")
    entry = doc["shards"].get(shard_id)
    if entry is None:
        return set()
    events = entry.get("events") if isinstance(entry, dict) else None
    if not isinstance(events, list) or not all(isinstance(event, str) and event for event in events):
        raise UpstreamError(f"shard map entry of {shard_id} has no list of event ids")
    return set(events)


@contextlib.asynccontextmanager
async def upstream_session() -> AsyncIterator[aiohttp.ClientSession]:
    """The shard's HTTP client: no automatic inflation (bytes are counted on the wire), bounded pool."""
    connector = aiohttp.TCPConnector(limit=32, ttl_dns_cache=60)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        yield session
