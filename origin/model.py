"""The inventory data model: venues, events, items, holds and orders.

Records are frozen dataclasses over plain data. Each knows how to become the
JSON document the API serves (``to_document``) and how to come back from the
stored form (``from_document``). Items are the sellable units of an event:

* a *seated* item is a block of reserved seats in one section and row; its
  availability is the set of seat labels nobody holds or bought;
* a *general-admission* item is a pool with a capacity; its availability is a
  count.

Times are timezone-aware UTC datetimes in the records and RFC 3339 strings with
a ``Z`` suffix in documents.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from origin import lww
from origin.errors import StoredDataError

SEATED: Final = "seated"
GENERAL_ADMISSION: Final = "general_admission"
ItemKind = Literal["seated", "general_admission"]

HOLD_ACTIVE: Final = "active"
HOLD_ORDERED: Final = "ordered"
HOLD_EXPIRED: Final = "expired"
HoldStatus = Literal["active", "ordered", "expired"]

Document = dict[str, Any]


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with millisecond precision and a ``Z`` suffix."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """Inverse of :func:`format_time`; accepts any RFC 3339 offset."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"timestamp without a timezone: {text!r}")
    return moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Venue:
    id: str
    name: str
    city: str
    country: str
    region: str
    lat: float
    lon: float
    capacity: int

    def to_document(self) -> Document:
        return dataclasses.asdict(self)

    @classmethod
    def from_document(cls, doc: Document) -> Venue:
        return _build(cls, doc)


