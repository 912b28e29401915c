"""The follower side of the storage contract, on SQLite and a real PostgreSQL."""

from __future__ import annotations

import dataclasses

import pytest

from origin.store.base import Store
from tests.origin.conftest import START, tiny_catalog


async def test_rows_and_checkpoint_commit_together_or_not_at_all(store: Store) -> None:
    venues, events, items = tiny_catalog()
    assert await store.checkpoint("upstream") is None
    async with store.transaction() as tx:
        await tx.put_venue(venues[0])
        await tx.put_event(events[0])
        await tx.put_replica_item(items[0], "eu-west")
        await tx.append_change(items[0].id, 1, items[0].hlc, "upsert", {"available": 10}, START)
        await tx.set_checkpoint("upstream", "abc:7")
    assert await store.checkpoint("upstream") == "abc:7"
    assert await store.item(items[0].id) == items[0]
    assert [event.id for event in await store.events("eu-west", None, 10)] == ["evt-1"]

    newer = dataclasses.replace(items[0], available=4, version=2)
    with pytest.raises(RuntimeError):
        async with store.transaction() as tx:
            await tx.put_replica_item(newer, "eu-west")
            await tx.set_checkpoint("upstream", "abc:8")
            raise RuntimeError("the batch failed half way")
    assert await store.checkpoint("upstream") == "abc:7"
    assert await store.item(items[0].id) == items[0]

    async with store.transaction() as tx:
        await tx.put_replica_item(newer, "eu-west")
        assert await tx.checkpoint("upstream") == "abc:7"
        await tx.set_checkpoint("upstream", "abc:8")
    assert await store.item(items[0].id) == newer and await store.checkpoint("upstream") == "abc:8"


async def test_drop_event_returns_what_it_deleted(store: Store) -> None:
    venues, events, items = tiny_catalog()
    await store.load_catalog(venues, events, items, START)
    async with store.transaction() as tx:
        dropped = await tx.drop_event("evt-1")
        await tx.delete_item("itm-2-ga")
        await tx.clear_checkpoint("nothing-there")
    assert [item.id for item in dropped] == ["itm-1-ga", "itm-1-s"]
    assert await store.event("evt-1") is None and await store.event_items("evt-1") == []
    assert await store.item("itm-2-ga") is None
    assert await store.event("evt-2") is not None
