"""The replica core: one record against one row, scripted and under hypothesis."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from origin.changefeed import ChangeRecord, Position, item_patch
from origin.inventory import take
from origin.model import Item
from origin.replica import Outcome, apply_record, is_full_patch, replace_row, row_hash
from tests.origin.conftest import START, tiny_catalog

MIRRORS = frozenset({"evt-1"})


def _history(item: Item, steps: int) -> tuple[list[Item], list[ChangeRecord]]:
    """`steps` successive holds of one unit on `item`, with the records the origin would write."""
    versions = [item]
    records = [
        ChangeRecord(Position("e", 1), item.id, item.version, item.hlc, "upsert", item_patch(None, item.to_document()))
    ]
    for step in range(steps):
        before = versions[-1]
        after = take(before, 1, None, hlc=f"000000000000{step}-00000-o", now=START).item
        versions.append(after)
        patch = item_patch(before.to_document(), after.to_document())
        records.append(ChangeRecord(Position("e", step + 2), item.id, after.version, after.hlc, "upsert", patch))
    return versions, records


def _seated() -> Item:
    return tiny_catalog()[2][1]


def _ga() -> Item:
    return tiny_catalog()[2][0]


def test_creation_record_is_full_and_builds_the_row() -> None:
    versions, records = _history(_ga(), 0)
    assert is_full_patch(records[0].patch)
    applied = apply_record(None, records[0], mirrors=MIRRORS)
    assert applied.outcome is Outcome.APPLIED
    assert applied.row is not None and Item.from_document(applied.row) == versions[0]


def test_in_order_patches_reach_the_same_document() -> None:
    versions, records = _history(_seated(), 3)
    row: dict[str, Any] | None = None
    for record in records:
        applied = apply_record(row, record, mirrors=MIRRORS)
        assert applied.outcome is Outcome.APPLIED
        row = applied.row
    assert row == versions[-1].to_document()


def test_duplicate_and_older_records_change_nothing() -> None:
    _, records = _history(_ga(), 2)
    row = None
    for record in records:
        row = apply_record(row, record, mirrors=MIRRORS).row
    for record in records:
        again = apply_record(row, record, mirrors=MIRRORS)
        assert again.outcome is Outcome.DUPLICATE and again.row == row


def test_skipped_version_with_a_partial_patch_is_a_gap() -> None:
    _, records = _history(_ga(), 3)
    row = apply_record(None, records[0], mirrors=MIRRORS).row
    gap = apply_record(row, records[2], mirrors=MIRRORS)
    assert gap.outcome is Outcome.GAP and gap.row == row


def test_unknown_rows_and_other_events() -> None:
    ga_other_event = dataclasses.replace(_ga(), event_id="evt-9")
    _, records = _history(ga_other_event, 1)
    assert apply_record(None, records[0], mirrors=MIRRORS).outcome is Outcome.NOT_OURS
    assert apply_record(None, records[1], mirrors=MIRRORS).outcome is Outcome.NOT_OURS
    assert apply_record(None, records[1], mirrors=MIRRORS, complete=False).outcome is Outcome.GAP


def test_delete_removes_and_a_repeat_is_harmless() -> None:
    _, records = _history(_ga(), 1)
    row = apply_record(None, records[0], mirrors=MIRRORS).row
    delete = ChangeRecord(Position("e", 9), "itm-1-ga", 2, "h", "delete", {})
    applied = apply_record(row, delete, mirrors=MIRRORS)
    assert applied.deleted
    assert apply_record(None, delete, mirrors=MIRRORS).outcome is Outcome.DUPLICATE


def test_mismatched_row_is_refused() -> None:
    _, records = _history(_ga(), 0)
    with pytest.raises(ValueError, match="paired"):
        apply_record(_seated().to_document(), records[0], mirrors=MIRRORS)


def test_replace_row_is_version_monotonic_unless_forced() -> None:
    versions, _ = _history(_ga(), 2)
    new, old = versions[2].to_document(), versions[1].to_document()
    assert replace_row(old, new, force=False) == new
    assert replace_row(new, old, force=False) is None
    assert replace_row(new, old, force=True) == old
    assert replace_row(new, new, force=True) is None
    assert replace_row(None, old, force=False) == old


def test_row_hash_ignores_order_and_sees_changes() -> None:
    docs = [item.to_document() for item in tiny_catalog()[2]]
    assert row_hash(docs) == row_hash(reversed(docs))
    changed = [dict(docs[0], available=1), *docs[1:]]
    assert row_hash(changed) != row_hash(docs)


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(["ga", "seated"]),
    steps=st.integers(min_value=0, max_value=5),
    data=st.data(),
)
def test_any_delivery_with_refetch_on_gap_converges_and_never_goes_back(
    kind: str, steps: int, data: st.DataObject
) -> None:
    """Duplicated, reordered deliveries; on a GAP the caller refetches the newest document."""
    versions, records = _history(_ga() if kind == "ga" else _seated(), steps)
    newest = versions[-1].to_document()
    indices = data.draw(st.lists(st.integers(0, len(records) - 1), max_size=3 * len(records)))
    delivery = [records[i] for i in indices] + records  # the in-order tail always arrives eventually
    row: dict[str, Any] | None = None
    for record in delivery:
        before = row["version"] if row is not None else 0
        applied = apply_record(row, record, mirrors=MIRRORS, complete=False)
        if applied.outcome is Outcome.GAP:
            row = replace_row(row, newest, force=False) or row
        elif applied.outcome is Outcome.APPLIED:
            row = applied.row
        assert row is None or row["version"] >= before
    assert row == newest
