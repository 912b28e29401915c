"""The origin's side of leases and escrow: lease books in the store, and the ``/v1/leases`` API.

The decisions are :mod:`origin.lease`'s (a pure :class:`~origin.lease.Book`
per item) and, for sale reports, :func:`origin.escrow.settle_report`. This
adapter keeps each item's book in the store beside the item row and changes
it only in a transaction that first locked that row (``item_for_update``), so
a lease write, an origin hold and a shard's sale on one item run one after
the other, and the book and the row always agree:

* ``item.available`` (the public document) is everything somebody may still
  sell: the origin's free units *plus* the units allotted to shards and not
  yet sold. Readers see one advisory number and a sold-out item only when it
  is; a shard's local holds are not in it (they are not known here).
* The origin's own holds take only ``available − Σ allotted`` units of a GA
  pool, and nothing of a seated block while a shard leases it (409
  ``leased``, origin.inventory). The book is rebuilt from the row as
  ``origin_free = available − Σ allotted`` and ``sold = capacity − available``
  (the origin's active holds count as taken, like orders).
* Grants, renewals, refills, returns and expiry move units between the
  origin and an allotment: the item row does not change and the feed carries
  nothing. A shard's sale is an order: the row's ``available`` (and seats) go
  down, an order record is written, and a change record tells every follower.

Endpoints (``Authorization: Bearer <shard_token>``; JSON bodies; errors are the
usual ``{"error": {...}}``, lease refusals 409 ``stale_epoch``,
``lease_lapsed``, ``lease_held``):

=====================================  ==========================================  ==============================
route                                  body                                        answer
=====================================  ==========================================  ==============================
POST /v1/leases                        item_id, shard_id, units (GA only)          201 {"lease"}
POST /v1/leases/{item}/renew           shard_id, epoch                             200 {"lease"}
POST /v1/leases/{item}/refill          shard_id, epoch, units                      200 {"lease", "refilled"}
POST /v1/leases/{item}/return          shard_id, epoch, units (absent: all)        200 {"lease"|null, "returned"}
POST /v1/leases/{item}/sales           shard_id, epoch, report_id, hold_id, qty,   201 {"verdict", "order"} or
                                       seats, written_at, user_id (optional)       409 {"verdict", "error"}
GET /v1/leases?shard_id=S              —                                           200 {"leases": [...]}
=====================================  ==========================================  ==============================

Retries: grants, refills and returns take an ``Idempotency-Key`` (stored with
the answer in the same transaction, as for holds); renewals are idempotent by
nature. A sale report is keyed by its ``report_id``: its first verdict,
acceptance *or refusal*, is stored in the same transaction as its effect and
every copy gets that verdict — a refused report retried after a renewal must
not become a sale the shard already wrote off.

The sweeper (:meth:`Leasing.expire_lapsed`) ends allotments whose expiry plus
``clock_skew_margin`` has passed by the origin's clock, giving their units
back to the origin's free stock.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from origin import inventory, lease
from origin.errors import BadRequest, ClientError, IdempotencyKeyReused, InsufficientStock, NotFound, StoredDataError
from origin.escrow import SaleReport, Verdict, settle_report
from origin.httpio import _json, _json_body
from origin.lease import Allotment, Book, LeasePolicy
from origin.ledger import MAX_ID_LENGTH, Ledger, check_idempotency_key, request_fingerprint
from origin.metadata import Unauthorized
from origin.metadata_edits import bearer_matches
from origin.model import GENERAL_ADMISSION, Item, Order, format_time, parse_time
from origin.store.base import Store, StoredAllotment, Transaction

# Books taken back per sweep; the rest wait for the next tick.
SWEEP_BATCH: Final = 200
# Most seats one sale report may name: a hold never takes more (inventory.MAX_QTY_PER_HOLD).
MAX_REPORT_SEATS: Final = inventory.MAX_QTY_PER_HOLD
NO_STORE: Final = {"Cache-Control": "no-store"}
OPERATIONS: Final = ("renew", "refill", "return", "sales")


@dataclass(frozen=True, slots=True)
class LeaseAnswer:
    status: int
    body: dict[str, Any]
    replayed: bool = False


Action = Callable[[Transaction, datetime], Awaitable[LeaseAnswer]]


class Leasing:
    """Lease books of the origin primary. Every method is one transaction per item."""

    def __init__(self, store: Store, ledger: Ledger, policy: LeasePolicy, token: str) -> None:
        self._store = store
        self._ledger = ledger
        self.policy = policy
        self._token = token

    def now(self) -> datetime:
        """The origin's clock, in whole milliseconds (the precision the store keeps)."""
        millis = int(self._ledger.physical_time() * 1000)
        return datetime.fromtimestamp(millis / 1000, UTC)

    def authorized(self, header: str | None) -> bool:
        return bearer_matches(header, self._token)

    # Operations ------------------------------------------------------------------
    async def grant(self, item_id: str, shard: str, units: int | None, key: str | None = None) -> LeaseAnswer:
        """Lease the block (seated) or escrow `units` (GA) to `shard`. Raises LeaseHeld, InsufficientStock, ..."""

        async def action(tx: Transaction, now: datetime) -> LeaseAnswer:
            item, stored, book = await self._locked(tx, item_id)
            granted = lease.grant(book, shard, now, self.policy, units)
            seats = item.available_seats if granted.exclusive else ()
            rows = await self._save(tx, item, granted, stored, new_seats=seats)
            return LeaseAnswer(201, {"lease": _lease_document(item, rows[shard])})

        return await self._run("grant", item_id, shard, key, {"units": units}, action)

    async def renew(self, item_id: str, shard: str, epoch: int) -> LeaseAnswer:
        """Extend a live, active lease. Raises StaleEpoch or LeaseLapsed."""

        async def action(tx: Transaction, now: datetime) -> LeaseAnswer:
            item, stored, book = await self._locked(tx, item_id)
            rows = await self._save(tx, item, lease.renew(book, shard, epoch, now, self.policy), stored)
            return LeaseAnswer(200, {"lease": _lease_document(item, rows[shard])})

        return await self._run("renew", item_id, shard, None, {}, action)

    async def refill(self, item_id: str, shard: str, epoch: int, units: int, key: str | None = None) -> LeaseAnswer:
        """Move `units` more free GA units into the shard's allotment."""

        async def action(tx: Transaction, now: datetime) -> LeaseAnswer:
            item, stored, book = await self._locked(tx, item_id)
            rows = await self._save(tx, item, lease.refill(book, shard, epoch, units, now), stored)
            return LeaseAnswer(200, {"lease": _lease_document(item, rows[shard]), "refilled": units})

        return await self._run("refill", item_id, shard, key, {"epoch": epoch, "units": units}, action)

    async def return_units(
        self, item_id: str, shard: str, epoch: int, units: int | None, key: str | None = None
    ) -> LeaseAnswer:
        """Give `units` (None: all, ending the allotment) back to the origin."""

        async def action(tx: Transaction, now: datetime) -> LeaseAnswer:
            item, stored, book = await self._locked(tx, item_id)
            held = book.allotment(shard)
            returned = lease.return_units(book, shard, epoch, units)
            rows = await self._save(tx, item, returned, stored)
            doc = _lease_document(item, rows[shard]) if shard in rows else None
            count = units if units is not None else (held.units if held is not None else 0)
            return LeaseAnswer(200, {"lease": doc, "returned": count})

        return await self._run("return", item_id, shard, key, {"epoch": epoch, "units": units}, action)

    async def report_sale(self, report: SaleReport, hold_id: str, user_id: str) -> LeaseAnswer:
        """Apply a shard's sale once; every copy of the report (same report id) gets the first verdict.

        Accepted: 201 with the order, written with the item's new availability
        and its change record. Refused: 409 with the refusal's code, stored too.
        """
        fingerprint = request_fingerprint({**dataclasses.asdict(report), "hold_id": hold_id, "user_id": user_id})
        scope = f"sales:{report.sale_id}"
        now = self.now()
        async with self._store.transaction() as tx:
            stored_answer = await tx.claim_idempotency_key(scope, fingerprint, now)
            if stored_answer is not None:
                if stored_answer.fingerprint != fingerprint:
                    raise IdempotencyKeyReused(f"report {report.sale_id} was sent before with other contents")
                return LeaseAnswer(stored_answer.status, stored_answer.body, replayed=True)
            item, stored, book = await self._locked(tx, report.item_id)
            refusal = _seat_refusal(book, stored, report)
            if refusal is not None:
                settled, verdict = book, Verdict(report.sale_id, report.epoch, False, refusal.code)
            else:
                settled, verdict = settle_report(book, report, {})
            if not verdict.accepted:
                message = refusal.message if refusal is not None else _refusal_message(book, report, verdict.code)
                error = {"status": 409, "code": verdict.code, "message": message}
                answer = LeaseAnswer(409, {**_verdict_doc(verdict), "error": error})
                await tx.complete_idempotency_key(scope, answer.status, answer.body)
                return answer
            sold_item = inventory.sell_leased(
                item, report.qty, report.seats, hlc=self._ledger.stamp_after(item.hlc), now=now
            )
            order = Order(
                id=f"ord-{secrets.token_hex(8)}",
                hold_id=hold_id,
                item_id=item.id,
                event_id=item.event_id,
                user_id=user_id,
                qty=report.qty,
                seats=report.seats,
                total=item.price * report.qty,
                currency=item.currency,
                created_at=now,
            )
            await self._save(tx, item, settled, stored, sold_seats=report.seats, seller=report.shard)
            await tx.put_order(order)
            answer = LeaseAnswer(201, {**_verdict_doc(verdict), "order": order.to_document()})
            await tx.complete_idempotency_key(scope, answer.status, answer.body)
            await self._ledger.write_item(tx, item, sold_item, now)  # the change record, last
        return answer

    async def leases(self, shard: str | None) -> list[dict[str, Any]]:
        """The live allotments (of one shard), as documents; a restarting shard reads its own."""
        docs = []
        for held in await self._store.allotments(shard):
            item = await self._store.item(held.item_id)
            if item is not None:
                docs.append(_lease_document(item, held))
        return docs

    async def expire_lapsed(self, limit: int = SWEEP_BATCH) -> int:
        """End allotments past expiry + clock_skew_margin; returns how many ended."""
        now = self.now()
        ended = 0
        for item_id in await self._store.due_allotments(now - self.policy.clock_skew_margin, limit):
            async with self._store.transaction() as tx:
                item = await tx.item_for_update(item_id)
                if item is None:  # the item was deleted under its lease: nothing to give back to
                    epoch, _ = await tx.lease_state(item_id)
                    await tx.put_lease_state(item_id, epoch, ())
                    continue
                _, stored, book = await self._locked(tx, item_id)
                after = lease.expire(book, now, self.policy)
                if after is not book:
                    ended += len(book.allotments) - len(after.allotments)
                    await self._save(tx, item, after, stored)
        return ended

    # Helpers ---------------------------------------------------------------------
    async def _run(
        self, op: str, item_id: str, shard: str, key: str | None, fields: Mapping[str, Any], action: Action
    ) -> LeaseAnswer:
        now = self.now()
        async with self._store.transaction() as tx:
            scope = None
            if key is not None:
                scope = f"leases:{op}:{item_id}:{shard}:{key}"
                fingerprint = request_fingerprint({"item_id": item_id, "shard": shard, **fields})
                stored = await tx.claim_idempotency_key(scope, fingerprint, now)
                if stored is not None:
                    if stored.fingerprint != fingerprint:
                        raise IdempotencyKeyReused("this Idempotency-Key was used with a different request")
                    return LeaseAnswer(stored.status, stored.body, replayed=True)
            answer = await action(tx, now)
            if scope is not None:
                await tx.complete_idempotency_key(scope, answer.status, answer.body)
        return answer

    async def _locked(self, tx: Transaction, item_id: str) -> tuple[Item, list[StoredAllotment], Book]:
        item = await tx.item_for_update(item_id)
        if item is None:
            raise NotFound(f"no item {item_id}")
        epoch, stored = await tx.lease_state(item_id)
        return item, stored, book_of(item, epoch, stored)

    async def _save(
        self,
        tx: Transaction,
        item: Item,
        book: Book,
        before: Sequence[StoredAllotment],
        *,
        new_seats: Sequence[str] = (),
        sold_seats: Sequence[str] = (),
        seller: str = "",
    ) -> dict[str, StoredAllotment]:
        """Write `book`'s epoch and allotments, carrying each allotment's seats over; returns them by shard."""
        previous = {held.shard: held for held in before}
        rows: dict[str, StoredAllotment] = {}
        for held in book.allotments:
            old = previous.get(held.shard)
            seats = tuple(new_seats) if old is None or old.epoch != held.epoch else old.seats
            if held.shard == seller:
                sold = set(sold_seats)
                seats = tuple(seat for seat in seats if seat not in sold)
            rows[held.shard] = StoredAllotment(item.id, held.shard, held.epoch, held.units, seats, held.expires_at)
        await tx.put_lease_state(item.id, book.epoch, list(rows.values()))
        return rows


