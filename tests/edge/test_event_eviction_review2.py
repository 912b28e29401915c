"""Review of the POP's eviction on event records (edits of an event's metadata): listings it must not keep.

A real POP on loopback in front of a scripted loopback upstream
(tests/support/edgepop.py); the change-feed callbacks are called as a
follower would call them.
"""

from __future__ import annotations

import asyncio

import aiohttp

from tests.support.edgepop import MakePop, Reply, Scripted, cacheable, fetch, until

LISTING = "/v1/events?region=eu-west"
STAMP = "0001764000000000-00000-primary"
EVENT_PATCH: dict[str, object] = {"name": "Renamed", "metadata_stamps": {"name": STAMP}}


async def test_a_listing_fetched_before_an_event_record_is_not_stored_after_it(
    upstream: Scripted, make_pop: MakePop, client: aiohttp.ClientSession
) -> None:
    gate = asyncio.Event()
    upstream.routes["/v1/events"] = Reply(
        headers=cacheable(), body=b'{"events":[{"id":"evt-1","name":"Old"}]}', gate=gate
    )
    running = await make_pop([upstream.url])
    pending = asyncio.create_task(fetch(client, running, LISTING))
    try:
        await until(lambda: upstream.counts[LISTING] == 1, "the listing's fetch reached the upstream")
        # The edit commits and its record arrives while the pre-edit listing is in flight.
        running.pop.on_item_changed("evt-1", 1, EVENT_PATCH)
        gate.set()
        first = await pending
    finally:
        gate.set()
        await asyncio.gather(pending, return_exceptions=True)
    assert first.status == 200
    again = await fetch(client, running, LISTING)
    assert again.x_cache == "MISS"  # the pre-edit listing was not kept
    assert upstream.counts[LISTING] == 2


async def test_a_feed_reset_evicts_cached_listings_too(
    upstream: Scripted, make_pop: MakePop, client: aiohttp.ClientSession
) -> None:
    upstream.routes["/v1/events"] = Reply(headers=cacheable(), body=b'{"events":[]}')
    running = await make_pop([upstream.url])
    assert (await fetch(client, running, LISTING)).x_cache == "MISS"
    assert (await fetch(client, running, LISTING)).x_cache == "HIT"
    # Records were missed: event records among them may have edited what the listing shows.
    running.pop.on_feed_reset("test")
    assert (await fetch(client, running, LISTING)).x_cache == "MISS"
    assert upstream.counts[LISTING] == 2
