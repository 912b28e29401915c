"""The origin HTTP API over real loopback sockets, on both backends."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from origin.hlc import HybridClock
from origin.http import Origin, create_app
from origin.ledger import Ledger
from origin.settings import OriginSettings
from origin.store.base import Store
from tests.origin.conftest import FakeTime

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]


@pytest.fixture
async def client(seeded: Store, fake_time: FakeTime, aiohttp_client: MakeClient) -> Client:
    settings = OriginSettings(max_qty_per_hold=8, max_body=1024, feed_max_wait=5.0)
    ledger = Ledger(seeded, HybridClock("test", fake_time), fake_time, settings.ledger_limits())
    origin = Origin(settings, seeded, ledger, fake_time)
    return await aiohttp_client(create_app(origin, background=False))


async def error_of(response: Any, status: int) -> str:
    assert response.status == status
    body = await response.json()
    assert body["error"]["status"] == status
    code: str = body["error"]["code"]
    return code


async def test_item_is_cacheable_and_answers_conditional_gets(client: Client) -> None:
    response = await client.get("/v1/items/itm-1-ga")
    assert response.status == 200
    doc = await response.json()
    assert doc["available"] == 10 and doc["version"] == 1
    etag = response.headers["ETag"]
    assert etag == '"itm-1-ga.v1"'
    assert response.headers["Cache-Control"] == "public, max-age=2, stale-while-revalidate=30, stale-if-error=300"
    last_modified = response.headers["Last-Modified"]
    assert (await client.get("/v1/items/itm-1-ga", headers={"If-None-Match": etag})).status == 304
    assert (await client.get("/v1/items/itm-1-ga", headers={"If-None-Match": f'"x", W/{etag}'})).status == 304
    assert (await client.get("/v1/items/itm-1-ga", headers={"If-Modified-Since": last_modified})).status == 304
    assert (await client.get("/v1/items/itm-1-ga", headers={"If-None-Match": '"other"'})).status == 200
    head = await client.head("/v1/items/itm-1-ga")
    assert head.status == 200 and head.headers["ETag"] == etag


async def test_events_by_id_and_region(client: Client) -> None:
    response = await client.get("/v1/events/evt-1")
    doc = await response.json()
    assert doc["event"]["artist"] == "Band" and doc["venue"]["city"] == "Lisbon"
    assert [item["id"] for item in doc["items"]] == ["itm-1-ga", "itm-1-s"]
    assert (await client.get("/v1/events/evt-1", headers={"If-None-Match": response.headers["ETag"]})).status == 304
    listing = await (await client.get("/v1/events?region=ap-northeast")).json()
    assert [event["id"] for event in listing["events"]] == ["evt-2"]
    assert await error_of(await client.get("/v1/events/evt-9"), 404) == "not_found"
    assert await error_of(await client.get("/v1/events?limit=0"), 400) == "bad_request"


async def test_hold_then_order_then_the_item_shows_it(client: Client) -> None:
    held = await client.post("/v1/holds", json={"item_id": "itm-1-s", "qty": 2, "user_id": "u1"})
    assert held.status == 201 and held.headers["Cache-Control"] == "no-store"
    hold = (await held.json())["hold"]
    assert held.headers["Location"] == f"/v1/holds/{hold['id']}"
    assert (await (await client.get(f"/v1/holds/{hold['id']}")).json())["status"] == "active"
    ordered = await client.post("/v1/orders", json={"hold_id": hold["id"]})
    assert ordered.status == 201
    order = (await ordered.json())["order"]
    assert (await (await client.get(f"/v1/orders/{order['id']}")).json())["seats"] == ["1", "2"]
    item = await (await client.get("/v1/items/itm-1-s")).json()
    assert item["available_seats"] == ["3", "4", "5", "6"] and item["version"] == 2
    assert await error_of(await client.post("/v1/orders", json={"hold_id": hold["id"]}), 409) == "hold_not_active"


async def test_every_bad_input_gets_its_status(client: Client, fake_time: FakeTime) -> None:
    assert await error_of(await client.get("/v1/items/nope"), 404) == "not_found"
    assert await error_of(await client.get("/v1/nothing-here"), 404) == "not_found"
    assert await error_of(await client.get(f"/v1/items/{'x' * 300}"), 404) == "not_found"
    assert await error_of(await client.post("/v1/holds", data=b"{not json"), 400) == "bad_request"
    assert await error_of(await client.post("/v1/holds", data=b"\xff\xfe"), 400) == "bad_request"
    assert await error_of(await client.post("/v1/holds", data=b"x" * 5000), 413) == "request_entity_too_large"
    too_many = {"item_id": "itm-1-ga", "qty": 8, "user_id": "u"}
    await client.post("/v1/holds", json=too_many)
    assert await error_of(await client.post("/v1/holds", json=too_many), 409) == "insufficient_stock"
    deleted = await client.delete("/v1/holds")
    assert await error_of(deleted, 405) == "method_not_allowed" and deleted.headers["Allow"] == "POST"
    assert await error_of(await client.put("/v1/items/itm-1-ga"), 405) == "method_not_allowed"
    held = await (await client.post("/v1/holds", json={"item_id": "itm-1-s", "qty": 1, "user_id": "u"})).json()
    fake_time.advance(3600)
    expired = await client.post("/v1/orders", json={"hold_id": held["hold"]["id"]})
    assert await error_of(expired, 410) == "hold_expired"
    assert await error_of(await client.post("/v1/orders", json={"hold_id": "hld-x"}), 404) == "not_found"


async def test_idempotency_key_over_http(client: Client) -> None:
    body = {"item_id": "itm-1-ga", "qty": 2, "user_id": "u1"}
    first = await client.post("/v1/holds", json=body, headers={"Idempotency-Key": "abc"})
    again = await client.post("/v1/holds", json=body, headers={"Idempotency-Key": "abc"})
    assert first.status == again.status == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await first.json() == await again.json()
    assert (await (await client.get("/v1/items/itm-1-ga")).json())["available"] == 8
    other = await client.post("/v1/holds", json={**body, "qty": 1}, headers={"Idempotency-Key": "abc"})
    assert await error_of(other, 422) == "idempotency_key_reused"
    assert await error_of(await client.post("/v1/holds", json=body, headers={"Idempotency-Key": "x" * 300}), 400)


async def test_change_feed_follows_writes_and_long_polls(client: Client) -> None:
    snapshot = await (await client.get("/v1/snapshot")).json()
    assert [item["id"] for item in snapshot["items"]] == ["itm-1-ga", "itm-1-s", "itm-2-ga"]
    position = snapshot["position"]
    empty = await (await client.get(f"/v1/changes?since={position}")).json()
    assert empty["changes"] == [] and empty["next"] == position

    async def buy_soon() -> None:
        await asyncio.sleep(0.2)
        await client.post("/v1/holds", json={"item_id": "itm-1-ga", "qty": 3, "user_id": "u"})

    buyer = asyncio.create_task(buy_soon())
    polled = await (await client.get(f"/v1/changes?since={position}&wait=4")).json()
    await buyer
    [change] = polled["changes"]
    assert change["item_id"] == "itm-1-ga" and change["version"] == 2
    assert change["patch"] == {"available": 7}  # the fake clock did not move, so updated_at did not change
    assert polled["next"] == change["pos"] == polled["head"]


async def test_change_feed_refuses_bad_and_foreign_positions(client: Client, seeded: Store) -> None:
    assert await error_of(await client.get("/v1/changes"), 400) == "bad_request"
    assert await error_of(await client.get("/v1/changes?since=garbage"), 400) == "bad_request"
    assert await error_of(await client.get("/v1/changes?since=abc123:0"), 410) == "position_gone"
    assert await error_of(await client.get(f"/v1/changes?since={seeded.epoch}:99"), 410) == "position_gone"
    assert await error_of(await client.get(f"/v1/changes?since={seeded.epoch}:0&wait=99"), 400) == "bad_request"
    assert await error_of(await client.get(f"/v1/changes?since={seeded.epoch}:0&limit=0"), 400) == "bad_request"
    from datetime import UTC, datetime

    await seeded.prune(keep_changes=1, changes_before=datetime(2000, 1, 1, tzinfo=UTC),
                       idempotency_before=datetime(2000, 1, 1, tzinfo=UTC))  # fmt: skip
    assert await error_of(await client.get(f"/v1/changes?since={seeded.epoch}:0"), 410) == "position_gone"
    kept = await (await client.get(f"/v1/changes?since={seeded.epoch}:2")).json()
    assert [c["pos"] for c in kept["changes"]] == [f"{seeded.epoch}:3"]


async def test_snapshot_filters_and_pages(client: Client) -> None:
    page = await (await client.get("/v1/snapshot?filter=region:eu-west&limit=1")).json()
    assert [item["id"] for item in page["items"]] == ["itm-1-ga"] and page["next_after"] == "itm-1-ga"
    rest = await (await client.get("/v1/snapshot?filter=region:eu-west&after=itm-1-ga")).json()
    assert [item["id"] for item in rest["items"]] == ["itm-1-s"] and rest["next_after"] is None
    by_event = await (await client.get("/v1/snapshot?filter=event:evt-2")).json()
    assert [item["id"] for item in by_event["items"]] == ["itm-2-ga"]
    assert await error_of(await client.get("/v1/snapshot?filter=color:red"), 400) == "bad_request"


async def test_health_and_metrics(client: Client, seeded: Store) -> None:
    health = await (await client.get("/v1/health")).json()
    assert health["status"] == "ok" and health["head"] == f"{seeded.epoch}:3"
    await client.get("/v1/items/nope")
    metrics = await client.get("/metrics")
    text = await metrics.text()
    assert metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert 'origin_http_requests_total{route="/v1/items/{item_id}",status="404"} 1' in text
    assert "origin_feed_head 3" in text


async def test_a_deeply_nested_body_is_a_400_not_a_500(
    seeded: Store, fake_time: FakeTime, aiohttp_client: MakeClient
) -> None:
    settings = OriginSettings(max_body=1024 * 1024)
    ledger = Ledger(seeded, HybridClock("test", fake_time), fake_time, settings.ledger_limits())
    client = await aiohttp_client(create_app(Origin(settings, seeded, ledger, fake_time), background=False))
    body = "[" * 100_000 + "]" * 100_000
    response = await client.post("/v1/holds", data=body)
    assert await error_of(response, 400) == "bad_request"
