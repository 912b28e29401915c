"""Review of the event-metadata last-write-wins path: edits and records a peer or an admin could get wrong.

A real primary (the origin app over SQLite on loopback) and a real shard
bootstrapped from it, as in tests/origin/test_event_metadata.py.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from aiohttp import ClientSession

from origin.changefeed import EVENT_RECORD_VERSION, OP_EVENT, ChangeRecord, Position
from origin.hlc import MAX_CLOCK_OFFSET_MS, HybridClock, Stamp
from origin.ledger import Ledger
from origin.lww import STAMPS_KEY
from origin.metadata_edits import edit_event
from origin.shard import ChangesDoc
from origin.store.base import Store
from origin.upstream import UpstreamError
from tests.origin.conftest import LIMITS, START, FakeTime
from tests.origin.test_event_metadata import AUTH, MakeServer, bootstrapped_shard, event_records, start_primary


async def test_a_name_that_cannot_be_stored_as_utf8_is_a_400_not_a_500(
    tmp_path: Path, aiohttp_server: MakeServer
) -> None:
    primary = await start_primary(tmp_path / "primary.db", aiohttp_server)
    try:
        head = (await primary.store.feed_bounds()).head
        async with ClientSession() as session:
            # JSON lets a string hold a lone surrogate; no UTF-8 store, feed or response can carry it.
            response = await session.patch(
                f"{primary.url}/v1/events/evt-1", data=b'{"name": "Band \\ud800"}', headers=AUTH
            )
            assert response.status == 400, await response.text()
            assert "'name'" in (await response.json())["error"]["message"]
        event = await primary.store.event("evt-1")
        assert event is not None and event.name == "Band Live" and not event.metadata_stamps
        assert (await primary.store.feed_bounds()).head == head
    finally:
        await primary.store.close()


@pytest.mark.parametrize("field", ["name", "genre"])
async def test_an_event_record_with_an_unstamped_field_is_refused_not_merged_silently(
    tmp_path: Path, aiohttp_server: MakeServer, field: str
) -> None:
    primary = await start_primary(tmp_path / "primary.db", aiohttp_server)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(primary.store.close)
        shard, store = await bootstrapped_shard(primary, tmp_path, aiohttp_server, stack)
        assert shard.checkpoint is not None
        before = await store.event("evt-1")
        assert before is not None
        own_head = (await store.feed_bounds()).head
        stamp = Stamp(1, 0, "primary").encode()
        # A record no primary writes: an edit is always stamped. Its unstamped value would
        # win over our unstamped catalog value by the JSON tie-break, and change the event
        # with nothing republished for our POPs.
        forged = ChangeRecord(
            Position(shard.checkpoint.epoch, shard.checkpoint.seq + 1),
            "evt-1",
            EVENT_RECORD_VERSION,
            stamp,
            OP_EVENT,
            {field: "\uffff zzz", "artist": "Someone", STAMPS_KEY: {"artist": stamp}},
        )
        with pytest.raises(UpstreamError, match=field):
            await shard.apply_batch(ChangesDoc((forged,), forged.pos, forged.pos))
        assert await store.event("evt-1") == before
        assert (await store.feed_bounds()).head == own_head
        assert await event_records(store) == []


async def test_an_edit_after_the_clock_stepped_back_still_wins_over_the_stored_stamp(
    seeded: Store, ledger: Ledger, fake_time: FakeTime
) -> None:
    first = await edit_event(seeded, ledger, "evt-2", {"artist": "Before"}, START)
    # The primary restarts with its clock stepped back further than the HLC accepts a
    # stamp ahead of it (an NTP correction): the stored stamp is now "from the future".
    behind = FakeTime()
    behind.now = fake_time.now - 2 * MAX_CLOCK_OFFSET_MS / 1000
    restarted = Ledger(seeded, HybridClock("test", behind), behind, LIMITS)
    second = await edit_event(seeded, restarted, "evt-2", {"artist": "After"}, START)
    assert Stamp.decode(second.hlc) > Stamp.decode(first.hlc)
    assert second.patch.get("artist") == "After"  # not an empty patch: the edit was not dropped
    event = await seeded.event("evt-2")
    assert event is not None and event.artist == "After"
    assert event.metadata_stamps == {"artist": second.hlc}
