"""The shard's side of leases: an Escrow per leased item, local holds, fenced sale reports, the lease loop.

The decisions are :mod:`origin.escrow`'s; this adapter performs them:

* ``POST /v1/holds`` for an item this shard holds stock of, while its escrow
  is SELLING and has the units (or seats), is answered here with a local hold
  (``escrow.take_hold``): no request reaches the origin. Anything else
  (``NotOwner``) is forwarded upstream unchanged (``origin.shard.forward_write``).
* An ``Idempotency-Key`` on a hold follows the primary's rules
  (origin.ledger): a retry of the same request replays the first answer
  (same hold, ``Idempotent-Replayed: true``), the same key with another
  request is 422. The keys live in this process only, bounded in number
  (``MAX_REMEMBERED_HOLD_KEYS``) and age (``idempotency_retention``): a
  restart forgets them, as it forgets the local holds they name. A key first
  forwarded to the owner is remembered as the owner's, so its retries are
  forwarded too (the owner replays them) even once this shard holds stock.
* ``POST /v1/orders`` for a local hold sends a **sale report** to the origin
  (``POST /v1/leases/{item}/sales``), retried with the same report id when
  the answer is lost, and answers 201 only once the origin accepted it. A
  refusal is 409 with the origin's code (``stale_epoch``, ``lease_lapsed``,
  ``insufficient_stock``); a report nobody answered is 502, and the buyer's
  retry of the order resends the same report.
* Local holds and pending reports are **volatile**, as escrow.py's contract
  says: a crash loses them (a brief undersell), and on start :meth:`restart`
  asks the origin what this shard still holds (``GET /v1/leases``), returns
  each allotment whole — fencing every report of the past life — and the loop
  then asks for fresh grants.
* A **clean shutdown** (SIGTERM, after the loop stopped and requests drained)
  ends every local hold and returns each allotment whole
  (:meth:`ShardSales.return_all`, bounded by the shutdown timeout), so the
  origin sells that stock at once instead of after expiry plus margin.
* The loop (:meth:`ShardSales.run`, every ``lease_tick``) expires holds,
  returns what ``return_request`` says (everything when CLOSING), renews
  before expiry, refills GA allotments below the low watermark, and asks for
  a grant for every wanted item it holds nothing of.

Which items: ``lease_items`` from the settings, plus any an operator asks for
with ``POST /v1/leases/request {"item_id", "units"?}`` (bearer shard token).
The kind of an item (seated block or GA pool) comes from the shard's own copy
of it, so a wanted item is asked for once its event is mirrored here.

Every network wait is bounded by ``upstream_timeout``; the escrow of an item
is only changed in synchronous sections (no await between reading and
writing it), so the loop and the request handlers never lose each other's updates.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import quote

import aiohttp
from aiohttp import web

from origin import escrow as core
from origin.errors import BadRequest, HoldExpired, IdempotencyKeyReused, NotFound, OriginError
from origin.escrow import Escrow, EscrowPolicy, LocalPhase, NotOwner, ReturnRequest, SaleReport, Verdict
from origin.httpio import _json_body
from origin.lease import LeaseHeld, LeaseRefused, StaleEpoch
from origin.leaseclient import JSON_TYPE, REFUSALS, LeaseClient, error_code, error_message, parse_lease
from origin.ledger import MAX_ID_LENGTH, HoldRequest, LedgerLimits, request_fingerprint
from origin.metadata import Unauthorized
from origin.metadata_edits import bearer_matches
from origin.model import GENERAL_ADMISSION, HOLD_ACTIVE, format_time
from origin.settings import OriginSettings
from origin.shard import UpstreamError
from origin.store.base import Store

log = logging.getLogger("boxoffice.shardsales")

# A sale report is sent this many times (same report id) before the order
# answers 502: three timeouts in a row means the origin is unreachable.
REPORT_ATTEMPTS: Final = 3
# Orders this shard confirmed, remembered so a repeated POST /v1/orders for the
# same hold replays its order; bounded, oldest forgotten first.
MAX_REMEMBERED_ORDERS: Final = 10_000
# Sale reports sent and not answered yet, kept so a retried order resends its
# report after the lease closed; bounded like the orders, oldest forgotten first.
MAX_UNANSWERED_REPORTS: Final = 10_000
# Idempotency-Keys of holds, remembered so a retried hold replays its answer.
# A local hold lives at most max_hold_ttl (30 min); 20,000 keys of ~1 KiB
# answers (~20 MiB) cover ~11 keyed holds a second over that time. Past the
# bound the oldest key is forgotten first (its retry makes a second hold,
# which only undersells until it expires).
MAX_REMEMBERED_HOLD_KEYS: Final = 20_000
# Backoff between failed restarts (the origin is down when a shard starts).
RESTART_BACKOFF_CAP: Final = 10.0
RESTART_MAX_DOUBLINGS: Final = 32


@dataclass(frozen=True, slots=True)
class KeyedHold:
    """What a hold's Idempotency-Key was first used for."""

    fingerprint: str  # of the request, as origin.ledger computes it: same key, other request → 422
    stored_at: float  # wall-clock seconds, for idempotency_retention
    body: dict[str, Any] | None  # the local hold's answer; None: the owner took it (forwarded)


