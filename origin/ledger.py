"""The write path of the origin: holds, orders and hold expiry, on any Store.

Each operation is one transaction that locks what it changes, asks the pure
cores what to do (``origin.inventory``), writes the result, and appends change
records last (see ``origin.store.base`` for why last). Hold lifecycle:

    ====================  ==========  ===========================================
    from                  event       to
    ====================  ==========  ===========================================
    (none)                hold        active   — stock taken from the item
    active                order       ordered  — stock stays sold
    active                expiry      expired  — stock given back to the item
    active, past expiry   order       expired  — expired on the spot, then 410
    ordered / expired     order       unchanged, 409 / 410
    ====================  ==========  ===========================================

Writes may carry an Idempotency-Key: the first request's response is stored
in the same transaction as its effect, so a retry replays it and never buys
twice; the same key with a different body is refused (422).

Stock leased or escrowed to shards (origin.leasing) is read from the item's
lease book under the same row lock: a hold takes only units no shard holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from origin import inventory
from origin.changefeed import OP_UPSERT, item_patch
from origin.errors import (
    BadRequest,
    HoldExpired,
    HoldNotActive,
    IdempotencyKeyReused,
    NotFound,
)
from origin.hlc import HybridClock, Stamp
from origin.model import HOLD_ACTIVE, HOLD_EXPIRED, HOLD_ORDERED, Hold, Item, Order
from origin.store.base import Store, Transaction

# Identifiers arrive in JSON bodies and URLs; anything longer is not ours.
MAX_ID_LENGTH: Final = 128
# Stripe and the IETF draft (draft-ietf-httpapi-idempotency-key-header) use
# opaque keys; 255 characters fits a UUID with any prefix a client adds.
MAX_IDEMPOTENCY_KEY_LENGTH: Final = 255


@dataclass(frozen=True, slots=True)
class HoldRequest:
    item_id: str
    qty: int
    user_id: str
    seats: tuple[str, ...] | None
    ttl: timedelta | None


@dataclass(frozen=True, slots=True)
class WriteResult:
    status: int
    body: dict[str, Any]
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class LedgerLimits:
    hold_ttl: timedelta
    max_hold_ttl: timedelta
    max_qty_per_hold: int


def parse_hold_request(body: object, limits: LedgerLimits) -> HoldRequest:
    """Validate a `POST /v1/holds` body. Raises BadRequest naming the bad field."""
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    item_id = _identifier(body, "item_id")
    user_id = _identifier(body, "user_id")
    qty = body.get("qty")
    if type(qty) is not int or not 1 <= qty <= limits.max_qty_per_hold:
        raise BadRequest(f"qty must be an integer from 1 to {limits.max_qty_per_hold}")
    seats = body.get("seats")
    if seats is not None and (
        not isinstance(seats, list)
        or not all(isinstance(seat, str) and 0 < len(seat) <= MAX_ID_LENGTH for seat in seats)
    ):
        raise BadRequest("seats must be a list of seat labels")
    ttl_seconds = body.get("ttl_seconds")
    ttl = None
    if ttl_seconds is not None:
        max_seconds = int(limits.max_hold_ttl.total_seconds())
        if type(ttl_seconds) is not int or not 1 <= ttl_seconds <= max_seconds:
            raise BadRequest(f"ttl_seconds must be an integer from 1 to {max_seconds}")
        ttl = timedelta(seconds=ttl_seconds)
    unknown = set(body) - {"item_id", "user_id", "qty", "seats", "ttl_seconds"}
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    return HoldRequest(item_id, qty, user_id, None if seats is None else tuple(seats), ttl)


def parse_order_request(body: object) -> str:
    """Validate a `POST /v1/orders` body; returns the hold id."""
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    unknown = set(body) - {"hold_id"}
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    return _identifier(body, "hold_id")


def check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH or not key.isprintable():
        raise BadRequest(f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable characters")
    return key


class Ledger:
    def __init__(
        self,
        store: Store,
        clock: HybridClock,
        physical_time: Callable[[], float],
        limits: LedgerLimits,
    ) -> None:
        self._store = store
        self._clock = clock
        self._physical_time = physical_time
        self.limits = limits

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._physical_time(), UTC)

    @property
    def physical_time(self) -> Callable[[], float]:
        return self._physical_time

    async def place_hold(self, request: HoldRequest, idempotency_key: str | None) -> WriteResult:
        """Take stock for a hold. Raises NotFound, InsufficientStock, BadRequest, IdempotencyKeyReused."""
        now = self._now()
        fingerprint = request_fingerprint(dataclasses.asdict(request))
        async with self._store.transaction() as tx:
            if idempotency_key is not None:
                stored = await tx.claim_idempotency_key(f"holds:{idempotency_key}", fingerprint, now)
                if stored is not None:
                    return _replay(stored.fingerprint, fingerprint, stored.status, stored.body)
            item = await tx.item_for_update(request.item_id)
            if item is None:
                raise NotFound(f"no item {request.item_id}")
            _, allotments = await tx.lease_state(item.id)
            stamp = self.stamp_after(item.hlc)
            taken = inventory.take(
                item,
                request.qty,
                request.seats,
                hlc=stamp,
                now=now,
                allotted=sum(held.units for held in allotments),
                leased=bool(allotments),
            )
            hold = Hold(
                id=f"hld-{secrets.token_hex(8)}",
                item_id=item.id,
                event_id=item.event_id,
                user_id=request.user_id,
                qty=request.qty,
                seats=taken.seats,
                status=HOLD_ACTIVE,
                created_at=now,
                expires_at=now + (request.ttl or self.limits.hold_ttl),
            )
            await tx.put_hold(hold)
            result = WriteResult(201, {"hold": hold.to_document(), "item": taken.item.to_document()})
            if idempotency_key is not None:
                await tx.complete_idempotency_key(f"holds:{idempotency_key}", result.status, result.body)
            await self.write_item(tx, item, taken.item, now)
        return result

    async def place_order(self, hold_id: str, idempotency_key: str | None) -> WriteResult:
        """Turn an active hold into an order.

        Raises NotFound, HoldExpired (410), HoldNotActive (409), IdempotencyKeyReused.
        """
        now = self._now()
        fingerprint = request_fingerprint({"hold_id": hold_id})
        expired = False
        async with self._store.transaction() as tx:
            if idempotency_key is not None:
                stored = await tx.claim_idempotency_key(f"orders:{idempotency_key}", fingerprint, now)
                if stored is not None:
                    return _replay(stored.fingerprint, fingerprint, stored.status, stored.body)
            hold = await tx.hold_for_update(hold_id)
            if hold is None:
                raise NotFound(f"no hold {hold_id}")
            if hold.status == HOLD_ORDERED:
                raise HoldNotActive(f"hold {hold_id} was already ordered")
            if hold.status == HOLD_EXPIRED:
                raise HoldExpired(f"hold {hold_id} expired at {hold.to_document()['expires_at']}")
            if now >= hold.expires_at:
                # Expire it here and now, committing the returned stock, then answer 410.
                await self._expire(tx, hold, now)
                expired = True
                if idempotency_key is not None:
                    # The claim commits with the expiry: store the 410 so a retry replays it.
                    message = f"hold {hold_id} expired at {hold.to_document()['expires_at']}"
                    error = {"error": {"status": HoldExpired.status, "code": HoldExpired.code, "message": message}}
                    await tx.complete_idempotency_key(f"orders:{idempotency_key}", HoldExpired.status, error)
            else:
                item = await tx.item_for_update(hold.item_id)
                if item is None:
                    raise NotFound(f"hold {hold_id} names a missing item {hold.item_id}")
                order = Order(
                    id=f"ord-{secrets.token_hex(8)}",
                    hold_id=hold.id,
                    item_id=hold.item_id,
                    event_id=hold.event_id,
                    user_id=hold.user_id,
                    qty=hold.qty,
                    seats=hold.seats,
                    total=item.price * hold.qty,
                    currency=item.currency,
                    created_at=now,
                )
                await tx.put_hold(dataclasses.replace(hold, status=HOLD_ORDERED))
                await tx.put_order(order)
                result = WriteResult(201, {"order": order.to_document()})
                if idempotency_key is not None:
                    await tx.complete_idempotency_key(f"orders:{idempotency_key}", result.status, result.body)
        if expired:
            raise HoldExpired(f"hold {hold_id} expired at {hold.to_document()['expires_at']}")
        return result

    async def expire_due_holds(self, limit: int) -> int:
        """Expire up to `limit` holds past their expiry, one transaction each; returns how many."""
        now = self._now()
        expired = 0
        for hold_id in await self._store.due_holds(now, limit):
            async with self._store.transaction() as tx:
                hold = await tx.hold_for_update(hold_id)
                # Re-checked under the lock: an order may have won the race.
                if hold is not None and hold.status == HOLD_ACTIVE and hold.expires_at <= now:
                    await self._expire(tx, hold, now)
                    expired += 1
        return expired

    async def _expire(self, tx: Transaction, hold: Hold, now: datetime) -> None:
        await tx.put_hold(dataclasses.replace(hold, status=HOLD_EXPIRED))
        item = await tx.item_for_update(hold.item_id)
        if item is None:
            return
        returned = inventory.give_back(item, hold.qty, hold.seats, hlc=self.stamp_after(item.hlc), now=now)
        await self.write_item(tx, item, returned, now)

    def stamp_after(self, previous: str) -> str:
        """A stamp above our clock and the item's stored stamp.

        A restarted origin's clock starts again from its physical time, which
        may be behind the stamps it (or another node) wrote before.
        """
        stamp = self._clock.now()
        with contextlib.suppress(ValueError):  # an undecodable stamp, or ClockSkewError
            prior = Stamp.decode(previous)
            if (prior.wall_ms, prior.logical) >= (stamp.wall_ms, stamp.logical):
                stamp = self._clock.observe(prior)
        return stamp.encode()

    async def write_item(self, tx: Transaction, old: Item, new: Item, now: datetime) -> None:
        """Write `new` over `old` and append its change record (call it last in the transaction)."""
        await tx.put_item(new)
        patch = item_patch(old.to_document(), new.to_document())
        await tx.append_change(new.id, new.version, new.hlc, OP_UPSERT, patch, now)


def _identifier(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH:
        raise BadRequest(f"{field} must be a string of 1 to {MAX_ID_LENGTH} characters")
    return value


def request_fingerprint(fields: Mapping[str, Any]) -> str:
    """A digest of a request's fields, stored with its Idempotency-Key to spot a reused key."""
    canonical = json.dumps(fields, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(stored: str, fingerprint: str, status: int, body: dict[str, Any]) -> WriteResult:
    if stored != fingerprint:
        raise IdempotencyKeyReused("this Idempotency-Key was used with a different request")
    if status == HoldExpired.status:
        raise HoldExpired(str(body.get("error", {}).get("message", "hold expired")))
    return WriteResult(status, body, replayed=True)
