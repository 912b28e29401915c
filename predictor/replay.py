"""Replay a POP's request trace through the edge's own eviction policies.

The offline evaluation asks one question: at a given cache size, how many of a
POP's cacheable requests would the cache have answered? To answer it honestly
the replay drives the very classes the POP serves from (``edge.s3fifo``) and
its baseline (``edge.lru``); they are pure, so a trace can be pushed through
them as fast as Python loops.

How a trace becomes cache operations:

* Every URL of the catalog is an *object* with a number (its index in
  :attr:`ObjectTable.urls`) and a size in bytes. The size is what the edge
  would charge for the cached response (``CachedEntry.size``): the origin's
  compact JSON body for that document, rebuilt from the catalog, plus a
  typical serialized head and the edge's fixed per-entry overhead.
* Only ``GET`` requests are replayed: holds and orders (``POST``) are never
  stored by an RFC 9111 cache and go upstream whatever the policy.
* A ``GET`` is a hit if ``cache.get`` finds the object; a miss fetches it
  from upstream (one origin fetch: the edge coalesces concurrent misses) and
  ``put``\\s it. Freshness lifetimes and push invalidation are left out: the
  change feed keeps cached documents current in place, so they do not change
  which requests reach the origin for lack of space, which is what is measured.
* Warming is applied between requests, at the scheduled times, the way the
  edge's ``/_edge/warm`` does it: in priority order, skipping what is cached,
  through ``S3FifoCache.admit_if_room`` (which never evicts an entry that has
  been read), or ``put`` for a cache that has no such method.

Capacity is in **bytes** (the POP cache is bounded by bytes, as the edge's
``cache_bytes`` setting is).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt
import pandas as pd  # type: ignore[import-untyped]

from edge.lru import LruCache
from edge.s3fifo import S3FifoCache
from origin.catalog import Catalog, build_catalog
from origin.cities import REGIONS
from predictor.errors import PredictorError

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

# The origin's first page of a region's events (origin/http.py DEFAULT_PAGE_ROWS):
# what a `/v1/events?region=…` request without `limit` returns.
LISTING_PAGE_ROWS: Final = 100
# A typical serialized response head as the edge stores it (status line, Content-Type,
# Cache-Control, ETag, Last-Modified, Date, Vary): measured on origin responses, about 300 bytes.
RESPONSE_HEAD_BYTES: Final = 300
# The edge's fixed charge per cached entry (edge/entry.py CachedEntry.size).
ENTRY_OVERHEAD_BYTES: Final = 256
# Objects that no request names and no warm list knows: a URL outside the catalog.
NO_OBJECT: Final = -1


class ReplayError(PredictorError, ValueError):
    """The workload cannot be replayed (missing files, URLs outside the catalog, bad capacity)."""


class ReplayCache(Protocol):
    """What the replay needs of a cache: the API S3FifoCache and LruCache share."""

    def get(self, key: int) -> bool | None: ...

    def peek(self, key: int) -> bool | None: ...

    def put(self, key: int, value: bool, size: int) -> bool: ...


CacheFactory = Callable[[int], ReplayCache]


def lru_cache(capacity_bytes: int) -> ReplayCache:
    """The edge's LRU baseline (edge.lru.LruCache) at this capacity."""
    return LruCache[int, bool](capacity_bytes)


def s3fifo_cache(capacity_bytes: int) -> ReplayCache:
    """The POP's policy (edge.s3fifo.S3FifoCache) at this capacity, with its default queue split."""
    return S3FifoCache[int, bool](capacity_bytes)


@dataclass(frozen=True, slots=True)
class ObjectTable:
    """Every cacheable URL of the catalog, its size, and the event it belongs to.

    ``urls[n]`` is object ``n``; ``sizes[n]`` its cost in the cache (bytes);
    ``event_of[n]`` the event number (index into ``event_ids``) of an event page
    or item, -1 for a region listing. ``items_of_event[e]`` lists event ``e``'s
    item objects in catalog order; ``event_object[e]`` is its event page.
    """

    urls: tuple[str, ...]
    sizes: IntArray
    event_of: IntArray
    event_ids: tuple[str, ...]
    event_object: IntArray
    items_of_event: tuple[tuple[int, ...], ...]
    number: dict[str, int]

    def objects_of_event(self, event: int) -> tuple[int, ...]:
        """The event page first, then its items."""
        return (int(self.event_object[event]), *self.items_of_event[event])

    def encode(self, urls: Iterable[str]) -> list[int]:
        """Object numbers of urls.

        Raises:
            ReplayError: a URL is not a cacheable catalog URL.
        """
        try:
            return [self.number[url] for url in urls]
        except KeyError as exc:
            raise ReplayError(f"{exc.args[0]!r} is not a cacheable URL of the workload's catalog") from None


