"""Request parsing and conditional-request validators fuzzed: only BadRequest may escape."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from origin.errors import BadRequest
from origin.ledger import (
    MAX_ID_LENGTH,
    MAX_IDEMPOTENCY_KEY_LENGTH,
    HoldRequest,
    check_idempotency_key,
    parse_hold_request,
    parse_order_request,
)
from origin.validators import http_date, is_not_modified, item_etag, none_match, not_modified_since
from tests.origin.conftest import LIMITS

FUZZ = settings(max_examples=200, deadline=None)
MAX_TTL_SECONDS = int(LIMITS.max_hold_ttl.total_seconds())

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)

# Values for one field: sometimes right, sometimes just wrong (bool is an int
# in Python, 1.0 equals 1, an empty or over-long string, a list of non-strings).
identifiers = (
    st.text(min_size=1, max_size=MAX_ID_LENGTH)
    | st.sampled_from(["", "x" * (MAX_ID_LENGTH + 1), 7, None, ["itm"], True])
    | json_values
)
quantities = st.integers(min_value=-2, max_value=LIMITS.max_qty_per_hold + 2) | st.sampled_from([True, 1.0, "2", None])
seat_lists = (
    st.lists(st.text(min_size=1, max_size=4), max_size=4)
    | st.sampled_from([None, [""], ["x" * (MAX_ID_LENGTH + 1)], [1], "A1", {"A": 1}])
    | json_values
)
ttls = st.integers(min_value=-1, max_value=MAX_TTL_SECONDS + 1) | st.sampled_from([None, 60.0, False, "60"])

hold_bodies = st.fixed_dictionaries(
    {},
    optional={
        "item_id": identifiers,
        "user_id": identifiers,
        "qty": quantities,
        "seats": seat_lists,
        "ttl_seconds": ttls,
        "extra": json_values,
    },
)

valid_hold_bodies = st.fixed_dictionaries(
    {
        "item_id": st.text(min_size=1, max_size=MAX_ID_LENGTH),
        "user_id": st.text(min_size=1, max_size=MAX_ID_LENGTH),
        "qty": st.integers(min_value=1, max_value=LIMITS.max_qty_per_hold),
    },
    optional={
        "seats": st.lists(st.text(min_size=1, max_size=MAX_ID_LENGTH), max_size=4),
        "ttl_seconds": st.integers(min_value=1, max_value=MAX_TTL_SECONDS) | st.none(),
    },
)


@st.composite
def nearly_valid_hold_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid body with at most one field removed, retyped or added."""
    body = dict(draw(valid_hold_bodies))
    field = draw(st.sampled_from(["item_id", "user_id", "qty", "seats", "ttl_seconds", "extra", None]))
    if field is not None:
        if draw(st.booleans()):
            body.pop(field, None)
        else:
            body[field] = draw(json_values)
    return body


def valid_identifier(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH


def hold_body_is_valid(body: Any) -> bool:
    """The rules of `POST /v1/holds`, written out independently of the parser."""
    if not isinstance(body, dict) or not set(body) <= {"item_id", "user_id", "qty", "seats", "ttl_seconds"}:
        return False
    qty, seats, ttl = body.get("qty"), body.get("seats"), body.get("ttl_seconds")
    return (
        valid_identifier(body.get("item_id"))
        and valid_identifier(body.get("user_id"))
        and type(qty) is int
        and 1 <= qty <= LIMITS.max_qty_per_hold
        and (seats is None or (isinstance(seats, list) and all(valid_identifier(seat) for seat in seats)))
        and (ttl is None or (type(ttl) is int and 1 <= ttl <= MAX_TTL_SECONDS))
    )


def check_hold_body(body: Any) -> None:
    try:
        request = parse_hold_request(body, LIMITS)
    except BadRequest:
        assert not hold_body_is_valid(body)
        return
    assert hold_body_is_valid(body)
    assert request == HoldRequest(
        body["item_id"],
        body["qty"],
        body["user_id"],
        None if body.get("seats") is None else tuple(body["seats"]),
        None if body.get("ttl_seconds") is None else timedelta(seconds=body["ttl_seconds"]),
    )


@FUZZ
@given(json_values)
def test_hold_request_from_any_json(body: Any) -> None:
    check_hold_body(body)


@FUZZ
@given(hold_bodies | nearly_valid_hold_bodies())
def test_hold_request_around_the_valid_keys(body: dict[str, Any]) -> None:
    check_hold_body(body)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({"user_id": "u", "qty": 1}, "item_id"),
        ({"item_id": "i", "qty": 1}, "user_id"),
        ({"item_id": "i", "user_id": "u", "qty": True}, "qty"),
        ({"item_id": "i", "user_id": "u", "qty": 1.0}, "qty"),
        ({"item_id": "i", "user_id": "u", "qty": LIMITS.max_qty_per_hold + 1}, "qty"),
        ({"item_id": "i", "user_id": "u", "qty": 1, "seats": "A1"}, "seats"),
        ({"item_id": "i", "user_id": "u", "qty": 1, "ttl_seconds": MAX_TTL_SECONDS + 1}, "ttl_seconds"),
        ({"item_id": "i", "user_id": "u", "qty": 1, "price": 0}, "price"),
    ],
)
def test_hold_request_errors_name_the_field(body: Any, field: str) -> None:
    with pytest.raises(BadRequest, match=field):
        parse_hold_request(body, LIMITS)


