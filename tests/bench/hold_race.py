"""Benchmark 2: many buyers race for one hot event; then an audit proves nothing was oversold.

Each buyer loops: pick an item of the event that is not known sold out, hold
1–4 units (`POST /v1/holds`), then order them (`POST /v1/orders`). A share of
buyers abandon their hold with a short TTL, so the origin's sweeper returns
stock while the race runs and the change feed gets expiry records too. A 409
on a hold of one unit marks the item sold out for every buyer; the race ends
when all items are, or at the time bound.

The audit reads every order and hold straight from the database (an order
whose 201 was lost is still an order) and checks, per item: units sold never
exceed capacity, no seat is sold twice, no sold seat is still offered, and
available + sold + still-held = capacity once the abandoned holds expired.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import random
import time
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
from origin_cluster import Database, LedgerRows, read_ledger

SECOND: Final = 1.0
REQUEST_TIMEOUT: Final = 10 * SECOND
# The origin's default max_qty_per_hold is 8; parties of 1–4 are the common case.
MAX_PARTY: Final = 4
# Attempts per buyer, so a loop that never sells out (all requests 503) still ends.
MAX_ATTEMPTS_PER_BUYER: Final = 5_000
# After an unexpected status, back off briefly instead of spinning on a failing origin.
ERROR_BACKOFF: Final = 0.05 * SECOND
# The sweeper runs every second (hold_sweep_interval); give it a few passes.
EXPIRY_GRACE: Final = 5 * SECOND
EXPIRY_POLL: Final = 0.25 * SECOND
EVENTS_PAGE: Final = 1_000
MAX_EVENT_PAGES: Final = 20


@dataclass(frozen=True, slots=True)
class RaceConfig:
    buyers: int
    time_bound: float  # seconds
    abandon_share: float  # fraction of holds left to expire
    abandon_ttl_seconds: int
    seed: int = 7


@dataclass(frozen=True, slots=True)
class HotEvent:
    event_id: str
    popularity: float
    items: tuple[dict[str, Any], ...]  # item documents as served before the race

    @property
    def capacity(self) -> int:
        return sum(int(item["capacity"]) for item in self.items)


@dataclass
class RaceResult:
    elapsed: float = 0.0
    sold_out: bool = False
    holds_created: int = 0
    holds_abandoned: int = 0
    holds_refused: int = 0  # 409: not enough stock
    orders_created: int = 0
    orders_refused: int = 0  # 409/410: already ordered or expired
    unexpected: collections.Counter[str] = field(default_factory=collections.Counter)
    hold_latencies: list[float] = field(default_factory=list)
    order_latencies: list[float] = field(default_factory=list)
    order_ids: list[str] = field(default_factory=list)

    @property
    def writes_per_second(self) -> float:
        return (self.holds_created + self.orders_created) / self.elapsed if self.elapsed else 0.0

    @property
    def attempts_per_second(self) -> float:
        attempts = self.holds_created + self.holds_refused + self.orders_created + self.orders_refused
        attempts += sum(self.unexpected.values())
        return attempts / self.elapsed if self.elapsed else 0.0


@dataclass(frozen=True, slots=True)
class Audit:
    orders: int
    units_sold: int
    capacity: int
    oversold_units: int  # units sold beyond an item's capacity
    seats_sold_twice: int
    sold_seats_still_offered: int
    accounting_mismatches: tuple[str, ...]  # items where available + sold + held != capacity
    client_orders_missing: int  # 201s the client saw that the database does not hold
    active_holds_left: int

    @property
    def oversold(self) -> int:
        return self.oversold_units + self.seats_sold_twice + self.sold_seats_still_offered

    @property
    def clean(self) -> bool:
        return self.oversold == 0 and not self.accounting_mismatches and self.client_orders_missing == 0


async def choose_hot_event(
    session: aiohttp.ClientSession, base_url: str, items: list[dict[str, Any]], low: int, high: int
) -> HotEvent:
    """The most popular event with seated and GA items and a total capacity in [low, high]."""
    by_event: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for item in items:
        by_event[item["event_id"]].append(item)
    events: list[dict[str, Any]] = []
    after: str | None = None
    for _ in range(MAX_EVENT_PAGES):
        params = {"limit": str(EVENTS_PAGE)} | ({"after": after} if after else {})
        async with session.get(f"{base_url}/v1/events", params=params) as response:
            response.raise_for_status()
            page = await response.json()
        events.extend(page["events"])
        after = page["next_after"]
        if after is None:
            break

    def fits(event: dict[str, Any]) -> bool:
        event_items = by_event.get(event["id"], [])
        kinds = {item["kind"] for item in event_items}
        return len(kinds) == 2 and low <= sum(int(item["capacity"]) for item in event_items) <= high

    candidates = sorted((event for event in events if fits(event)), key=lambda event: -float(event["popularity"]))
    if not candidates:
        raise RuntimeError(f"no event with seated and GA items and a capacity of {low}–{high}")
    hot = candidates[0]
    return HotEvent(hot["id"], float(hot["popularity"]), tuple(sorted(by_event[hot["id"]], key=lambda i: i["id"])))


async def race(base_urls: list[str], event: HotEvent, config: RaceConfig) -> RaceResult:
    """Run the buyers (buyer i talks to base_urls[i % len]) until sold out or the time bound."""
    result = RaceResult()
    open_items = [item["id"] for item in event.items]
    sold_out: set[str] = set()
    keys = itertools.count(1)
    rng = random.Random(config.seed)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    connector = aiohttp.TCPConnector(limit=config.buyers)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def post(url: str, body: dict[str, Any], key: str) -> tuple[int, dict[str, Any], float]:
            started = time.perf_counter()
            try:
                async with session.post(url, json=body, headers={"Idempotency-Key": key}) as response:
                    doc: dict[str, Any] = await response.json(content_type=None)
                    return response.status, doc, time.perf_counter() - started
            except (aiohttp.ClientError, TimeoutError) as exc:
                return 0, {"error": type(exc).__name__}, time.perf_counter() - started

        async def buyer(number: int, deadline: float) -> None:
            base = base_urls[number % len(base_urls)]
            retry_single: str | None = None
            for _ in range(MAX_ATTEMPTS_PER_BUYER):
                candidates = [item for item in open_items if item not in sold_out]
                if not candidates or time.monotonic() >= deadline:
                    return
                if retry_single is not None and retry_single in candidates:
                    item_id, qty = retry_single, 1
                else:
                    item_id, qty = rng.choice(candidates), rng.randint(1, MAX_PARTY)
                retry_single = None
                abandon = rng.random() < config.abandon_share
                body: dict[str, Any] = {"item_id": item_id, "qty": qty, "user_id": f"buyer-{number}"}
                if abandon:
                    body["ttl_seconds"] = config.abandon_ttl_seconds
                status, doc, latency = await post(f"{base}/v1/holds", body, f"bench-hold-{next(keys)}")
                result.hold_latencies.append(latency)
                if status == 409:
                    result.holds_refused += 1
                    if qty == 1:
                        sold_out.add(item_id)
                    else:
                        retry_single = item_id  # maybe fewer units are left
                    continue
                if status != 201:
                    result.unexpected[f"hold {status}"] += 1
                    await asyncio.sleep(ERROR_BACKOFF)
                    continue
                result.holds_created += 1
                if abandon:
                    result.holds_abandoned += 1
                    continue
                order_body = {"hold_id": doc["hold"]["id"]}
                status, doc, latency = await post(f"{base}/v1/orders", order_body, f"bench-order-{next(keys)}")
                result.order_latencies.append(latency)
                if status == 201:
                    result.orders_created += 1
                    result.order_ids.append(doc["order"]["id"])
                elif status in (409, 410):
                    result.orders_refused += 1
                else:
                    result.unexpected[f"order {status}"] += 1
                    await asyncio.sleep(ERROR_BACKOFF)

        started = time.monotonic()
        async with asyncio.TaskGroup() as group:
            for number in range(config.buyers):
                group.create_task(buyer(number, started + config.time_bound))
        result.elapsed = time.monotonic() - started
    result.sold_out = len(sold_out) == len(open_items)
    return result


async def settle_and_audit(database: Database, event: HotEvent, result: RaceResult) -> Audit:
    """Wait (bounded) for abandoned holds to expire, then audit the database."""
    deadline = time.monotonic() + EXPIRY_GRACE
    rows = await read_ledger(database, event.event_id)
    while _active_holds(rows, event) and time.monotonic() < deadline:
        await asyncio.sleep(EXPIRY_POLL)
        rows = await read_ledger(database, event.event_id)
    return audit(rows, event, result.order_ids)


def _active_holds(rows: LedgerRows, event: HotEvent) -> int:
    return sum(1 for hold in rows.holds if hold["event_id"] == event.event_id and hold["status"] == "active")


def audit(rows: LedgerRows, event: HotEvent, client_order_ids: list[str]) -> Audit:
    """Check the stored orders, holds and items of `event` against each other."""
    items = {item["id"]: item for item in rows.items}
    sold: collections.Counter[str] = collections.Counter()
    seat_sales: collections.Counter[tuple[str, str]] = collections.Counter()
    orders = [order for order in rows.orders if order["event_id"] == event.event_id]
    for order in orders:
        sold[order["item_id"]] += int(order["qty"])
        seat_sales.update((order["item_id"], seat) for seat in order["seats"])
    held: collections.Counter[str] = collections.Counter()
    for hold in rows.holds:
        if hold["event_id"] == event.event_id and hold["status"] == "active":
            held[hold["item_id"]] += int(hold["qty"])
    oversold_units = 0
    still_offered = 0
    mismatches: list[str] = []
    for item_id, item in items.items():
        capacity = int(item["capacity"])
        oversold_units += max(0, sold[item_id] - capacity)
        offered = set(item["available_seats"])
        still_offered += sum(1 for (owner, seat) in seat_sales if owner == item_id and seat in offered)
        if int(item["available"]) + sold[item_id] + held[item_id] != capacity:
            mismatches.append(
                f"{item_id}: available {item['available']} + sold {sold[item_id]} + held {held[item_id]}"
                f" != capacity {capacity}"
            )
    stored_ids = {order["id"] for order in rows.orders}
    return Audit(
        orders=len(orders),
        units_sold=sum(sold.values()),
        capacity=sum(int(item["capacity"]) for item in items.values()),
        oversold_units=oversold_units,
        seats_sold_twice=sum(count - 1 for count in seat_sales.values() if count > 1),
        sold_seats_still_offered=still_offered,
        accounting_mismatches=tuple(mismatches),
        client_orders_missing=sum(1 for order_id in client_order_ids if order_id not in stored_ids),
        active_holds_left=_active_holds(rows, event),
    )
