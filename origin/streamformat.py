"""The Redis Stream entry contract of the change fan-out, and the pure decisions of its publisher.

No I/O here: :mod:`origin.streams` (the publisher adapter) performs what these
functions decide. The entry format is a contract shared with the POP's
consumer (edge side):

- fields ``pos`` (``EPOCH:SEQ``), ``item_id``, ``version`` (decimal),
  ``hlc``, ``op`` and ``patch`` (JSON text of the RFC 7396 merge patch), all
  strings; ``op`` is passed through as the feed has it (``upsert``,
  ``delete``, or ``event`` for an event's metadata, origin.changefeed);
- a *reset marker* has ``op`` = ``reset``, ``item_id`` = ``""``, ``patch`` =
  ``"{}"`` and ``pos`` = the position the entries after it continue from.
  Consumers purge on it: we could not vouch that every change up to it was
  published.

The stream of a source is ``boxoffice:changes:{source}``; its checkpoint is
``boxoffice:changes:{source}:checkpoint``. :func:`plan_batch` turns one
``/v1/changes`` answer into the entries to append (dropping records published
already, putting a reset marker where a sequence number is missing) and the
checkpoint that goes with them. Retries are spaced by :class:`ops.backoff.Backoff`,
shared with the POP's followers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

from origin.changefeed import CHANGE_OPS, ChangeRecord, Position
from origin.errors import BadRequest, PositionGone, ServerError

STREAM_PREFIX: Final = "boxoffice:changes:"
OP_RESET: Final = "reset"
DEFAULT_MAXLEN: Final = 100_000
# The origin refuses `limit` above 1,000 (origin.store.base.MAX_CHANGE_BATCH).
MAX_BATCH_LIMIT: Final = 1_000
# A source names a stream key: an origin or a shard id, never a key pattern.
_MAX_SOURCE_LENGTH: Final = 64


class UpstreamFeedError(ServerError):
    """The upstream's feed could not be read, or answered out of contract (the peer sent garbage)."""

    status = 502
    code = "bad_upstream_feed"


def check_source(source: str) -> str:
    """Return `source` if it may name a stream (letters, digits, `-`, `_`); raise ValueError otherwise."""
    plain = source.replace("-", "").replace("_", "")
    if not 0 < len(source) <= _MAX_SOURCE_LENGTH or not (plain.isascii() and plain.isalnum()):
        raise ValueError(f"{source[:80]!r} must be 1 to {_MAX_SOURCE_LENGTH} ASCII letters, digits, '-' or '_'")
    return source


def stream_key(source: str) -> str:
    return STREAM_PREFIX + check_source(source)


def checkpoint_key(source: str) -> str:
    return STREAM_PREFIX + check_source(source) + ":checkpoint"


def entry_fields(record: ChangeRecord) -> dict[str, str]:
    """The stream entry of one change record (contract fields, all strings)."""
    return {
        "pos": record.pos.encode(),
        "item_id": record.item_id,
        "version": str(record.version),
        "hlc": record.hlc,
        "op": record.op,
        "patch": json.dumps(record.patch, separators=(",", ":"), ensure_ascii=False),
    }


def reset_fields(position: Position) -> dict[str, str]:
    """A reset marker: consumers purge, then continue with the entries after `position`."""
    return {"pos": position.encode(), "item_id": "", "version": "0", "hlc": "", "op": OP_RESET, "patch": "{}"}


@dataclass(frozen=True, slots=True)
class ChangesAnswer:
    records: list[ChangeRecord]
    next: Position
    head: Position


def parse_changes(doc: object) -> ChangesAnswer:
    """A `/v1/changes` answer. Raises UpstreamFeedError on anything but the contract's shape."""
    if not isinstance(doc, dict) or not isinstance(doc.get("changes"), list):
        raise UpstreamFeedError("change feed answer is not an object with a `changes` list")
    records = []
    for index, raw in enumerate(doc["changes"]):
        if not isinstance(raw, dict):
            raise UpstreamFeedError(f"change {index} is not an object")
        item_id, version, hlc, op, patch = (raw.get(name) for name in ("item_id", "version", "hlc", "op", "patch"))
        if not isinstance(item_id, str) or not item_id:
            raise UpstreamFeedError(f"change {index} has no item_id")
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise UpstreamFeedError(f"change {index} ({item_id}) has no integer version")
        if not isinstance(hlc, str) or not hlc:
            raise UpstreamFeedError(f"change {index} ({item_id}) has no hlc stamp")
        # `reset` is ours; an op we do not know would mean something to no consumer.
        if op not in CHANGE_OPS:
            raise UpstreamFeedError(
                f"change {index} ({item_id}) has op {str(op)[:40]!r}, not one of {', '.join(CHANGE_OPS)}"
            )
        if not isinstance(patch, dict):
            raise UpstreamFeedError(f"change {index} ({item_id}) has a patch that is not an object")
        pos = parse_position(raw.get("pos"), f"change {index} pos")
        records.append(ChangeRecord(pos, item_id, version, hlc, op, patch))
    return ChangesAnswer(records, parse_position(doc.get("next"), "next"), parse_position(doc.get("head"), "head"))


def parse_position(text: object, what: str) -> Position:
    """`text` as a Position; raises UpstreamFeedError naming `what` when it is not one."""
    if not isinstance(text, str):
        raise UpstreamFeedError(f"{what} is not a position string")
    try:
        return Position.parse(text)
    except BadRequest as exc:
        raise UpstreamFeedError(f"{what}: {exc.message}") from None


@dataclass(frozen=True, slots=True)
class BatchPlan:
    entries: list[dict[str, str]]  # to XADD in order, markers included
    position: Position  # the new checkpoint
    records: int  # change records among the entries
    gaps: int  # reset markers among the entries


def plan_batch(since: Position, answer: ChangesAnswer) -> BatchPlan:
    """What to publish for `answer` to `since=since`.

    Records at or below `since` were published already (at-least-once delivery)
    and are dropped. A missing sequence number puts a reset marker where it is.
    Raises PositionGone when the answer belongs to another history, and
    UpstreamFeedError when `next` contradicts the records.
    """
    if answer.next.epoch != since.epoch or any(record.pos.epoch != since.epoch for record in answer.records):
        raise PositionGone(f"the upstream answered since={since.encode()} with another history")
    entries: list[dict[str, str]] = []
    position, records, gaps = since, 0, 0
    for record in answer.records:
        if record.pos.seq <= position.seq:
            continue
        if record.pos.seq != position.seq + 1:
            position = Position(since.epoch, record.pos.seq - 1)
            entries.append(reset_fields(position))
            gaps += 1
        entries.append(entry_fields(record))
        records += 1
        position = record.pos
    if answer.next.seq < position.seq:
        raise UpstreamFeedError(f"next {answer.next.encode()} is behind the last change {position.encode()}")
    if answer.next.seq > position.seq:
        entries.append(reset_fields(answer.next))
        gaps += 1
        position = answer.next
    return BatchPlan(entries, position, records, gaps)
