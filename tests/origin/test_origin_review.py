"""Regression tests for bugs found in review of the origin (both backends)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from origin.errors import HoldExpired
from origin.hlc import HybridClock, Stamp
from origin.http import Origin, create_app
from origin.ledger import HoldRequest, Ledger
from origin.settings import OriginSettings
from origin.store.base import Store
from tests.origin.conftest import LIMITS, START, FakeTime

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]


@pytest.fixture
async def client(seeded: Store, fake_time: FakeTime, aiohttp_client: MakeClient) -> Client:
    settings = OriginSettings(max_qty_per_hold=8, max_body=1024, feed_max_wait=5.0)
    ledger = Ledger(seeded, HybridClock("test", fake_time), fake_time, settings.ledger_limits())
    origin = Origin(settings, seeded, ledger, fake_time)
    return await aiohttp_client(create_app(origin, background=False))


def hold(item_id: str, qty: int) -> HoldRequest:
    return HoldRequest(item_id, qty, "u1", None, None)


async def test_expired_order_with_idempotency_key_replays_410(ledger: Ledger, fake_time: FakeTime) -> None:
    held = await ledger.place_hold(hold("itm-1-ga", 1), None)
    fake_time.advance(11 * 60)
    with pytest.raises(HoldExpired):
        await ledger.place_order(held.body["hold"]["id"], "key-1")
    # The retry must get the same answer, not a 500 from a claim left without a response.
    with pytest.raises(HoldExpired):
        await ledger.place_order(held.body["hold"]["id"], "key-1")


async def test_expired_order_retry_over_http(client: Client, fake_time: FakeTime) -> None:
    response = await client.post("/v1/holds", json={"item_id": "itm-1-ga", "qty": 1, "user_id": "u1"})
    hold_id = (await response.json())["hold"]["id"]
    fake_time.advance(11 * 60)
    for _ in range(2):
        response = await client.post("/v1/orders", json={"hold_id": hold_id}, headers={"Idempotency-Key": "k"})
        assert response.status == 410
        assert (await response.json())["error"]["code"] == "hold_expired"


async def test_cancelled_transaction_start_leaves_no_open_transaction(seeded: Store, fake_time: FakeTime) -> None:
    async def body() -> None:
        async with seeded.transaction() as tx:
            await tx.item_for_update("itm-1-ga")

    for _ in range(3):
        task = asyncio.create_task(body())
        await asyncio.sleep(0)  # the task is now waiting on BEGIN
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    ledger = Ledger(seeded, HybridClock("test", fake_time), fake_time, LIMITS)
    result = await asyncio.wait_for(ledger.place_hold(hold("itm-1-ga", 1), None), 10)
    assert result.status == 201


async def test_changes_refuses_records_pruned_between_bounds_and_read(
    client: Client, seeded: Store, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(3):
        await ledger.place_hold(hold("itm-2-ga", 1), None)  # records 4..6
    original = seeded.changes

    async def changes_after_prune(after: int, limit: int) -> Any:
        # Retention runs between the handler's bounds check and its read.
        await seeded.prune(keep_changes=1, changes_before=START - timedelta(days=1),
                           idempotency_before=START - timedelta(days=1))  # fmt: skip
        return await original(after, limit)

    monkeypatch.setattr(seeded, "changes", changes_after_prune)
    response = await client.get("/v1/changes", params={"since": f"{seeded.epoch}:1"})
    # Records 2..5 are gone: answering with 6 would let the consumer skip them silently.
    assert response.status == 410
    assert (await response.json())["error"]["code"] == "position_gone"


@pytest.mark.parametrize("raw", ["\u00b2", "1" * 5000, "\u0663" * 30])
async def test_odd_integer_query_params_are_400(client: Client, seeded: Store, raw: str) -> None:
    response = await client.get(f"/v1/changes?since={seeded.epoch}:0&limit={raw}")
    assert response.status == 400
    response = await client.get(f"/v1/snapshot?limit={raw}")
    assert response.status == 400


async def test_item_stamps_do_not_go_back_after_restart_with_a_slower_clock(seeded: Store) -> None:
    ahead = FakeTime(START + timedelta(seconds=30))
    first = Ledger(seeded, HybridClock("test", ahead), ahead, LIMITS)
    await first.place_hold(hold("itm-1-ga", 1), None)
    before = await seeded.item("itm-1-ga")
    # The process restarts on a host whose clock is behind: its HLC starts from 0.
    behind = FakeTime(START)
    second = Ledger(seeded, HybridClock("test", behind), behind, LIMITS)
    await second.place_hold(hold("itm-1-ga", 1), None)
    after = await seeded.item("itm-1-ga")
    assert before is not None and after is not None
    assert after.version > before.version
    assert Stamp.decode(after.hlc) > Stamp.decode(before.hlc)