def book_of(item: Item, epoch: int, stored: Sequence[StoredAllotment]) -> Book:
    """The lease book of `item` from its row and stored allotments (module docstring)."""
    allotted = sum(held.units for held in stored)
    if allotted > item.available or any(held.units < 0 for held in stored):
        raise StoredDataError(f"item {item.id}: {allotted} units allotted but only {item.available} available")
    allotments = tuple(
        Allotment(held.shard, held.epoch, held.units, held.expires_at)
        for held in sorted(stored, key=lambda held: held.shard)
    )
    return Book(
        item.id,
        item.kind != GENERAL_ADMISSION,
        item.capacity,
        item.available - allotted,
        item.capacity - item.available,
        epoch,
        allotments,
    )


def _seat_refusal(book: Book, stored: Sequence[StoredAllotment], report: SaleReport) -> ClientError | None:
    """Seats a report names must be unsold seats of the reporting shard's live lease."""
    if not book.exclusive:
        return BadRequest(f"item {book.item_id} is general admission: a sale names no seats") if report.seats else None
    held = next((held for held in stored if held.shard == report.shard), None)
    if held is None or held.epoch != report.epoch:
        return None  # settle_report refuses it as a stale epoch
    if len(set(report.seats)) != report.qty or not set(report.seats) <= set(held.seats):
        return InsufficientStock(f"seats {sorted(report.seats)} are not unsold seats of shard {report.shard}'s lease")
    return None


