"""Change-feed records and positions: the pure part of `/v1/changes`.

Every committed change to an item appends one record in the same transaction:
its position, the item id, the item's new version, its HLC stamp, the operation
and a JSON merge patch (RFC 7396) of only the fields that changed.

An edit of an event's metadata appends an *event record* (``op`` = ``event``):
``item_id`` is the event id, ``version`` is always :data:`EVENT_RECORD_VERSION`
(metadata has no version: its stamps order it), ``hlc`` is the edit's stamp,
and ``patch`` holds the edited fields and their stamps under
``metadata_stamps``. Followers merge it with origin.lww, so a duplicate or an
older record changes nothing; POPs evict the event's pages.

A position is ``EPOCH:SEQ``. ``SEQ`` counts records of one history, with no
gaps and in commit order. ``EPOCH`` names that history: it is drawn when a
store is created, so a consumer holding a position from another database (a
restore, a re-created store) is told to re-snapshot instead of silently reading
someone else's sequence numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from origin import mergepatch
from origin.errors import BadRequest, PositionGone

OP_UPSERT: Final = "upsert"
OP_DELETE: Final = "delete"
OP_EVENT: Final = "event"
ChangeOp = Literal["upsert", "delete", "event"]
CHANGE_OPS: Final = (OP_UPSERT, OP_DELETE, OP_EVENT)
# The version every event record carries; the feed contract wants a positive integer.
EVENT_RECORD_VERSION: Final = 1

# Fields that the record itself carries; repeating them in the patch would
# only add bytes to every change.
_RECORD_FIELDS: Final = frozenset({"version", "hlc"})

_MAX_EPOCH_LENGTH: Final = 64
_MAX_SEQ: Final = 2**63 - 1  # a PostgreSQL bigint


@dataclass(frozen=True, order=True, slots=True)
class Position:
    epoch: str
    seq: int

    def encode(self) -> str:
        return f"{self.epoch}:{self.seq}"

    @classmethod
    def parse(cls, text: str) -> Position:
        """Parse ``EPOCH:SEQ``. Raises BadRequest naming what is wrong."""
        epoch, sep, seq = text.rpartition(":")
        if not sep or not epoch or len(epoch) > _MAX_EPOCH_LENGTH or not epoch.isalnum():
            raise BadRequest(f"position {text[:80]!r} is not EPOCH:SEQ")
        # ASCII digits only (int() also reads '١' and refuses '²'), and no
        # longer than the largest bigint before int() sees it.
        if not (seq.isascii() and seq.isdigit()) or len(seq) > len(str(_MAX_SEQ)) or int(seq) > _MAX_SEQ:
            raise BadRequest(f"position {text[:80]!r} has a bad sequence number")
        return cls(epoch, int(seq))


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    pos: Position
    item_id: str
    version: int
    hlc: str
    op: ChangeOp
    patch: dict[str, Any]

    def to_document(self) -> dict[str, Any]:
        return {
            "pos": self.pos.encode(),
            "item_id": self.item_id,
            "version": self.version,
            "hlc": self.hlc,
            "op": self.op,
            "patch": self.patch,
        }


def item_patch(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """The merge patch from `old` to `new` item documents, without record fields.

    With no `old` (a new item) the patch is the whole document.
    """
    trimmed_new = {key: value for key, value in new.items() if key not in _RECORD_FIELDS}
    if old is None:
        return trimmed_new
    trimmed_old = {key: value for key, value in old.items() if key not in _RECORD_FIELDS}
    patch = mergepatch.diff(trimmed_old, trimmed_new)
    assert isinstance(patch, dict)
    return patch


def check_since(since: Position, *, epoch: str, retained_after: int, head: int) -> None:
    """Decide whether a consumer at `since` can continue from this feed.

    `retained_after` is the highest sequence number already pruned (records
    ``retained_after + 1 ..= head`` are all still stored). Raises PositionGone
    when the consumer must re-snapshot: another history, a position pruned away,
    or a position ahead of our head (we lost history it has seen).
    """
    if since.epoch != epoch:
        raise PositionGone(f"position is from history {since.epoch!r}, this source is {epoch!r}: re-snapshot")
    if since.seq < retained_after:
        raise PositionGone(
            f"position {since.seq} is older than retention (oldest kept is {retained_after + 1}): re-snapshot"
        )
    if since.seq > head:
        raise PositionGone(f"position {since.seq} is ahead of this feed's head {head}: re-snapshot")
