"""A bounded randomized soak: buyers through the primary and a shard while the shard crashes.

Buyers loop until the time bound: pick a random soak item with stock, hold
1–4 units (a seated block gives seats the origin picks) through the primary or
the shard at random (the shard forwards writes upstream), then either order
them or abandon the hold with a 1 s TTL so the primary's sweeper returns the
stock mid-run (the expiries). Halfway through, the caller SIGKILLs the shard
and restarts it on the same data directory and port; requests that meet the
dead shard fail and are counted, nothing else changes.

Afterwards the audit (hold_race.audit, per event, straight from the primary's
database) checks sold ≤ capacity, no seat sold twice, no sold seat still
offered, available + sold + held = capacity; the caller then compares the
shard's rows with the primary's (origin.replica.row_hash).
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp

SECOND: Final = 1.0
REQUEST_TIMEOUT: Final = 10 * SECOND
MAX_PARTY: Final = 4
ABANDON_TTL_SECONDS: Final = 1
# After a refused connection (the shard is down) wait a little instead of spinning.
ERROR_BACKOFF: Final = 0.05 * SECOND


@dataclass(frozen=True, slots=True)
class SoakConfig:
    buyers: int
    seconds: float
    abandon_share: float
    seed: int = 11


@dataclass
class SoakResult:
    elapsed: float = 0.0
    holds: collections.Counter[str] = field(default_factory=collections.Counter)  # by status, per origin
    orders: collections.Counter[str] = field(default_factory=collections.Counter)
    abandoned: int = 0
    order_ids: list[str] = field(default_factory=list)
    sold_out_at: float | None = None  # seconds into the soak when every item refused a hold of one


async def soak(urls: dict[str, str], items: list[dict[str, Any]], config: SoakConfig) -> SoakResult:
    """Run the buyers; `urls` names each entry point ("primary", "shard") by its base URL."""
    result = SoakResult()
    rng = random.Random(config.seed)
    open_items = {item["id"] for item in items}
    names = sorted(urls)
    started = time.monotonic()
    deadline = started + config.seconds
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)

    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def post(name: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            key = uuid.uuid4().hex
            try:
                async with session.post(f"{urls[name]}{path}", json=body, headers={"Idempotency-Key": key}) as resp:
                    return resp.status, await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError) as exc:
                return 0, {"error": type(exc).__name__}

        async def buyer(number: int) -> None:
            local = random.Random(rng.random())
            while time.monotonic() < deadline and open_items:
                name = local.choice(names)
                item_id = local.choice(sorted(open_items))
                qty = local.randint(1, MAX_PARTY)
                abandon = local.random() < config.abandon_share
                body: dict[str, Any] = {"item_id": item_id, "qty": qty, "user_id": f"soak-{number}"}
                if abandon:
                    body["ttl_seconds"] = ABANDON_TTL_SECONDS
                status, doc = await post(name, "/v1/holds", body)
                result.holds[f"{name} {status}"] += 1
                if status == 409 and qty == 1:
                    open_items.discard(item_id)
                    if not open_items and result.sold_out_at is None:
                        result.sold_out_at = time.monotonic() - started
                if status != 201:
                    if status == 0 or status >= 500:
                        await asyncio.sleep(ERROR_BACKOFF)
                    continue
                if abandon:
                    result.abandoned += 1
                    continue
                status, doc = await post(local.choice(names), "/v1/orders", {"hold_id": doc["hold"]["id"]})
                result.orders[f"{status}"] += 1
                if status == 201:
                    result.order_ids.append(doc["order"]["id"])

        async with asyncio.TaskGroup() as tasks:
            for number in range(config.buyers):
                tasks.create_task(buyer(number))
    result.elapsed = time.monotonic() - started
    return result