def _refusal_message(book: Book, report: SaleReport, code: str) -> str:
    held = book.allotment(report.shard)
    live = (
        "none" if held is None else f"epoch {held.epoch}, {held.units} unit(s), expires {format_time(held.expires_at)}"
    )
    sale = f"sale {report.sale_id} of item {book.item_id} by {report.shard} at epoch {report.epoch}"
    return f"{sale} refused ({code}); live allotment: {live}"


def _verdict_doc(verdict: Verdict) -> dict[str, Any]:
    return {
        "verdict": "accepted" if verdict.accepted else "refused",
        "report_id": verdict.sale_id,
        "epoch": verdict.epoch,
    }


def _lease_document(item: Item, held: StoredAllotment) -> dict[str, Any]:
    return {
        "item_id": item.id,
        "event_id": item.event_id,
        "kind": item.kind,
        "shard_id": held.shard,
        "epoch": held.epoch,
        "units": held.units,
        "seats": list(held.seats),
        "expires_at": format_time(held.expires_at),
    }


# HTTP ----------------------------------------------------------------------------

LEASING: Final = web.AppKey("leasing", Leasing)


def add_lease_routes(app: web.Application, leasing: Leasing) -> None:
    """Serve the lease API on the primary's `app` (errors go through its middleware)."""
    app[LEASING] = leasing
    app.router.add_post("/v1/leases", post_grant)
    app.router.add_get("/v1/leases", get_leases)
    app.router.add_post("/v1/leases/{item_id}/{operation}", post_lease_operation)