@dataclass(frozen=True, slots=True)
class HoldInfo:
    """What a local hold's document needs beyond escrow.LocalHold."""

    item_id: str
    event_id: str
    user_id: str
    created_at: datetime


def escrow_policy(settings: OriginSettings) -> EscrowPolicy:
    return EscrowPolicy(
        safety_margin=timedelta(seconds=settings.lease_safety_margin),
        renew_before=timedelta(seconds=settings.lease_renew_before),
        low_watermark=settings.lease_low_watermark,
        refill_units=settings.lease_refill_units,
        high_watermark=settings.lease_high_watermark,
    )


@dataclass
class ShardSales:
    """The shard's escrows and local holds. :meth:`run` is its only long-running task."""

    settings: OriginSettings
    store: Store
    session: aiohttp.ClientSession
    wall_clock: Callable[[], float] = time.time
    escrows: dict[str, Escrow] = field(default_factory=dict)
    wanted: dict[str, int | None] = field(default_factory=dict)  # item → GA units to ask (None: lease_units)
    restarted: bool = False
    last_error: str | None = None
    _holds: dict[str, HoldInfo] = field(default_factory=dict)
    _orders: dict[str, dict[str, Any]] = field(default_factory=dict)  # hold id → confirmed order document
    # hold id → its sale report, from sending until a verdict arrives: the
    # buyer's retry resends it even after the lease (and the hold) ended.
    _unanswered: dict[str, tuple[SaleReport, HoldInfo]] = field(default_factory=dict)
    _events: dict[str, str] = field(default_factory=dict)  # item → event id, from grants
    hold_keys_kept: int = MAX_REMEMBERED_HOLD_KEYS
    # Idempotency-Key → its first use, oldest first (insertion order is time order).
    _hold_keys: dict[str, KeyedHold] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.shard_id = self.settings.shard_id or self.settings.region
        self.policy = escrow_policy(self.settings)
        self.limits: LedgerLimits = self.settings.ledger_limits()
        self.client = LeaseClient(
            self.session, self.settings.upstream, self.settings.shard_token, self.settings.upstream_timeout
        )
        for item_id in self.settings.lease_items:
            self.wanted.setdefault(item_id, None)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.wall_clock(), UTC)

    # Local holds and orders ------------------------------------------------------
    def place_hold(self, request: HoldRequest) -> dict[str, Any] | None:
        """A local hold's answer body, or None when the owner must take it (forward the request).

        Raises InsufficientStock when this shard leases the whole block and the
        seats are not free, BadRequest for a request the item can never serve.
        """
        current = self.escrows.get(request.item_id)
        if current is None:
            return None
        now = self.now()
        current = core.expire_holds(current, now, self.policy)
        self.escrows[request.item_id] = current
        hold_id = f"hld-{self.shard_id}-{secrets.token_hex(8)}"
        ttl = request.ttl or self.limits.hold_ttl
        try:
            taken = core.take_hold(current, hold_id, request.qty, request.seats, now, ttl, self.policy)
        except NotOwner:
            return None
        self.escrows[request.item_id] = taken
        info = HoldInfo(request.item_id, self._events.get(request.item_id, ""), request.user_id, now)
        self._holds[hold_id] = info
        return {"hold": self._hold_document(hold_id, info), "shard_id": self.shard_id}

    def hold_with_key(self, request: HoldRequest, key: str | None) -> tuple[dict[str, Any], bool] | None:
        """(201 body, replayed) of a local hold, or None when the owner must take it (forward the request).

        With an Idempotency-Key, as on the primary: a retry of the same request
        replays the first answer; a key first forwarded stays the owner's (None
        again, and the owner replays). A refusal is not remembered, so the key
        stays usable. Raises IdempotencyKeyReused (422) for the same key with
        another request, and what :meth:`place_hold` raises.
        """
        if key is None:
            body = self.place_hold(request)
            return None if body is None else (body, False)
        self._forget_old_keys()
        fingerprint = request_fingerprint(dataclasses.asdict(request))
        known = self._hold_keys.get(key)
        if known is not None:
            if known.fingerprint != fingerprint:
                raise IdempotencyKeyReused("this Idempotency-Key was used with a different request")
            return None if known.body is None else (known.body, True)
        body = self.place_hold(request)  # no await from the lookup to here: a concurrent duplicate finds it
        self._hold_keys[key] = KeyedHold(fingerprint, self.wall_clock(), body)
        while len(self._hold_keys) > self.hold_keys_kept:
            del self._hold_keys[next(iter(self._hold_keys))]
        return None if body is None else (body, False)

    def _forget_old_keys(self) -> None:
        oldest_kept = self.wall_clock() - self.settings.idempotency_retention
        while self._hold_keys:
            first = next(iter(self._hold_keys))
            if self._hold_keys[first].stored_at >= oldest_kept:
                return
            del self._hold_keys[first]

    def hold_document(self, hold_id: str) -> dict[str, Any] | None:
        """A live local hold's document, or None when this shard does not hold it."""
        info = self._holds.get(hold_id)
        if info is None:
            return None
        return self._hold_document(hold_id, info)

    def _hold_document(self, hold_id: str, info: HoldInfo) -> dict[str, Any] | None:
        current = self.escrows.get(info.item_id)
        held = None if current is None else current.hold(hold_id)
        if held is None:
            return None
        return {
            "id": held.id,
            "item_id": info.item_id,
            "event_id": info.event_id,
            "user_id": info.user_id,
            "qty": held.qty,
            "seats": list(held.seats),
            "status": HOLD_ACTIVE,
            "created_at": format_time(info.created_at),
            "expires_at": format_time(held.expires_at),
        }

    async def place_order(self, hold_id: str) -> tuple[dict[str, Any], bool] | None:
        """(201 body, replayed) for a local hold once the origin accepted its sale; None: not ours, forward.

        Raises HoldExpired (410) for a hold that ended, LeaseLapsed / StaleEpoch /
        InsufficientStock (409) when the lease is closing or the origin refused,
        UpstreamError (502) when no verdict came back (retrying resends the same report).
        """
        if hold_id in self._orders:
            return {"order": self._orders[hold_id]}, True
        info = self._holds.get(hold_id)
        unanswered = self._unanswered.get(hold_id)
        current = None if info is None else self.escrows.get(info.item_id)
        if unanswered is not None and (current is None or current.hold(hold_id) is None):
            # Its report went out and no verdict came back, and the lease has
            # since closed: the origin may have sold it. Resend the same report;
            # the origin answers with the verdict it stored (or refuses it now).
            report, info = unanswered
        elif info is None:
            return None
        elif current is None or current.hold(hold_id) is None:
            self._holds.pop(hold_id, None)
            raise HoldExpired(f"hold {hold_id} ended: it expired, or this shard's lease on {info.item_id} ended")
        else:
            current, report = core.sale_request(current, hold_id, self.now(), self.policy)
            self.escrows[info.item_id] = current
            self._remember_unanswered(hold_id, report, info)
        status, doc = await self._send_report(report, info)
        self._unanswered.pop(hold_id, None)
        code = "accepted" if status == 201 else error_code(doc)
        verdict = Verdict(report.sale_id, report.epoch, status == 201, code)
        latest = self.escrows.get(info.item_id)
        if latest is not None:
            self.escrows[info.item_id] = core.on_verdict(latest, verdict)
        self._holds.pop(hold_id, None)
        if verdict.accepted:
            order = doc.get("order")
            if not isinstance(order, dict):
                raise UpstreamError(f"the origin accepted sale {hold_id} without an order document")
            self._remember(hold_id, order)
            return {"order": order}, False
        refusal = REFUSALS.get(code, LeaseRefused)
        raise refusal(f"the origin refused the sale of hold {hold_id}: {error_message(doc)}")

    async def _send_report(self, report: SaleReport, info: HoldInfo) -> tuple[int, dict[str, Any]]:
        body = {
            "shard_id": report.shard,
            "epoch": report.epoch,
            "report_id": report.sale_id,
            "hold_id": report.sale_id,
            "qty": report.qty,
            "seats": list(report.seats),
            "written_at": format_time(report.written_at),
            "user_id": info.user_id,
        }
        path = f"/v1/leases/{quote(report.item_id, safe='')}/sales"
        failure: OriginError | None = None
        for _ in range(REPORT_ATTEMPTS):
            try:
                status, doc = await self.client.call("POST", path, body)
            except UpstreamError as exc:
                failure = exc
                continue
            if status in (201, 409):
                return status, doc
            raise UpstreamError(f"the origin answered {status} to sale report {report.sale_id}: {error_message(doc)}")
        raise UpstreamError(
            f"sale report {report.sale_id} got no verdict after {REPORT_ATTEMPTS} tries ({failure}); "
            "the order's outcome is unknown: retry it"
        )

    def _remember_unanswered(self, hold_id: str, report: SaleReport, info: HoldInfo) -> None:
        self._unanswered[hold_id] = (report, info)
        while len(self._unanswered) > MAX_UNANSWERED_REPORTS:
            del self._unanswered[next(iter(self._unanswered))]

    def _remember(self, hold_id: str, order: dict[str, Any]) -> None:
        self._orders[hold_id] = order
        while len(self._orders) > MAX_REMEMBERED_ORDERS:
            del self._orders[next(iter(self._orders))]

    # The lease loop ----------------------------------------------------------------
    async def run(self) -> None:
        """Restart (return what the origin says we hold), then tend every lease each tick, until cancelled."""
        failures = 0
        while not self.restarted:
            try:
                await self.restart()
            except Exception as exc:
                # A garbage answer must not end the loop (the shard would never
                # sell again): log it, back off and ask again. The doubling stops
                # well before the float product could overflow.
                failures = min(failures + 1, RESTART_MAX_DOUBLINGS)
                if isinstance(exc, OriginError):
                    self.last_error = exc.message
                else:
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.exception("lease restart crashed")
                delay = min(RESTART_BACKOFF_CAP, self.settings.lease_tick * 2**failures)
                log.warning("lease restart failed (%s); retrying in %.1f s", self.last_error, delay)
                await asyncio.sleep(delay)
        while True:
            await self.tend()
            await asyncio.sleep(self.settings.lease_tick)

    async def restart(self) -> None:
        """Learn our epochs from the origin and return every allotment of a past life whole."""
        status, doc = await self.client.call("GET", f"/v1/leases?shard_id={quote(self.shard_id, safe='')}")
        if status != 200 or not isinstance(doc.get("leases"), list):
            raise UpstreamError(f"GET /v1/leases answered {status}: {error_message(doc)}")
        for lease_doc in doc["leases"]:
            allotment, kind, _ = parse_lease(lease_doc)
            item_id = str(lease_doc["item_id"])
            fresh, returned = core.restart(
                item_id, self.shard_id, exclusive=kind != GENERAL_ADMISSION, held_at_origin=allotment
            )
            self.escrows[item_id] = fresh
            if returned is not None:
                await self._return(returned)
        self.restarted = True

    async def return_all(self) -> int:
        """On a clean shutdown: end every local hold and give each allotment back whole; returns how many went back.

        Call it after the lease loop stopped and requests drained, under the
        caller's deadline (``asyncio.timeout``). Local holds are volatile (a
        restart would lose them), so they end here; the units leave the
        escrows before the returns are sent, as every return does, so a lost
        answer or a deadline only leaves the stock frozen until the lease
        lapses. A sale report still unanswered is fenced by the return (its
        epoch ends). The returns go out together, each call bounded by
        ``upstream_timeout``.
        """
        returns: list[ReturnRequest] = []
        for item_id, current in sorted(self.escrows.items()):
            if current.expires_at is not None:
                self.escrows[item_id] = Escrow(item_id, self.shard_id, current.exclusive, epoch=current.epoch)
                returns.append(ReturnRequest(item_id, self.shard_id, current.epoch, None))
        self._holds.clear()
        self.wanted.clear()
        if not returns:
            return 0
        done = await asyncio.gather(*(self._return_on_shutdown(request) for request in returns))
        log.info("returned %d of %d grant(s) at shutdown", sum(done), len(returns))
        return sum(done)

    async def _return_on_shutdown(self, request: ReturnRequest) -> bool:
        try:
            return await self._return(request)
        except OriginError as exc:
            log.warning("return of %s at shutdown failed: %s", request.item_id, exc.message)
            return False

    async def tend(self) -> None:
        """One pass of the loop over every item we hold or want; a failure only skips that item."""
        for item_id in sorted(set(self.escrows) | set(self.wanted)):
            try:
                await self.tend_item(item_id)
            except OriginError as exc:
                self.last_error = exc.message
                log.warning("lease of %s: %s", item_id, exc.message)
            except Exception:
                self.last_error = f"tending {item_id} crashed"
                log.exception("tending the lease of %s crashed", item_id)

    async def tend_item(self, item_id: str) -> None:
        now = self.now()
        current = self.escrows.get(item_id)
        if current is not None:
            self.escrows[item_id] = core.expire_holds(current, now, self.policy)
            self._forget_ended_holds()
            kept, returned = core.return_request(self.escrows[item_id], now, self.policy)
            self.escrows[item_id] = kept
            if returned is not None:
                await self._return(returned)
            renewal = core.renew_request(self.escrows[item_id], now, self.policy)
            if renewal is not None:
                await self._renew(item_id, renewal.epoch)
            refill = core.refill_request(self.escrows[item_id], now, self.policy)
            if refill is not None:
                await self._refill(item_id, refill.epoch, refill.units)
        current = self.escrows.get(item_id)
        if item_id in self.wanted and (current is None or current.expires_at is None):
            await self._grant(item_id)

    async def request_lease(self, item_id: str, units: int | None) -> dict[str, Any]:
        """Want `item_id` from now on and ask for it right away; returns the escrow's state."""
        self.wanted[item_id] = units
        await self.tend_item(item_id)
        return self.describe(item_id)

    def describe(self, item_id: str) -> dict[str, Any]:
        current = self.escrows.get(item_id)
        if current is None:
            return {"item_id": item_id, "phase": LocalPhase.NONE.value, "epoch": 0}
        return {
            "item_id": item_id,
            "phase": core.phase(current, self.now(), self.policy).value,
            "epoch": current.epoch,
            "expires_at": None if current.expires_at is None else format_time(current.expires_at),
            "free": current.free,
            "held": current.held,
            "sold": current.sold,
            "written_off": current.written_off,
        }

    def health(self) -> dict[str, Any]:
        return {
            "restarted": self.restarted,
            "leases": [self.describe(item_id) for item_id in sorted(self.escrows)],
            "last_error": self.last_error,
        }

    async def _grant(self, item_id: str) -> None:
        item = await self.store.item(item_id)
        if item is None:
            log.info("lease of %s waits: its event is not mirrored here yet", item_id)
            return
        exclusive = item.kind != GENERAL_ADMISSION
        body: dict[str, Any] = {"item_id": item_id, "shard_id": self.shard_id}
        if not exclusive:
            body["units"] = self.wanted.get(item_id) or self.settings.lease_units
        key = f"grant-{secrets.token_hex(8)}"
        status, doc = await self._call_twice("POST", "/v1/leases", body, key)
        if status == 409 and error_code(doc) == LeaseHeld.code:
            await self._recover(item_id)
            return
        if status != 201:
            log.info("no grant of %s: %s", item_id, error_message(doc))
            return
        allotment, _, seats = parse_lease(doc.get("lease"))
        base = self.escrows.get(item_id) or core.new_escrow(item_id, self.shard_id, exclusive=exclusive)
        try:
            self.escrows[item_id] = core.on_grant(base, allotment, seats)
        except StaleEpoch as exc:
            log.warning("ignored a late grant of %s: %s", item_id, exc.message)
            return
        self._events[item_id] = item.event_id
        log.info(
            "granted %s: epoch %d, %d unit(s) until %s", item_id, allotment.epoch, allotment.units, allotment.expires_at
        )

    async def _recover(self, item_id: str) -> None:
        """The origin says we hold `item_id` but we do not know it (a lost grant answer): return it whole."""
        status, doc = await self.client.call("GET", f"/v1/leases?shard_id={quote(self.shard_id, safe='')}")
        leases = doc.get("leases") if status == 200 else None
        for lease_doc in leases if isinstance(leases, list) else []:
            if isinstance(lease_doc, dict) and lease_doc.get("item_id") == item_id:
                allotment, kind, _ = parse_lease(lease_doc)
                fresh, returned = core.restart(
                    item_id, self.shard_id, exclusive=kind != GENERAL_ADMISSION, held_at_origin=allotment
                )
                known = self.escrows.get(item_id)
                if known is None or known.expires_at is None:
                    self.escrows[item_id] = fresh
                    if returned is not None:
                        await self._return(returned)

    async def _renew(self, item_id: str, epoch: int) -> None:
        status, doc = await self.client.call(
            "POST", self._path(item_id, "renew"), {"shard_id": self.shard_id, "epoch": epoch}
        )
        if status == 200:
            allotment, _, _ = parse_lease(doc.get("lease"))
            self.escrows[item_id] = core.on_renewed(self.escrows[item_id], allotment.epoch, allotment.expires_at)
        else:
            self._on_refusal(item_id, epoch, doc)

    async def _refill(self, item_id: str, epoch: int, units: int) -> None:
        body = {"shard_id": self.shard_id, "epoch": epoch, "units": units}
        status, doc = await self._call_twice(
            "POST", self._path(item_id, "refill"), body, f"refill-{secrets.token_hex(8)}"
        )
        if status == 200:
            self.escrows[item_id] = core.on_refill(self.escrows[item_id], epoch, units)
        else:
            self._on_refusal(item_id, epoch, doc)

    async def _return(self, request: ReturnRequest) -> bool:
        """Send a return; True when the origin took it.

        Its units already left the escrow, so a lost answer only undersells.
        """
        body: dict[str, Any] = {"shard_id": request.shard, "epoch": request.epoch}
        if request.units is not None:
            body["units"] = request.units
        key = f"return-{secrets.token_hex(8)}"
        status, doc = await self._call_twice("POST", self._path(request.item_id, "return"), body, key)
        if status != 200:
            log.info("return of %s (epoch %d) refused: %s", request.item_id, request.epoch, error_message(doc))
        return status == 200

    def _on_refusal(self, item_id: str, epoch: int, doc: dict[str, Any]) -> None:
        """A stale epoch means the allotment is gone: hold nothing (the loop asks anew)."""
        current = self.escrows.get(item_id)
        if error_code(doc) == StaleEpoch.code and current is not None and current.epoch == epoch:
            self.escrows[item_id] = Escrow(item_id, self.shard_id, current.exclusive, epoch=current.epoch)
            self._forget_ended_holds()
        log.info("lease of %s (epoch %d): %s", item_id, epoch, error_message(doc))

    async def _call_twice(
        self, method: str, path: str, body: Mapping[str, Any], key: str
    ) -> tuple[int, dict[str, Any]]:
        """One retry with the same Idempotency-Key, so a lost answer is replayed, not repeated."""
        try:
            return await self.client.call(method, path, body, key)
        except UpstreamError:
            return await self.client.call(method, path, body, key)

    def _path(self, item_id: str, operation: str) -> str:
        return f"/v1/leases/{quote(item_id, safe='')}/{operation}"

    def _forget_ended_holds(self) -> None:
        for hold_id, info in list(self._holds.items()):
            current = self.escrows.get(info.item_id)
            if current is None or current.hold(hold_id) is None:
                del self._holds[hold_id]