def _document_bytes(doc: Any) -> int:
    # The origin's encoding (origin/http.py _json): compact separators, UTF-8.
    return len(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode())


def object_table(catalog: Catalog) -> ObjectTable:
    """Number the catalog's cacheable URLs (listings, event pages, items) and size them."""
    per_entry = RESPONSE_HEAD_BYTES + ENTRY_OVERHEAD_BYTES
    venues = {venue.id: venue for venue in catalog.venues}
    event_number = {event.id: number for number, event in enumerate(catalog.events)}
    items: list[list[Any]] = [[] for _ in catalog.events]
    for item in catalog.items:
        items[event_number[item.event_id]].append(item)
    urls: list[str] = []
    sizes: list[int] = []
    event_of: list[int] = []
    by_region: dict[str, list[Any]] = {region: [] for region in REGIONS}
    for event in catalog.events:
        by_region.setdefault(event.region, []).append(event)
    for region in REGIONS:
        page = sorted(by_region[region], key=lambda event: event.id)[:LISTING_PAGE_ROWS]
        listing: dict[str, Any] = {"events": [event.to_document() for event in page], "next_after": None}
        urls.append(f"/v1/events?region={region}")
        sizes.append(_document_bytes(listing) + per_entry)
        event_of.append(-1)
    event_object: list[int] = []
    for number, event in enumerate(catalog.events):
        venue = venues.get(event.venue_id)
        doc = {
            "event": event.to_document(),
            "venue": None if venue is None else venue.to_document(),
            "items": [item.to_document() for item in items[number]],
        }
        event_object.append(len(urls))
        urls.append(f"/v1/events/{event.id}")
        sizes.append(_document_bytes(doc) + per_entry)
        event_of.append(number)
    items_of_event: list[tuple[int, ...]] = []
    for number, event_items in enumerate(items):
        start = len(urls)
        for item in event_items:
            urls.append(f"/v1/items/{item.id}")
            sizes.append(_document_bytes(item.to_document()) + per_entry)
            event_of.append(number)
        items_of_event.append(tuple(range(start, len(urls))))
    return ObjectTable(
        urls=tuple(urls),
        sizes=np.array(sizes, dtype=np.int64),
        event_of=np.array(event_of, dtype=np.int64),
        event_ids=tuple(event.id for event in catalog.events),
        event_object=np.array(event_object, dtype=np.int64),
        items_of_event=tuple(items_of_event),
        number={url: number for number, url in enumerate(urls)},
    )


def workload_catalog(summary: dict[str, Any]) -> Catalog:
    """Rebuild the catalog a workload was generated over, from its summary.

    Raises:
        ReplayError: the summary does not say how the catalog was built.
    """
    try:
        info = summary["catalog"]
        start = datetime.fromisoformat(summary["config"]["start"])
        return build_catalog(int(info["seed"]), venues=int(info["venues"]), events=int(info["events"]), start=start)
    except (KeyError, TypeError, ValueError) as exc:
        raise ReplayError(f"summary.json does not describe the catalog: {exc!r}") from None


@dataclass(frozen=True, slots=True)
class Trace:
    """One POP's cacheable requests in time order: time (ms since the epoch), object, user, session."""

    pop_id: str
    times: IntArray
    objects: IntArray
    sessions: IntArray
    users: npt.NDArray[np.object_]
    is_bot: BoolArray
    uncacheable: int  # POST requests (holds, orders): upstream whatever the policy

    def __len__(self) -> int:
        return len(self.times)


