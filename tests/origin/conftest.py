"""Fixtures for origin tests: one store per backend, a tiny catalog, a ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from origin.hlc import HybridClock
from origin.ledger import Ledger, LedgerLimits
from origin.model import GENERAL_ADMISSION, SEATED, Event, Item, PriceTier, Venue
from origin.store.base import Store
from origin.store.factory import store_from_url

START = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


class FakeTime:
    """A physical clock the test moves by hand (the cores take clocks as arguments)."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start.timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def tiny_catalog() -> tuple[list[Venue], list[Event], list[Item]]:
    venue = Venue("ven-1", "Test Arena", "Lisbon", "PT", "eu-west", 38.72, -9.14, 12000)
    other = Venue("ven-2", "Test Hall", "Tokyo", "JP", "ap-northeast", 35.68, 139.69, 2000)
    tiers = (PriceTier("A", 9000, "EUR"),)
    events = [
        Event("evt-1", "Band Live", "Band", "rock", "ven-1", "eu-west", START + timedelta(days=30), START, 0.7, tiers),
        Event(
            "evt-2", "Solo Night", "Solo", "jazz", "ven-2", "ap-northeast", START + timedelta(days=9), START, 0.3, tiers
        ),
    ]
    seats = tuple(str(n) for n in range(1, 7))
    items = [
        Item("itm-1-ga", "evt-1", GENERAL_ADMISSION, "Floor GA", "Floor", None, (), 10, "A", 9000, "EUR",
             10, (), 1, "0000000000000-00000-seed", START),
        Item("itm-1-s", "evt-1", SEATED, "Section 101 Row C", "101", "C", seats, 6, "A", 9000, "EUR",
             6, seats, 1, "0000000000000-00000-seed", START),
        Item("itm-2-ga", "evt-2", GENERAL_ADMISSION, "Standing", "Floor", None, (), 50, "A", 9000, "EUR",
             50, (), 1, "0000000000000-00000-seed", START),
    ]  # fmt: skip
    return [venue, other], events, items


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'origin.db'}"
    dsn: str = request.getfixturevalue("postgres_dsn")
    return dsn


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = store_from_url(store_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def seeded(store: Store) -> Store:
    venues, events, items = tiny_catalog()
    await store.load_catalog(venues, events, items, START)
    return store


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


LIMITS = LedgerLimits(hold_ttl=timedelta(minutes=10), max_hold_ttl=timedelta(minutes=30), max_qty_per_hold=8)


@pytest.fixture
def ledger(seeded: Store, fake_time: FakeTime) -> Ledger:
    return Ledger(seeded, HybridClock("test", fake_time), fake_time, LIMITS)
