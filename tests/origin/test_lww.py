"""origin.lww: the per-field last-write-wins merge is a semilattice join, and the document helpers keep it."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from origin import lww
from origin.hlc import Stamp
from origin.lww import STAMPS_KEY, Stamped, merge

FUZZ = settings(max_examples=300, deadline=None)

stamps = st.builds(
    Stamp,
    wall_ms=st.integers(0, 2_000),
    logical=st.integers(0, 3),
    node=st.sampled_from(["a", "b", "c"]),
)
values = st.one_of(
    st.text(max_size=4),
    st.integers(-3, 3),
    st.lists(st.fixed_dictionaries({"name": st.text(max_size=2), "amount": st.integers(0, 9)}), max_size=2),
)
stamped = st.builds(Stamped, value=values, stamp=st.none() | stamps)
metadata = st.dictionaries(st.sampled_from(lww.METADATA_FIELDS), stamped, max_size=4)


@FUZZ
@given(metadata, metadata)
def test_merge_is_commutative(left: dict[str, Stamped], right: dict[str, Stamped]) -> None:
    assert merge(left, right) == merge(right, left)


@FUZZ
@given(metadata, metadata, metadata)
def test_merge_is_associative(a: dict[str, Stamped], b: dict[str, Stamped], c: dict[str, Stamped]) -> None:
    assert merge(merge(a, b), c) == merge(a, merge(b, c))


@FUZZ
@given(metadata, metadata)
def test_merge_is_idempotent(a: dict[str, Stamped], b: dict[str, Stamped]) -> None:
    assert merge(a, a) == a
    once = merge(a, b)
    assert merge(once, b) == once  # a re-delivered record changes nothing


# A write is one (field, value, stamp); one stamp names one write, so stamps are unique.
writes = st.lists(
    st.tuples(st.sampled_from(lww.METADATA_FIELDS), values, stamps), max_size=8, unique_by=lambda write: write[2]
)


@FUZZ
@given(writes, st.data())
def test_any_delivery_order_with_duplicates_converges_to_the_newest_write_per_field(
    history: list[tuple[str, Any, Stamp]], data: st.DataObject
) -> None:
    deliveries = data.draw(st.lists(st.sampled_from(history), min_size=len(history))) if history else []
    deliveries = data.draw(st.permutations(history + deliveries))  # every write at least once, any order
    state: dict[str, Stamped] = {}
    for name, value, stamp in deliveries:
        state = merge(state, {name: Stamped(value, stamp)})
    newest: dict[str, tuple[Stamp, Any]] = {}
    for name, value, stamp in history:
        if name not in newest or stamp > newest[name][0]:
            newest[name] = (stamp, value)
    assert state == {name: Stamped(value, stamp) for name, (stamp, value) in newest.items()}


def test_a_stamped_write_beats_the_unstamped_catalog_value_and_the_higher_stamp_wins() -> None:
    catalog = {"name": Stamped("Old", None)}
    first = {"name": Stamped("First", Stamp(1_000, 0, "origin"))}
    second = {"name": Stamped("Second", Stamp(1_000, 0, "shard"))}  # same wall and logical: node id decides
    assert merge(catalog, first)["name"].value == "First"
    assert merge(first, second)["name"].value == "Second"
    assert merge(second, first)["name"].value == "Second"


EVENT = {
    "id": "evt-1",
    "name": "Band Live",
    "artist": "Band",
    "genre": "rock",
    "venue_id": "ven-1",
    "price_tiers": [{"name": "A", "amount": 9000, "currency": "EUR"}],
}


def test_documents_merge_by_field_and_keep_their_other_fields() -> None:
    older = Stamp(1_000, 0, "origin").encode()
    newer = Stamp(2_000, 0, "origin").encode()
    local = {**EVENT, "name": "Renamed", STAMPS_KEY: {"name": newer}}
    incoming = {
        **EVENT,
        "name": "Stale",
        "genre": "pop",
        "venue_id": "other",
        STAMPS_KEY: {"name": older, "genre": older},
    }
    merged = lww.merge_documents(local, incoming)
    assert merged["name"] == "Renamed" and merged["genre"] == "pop"
    assert merged["venue_id"] == "ven-1"  # not metadata: the local document's
    assert merged[STAMPS_KEY] == {"name": newer, "genre": older}


def test_record_patch_holds_only_what_changed_and_merging_it_again_is_a_no_op() -> None:
    stamp = Stamp(5_000, 1, "origin").encode()
    after = {**EVENT, "artist": "The Band", STAMPS_KEY: {"artist": stamp}}
    patch = lww.record_patch(EVENT, after)
    assert patch == {"artist": "The Band", STAMPS_KEY: {"artist": stamp}}
    assert lww.is_event_patch(patch) and not lww.is_event_patch({"available": 3})
    assert lww.merge_documents(after, patch) == after
    assert lww.record_patch(after, lww.merge_documents(after, patch)) == {}
    # A never-edited document keeps its shape: no empty stamps object appears.
    assert STAMPS_KEY not in lww.merge_documents(EVENT, EVENT)


@pytest.mark.parametrize(
    "stamps_value",
    [["x"], {"name": 7}, {"name": "not-a-stamp"}, {"popularity": Stamp(1, 0, "a").encode()}, {"venue_id": "x"}],
)
def test_bad_stamps_are_refused(stamps_value: object) -> None:
    with pytest.raises(ValueError, match="stamp"):
        lww.metadata_of({**EVENT, STAMPS_KEY: stamps_value})
