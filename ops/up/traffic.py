"""`boxoffice up --traffic`: synthetic users browsing and buying through the POPs, at a bounded rate.

Each step is one user action through a random POP of the stack, in the
proportions of a ticketing funnel: mostly item reads of popular events
(Zipf-weighted by the rank of the event in its region's listing, so the
caches see a skewed key space), some event pages, and a few holds of one
unit, half of which are turned into orders. Steps start at ``rate`` per
second whatever their latency (an open-loop generator, like real users) with
at most :data:`MAX_IN_FLIGHT` outstanding; beyond that a step is skipped and
counted, so a slow stack is measured, not queued up without bound.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import aiohttp

from ops.up.plan import ServiceSpec

MAX_IN_FLIGHT: Final = 32
REQUEST_TIMEOUT: Final = 10.0  # the POP's own request_timeout: past it the POP answers 504 itself
EVENTS_PER_REGION: Final = 50  # the head of each region's listing: where the demand is
ZIPF_EXPONENT: Final = 0.8  # the demo catalog's popularity skew
HOLD_SHARE: Final = 0.03
ORDER_SHARE: Final = 0.5  # of successful holds
EVENT_PAGE_SHARE: Final = 0.2
REPORT_EVERY: Final = 10.0  # seconds between progress lines


@dataclass(slots=True)
class TrafficCounts:
    requests: int = 0
    errors: int = 0  # 5xx, no answer, or a 2xx answer not of the API's shape
    sold_out: int = 0  # 409 on a hold: expected under load, not an error
    holds: int = 0
    orders: int = 0
    skipped: int = 0  # steps not started: MAX_IN_FLIGHT outstanding

    def line(self) -> str:
        share = 100.0 * self.errors / self.requests if self.requests else 0.0
        return (f"traffic: {self.requests} requests, {self.errors} errors ({share:.1f}%), {self.holds} holds, "
                f"{self.orders} orders, {self.sold_out} sold out, {self.skipped} skipped")  # fmt: skip


class Traffic:
    def __init__(
        self, session: aiohttp.ClientSession, pops: Sequence[ServiceSpec], rate: float, rng: random.Random
    ) -> None:
        self._session = session
        self._pops = list(pops)
        self._rate = rate
        self._rng = rng
        self._events: dict[str, list[str]] = {}  # region → event ids, most popular first
        self._in_flight = 0
        self.counts = TrafficCounts()

    async def run(self, say: Callable[[str], None]) -> None:
        """Drive users until cancelled, printing a progress line every REPORT_EVERY seconds."""
        loop = asyncio.get_running_loop()
        next_report = loop.time() + REPORT_EVERY
        async with asyncio.TaskGroup() as group:
            while True:
                await asyncio.sleep(1.0 / self._rate)
                if self._in_flight >= MAX_IN_FLIGHT:
                    self.counts.skipped += 1
                else:
                    self._in_flight += 1
                    group.create_task(self._step())
                if loop.time() >= next_report:
                    say(f"  {self.counts.line()}")
                    next_report = loop.time() + REPORT_EVERY

    async def _step(self) -> None:
        try:
            pop = self._rng.choice(self._pops)
            events = await self._region_events(pop)
            if not events:
                return
            weights = [1.0 / (rank + 1) ** ZIPF_EXPONENT for rank in range(len(events))]
            event_id = self._rng.choices(events, weights)[0]
            page = await self._call("GET", f"{pop.url}/v1/events/{quote(event_id, safe='')}")
            items = self._ids(page, "items")
            if not items or self._rng.random() < EVENT_PAGE_SHARE:
                return
            item_id = self._rng.choice(items)
            await self._call("GET", f"{pop.url}/v1/items/{quote(item_id, safe='')}")
            if self._rng.random() < HOLD_SHARE:
                await self._buy(pop, item_id)
        finally:
            self._in_flight -= 1

    async def _buy(self, pop: ServiceSpec, item_id: str) -> None:
        user = f"synthetic-{self._rng.randrange(1_000_000)}"
        hold = await self._call("POST", f"{pop.url}/v1/holds", {"item_id": item_id, "qty": 1, "user_id": user,
                                                                 "ttl_seconds": 60})  # fmt: skip
        record = None if hold is None else hold.get("hold")  # 201: {"hold": {...}, "item": {...}}
        hold_id = record.get("id") if isinstance(record, dict) else None
        if not isinstance(hold_id, str):
            if hold is not None:  # a 2xx that is not a hold: the POP broke the contract
                self.counts.errors += 1
            return
        self.counts.holds += 1
        if self._rng.random() < ORDER_SHARE:
            order = await self._call("POST", f"{pop.url}/v1/orders", {"hold_id": hold_id})
            if order is not None and "order" in order:
                self.counts.orders += 1

    async def _region_events(self, pop: ServiceSpec) -> list[str]:
        if pop.region not in self._events:
            listing = await self._call("GET", f"{pop.url}/v1/events?region={pop.region}&limit={EVENTS_PER_REGION}")
            events = self._ids(listing, "events")
            if events:
                self._events[pop.region] = events
            return events
        return self._events[pop.region]

    def _ids(self, document: dict[str, Any] | None, key: str) -> list[str]:
        """The string `id`s of the objects listed under `key` of a POP's answer (None: no answer, no ids).

        A POP's answer is data from the network: one of another shape counts as an error, never raises
        (an exception here would end the traffic task, and with it `up`'s task group).
        """
        entries = [] if document is None else document.get(key, [])
        if not isinstance(entries, list):
            self.counts.errors += 1
            return []
        ids = [entry.get("id") for entry in entries if isinstance(entry, dict)]
        valid = [identifier for identifier in ids if isinstance(identifier, str)]
        if len(valid) != len(entries):
            self.counts.errors += 1
        return valid

    async def _call(self, method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """One request; returns the JSON object on 2xx, None otherwise (counted)."""
        self.counts.requests += 1
        try:
            timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
            data = None if body is None else json.dumps(body)
            headers = {"Content-Type": "application/json"} if body is not None else {}
            async with self._session.request(method, url, data=data, headers=headers, timeout=timeout) as response:
                payload = await response.read()
                if response.status == 409:
                    self.counts.sold_out += 1
                    return None
                if response.status >= 500:
                    self.counts.errors += 1
                    return None
                if response.status >= 300:
                    return None
                document = json.loads(payload)
                return document if isinstance(document, dict) else None
        except (aiohttp.ClientError, TimeoutError, ValueError):
            self.counts.errors += 1
            return None
