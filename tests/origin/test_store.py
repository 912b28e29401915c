"""The storage contract, run against SQLite and a real PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest

from origin.changefeed import Position
from origin.store.base import Store
from tests.origin.conftest import START, tiny_catalog


async def test_catalog_round_trips(seeded: Store) -> None:
    _, events, items = tiny_catalog()
    assert await seeded.item("itm-1-s") == items[1]
    assert await seeded.event("evt-2") == events[1]
    venue = await seeded.venue("ven-1")
    assert venue is not None and venue.city == "Lisbon"
    assert await seeded.item("nope") is None
    assert await seeded.event("nope") is None


async def test_events_by_region_page_in_id_order(seeded: Store) -> None:
    assert [e.id for e in await seeded.events(None, None, 10)] == ["evt-1", "evt-2"]
    assert [e.id for e in await seeded.events("ap-northeast", None, 10)] == ["evt-2"]
    assert [e.id for e in await seeded.events(None, "evt-1", 10)] == ["evt-2"]
    assert [e.id for e in await seeded.events(None, None, 1)] == ["evt-1"]
    assert [i.id for i in await seeded.event_items("evt-1")] == ["itm-1-ga", "itm-1-s"]


async def test_catalog_load_appends_one_full_record_per_item(seeded: Store) -> None:
    bounds = await seeded.feed_bounds()
    assert (bounds.retained_after, bounds.head) == (0, 3)
    records = await seeded.changes(0, 10)
    assert [r.pos.seq for r in records] == [1, 2, 3]
    assert all(r.pos.epoch == seeded.epoch for r in records)
    assert records[0].item_id == "itm-1-ga" and records[0].op == "upsert"
    assert records[0].patch["capacity"] == 10 and "version" not in records[0].patch
    assert [r.pos.seq for r in await seeded.changes(2, 10)] == [3]


async def test_write_transaction_appends_in_order_and_rolls_back_on_error(seeded: Store) -> None:
    async with seeded.transaction() as tx:
        item = await tx.item_for_update("itm-1-ga")
        assert item is not None
        seq = await tx.append_change(item.id, 2, "x", "upsert", {"available": 9}, START)
    assert seq == 4
    with pytest.raises(RuntimeError):
        async with seeded.transaction() as tx:
            await tx.append_change("itm-1-ga", 3, "y", "upsert", {"available": 8}, START)
            raise RuntimeError("boom")
    assert (await seeded.feed_bounds()).head == 4
    async with seeded.transaction() as tx:
        assert await tx.append_change("itm-1-ga", 3, "y", "upsert", {}, START) == 5


async def test_snapshot_pages_are_consistent_with_a_position(seeded: Store) -> None:
    page = await seeded.snapshot(region=None, event_ids=None, after=None, limit=2)
    assert page.position == Position(seeded.epoch, 3)
    assert [i.id for i in page.items] == ["itm-1-ga", "itm-1-s"] and page.next_after == "itm-1-s"
    rest = await seeded.snapshot(region=None, event_ids=None, after=page.next_after, limit=2)
    assert [i.id for i in rest.items] == ["itm-2-ga"] and rest.next_after is None
    by_region = await seeded.snapshot(region="ap-northeast", event_ids=None, after=None, limit=10)
    assert [i.id for i in by_region.items] == ["itm-2-ga"]
    by_event = await seeded.snapshot(region=None, event_ids=["evt-1"], after=None, limit=10)
    assert [i.id for i in by_event.items] == ["itm-1-ga", "itm-1-s"]


async def test_prune_keeps_the_newest_and_remembers_the_cut(seeded: Store) -> None:
    dropped = await seeded.prune(keep_changes=1, changes_before=START - timedelta(days=1), idempotency_before=START)
    assert dropped == 2
    bounds = await seeded.feed_bounds()
    assert (bounds.retained_after, bounds.head) == (2, 3)
    async with seeded.transaction() as tx:
        assert await tx.append_change("itm-1-ga", 2, "x", "upsert", {}, START) == 4
    # Pruning everything still never reuses a sequence number.
    await seeded.prune(keep_changes=0, changes_before=START, idempotency_before=START)
    assert (await seeded.feed_bounds()).head == 4
    async with seeded.transaction() as tx:
        assert await tx.append_change("itm-1-ga", 3, "x", "upsert", {}, START) == 5


async def test_epoch_survives_reopen(store_url: str) -> None:
    from origin.store.factory import store_from_url

    first = store_from_url(store_url)
    await first.open()
    epoch = first.epoch
    await first.close()
    second = store_from_url(store_url)
    await second.open()
    try:
        assert second.epoch == epoch and epoch.isalnum()
    finally:
        await second.close()


async def test_idempotency_claim_returns_the_stored_response(seeded: Store) -> None:
    async with seeded.transaction() as tx:
        assert await tx.claim_idempotency_key("holds:k1", "fp", START) is None
        await tx.complete_idempotency_key("holds:k1", 201, {"ok": True})
    async with seeded.transaction() as tx:
        stored = await tx.claim_idempotency_key("holds:k1", "fp", START)
    assert stored is not None and (stored.status, stored.body) == (201, {"ok": True})
    with pytest.raises(RuntimeError):
        async with seeded.transaction() as tx:
            assert await tx.claim_idempotency_key("holds:k2", "fp", START) is None
            raise RuntimeError("the write failed, so the key must stay free")
    async with seeded.transaction() as tx:
        assert await tx.claim_idempotency_key("holds:k2", "fp", START) is None


async def test_counts(seeded: Store) -> None:
    counts = await seeded.counts()
    assert counts["items"] == 3 and counts["events"] == 2 and counts["changes"] == 3
