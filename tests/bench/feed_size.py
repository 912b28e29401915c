"""Benchmark 3: bytes a change-feed consumer receives per change, against full item documents.

After the hold race, the records from the pre-race position are read twice:
as plain JSON and with `Accept-Encoding: gzip` (bytes counted as they came
over the wire). Each record's patch is applied, in order, to the item as it was
served before the race, so the "full document" a record stands for is the
document at that version, not the sold-out one at the end. The replay must
give exactly what `GET /v1/items/{id}` serves afterwards, which also checks
that patches lose nothing.
"""

from __future__ import annotations

import gzip
import json
import statistics
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from origin import mergepatch

# The origin caps a batch at 1,000 records (store.base.MAX_CHANGE_BATCH).
CHANGE_BATCH: Final = 1_000
# A race makes a few thousand records; this bounds the paging loop.
MAX_BATCHES: Final = 200


@dataclass(frozen=True, slots=True)
class FeedResult:
    records: int
    by_kind: dict[str, int]  # records per item kind
    record_bytes: float  # mean compact JSON of one record
    patch_bytes: float  # mean compact JSON of its patch
    document_bytes: float  # mean full item document at each record's version
    document_bytes_by_kind: dict[str, float]
    patch_bytes_by_kind: dict[str, float]
    served_document_bytes: float  # mean GET /v1/items/{id} body before the race
    plain_batch_bytes_per_change: float
    gzip_batch_bytes_per_change: float
    gzip_used: bool
    replay_matches: bool  # patches applied in order give the documents served afterwards


def compact(doc: Any) -> bytes:
    """The origin's own encoding (http._json): compact separators, UTF-8."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


async def read_changes(
    session: aiohttp.ClientSession, base_url: str, since: str, *, compressed: bool
) -> tuple[bytes, ...]:
    """Raw response bodies of `/v1/changes` from `since` to the head (compressed ones left compressed)."""
    bodies: list[bytes] = []
    headers = {"Accept-Encoding": "gzip" if compressed else "identity"}
    position = since
    for _ in range(MAX_BATCHES):
        params = {"since": position, "limit": str(CHANGE_BATCH)}
        async with session.get(f"{base_url}/v1/changes", params=params, headers=headers) as response:
            response.raise_for_status()
            encoding = response.headers.get("Content-Encoding", "")
            raw = await response.read()
        doc = json.loads(gzip.decompress(raw) if encoding == "gzip" else raw)
        if doc["changes"]:
            bodies.append(raw)
        if not doc["changes"] or doc["next"] == doc["head"]:
            return tuple(bodies)
        position = doc["next"]
    raise RuntimeError(f"change feed did not reach its head within {MAX_BATCHES} batches")


async def fetch_documents(session: aiohttp.ClientSession, base_url: str, item_ids: list[str]) -> dict[str, bytes]:
    """The `GET /v1/items/{id}` bodies of `item_ids`, as served."""
    bodies: dict[str, bytes] = {}
    for item_id in item_ids:
        async with session.get(f"{base_url}/v1/items/{item_id}") as response:
            response.raise_for_status()
            bodies[item_id] = await response.read()
    return bodies


async def measure(base_url: str, since: str, served_before: dict[str, bytes]) -> FeedResult:
    """Measure the feed from `since`; `served_before` maps item id to its body served before the race."""
    before = {item_id: json.loads(body) for item_id, body in served_before.items()}
    # auto_decompress=False: count gzip bytes as sent, and decompress by hand.
    async with aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=30)) as session:
        plain = await read_changes(session, base_url, since, compressed=False)
        compressed = await read_changes(session, base_url, since, compressed=True)
        gzip_used = all(body[:2] == b"\x1f\x8b" for body in compressed)
        records = [record for body in plain for record in json.loads(body)["changes"]]
        served_after = await fetch_documents(session, base_url, list(before))
    if not records:
        raise RuntimeError("the race left no change records")

    current = {item_id: dict(doc) for item_id, doc in before.items()}
    record_sizes: list[int] = []
    patch_sizes: list[int] = []
    document_sizes: list[int] = []
    kind_documents: dict[str, list[int]] = {}
    kind_patches: dict[str, list[int]] = {}
    for record in records:
        item_id = record["item_id"]
        if item_id not in current:
            raise RuntimeError(f"change record for item {item_id} outside the hot event")
        doc = mergepatch.apply(current[item_id], record["patch"])
        doc["version"] = record["version"]
        doc["hlc"] = record["hlc"]
        current[item_id] = doc
        size = len(compact(doc))
        kind = str(doc["kind"])
        record_sizes.append(len(compact(record)))
        patch_sizes.append(len(compact(record["patch"])))
        document_sizes.append(size)
        kind_documents.setdefault(kind, []).append(size)
        kind_patches.setdefault(kind, []).append(len(compact(record["patch"])))
    replay_matches = all(json.loads(served_after[item_id]) == current[item_id] for item_id in before)
    return FeedResult(
        records=len(records),
        by_kind={kind: len(sizes) for kind, sizes in kind_documents.items()},
        record_bytes=statistics.fmean(record_sizes),
        patch_bytes=statistics.fmean(patch_sizes),
        document_bytes=statistics.fmean(document_sizes),
        document_bytes_by_kind={kind: statistics.fmean(sizes) for kind, sizes in kind_documents.items()},
        patch_bytes_by_kind={kind: statistics.fmean(sizes) for kind, sizes in kind_patches.items()},
        served_document_bytes=statistics.fmean(len(body) for body in served_before.values()),
        plain_batch_bytes_per_change=sum(len(body) for body in plain) / len(records),
        gzip_batch_bytes_per_change=sum(len(body) for body in compressed) / len(records),
        gzip_used=gzip_used,
        replay_matches=replay_matches,
    )