# HTTP (the shard's admin route) ------------------------------------------------------

SALES: Final = web.AppKey("shard_sales", ShardSales)


def add_sales_routes(app: web.Application, sales: ShardSales) -> None:
    app[SALES] = sales
    app.router.add_post("/v1/leases/request", post_lease_request)


async def post_lease_request(request: web.Request) -> web.StreamResponse:
    """`POST /v1/leases/request {"item_id", "units"?}`: want this item and ask the origin for it now."""
    sales = request.app[SALES]
    if not bearer_matches(request.headers.get("Authorization"), sales.settings.shard_token):
        raise Unauthorized("send Authorization: Bearer <the shard token>")
    body = await _json_body(request)
    if not isinstance(body, dict) or set(body) - {"item_id", "units"}:
        raise BadRequest("body must be an object with item_id and optionally units")
    item_id, units = body.get("item_id"), body.get("units")
    if not isinstance(item_id, str) or not 0 < len(item_id) <= MAX_ID_LENGTH:
        raise BadRequest(f"item_id must be a string of 1 to {MAX_ID_LENGTH} characters")
    if units is not None and (type(units) is not int or units < 1):
        raise BadRequest("units must be a positive integer")
    if await sales.store.item(item_id) is None:
        raise NotFound(f"item {item_id} is not mirrored by this shard")
    state = await sales.request_lease(item_id, units)
    granted = state["phase"] != LocalPhase.NONE.value
    body_out = json.dumps(state, separators=(",", ":")).encode()
    return web.Response(body=body_out, status=200 if granted else 202, content_type=JSON_TYPE)
