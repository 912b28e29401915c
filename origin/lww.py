"""Last-write-wins merge of event metadata: the pure core of metadata replication.

Only non-stock metadata merges this way (ARCHITECTURE.md, consistency rules):
an event's ``name``, ``artist``, ``genre`` and ``price_tiers`` (the display
names and amounts of its tiers). Stock never does; it has one writer.

The merge is *per field*: every metadata field carries the hybrid logical
clock stamp (origin.hlc) of the write that set it, and of two copies of a
field the one with the higher stamp wins. Stamps order by (wall, logical,
node), so two different writes never tie: one node never hands out a stamp
twice, and two nodes differ in the node id. A field nobody edited since the
catalog was loaded has no stamp and loses to any stamped write.

Because the winner of each field is the maximum of a total order, the merge
is a join of a semilattice: commutative, associative and idempotent. Copies
that saw the same writes in any order, any number of times, hold the same
metadata (tests/origin/test_lww.py proves it with hypothesis). For the total
order to be total even over inputs that cannot occur (the same stamp with two
values, or two unstamped values that differ) the canonical JSON text of the
value breaks the tie.

Documents are event documents (``Event.to_document()``), or the patch of an
event change record: the edited fields and their stamps under
``metadata_stamps``. Nothing here reads a clock or touches storage.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from origin.hlc import Stamp

Document = dict[str, Any]

# The metadata fields, in document order. Everything else of an event (its id,
# venue, region, times, popularity) is set by the catalog and never edited.
METADATA_FIELDS: Final = ("name", "artist", "genre", "price_tiers")
# Where a document keeps the stamp of each edited field (field → encoded Stamp).
STAMPS_KEY: Final = "metadata_stamps"


@dataclass(frozen=True, slots=True)
class Stamped:
    """One metadata field's value and the stamp of the write that set it (None: never edited)."""

    value: Any
    stamp: Stamp | None

    def _rank(self) -> tuple[int, int, str, str]:
        # An unstamped value ranks below every stamp (wall_ms is never negative).
        canonical = json.dumps(self.value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        if self.stamp is None:
            return (-1, -1, "", canonical)
        return (self.stamp.wall_ms, self.stamp.logical, self.stamp.node, canonical)


Metadata = Mapping[str, Stamped]


def merge(left: Metadata, right: Metadata) -> dict[str, Stamped]:
    """The per-field last-write-wins merge of two copies of one event's metadata.

    A field present in only one copy is taken from it (an event record's patch
    holds only the fields it edited). Commutative, associative, idempotent.
    """
    merged: dict[str, Stamped] = {}
    for name in sorted(left.keys() | right.keys()):
        mine, theirs = left.get(name), right.get(name)
        if mine is None or theirs is None:
            winner = mine if theirs is None else theirs
        else:
            winner = mine if mine._rank() >= theirs._rank() else theirs
        assert winner is not None
        merged[name] = winner
    return merged


def metadata_of(doc: Mapping[str, Any]) -> dict[str, Stamped]:
    """The metadata fields of an event document or event-record patch, with their stamps.

    Raises ValueError when ``metadata_stamps`` is not an object of encoded
    stamps, or stamps a field that is not metadata or not in the document.
    """
    raw = doc.get(STAMPS_KEY, {})
    if not isinstance(raw, dict):
        raise ValueError(f"{STAMPS_KEY} is not an object")
    stamps: dict[str, Stamp] = {}
    for name, text in raw.items():
        if name not in METADATA_FIELDS or name not in doc:
            raise ValueError(f"{STAMPS_KEY} stamps {name!r}, which is not a metadata field of the document")
        if not isinstance(text, str):
            raise ValueError(f"{STAMPS_KEY}.{name} is not an encoded stamp")
        stamps[name] = Stamp.decode(text)
    return {name: Stamped(doc[name], stamps.get(name)) for name in METADATA_FIELDS if name in doc}


def with_metadata(doc: Mapping[str, Any], metadata: Metadata) -> Document:
    """`doc` with `metadata`'s values and stamps (unstamped fields leave ``metadata_stamps``).

    ``metadata_stamps`` is left out when no field is stamped, so a never-edited
    event's document is what it was before metadata could be edited.
    """
    result = dict(doc)
    stamps = _stamps_of(doc)
    for name, field in metadata.items():
        result[name] = field.value
        if field.stamp is None:
            stamps.pop(name, None)
        else:
            stamps[name] = field.stamp.encode()
    result.pop(STAMPS_KEY, None)
    if stamps:
        result[STAMPS_KEY] = {name: stamps[name] for name in METADATA_FIELDS if name in stamps}
    return result


def merge_documents(local: Mapping[str, Any], incoming: Mapping[str, Any]) -> Document:
    """`local` with its metadata merged with `incoming`'s; every other field of `local` is kept.

    Raises ValueError as :func:`metadata_of` does, for either document.
    """
    return with_metadata(local, merge(metadata_of(local), metadata_of(incoming)))


def record_patch(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> Document:
    """The patch of an event change record: the fields whose value or stamp changed, and their stamps.

    With no `before` (an event the follower did not hold) every stamped field
    is included. Empty when nothing changed.
    """
    old = {} if before is None else metadata_of(before)
    new = metadata_of(after)
    changed = {
        name: field
        for name, field in new.items()
        if field.stamp is not None and (name not in old or old[name] != field)
    }
    if not changed:
        return {}
    patch: Document = {name: field.value for name, field in changed.items()}
    patch[STAMPS_KEY] = _encoded(changed)
    return patch


def is_event_patch(patch: Mapping[str, Any]) -> bool:
    """Whether a change record's patch is an event's metadata (it carries ``metadata_stamps``).

    Item documents never hold that field, so a follower that is handed only
    (id, version, patch) can still tell an event record from an item's.
    """
    return isinstance(patch.get(STAMPS_KEY), dict)


def _stamps_of(doc: Mapping[str, Any]) -> dict[str, str]:
    raw = doc.get(STAMPS_KEY, {})
    return {str(name): text for name, text in raw.items() if isinstance(text, str)} if isinstance(raw, dict) else {}


def _encoded(metadata: Metadata) -> dict[str, str]:
    return {name: field.stamp.encode() for name, field in metadata.items() if field.stamp is not None}