@dataclass(frozen=True, slots=True)
class PriceTier:
    name: str
    amount: int  # minor units (cents) of `currency`
    currency: str


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    name: str
    artist: str
    genre: str
    venue_id: str
    region: str
    starts_at: datetime
    onsale_at: datetime
    popularity: float  # relative demand weight; the demo catalog draws it from a Zipf law
    price_tiers: tuple[PriceTier, ...]
    # The HLC stamp (encoded) of the last edit of each metadata field that was
    # ever edited; origin.lww merges copies field by field with them. Left out
    # of the document when empty, so unedited events read as they always did.
    metadata_stamps: dict[str, str] = dataclasses.field(default_factory=dict, hash=False)

    def to_document(self) -> Document:
        doc: Document = {
            "id": self.id,
            "name": self.name,
            "artist": self.artist,
            "genre": self.genre,
            "venue_id": self.venue_id,
            "region": self.region,
            "starts_at": format_time(self.starts_at),
            "onsale_at": format_time(self.onsale_at),
            "popularity": self.popularity,
            "price_tiers": [dataclasses.asdict(tier) for tier in self.price_tiers],
        }
        if self.metadata_stamps:
            doc[lww.STAMPS_KEY] = dict(self.metadata_stamps)
        return doc

    @classmethod
    def from_document(cls, doc: Document) -> Event:
        try:
            stamped = lww.metadata_of(doc)  # checks the stamps: every one decodes and stamps a present field
            return cls(
                id=doc["id"],
                name=doc["name"],
                artist=doc["artist"],
                genre=doc["genre"],
                venue_id=doc["venue_id"],
                region=doc["region"],
                starts_at=parse_time(doc["starts_at"]),
                onsale_at=parse_time(doc["onsale_at"]),
                popularity=float(doc["popularity"]),
                price_tiers=tuple(PriceTier(**tier) for tier in doc["price_tiers"]),
                metadata_stamps={
                    name: field.stamp.encode() for name, field in stamped.items() if field.stamp is not None
                },
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoredDataError(f"bad event document: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Item:
    """One sellable unit of an event, with its current availability.

    ``version`` increases by one with every committed change; ``hlc`` is the
    hybrid-logical-clock stamp of that change (see :mod:`origin.hlc`).
    """

    id: str
    event_id: str
    kind: ItemKind
    name: str
    section: str
    row: str | None
    seats: tuple[str, ...]  # every seat label of a seated block; empty for GA
    capacity: int
    price_tier: str
    price: int  # minor units of `currency`
    currency: str
    available: int
    available_seats: tuple[str, ...]  # free seat labels, in block order; empty for GA
    version: int
    hlc: str
    updated_at: datetime

    def to_document(self) -> Document:
        return {
            "id": self.id,
            "event_id": self.event_id,
            "kind": self.kind,
            "name": self.name,
            "section": self.section,
            "row": self.row,
            "seats": list(self.seats),
            "capacity": self.capacity,
            "price_tier": self.price_tier,
            "price": self.price,
            "currency": self.currency,
            "available": self.available,
            "available_seats": list(self.available_seats),
            "version": self.version,
            "hlc": self.hlc,
            "updated_at": format_time(self.updated_at),
        }

    @classmethod
    def from_document(cls, doc: Document) -> Item:
        try:
            return cls(
                id=doc["id"],
                event_id=doc["event_id"],
                kind=doc["kind"],
                name=doc["name"],
                section=doc["section"],
                row=doc["row"],
                seats=tuple(doc["seats"]),
                capacity=int(doc["capacity"]),
                price_tier=doc["price_tier"],
                price=int(doc["price"]),
                currency=doc["currency"],
                available=int(doc["available"]),
                available_seats=tuple(doc["available_seats"]),
                version=int(doc["version"]),
                hlc=doc["hlc"],
                updated_at=parse_time(doc["updated_at"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoredDataError(f"bad item document: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Hold:
    id: str
    item_id: str
    event_id: str
    user_id: str
    qty: int
    seats: tuple[str, ...]
    status: HoldStatus
    created_at: datetime
    expires_at: datetime

    def to_document(self) -> Document:
        return {
            "id": self.id,
            "item_id": self.item_id,
            "event_id": self.event_id,
            "user_id": self.user_id,
            "qty": self.qty,
            "seats": list(self.seats),
            "status": self.status,
            "created_at": format_time(self.created_at),
            "expires_at": format_time(self.expires_at),
        }

    @classmethod
    def from_document(cls, doc: Document) -> Hold:
        try:
            return cls(
                id=doc["id"],
                item_id=doc["item_id"],
                event_id=doc["event_id"],
                user_id=doc["user_id"],
                qty=int(doc["qty"]),
                seats=tuple(doc["seats"]),
                status=doc["status"],
                created_at=parse_time(doc["created_at"]),
                expires_at=parse_time(doc["expires_at"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoredDataError(f"bad hold document: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Order:
    id: str
    hold_id: str
    item_id: str
    event_id: str
    user_id: str
    qty: int
    seats: tuple[str, ...]
    total: int  # minor units of `currency`
    currency: str
    created_at: datetime

    def to_document(self) -> Document:
        return {
            "id": self.id,
            "hold_id": self.hold_id,
            "item_id": self.item_id,
            "event_id": self.event_id,
            "user_id": self.user_id,
            "qty": self.qty,
            "seats": list(self.seats),
            "total": self.total,
            "currency": self.currency,
            "created_at": format_time(self.created_at),
        }

    @classmethod
    def from_document(cls, doc: Document) -> Order:
        try:
            return cls(
                id=doc["id"],
                hold_id=doc["hold_id"],
                item_id=doc["item_id"],
                event_id=doc["event_id"],
                user_id=doc["user_id"],
                qty=int(doc["qty"]),
                seats=tuple(doc["seats"]),
                total=int(doc["total"]),
                currency=doc["currency"],
                created_at=parse_time(doc["created_at"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoredDataError(f"bad order document: {exc}") from exc


def _build(cls: type[Venue], doc: Document) -> Venue:
    try:
        return cls(**{field.name: doc[field.name] for field in dataclasses.fields(cls)})
    except (KeyError, TypeError) as exc:
        raise StoredDataError(f"bad {cls.__name__.lower()} document: {exc}") from exc