def _leasing(request: web.Request) -> Leasing:
    leasing = request.app[LEASING]
    if not leasing.authorized(request.headers.get("Authorization")):
        raise Unauthorized("send Authorization: Bearer <the shard token> (leases are refused without one)")
    return leasing


async def post_grant(request: web.Request) -> web.StreamResponse:
    leasing = _leasing(request)
    body = await _body(request, {"item_id", "shard_id", "units"})
    units = _int(body, "units", optional=True)
    key = check_idempotency_key(request.headers.get("Idempotency-Key"))
    answer = await leasing.grant(_text(body, "item_id"), _shard(body), units, key)
    return _answer(answer)


async def get_leases(request: web.Request) -> web.StreamResponse:
    leasing = _leasing(request)
    shard = request.query.get("shard_id")
    if shard is not None and not 0 < len(shard) <= MAX_ID_LENGTH:
        raise BadRequest(f"shard_id must be 1 to {MAX_ID_LENGTH} characters")
    return _json({"leases": await leasing.leases(shard), "now": format_time(leasing.now())}, headers=dict(NO_STORE))


async def post_lease_operation(request: web.Request) -> web.StreamResponse:
    leasing = _leasing(request)
    item_id = request.match_info["item_id"]
    operation = request.match_info["operation"]
    if operation not in OPERATIONS or len(item_id) > MAX_ID_LENGTH:
        raise NotFound(f"no lease operation {operation!r}; use one of {', '.join(OPERATIONS)}")
    key = check_idempotency_key(request.headers.get("Idempotency-Key"))
    if operation == "renew":
        body = await _body(request, {"shard_id", "epoch"})
        return _answer(await leasing.renew(item_id, _shard(body), _epoch(body)))
    if operation == "refill":
        body = await _body(request, {"shard_id", "epoch", "units"})
        units = _int(body, "units")
        assert units is not None
        return _answer(await leasing.refill(item_id, _shard(body), _epoch(body), units, key))
    if operation == "return":
        body = await _body(request, {"shard_id", "epoch", "units"})
        units = _int(body, "units", optional=True)
        return _answer(await leasing.return_units(item_id, _shard(body), _epoch(body), units, key))
    body = await _body(request, {"shard_id", "epoch", "report_id", "hold_id", "qty", "seats", "written_at", "user_id"})
    report, hold_id, user_id = parse_sale_report(item_id, body)
    return _answer(await leasing.report_sale(report, hold_id, user_id))


