"""What a shard accepts from its upstream: fuzzed parsers, bounded inflation, a garbage peer on loopback."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from ops.metrics import Registry
from ops.settings import Seconds
from origin.hlc import HybridClock
from origin.http import Origin, OriginMetrics, create_app
from origin.ledger import Ledger
from origin.settings import OriginSettings
from origin.shard import (
    MAX_UPSTREAM_BODY,
    Shard,
    ShardMetrics,
    Upstream,
    UpstreamError,
    _inflate,
    parse_changes,
    parse_snapshot,
    shard_events,
    upstream_session,
)
from origin.store.factory import store_from_url
from tests.origin.conftest import LIMITS, START, tiny_catalog

MakeServer = Callable[..., Awaitable[TestServer]]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
record_like = st.fixed_dictionaries(
    {},
    optional={
        "pos": st.sampled_from(["e:1", "e:2", "x:1", "e:-1", "", "e"]) | json_values,
        "item_id": st.sampled_from(["itm-1", ""]) | json_values,
        "version": st.integers(-2, 3) | json_values,
        "hlc": st.just("h") | json_values,
        "op": st.sampled_from(["upsert", "delete", "drop"]) | json_values,
        "patch": st.just({}) | json_values,
    },
)
changes_like = st.fixed_dictionaries(
    {},
    optional={
        "changes": st.lists(record_like, max_size=3) | json_values,
        "next": st.sampled_from(["e:1", "e:2", "x:2"]) | json_values,
        "head": st.sampled_from(["e:2", "e:1"]) | json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(doc=json_values | changes_like)
def test_only_upstream_error_escapes_the_changes_parser(doc: Any) -> None:
    try:
        parsed = parse_changes(doc)
    except UpstreamError:
        return
    assert parsed.next <= parsed.head
    assert all(record.pos.epoch == parsed.head.epoch for record in parsed.records)


@settings(max_examples=200, deadline=None)
@given(
    doc=json_values
    | st.fixed_dictionaries(
        {"position": st.sampled_from(["e:1", "bad"]) | json_values},
        optional={"items": st.lists(json_values, max_size=2) | json_values, "next_after": json_values},
    )
)
def test_only_upstream_error_escapes_the_snapshot_parser(doc: Any) -> None:
    try:
        page = parse_snapshot(doc)
    except UpstreamError:
        return
    assert page.position.seq >= 0 and all(item.version >= 0 for item in page.items)


@settings(max_examples=200, deadline=None)
@given(doc=json_values)
def test_only_upstream_error_escapes_the_shard_map_parser(doc: Any) -> None:
    try:
        events = shard_events(doc, "s1")
    except UpstreamError:
        return
    assert all(isinstance(event, str) and event for event in events)


def test_shard_map_entry_gives_this_shards_events() -> None:
    doc = {"version": 3, "shards": {"s1": {"region": "eu-west", "events": ["evt-1", "evt-3"]}}, "events": {}}
    assert shard_events(doc, "s1") == {"evt-1", "evt-3"}
    assert shard_events(doc, "s2") == set()
    with pytest.raises(UpstreamError, match="event ids"):
        shard_events({"shards": {"s1": {"events": "evt-1"}}}, "s1")


def test_inflate_reads_gzip_and_bounds_the_result() -> None:
    assert _inflate(gzip.compress(b'{"a":1}'), "gzip", "u") == b'{"a":1}'
    assert _inflate(zlib.compress(b"[]"), "deflate", "u") == b"[]"
    with pytest.raises(UpstreamError, match="inflate"):
        _inflate(b"not gzip", "gzip", "u")
    with pytest.raises(UpstreamError, match="Content-Encoding"):
        _inflate(b"x", "br", "u")
    bomb = gzip.compress(b"0" * (MAX_UPSTREAM_BODY + 10))
    with pytest.raises(UpstreamError, match="larger"):
        _inflate(bomb, "gzip", "u")


async def test_snapshot_and_changes_travel_gzipped(tmp_path: Path, aiohttp_server: MakeServer) -> None:
    store = store_from_url(f"sqlite:{tmp_path / 'primary.db'}")
    await store.open()
    try:
        await store.load_catalog(*tiny_catalog(), START)
        ledger = Ledger(store, HybridClock("p", lambda: 0.0), lambda: 0.0, LIMITS)
        server = await aiohttp_server(
            create_app(Origin(OriginSettings(), store, ledger, lambda: 0.0), background=False)
        )
        metrics = ShardMetrics(Registry())
        async with upstream_session() as session:
            upstream = Upstream(session, str(server.make_url("")), 5.0, metrics)
            doc = await upstream.get_json(str(server.make_url("/v1/snapshot?filter=event:evt-1")))
            on_wire = metrics.bytes_received.value()
            assert len(doc["items"]) == 2 and [event["id"] for event in doc["events"]] == ["evt-1"]
            assert [venue["id"] for venue in doc["venues"]] == ["ven-1"]
            assert 0 < on_wire < len(json.dumps(doc, separators=(",", ":")))  # compressed on the wire
            page = await upstream.snapshot("event:evt-1", None)
            assert page.position.seq == 3 and [item.id for item in page.items] == ["itm-1-ga", "itm-1-s"]
            second = await upstream.snapshot("event:evt-1", "itm-1-ga")
            assert second.events == () and [item.id for item in second.items] == ["itm-1-s"]
    finally:
        await store.close()


@pytest.mark.parametrize(
    "answer",
    [
        web.Response(text="<html>oops</html>", content_type="text/html"),
        web.json_response({"position": "nope", "items": []}),
        web.json_response({"position": "e:1", "items": [{"id": "x"}]}),
        web.Response(body=b"\x1f\x8b garbage", headers={"Content-Encoding": "gzip"}),
        web.json_response({"error": "down"}, status=500),
    ],
    ids=["html", "bad-position", "bad-item", "bad-gzip", "500"],
)
async def test_a_garbage_upstream_is_reported_and_retried_never_fatal(
    answer: web.Response, tmp_path: Path, aiohttp_server: MakeServer
) -> None:
    calls = 0

    async def garbage(_: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.Response(body=answer.body, status=answer.status, headers=answer.headers)

    bad = web.Application()
    bad.router.add_get("/{tail:.*}", garbage)
    upstream = await aiohttp_server(bad)
    store = store_from_url(f"sqlite:{tmp_path / 'shard.db'}")
    await store.open()
    settings_ = OriginSettings(
        role="shard", region="eu-west", upstream=str(upstream.make_url("")), database="sqlite:x", max_lag=Seconds(5.0)
    )
    try:
        async with upstream_session() as session:
            metrics = OriginMetrics()
            shard = Shard(settings_, store, session, ShardMetrics(metrics.registry))
            ledger = Ledger(store, HybridClock("s", lambda: 0.0), lambda: 0.0, LIMITS)
            server = await aiohttp_server(
                create_app(Origin(settings_, store, ledger, lambda: 0.0, metrics, shard=shard))
            )
            for _ in range(400):
                if calls >= 3:
                    break
                await asyncio.sleep(0.05)
            assert calls >= 3  # it kept retrying after each failure
            assert shard.last_error is not None and not shard.bootstrapped
            assert shard.metrics.errors.value("upstream_error") >= 2
            async with session.get(server.make_url("/v1/health")) as response:
                health = json.loads(await response.read())
            assert health["state"] == "bootstrapping" and health["last_error"]
            await server.close()
    finally:
        await store.close()
