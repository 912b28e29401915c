"""Change-feed positions, the resume decision and item patches: the pure part of `/v1/changes`."""

from __future__ import annotations

import dataclasses
import string
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from origin import mergepatch
from origin.changefeed import Position, check_since, item_patch
from origin.errors import BadRequest, PositionGone
from tests.origin.conftest import START, tiny_catalog

MAX_SEQ = 2**63 - 1
FUZZ = settings(max_examples=300, deadline=None)

epochs = st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=64)
positions = st.builds(Position, epochs, st.integers(min_value=0, max_value=MAX_SEQ))


@FUZZ
@given(st.text() | st.from_regex(r"\A[a-z0-9]{0,3}:[0-9١²]{0,30}\Z"))
def test_parse_raises_only_bad_request(text: str) -> None:
    try:
        position = Position.parse(text)
    except BadRequest:
        return
    assert 0 <= position.seq <= MAX_SEQ
    assert position.epoch.isalnum() and 0 < len(position.epoch) <= 64
    assert Position.parse(position.encode()) == position


@FUZZ
@given(positions)
def test_encode_round_trips(position: Position) -> None:
    assert Position.parse(position.encode()) == position


@pytest.mark.parametrize(
    "text",
    [
        "",
        ":",
        ":1",
        "ab:",
        "ab:-1",
        "ab:+1",
        "ab:1.0",
        "ab: 1",
        "ab:1 ",
        "a-b:1",
        "ab",
        "a" * 65 + ":1",
        f"ab:{MAX_SEQ + 1}",
        "ab:" + "9" * 5000,  # beyond int()'s digit limit: must still be our error
        "ab:²",  # str.isdigit() is true, int() refuses it
        "ab:١",  # an Arabic-Indic one: int() reads it, a position must not
    ],
)
def test_parse_refuses(text: str) -> None:
    with pytest.raises(BadRequest):
        Position.parse(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ab:0", Position("ab", 0)),
        (f"ab:{MAX_SEQ}", Position("ab", MAX_SEQ)),
        ("a" * 64 + ":7", Position("a" * 64, 7)),
        ("ab:007", Position("ab", 7)),
    ],
)
def test_parse_accepts(text: str, expected: Position) -> None:
    assert Position.parse(text) == expected


# since.seq, retained_after, head → may the consumer continue?
@pytest.mark.parametrize(
    ("seq", "retained_after", "head", "continues"),
    [
        (0, 0, 0, True),  # a fresh consumer of an empty, never-pruned feed
        (0, 0, 5, True),
        (5, 5, 5, True),  # caught up
        (3, 3, 9, True),  # needs 4.., the oldest kept record
        (2, 3, 9, False),  # needs 3, pruned away
        (9, 3, 9, True),
        (10, 3, 9, False),  # ahead of our head: we lost history it has seen
        (0, 1, 1, False),
    ],
)
def test_check_since_decision_table(seq: int, retained_after: int, head: int, continues: bool) -> None:
    since = Position("ep1", seq)
    if continues:
        check_since(since, epoch="ep1", retained_after=retained_after, head=head)
    else:
        with pytest.raises(PositionGone):
            check_since(since, epoch="ep1", retained_after=retained_after, head=head)


def test_check_since_refuses_another_history() -> None:
    with pytest.raises(PositionGone, match="re-snapshot"):
        check_since(Position("other", 5), epoch="ep1", retained_after=0, head=10)


@FUZZ
@given(
    positions,
    st.sampled_from(["ep1", "ep2"]),
    st.integers(min_value=0, max_value=50),
    st.integers(min_value=0, max_value=50),
)
def test_check_since_matches_its_contract(since: Position, epoch: str, retained_after: int, extra: int) -> None:
    head = retained_after + extra
    since = dataclasses.replace(since, epoch=since.epoch if since.seq % 2 else epoch, seq=since.seq % 60)
    gone = since.epoch != epoch or not retained_after <= since.seq <= head
    if gone:
        with pytest.raises(PositionGone):
            check_since(since, epoch=epoch, retained_after=retained_after, head=head)
    else:
        check_since(since, epoch=epoch, retained_after=retained_after, head=head)


def test_item_patch_of_a_new_item_is_the_whole_document_without_record_fields() -> None:
    item = tiny_catalog()[2][1]
    doc = item.to_document()
    patch = item_patch(None, doc)
    assert "version" not in patch and "hlc" not in patch
    assert patch == {key: value for key, value in doc.items() if key not in ("version", "hlc")}


def test_item_patch_holds_only_changed_fields() -> None:
    item = tiny_catalog()[2][1]
    later = dataclasses.replace(
        item,
        available=4,
        available_seats=("1", "2", "5", "6"),
        version=item.version + 1,
        hlc="0000000000001-00000-test",
        updated_at=START + timedelta(seconds=1),
    )
    patch = item_patch(item.to_document(), later.to_document())
    assert set(patch) == {"available", "available_seats", "updated_at"}
    assert patch["available_seats"] == ["1", "2", "5", "6"]


def test_item_patch_without_changes_besides_record_fields_is_empty() -> None:
    item = tiny_catalog()[2][0]
    bumped = dataclasses.replace(item, version=item.version + 7, hlc="9999999999999-00000-x")
    assert item_patch(item.to_document(), bumped.to_document()) == {}


@FUZZ
@given(
    st.integers(min_value=0, max_value=10),
    st.integers(min_value=1, max_value=100),
    st.text(alphabet="0123456789-abc", min_size=1, max_size=20),
)
def test_item_patch_applied_to_the_old_document_gives_the_new_one(available: int, version: int, hlc: str) -> None:
    item = tiny_catalog()[2][0]
    later = dataclasses.replace(item, available=available, version=version, hlc=hlc)
    old_doc, new_doc = item.to_document(), later.to_document()
    patch = item_patch(old_doc, new_doc)
    assert not {"version", "hlc"} & set(patch)
    patched = mergepatch.apply(old_doc, patch)
    assert patched == {**new_doc, "version": old_doc["version"], "hlc": old_doc["hlc"]}