def parse_sale_report(item_id: str, body: Mapping[str, Any]) -> tuple[SaleReport, str, str]:
    """A sale report from its JSON body: (report, hold id, user id). Raises BadRequest naming the field."""
    shard = _shard(body)
    report_id = _text(body, "report_id")
    hold_id = _text(body, "hold_id") if "hold_id" in body else report_id
    user_id = _text(body, "user_id") if "user_id" in body else f"shard:{shard}"
    qty = _int(body, "qty")
    assert qty is not None
    seats = body.get("seats", [])
    if (
        not isinstance(seats, list)
        or len(seats) > MAX_REPORT_SEATS
        or not all(isinstance(seat, str) and 0 < len(seat) <= MAX_ID_LENGTH for seat in seats)
    ):
        raise BadRequest(f"seats must be a list of at most {MAX_REPORT_SEATS} seat labels")
    written = body.get("written_at")
    try:
        written_at = parse_time(written) if isinstance(written, str) else None
    except ValueError:
        written_at = None
    if written_at is None:
        raise BadRequest("written_at must be an RFC 3339 time with a timezone")
    return SaleReport(item_id, shard, _epoch(body), report_id, qty, tuple(seats), written_at), hold_id, user_id


async def _body(request: web.Request, allowed: set[str]) -> dict[str, Any]:
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    unknown = set(body) - allowed
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    return body


def _text(body: Mapping[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH:
        raise BadRequest(f"{field} must be a string of 1 to {MAX_ID_LENGTH} characters")
    return value


def _shard(body: Mapping[str, Any]) -> str:
    shard = _text(body, "shard_id")
    if shard == lease.ORIGIN:
        raise BadRequest(f"shard_id {lease.ORIGIN!r} is reserved for the origin itself")
    return shard


def _int(body: Mapping[str, Any], field: str, *, optional: bool = False) -> int | None:
    value = body.get(field)
    if value is None and optional:
        return None
    if type(value) is not int or not 1 <= value <= 2**31:
        raise BadRequest(f"{field} must be a positive integer")
    return value


def _epoch(body: Mapping[str, Any]) -> int:
    epoch = _int(body, "epoch")
    assert epoch is not None
    return epoch


def _answer(answer: LeaseAnswer) -> web.Response:
    headers = dict(NO_STORE)
    if answer.replayed:
        headers["Idempotent-Replayed"] = "true"
    return _json(answer.body, status=answer.status, headers=headers)