def load_trace(path: Path, pop_id: str, objects: ObjectTable) -> Trace:
    """Read a POP's trace file and encode its GET requests as objects.

    Raises:
        ReplayError: the file is missing columns or names a URL outside the catalog.
    """
    table = pd.read_parquet(path, columns=["ts", "method", "url", "user_id", "session_id", "is_bot"])
    get = (table["method"] == "GET").to_numpy()
    rows = table.loc[get]
    url_codes = rows["url"].cat.codes.to_numpy()
    categories = [str(url) for url in rows["url"].cat.categories]
    known = np.array([objects.number.get(url, NO_OBJECT) for url in categories], dtype=np.int64)
    unknown = np.flatnonzero(known[np.unique(url_codes)] == NO_OBJECT) if len(url_codes) else np.array([])
    if len(unknown):
        url = categories[int(np.unique(url_codes)[unknown[0]])]
        raise ReplayError(f"{path}: GET {url!r} is not a cacheable URL of the workload's catalog")
    times = rows["ts"].dt.as_unit("ms").astype("int64").to_numpy()
    user_names = np.asarray(rows["user_id"].cat.categories.astype(str), dtype=object)
    if len(times) > 1 and (np.diff(times) < 0).any():
        raise ReplayError(f"{path}: requests are not in time order")
    return Trace(
        pop_id=pop_id,
        times=times,
        objects=known[url_codes],
        sessions=rows["session_id"].to_numpy().astype(np.int64),
        users=user_names[rows["user_id"].cat.codes.to_numpy()],
        is_bot=rows["is_bot"].to_numpy().astype(np.bool_),
        uncacheable=int((~get).sum()),
    )


@dataclass(frozen=True, slots=True)
class WarmLoad:
    """A warm list applied at ``at`` (ms): its objects in priority order, for the requests before ``until`` (ms)."""

    at: int
    objects: tuple[int, ...]
    until: int


@dataclass(frozen=True, slots=True)
class WarmOutcome:
    """What a warm load did: which listed objects were admitted and which were already cached."""

    load: WarmLoad
    admitted: tuple[int, ...]
    already_cached: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """Per request: hit or miss. Per warm load: what was admitted."""

    policy: str
    capacity_bytes: int
    hits: BoolArray
    warm: tuple[WarmOutcome, ...] = ()


def replay(
    trace: Trace,
    objects: ObjectTable,
    policy: str,
    cache: ReplayCache,
    warm_loads: Sequence[WarmLoad] = (),
) -> ReplayResult:
    """Push every request of the trace through `cache`, applying warm loads at their times.

    A warm load at time ``t`` is applied before the first request at or after ``t``.

    Returns:
        the hit (True) or miss of each request, and what each warm load admitted.
    """
    capacity = int(getattr(cache, "capacity_bytes", 0))
    loads = sorted(warm_loads, key=lambda load: load.at)
    cuts = np.searchsorted(trace.times, np.array([load.at for load in loads], dtype=np.int64), side="left").tolist()
    keys: list[int] = trace.objects.tolist()
    sizes: list[int] = objects.sizes.tolist()
    hits = bytearray(len(keys))
    get, put = cache.get, cache.put
    admit = getattr(cache, "admit_if_room", None)
    outcomes: list[WarmOutcome] = []
    position = 0
    for load, cut in zip([*loads, None], [*cuts, len(keys)], strict=True):
        for index in range(position, cut):
            key = keys[index]
            if get(key) is None:
                put(key, True, sizes[key])
            else:
                hits[index] = 1
        position = cut
        if load is not None:
            outcomes.append(_warm(cache, admit, load, sizes))
    return ReplayResult(policy, capacity, np.frombuffer(bytes(hits), dtype=np.bool_), tuple(outcomes))


def _warm(cache: ReplayCache, admit: Any, load: WarmLoad, sizes: list[int]) -> WarmOutcome:
    admitted: list[int] = []
    cached: list[int] = []
    for key in dict.fromkeys(load.objects):  # a list naming an object twice warms it once
        if cache.peek(key) is not None:
            cached.append(key)
            continue
        stored = admit(key, True, sizes[key]) if admit is not None else cache.put(key, True, sizes[key])
        if stored:
            admitted.append(key)
    return WarmOutcome(load, tuple(admitted), tuple(cached))


def footprint_bytes(trace: Trace, objects: ObjectTable) -> int:
    """Bytes of every distinct object the trace requests: the cache size at which only first requests miss."""
    return int(objects.sizes[np.unique(trace.objects)].sum())
