"""The write path of event metadata: `PATCH /v1/events/{id}` on the primary.

An edit is a JSON merge patch (RFC 7396) of an event's metadata fields only:
``name``, ``artist``, ``genre`` and ``price_tiers`` (display names and
amounts; the number of tiers and their currency stay). Anything else — stock
above all, which has exactly one writer and never merges — is refused with a
400 naming the field.

One transaction locks the event (``event_for_update``), stamps the edit with
the origin's hybrid logical clock above every stamp the event already holds,
merges it with origin.lww (a field whose stored stamp is newer keeps its
value), writes the event with its stamps, and appends an event change record
(origin.changefeed, ``op`` = ``event``) last, so every feed — shards, POPs,
the Redis Streams fan-out — carries the edit.

The token check (:func:`bearer_matches`) is constant-time; an empty token
refuses every edit.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from origin import lww
from origin.changefeed import EVENT_RECORD_VERSION, OP_EVENT
from origin.errors import BadRequest, NotFound
from origin.hlc import Stamp
from origin.ledger import Ledger
from origin.model import Event
from origin.store.base import Store

# Names of events, artists, genres and tiers are display text: 200 characters
# is longer than any catalog entry and keeps a change record small.
MAX_TEXT_LENGTH: Final = 200
# Minor units: a billion cents is a ten-million ticket; anything larger is a typo.
MAX_AMOUNT: Final = 1_000_000_000
_TEXT_FIELDS: Final = ("name", "artist", "genre")
_TIER_KEYS: Final = frozenset({"name", "amount", "currency"})


@dataclass(frozen=True, slots=True)
class EventEdit:
    """What an edit did: the event after it, and the patch of its change record (empty: nothing new won)."""

    event: Event
    patch: dict[str, Any]
    hlc: str


def bearer_matches(header: str | None, token: str) -> bool:
    """Whether an Authorization header is ``Bearer <token>``; always False for an empty token."""
    scheme, _, offered = (header or "").partition(" ")
    try:
        # aiohttp decodes header bytes that are not UTF-8 as surrogates: encode them back as they came.
        offered_bytes = offered.strip().encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return bool(token) and scheme.lower() == "bearer" and hmac.compare_digest(offered_bytes, token.encode())


def parse_event_patch(body: object, current: Event) -> dict[str, Any]:
    """Validate a metadata merge patch against the event it edits; returns the new field values.

    Raises BadRequest naming the first field that is not metadata, is removed
    (null), or has a bad value.
    """
    if not isinstance(body, dict) or not body:
        raise BadRequest("body must be a JSON merge patch object with at least one metadata field")
    for name in sorted(body):
        if name not in lww.METADATA_FIELDS:
            raise BadRequest(
                f"field {str(name)[:80]!r} cannot be edited: only {', '.join(lww.METADATA_FIELDS)} are metadata"
            )
        if body[name] is None:
            raise BadRequest(f"field {name!r} cannot be removed")
    values: dict[str, Any] = {}
    for name in _TEXT_FIELDS:
        if name in body:
            values[name] = _text(body[name], name)
    if "price_tiers" in body:
        values["price_tiers"] = _tiers(body["price_tiers"], current)
    return values


async def edit_event(store: Store, ledger: Ledger, event_id: str, body: object, now: datetime) -> EventEdit:
    """Apply one metadata edit in one transaction. Raises NotFound, BadRequest."""
    async with store.transaction() as tx:
        current = await tx.event_for_update(event_id)
        if current is None:
            raise NotFound(f"no event {event_id}")
        values = parse_event_patch(body, current)
        stored = [Stamp.decode(text) for text in current.metadata_stamps.values()]
        newest = max(stored, default=None)
        stamp = Stamp.decode(ledger.stamp_after("" if newest is None else newest.encode()))
        if newest is not None and stamp <= newest:
            # Our clock is behind the event's last edit by more than the HLC lets a
            # stamp lead it (a clock stepped back): stamp_after could not observe it.
            # Step just above it, or this edit would lose the merge and vanish.
            stamp = Stamp(newest.wall_ms, newest.logical + 1, stamp.node)
        before = current.to_document()
        edit = {name: lww.Stamped(value, stamp) for name, value in values.items()}
        after = lww.with_metadata(before, lww.merge(lww.metadata_of(before), edit))
        patch = lww.record_patch(before, after)
        edited = Event.from_document(after)
        if patch:
            await tx.put_event(edited)
            await tx.append_change(event_id, EVENT_RECORD_VERSION, stamp.encode(), OP_EVENT, patch, now)
    return EventEdit(edited, patch, stamp.encode())


def _text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT_LENGTH:
        raise BadRequest(f"field {name!r} must be a non-blank string of at most {MAX_TEXT_LENGTH} characters")
    try:
        # JSON can spell a lone surrogate (\ud800); the stores, the feed and every response are UTF-8.
        value.encode()
    except UnicodeEncodeError:
        raise BadRequest(f"field {name!r} holds a lone surrogate, which is not text") from None
    return value


def _tiers(value: object, current: Event) -> list[dict[str, Any]]:
    """The whole new tier list (a merge patch replaces arrays whole): same count, same currencies."""
    if not isinstance(value, list) or len(value) != len(current.price_tiers):
        raise BadRequest(
            f"field 'price_tiers' must be a list of all {len(current.price_tiers)} tiers "
            "(a merge patch replaces the list whole; tiers are renamed or repriced, not added or removed)"
        )
    tiers = []
    for index, (tier, old) in enumerate(zip(value, current.price_tiers, strict=True)):
        where = f"price_tiers[{index}]"
        if not isinstance(tier, dict):
            raise BadRequest(f"field {where!r} must be an object with name and amount")
        unknown = set(tier) - _TIER_KEYS
        if unknown:
            raise BadRequest(f"field '{where}.{sorted(unknown)[0]}' cannot be edited: a tier has name and amount")
        amount = tier.get("amount")
        if type(amount) is not int or not 0 <= amount <= MAX_AMOUNT:
            raise BadRequest(f"field '{where}.amount' must be an integer of minor units from 0 to {MAX_AMOUNT}")
        currency = tier.get("currency", old.currency)
        if currency != old.currency:
            raise BadRequest(f"field '{where}.currency' cannot change (it is {old.currency})")
        tiers.append({"name": _text(tier.get("name"), f"{where}.name"), "amount": amount, "currency": old.currency})
    return tiers
