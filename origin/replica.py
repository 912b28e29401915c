"""Applying change records to a replica's copy of one row: the pure core of a follower.

A follower (a regional shard, a POP) keeps a copy of some item documents and
reads the upstream's change feed, which is delivered at least once and in
order from a checkpoint. :func:`apply_record` decides, for one record and the
follower's current copy of that row, what happens. It never reads a clock,
never touches storage, and never moves a row to a lower version, so applying
the same record twice, or an old batch again, changes nothing.

Decision table (``row`` is the follower's copy, ``rec`` the record; a *full*
patch is one that holds every field of an item document, which is what the
origin writes when an item is created):

====  ================================================  =========================================
rule  when                                              outcome
====  ================================================  =========================================
R1    row present, rec.version ≤ row version            DUPLICATE (already have it or newer)
R2    row present, delete                               APPLIED, row removed
R3    row present, rec.version = row version + 1        APPLIED, patch merged (RFC 7396)
R4    row present, full patch, version higher           APPLIED, the patch is the whole row
R5    row present, partial patch, version > row + 1     GAP: changes in between are missing
R6    row absent, delete                                DUPLICATE (nothing to remove)
R7    row absent, full patch, event mirrored            APPLIED, new row
R8    row absent, full patch, event not mirrored        NOT_OURS
R9    row absent, partial patch, ``complete``           NOT_OURS (see below)
R10   row absent, partial patch, not ``complete``       GAP: refetch the item
R11   an event record (``op`` = ``event``)              NOT_OURS: not an item row
====  ================================================  =========================================

R11 comes first: an event record's ``item_id`` is an event id and its patch is
metadata, which the follower merges into its event copy with origin.lww.

R9 holds because an item's first record always carries its whole document and
an item never moves to another event: a follower that holds every row of
every event it mirrors (it finished its snapshot, and adds events only through
a filtered snapshot taken from its current feed position) can only meet a
partial patch for an unknown row when the item belongs to another event.
A follower that cannot vouch for that passes ``complete=False`` and gets a GAP.

Rows are item documents (``Item.to_document()``); merge patches cannot carry a
JSON null inside an object, so the nullable ``row`` field is restored after a
patch removed it (origin.mergepatch's module docstring).
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Container, Iterable
from dataclasses import dataclass
from typing import Any, Final

from origin import mergepatch
from origin.changefeed import OP_DELETE, OP_EVENT, ChangeRecord

Document = dict[str, Any]

# Every field of an item document except those the record itself carries
# (version, hlc): a patch holding all of them is the item's whole document.
ITEM_FIELDS: Final = frozenset(
    {
        "id",
        "event_id",
        "kind",
        "name",
        "section",
        "row",
        "seats",
        "capacity",
        "price_tier",
        "price",
        "currency",
        "available",
        "available_seats",
        "updated_at",
    }
)
# Fields whose JSON null a merge patch removes; restored with this default.
_NULLABLE_DEFAULTS: Final = {"row": None}


class Outcome(enum.Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    GAP = "gap"
    NOT_OURS = "not_ours"


@dataclass(frozen=True, slots=True)
class Applied:
    """What one record does to one row.

    ``row`` is the row after the record: the new document for APPLIED upserts,
    None for APPLIED deletes, and the unchanged input otherwise. ``reason``
    says why, in words fit for a log line.
    """

    outcome: Outcome
    row: Document | None
    reason: str

    @property
    def deleted(self) -> bool:
        return self.outcome is Outcome.APPLIED and self.row is None


def is_full_patch(patch: Document) -> bool:
    """True when `patch` carries a whole item document (the record of an item's creation)."""
    return ITEM_FIELDS - _NULLABLE_DEFAULTS.keys() <= patch.keys()


def apply_record(
    row: Document | None, record: ChangeRecord, *, mirrors: Container[str], complete: bool = True
) -> Applied:
    """Apply `record` to the follower's copy `row` of the same item (decision table above).

    Args:
        row: the current item document, or None when the follower has no row.
        record: a change record for ``row``'s item.
        mirrors: event ids the follower mirrors.
        complete: the follower holds every row of every mirrored event (rule R9).

    Raises ValueError when `row` is not a document of ``record.item_id``: the
    caller paired them wrongly, and that must not be applied.
    """
    if record.op == OP_EVENT:
        return Applied(Outcome.NOT_OURS, row, "an event's metadata, merged by origin.lww, not an item row")
    if row is not None and row.get("id") != record.item_id:
        raise ValueError(f"record for {record.item_id!r} paired with row {row.get('id')!r}")
    full = record.op != OP_DELETE and is_full_patch(record.patch)
    if row is not None:
        current = _version(row)
        if record.version <= current:
            return Applied(Outcome.DUPLICATE, row, f"version {record.version} ≤ held {current}")
        if record.op == OP_DELETE:
            return Applied(Outcome.APPLIED, None, f"deleted at version {record.version}")
        if full:
            return Applied(Outcome.APPLIED, _finish(record.patch, record), "whole document")
        if record.version == current + 1:
            return Applied(Outcome.APPLIED, _finish(mergepatch.apply(row, record.patch), record), "patched")
        return Applied(Outcome.GAP, row, f"version {record.version} after held {current}: changes missing")
    if record.op == OP_DELETE:
        return Applied(Outcome.DUPLICATE, None, "delete of a row not held")
    if full:
        event_id = record.patch.get("event_id")
        if isinstance(event_id, str) and event_id in mirrors:
            return Applied(Outcome.APPLIED, _finish(record.patch, record), "new row")
        return Applied(Outcome.NOT_OURS, None, f"event {event_id!r} is not mirrored")
    if complete:
        return Applied(Outcome.NOT_OURS, None, "partial patch for an item of an event not mirrored")
    return Applied(Outcome.GAP, None, "partial patch for a row not held: refetch it")


def replace_row(row: Document | None, incoming: Document, *, force: bool) -> Document | None:
    """A snapshot row or refetched item: the row to keep, or None when `row` is already as new.

    Without `force` the incoming document wins only with a higher version (a
    snapshot page read after the feed moved on may be older than what the feed
    already delivered). With `force` it wins regardless: after an upstream epoch
    change versions of the old history mean nothing in the new one.
    """
    if row is not None and row.get("id") != incoming.get("id"):
        raise ValueError(f"document {incoming.get('id')!r} paired with row {row.get('id')!r}")
    if row is None or force:
        return incoming if row != incoming else None
    return incoming if _version(incoming) > _version(row) else None


def row_hash(rows: Iterable[Document]) -> str:
    """A stable hash of a set of item documents, whatever their order (for convergence checks)."""
    digest = hashlib.blake2b(digest_size=16)
    for line in sorted(json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False) for row in rows):
        digest.update(line.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _finish(doc: Document, record: ChangeRecord) -> Document:
    """The row after a patch: nullable fields restored, version and stamp from the record."""
    finished = dict(doc)
    for key, default in _NULLABLE_DEFAULTS.items():
        finished.setdefault(key, default)
    finished["version"] = record.version
    finished["hlc"] = record.hlc
    return finished


def _version(row: Document) -> int:
    version = row.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(f"row {row.get('id')!r} has no integer version")
    return version