@FUZZ
@given(json_values | st.fixed_dictionaries({}, optional={"hold_id": identifiers, "extra": json_values}))
def test_order_request(body: Any) -> None:
    valid = isinstance(body, dict) and set(body) == {"hold_id"} and valid_identifier(body["hold_id"])
    try:
        hold_id = parse_order_request(body)
    except BadRequest:
        assert not valid
        return
    assert valid and hold_id == body["hold_id"]


@FUZZ
@given(st.none() | st.text(max_size=MAX_IDEMPOTENCY_KEY_LENGTH + 5) | st.text(min_size=250, max_size=260))
def test_idempotency_key(key: str | None) -> None:
    valid = key is None or (0 < len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH and key.isprintable())
    try:
        checked = check_idempotency_key(key)
    except BadRequest:
        assert not valid
        return
    assert valid and checked == key


@pytest.mark.parametrize("key", ["", "a\nb", "\x00", "k" * (MAX_IDEMPOTENCY_KEY_LENGTH + 1)])
def test_idempotency_key_refuses(key: str) -> None:
    with pytest.raises(BadRequest, match="Idempotency-Key"):
        check_idempotency_key(key)


ETAG = item_etag("itm-1", 3)
MODIFIED = datetime(2026, 11, 1, 12, 0, 0, 250_000, tzinfo=UTC)


@FUZZ
@given(st.text())
def test_none_match_never_raises(header: str) -> None:
    assert isinstance(none_match(header, ETAG), bool)


@FUZZ
@given(st.lists(st.sampled_from(['"a.v1"', ETAG, f"W/{ETAG}", '"itm-1.v4"', "", "junk"]), max_size=4))
def test_none_match_finds_the_tag_in_a_list(candidates: list[str]) -> None:
    header = " , ".join(candidates)
    assert none_match(header, ETAG) == any(candidate in (ETAG, f"W/{ETAG}") for candidate in candidates)


@pytest.mark.parametrize(
    ("header", "matches"),
    [("*", True), (ETAG, True), (f"W/{ETAG}", True), (f'"x", {ETAG}', True), ('"itm-1.v2"', False), ("", False)],
)
def test_none_match(header: str, matches: bool) -> None:
    assert none_match(header, ETAG) is matches


@FUZZ
@given(
    st.text()
    | st.from_regex(
        r"\A(Sun, )?[0-9]{1,3} (Nov|Foo) [0-9]{1,5} [0-9]{1,2}:[0-9]{1,2}(:[0-9]{1,2})? ?(GMT|[+-][0-9]{4}|EST|XYZ)?\Z"
    )
)
def test_not_modified_since_never_raises(header: str) -> None:
    assert isinstance(not_modified_since(header, MODIFIED), bool)


def test_not_modified_since_compares_whole_seconds() -> None:
    assert not_modified_since(http_date(MODIFIED), MODIFIED)  # the fraction of a second is not a change
    assert not not_modified_since(http_date(MODIFIED - timedelta(seconds=1)), MODIFIED)
    assert not_modified_since("Sun, 01 Nov 2026 13:00:00 +0100", MODIFIED)
    assert not not_modified_since("not a date", MODIFIED)


def test_if_none_match_takes_precedence_over_if_modified_since() -> None:
    # RFC 9110 section 13.2.2: If-Modified-Since is ignored when If-None-Match is present.
    fresh_date = http_date(MODIFIED + timedelta(hours=1))
    assert not is_not_modified('"other"', fresh_date, ETAG, MODIFIED)
    assert is_not_modified(None, fresh_date, ETAG, MODIFIED)
    assert is_not_modified(ETAG, None, ETAG, MODIFIED)
    assert not is_not_modified(None, None, ETAG, MODIFIED)
