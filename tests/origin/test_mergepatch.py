"""JSON merge patches (RFC 7396): diff/apply round trips, null semantics, the RFC's examples."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from origin import mergepatch

# `x + 0.0` turns -0.0 into 0.0: JSON numbers compare by value, and the strict
# comparison below goes through json.dumps, which would print the sign.
floats = st.floats(allow_nan=False, allow_infinity=False).map(lambda x: x + 0.0)
scalars = st.booleans() | st.integers(min_value=-(2**53), max_value=2**53) | floats | st.text(max_size=6)
# A small key alphabet so that two drawn documents share members often.
keys = st.text(alphabet="abcd", max_size=2)

# Documents a merge patch can reach: no null member values inside objects
# (RFC 7396 section 1: null in a patch means "remove"). Arrays are replaced
# whole, so null array elements are fine.
values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda children: st.lists(children | st.none(), max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)
documents = st.dictionaries(keys, values, max_size=5)

# Arbitrary JSON, nulls anywhere: what a patch from a client may look like.
any_json: st.SearchStrategy[Any] = st.recursive(
    scalars | st.none(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)

FUZZ = settings(max_examples=100, deadline=None)


def canonical(value: Any) -> str:
    """Strict JSON equality: unlike ==, tells true from 1 and 1.0 from 1."""
    return json.dumps(value, sort_keys=True)


@FUZZ
@given(documents, documents)
def test_apply_of_diff_gives_the_new_document(old: dict[str, Any], new: dict[str, Any]) -> None:
    assert canonical(mergepatch.apply(old, mergepatch.diff(old, new))) == canonical(new)


@FUZZ
@given(documents, documents)
def test_diff_holds_only_changed_members(old: dict[str, Any], new: dict[str, Any]) -> None:
    patch = mergepatch.diff(old, new)
    changed = {key for key in old.keys() | new.keys() if canonical(old.get(key)) != canonical(new.get(key))}
    assert set(patch) == changed
    for key in changed - new.keys():
        assert patch[key] is None


@FUZZ
@given(documents)
def test_diff_of_equal_documents_is_empty(doc: dict[str, Any]) -> None:
    assert mergepatch.diff(doc, copy.deepcopy(doc)) == {}


@FUZZ
@given(any_json, any_json)
def test_apply_and_diff_never_mutate_their_inputs(target: Any, patch: Any) -> None:
    target_before, patch_before = copy.deepcopy(target), copy.deepcopy(patch)
    mergepatch.apply(target, patch)
    mergepatch.diff(target, patch)
    assert canonical(target) == canonical(target_before)
    assert canonical(patch) == canonical(patch_before)


@FUZZ
@given(any_json, any_json)
def test_a_patch_is_idempotent(target: Any, patch: Any) -> None:
    once = mergepatch.apply(target, patch)
    assert canonical(mergepatch.apply(once, patch)) == canonical(once)


@FUZZ
@given(documents, keys)
def test_null_removes_a_member_whether_or_not_it_exists(doc: dict[str, Any], key: str) -> None:
    result = mergepatch.apply(doc, {key: None})
    assert key not in result
    assert canonical(result) == canonical({k: v for k, v in doc.items() if k != key})


def test_diff_marks_removed_members_with_null() -> None:
    assert mergepatch.diff({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": 2}}) == {"a": None, "b": {"d": None}}


def test_null_in_a_patch_object_never_lands_in_the_result() -> None:
    # Section 2: a patch object applied to a non-object target starts from {},
    # and its nulls are removals, so no null survives into the result.
    assert mergepatch.apply("text", {"a": {"b": None, "c": 1}, "d": None}) == {"a": {"c": 1}}


def test_a_null_patch_replaces_the_whole_document() -> None:
    assert mergepatch.apply({"a": 1}, None) is None


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"x": [1]}, {"x": [True]}),
        ({"x": {"y": 1}}, {"x": {"y": True}}),
        ({"x": {"y": [0]}}, {"x": {"y": [False]}}),
        ({"x": [1]}, {"x": [1.0]}),
    ],
)
def test_diff_tells_json_types_apart_at_any_depth(old: dict[str, Any], new: dict[str, Any]) -> None:
    # Python says True == 1 and [1] == [True]; JSON does not.
    assert canonical(mergepatch.apply(old, mergepatch.diff(old, new))) == canonical(new)


# RFC 7396 appendix A, verbatim (original, patch, result).
APPENDIX_A = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("original", "patch", "result"), APPENDIX_A)
def test_rfc7396_appendix_a(original: Any, patch: Any, result: Any) -> None:
    assert canonical(mergepatch.apply(original, patch)) == canonical(result)


def test_rfc7396_section_3_example() -> None:
    original = {
        "title": "Goodbye!",
        "author": {"givenName": "John", "familyName": "Doe"},
        "tags": ["example", "sample"],
        "content": "This will be unchanged",
    }
    patch = {"title": "Hello!", "phoneNumber": "+01-123-456-7890", "author": {"familyName": None}, "tags": ["example"]}
    expected = {
        "title": "Hello!",
        "author": {"givenName": "John"},
        "tags": ["example"],
        "content": "This will be unchanged",
        "phoneNumber": "+01-123-456-7890",
    }
    assert mergepatch.apply(original, patch) == expected
    assert mergepatch.diff(original, expected) == patch
