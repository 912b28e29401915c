"""JSON merge patches (RFC 7396): compute the patch between two documents and apply it.

The change feed ships only what changed: ``diff(old, new)`` yields the smallest
merge patch whose application to ``old`` gives ``new``. Merge patches replace
arrays whole and cannot express a JSON ``null`` value inside an object (null
means "remove the member", RFC 7396 section 1), so documents that may hold
nulls are diffed with ``null`` members removed on apply and re-added by the
reader's defaults. Item documents only use null for ``row`` on GA pools, which
never changes after creation.
"""

from __future__ import annotations

from typing import Any

JSON = Any


def diff(old: JSON, new: JSON) -> JSON:
    """Return a merge patch turning `old` into `new`.

    Both are JSON values (dict, list, str, int, float, bool, None). When both are
    objects the patch holds only changed members, removed members as None, and
    nested objects diffed recursively; otherwise the patch is `new` itself.
    """
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, JSON] = {}
    for key, old_value in old.items():
        if key not in new:
            patch[key] = None
        elif not _same(new[key], old_value):
            if isinstance(old_value, dict) and isinstance(new[key], dict):
                patch[key] = diff(old_value, new[key])
            else:
                patch[key] = new[key]
    for key, new_value in new.items():
        if key not in old:
            patch[key] = new_value
    return patch


def apply(target: JSON, patch: JSON) -> JSON:
    """Apply a merge patch as RFC 7396 section 2 specifies; inputs are not mutated."""
    if not isinstance(patch, dict):
        return patch
    result: dict[str, JSON] = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply(result.get(key), value)
    return result


def _same(left: JSON, right: JSON) -> bool:
    """JSON equality: unlike ``==`` it tells ``true`` from ``1`` and ``1.0`` from ``1`` at any depth."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(_same(value, right[key]) for key, value in left.items())
    if isinstance(left, list):
        return len(left) == len(right) and all(map(_same, left, right))
    return bool(left == right)
