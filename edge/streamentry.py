"""The pure core of the Redis Streams follower (edge.streamfollow): entries, verdicts, group lag, options.

No I/O, no clock: the adapter reads Redis and hands this module plain data.

- :func:`parse_entry` turns one stream entry (the publisher's string fields)
  into a :class:`StreamEntry`, or raises PeerError naming what is wrong;
- :func:`judge` decides, for one entry after the last position applied,
  whether the POP must purge first and whether the entry is applied (a
  duplicate is not);
- :func:`lag_problem` reads the group's line of XINFO GROUPS and the stream's
  XINFO STREAM (:class:`GroupLag`) and says when entries the group never read
  were trimmed, so that its position can no longer be trusted;
- :class:`StreamOptions` holds the follower's limits and timeouts, validated;
  the retry defaults and checks are the HTTP follower's (edge.followcore).

The rules these functions implement, and why, are in edge.streamfollow's
docstring, next to the loop that performs what they decide.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from edge.errors import PeerError
from edge.followcore import (
    DEFAULT_BACKOFF_INITIAL,
    DEFAULT_BACKOFF_MAX,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_OUTAGE,
    SECOND,
    parse_position,
    validate_retry_options,
)
from origin.changefeed import Position
from origin.hlc import Stamp

STREAM_PREFIX: Final = "boxoffice:changes:"
RESET_OP: Final = "reset"
# One XREADGROUP answer: enough to catch up quickly after a blip, small enough
# that a batch of whole-document patches stays well under a megabyte.
DEFAULT_BATCH: Final = 500
MAX_BATCH: Final = 10_000
# How long one XREADGROUP waits for new entries; a cancelled POP stops within it.
DEFAULT_BLOCK: Final = 5 * SECOND
# Socket time beyond BLOCK for Redis to answer and the answer to arrive.
DEFAULT_SOCKET_MARGIN: Final = 2 * SECOND
# XINFO GROUPS is cheap but not free; once a second keeps the figure current.
DEFAULT_LAG_INTERVAL: Final = 1 * SECOND
# A predecessor consumer idle this long is a dead process, not a slow one.
DEFAULT_STALE_CONSUMER_IDLE: Final = 10 * 60 * SECOND
# Fields the follower reads from an entry; any longer value is refused rather than parsed.
MAX_FIELD_CHARS: Final = 4 * 1024 * 1024


def stream_key(source: str) -> str:
    """The stream of one feed source (``origin`` or a shard id)."""
    return STREAM_PREFIX + source


def group_name(pop_id: str) -> str:
    return f"pop:{pop_id}"


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """Limits and timeouts of one stream follower (seconds)."""

    batch: int = DEFAULT_BATCH
    block: float = DEFAULT_BLOCK
    socket_margin: float = DEFAULT_SOCKET_MARGIN
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    backoff_initial: float = DEFAULT_BACKOFF_INITIAL
    backoff_max: float = DEFAULT_BACKOFF_MAX
    max_outage: float | None = DEFAULT_MAX_OUTAGE  # None: never purge because of an outage
    lag_interval: float = DEFAULT_LAG_INTERVAL
    stale_consumer_idle: float = DEFAULT_STALE_CONSUMER_IDLE
    start_reset: bool = True

    def validate(self) -> None:
        """Raise ValueError naming the first bad option."""
        if not 1 <= self.batch <= MAX_BATCH:
            raise ValueError(f"batch: must be 1 to {MAX_BATCH}")
        for name in ("block", "socket_margin", "connect_timeout", "backoff_initial", "backoff_max", "lag_interval",
                     "stale_consumer_idle"):  # fmt: skip
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: must be a positive finite number of seconds")
        validate_retry_options(self.backoff_initial, self.backoff_max, self.max_outage)


# One entry in, one verdict out ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One parsed stream entry; a reset marker has ``op == "reset"`` and no item."""

    entry_id: str
    pos: Position
    op: str
    item_id: str
    version: int
    hlc_wall: float | None  # POSIX seconds of the HLC stamp; None when absent or unparsable
    patch: dict[str, Any]

    @property
    def is_reset(self) -> bool:
        return self.op == RESET_OP


def parse_entry(entry_id: str, fields: Mapping[str, str]) -> StreamEntry:
    """An entry in the contract's format. Raises PeerError naming what is wrong.

    A reset marker needs only ``op`` and ``pos``. The HLC stamp only feeds the
    lag figure, so one that does not parse is recorded as unknown.
    """
    if not fields:
        raise PeerError(f"entry {entry_id} has no fields (deleted or trimmed while pending)")
    for name, value in fields.items():
        if len(value) > MAX_FIELD_CHARS:
            raise PeerError(f"entry {entry_id}: field {name[:40]!r} is over {MAX_FIELD_CHARS} characters")
        try:
            value.encode()  # the client decodes with surrogateescape: bytes that were not UTF-8 fail here
        except UnicodeEncodeError:
            raise PeerError(f"entry {entry_id}: field {name[:40]!r} is not UTF-8") from None
    op = fields.get("op")
    if not isinstance(op, str) or not op:
        raise PeerError(f"entry {entry_id} has no op")
    pos = parse_position(fields.get("pos"), f"entry {entry_id} pos")
    hlc_wall = None
    hlc = fields.get("hlc")
    if hlc:
        try:
            hlc_wall = Stamp.decode(hlc).wall_ms / 1000
        except (ValueError, OverflowError):  # OverflowError: a wall time too large for a float
            hlc_wall = None
    if op == RESET_OP:
        return StreamEntry(entry_id, pos, op, "", 0, hlc_wall, {})
    item_id = fields.get("item_id")
    if not item_id:
        raise PeerError(f"entry {entry_id} ({op}) has no item_id")
    version_text = fields.get("version", "")
    if not (version_text.isascii() and version_text.isdigit()) or len(version_text) > 19:
        raise PeerError(f"entry {entry_id} ({item_id}) has no decimal version")
    try:
        patch = json.loads(fields.get("patch", ""))
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
        raise PeerError(f"entry {entry_id} ({item_id}) has a patch that is not JSON: {exc}") from None
    if not isinstance(patch, dict):
        raise PeerError(f"entry {entry_id} ({item_id}) has a patch that is not an object")
    return StreamEntry(entry_id, pos, op, item_id, int(version_text), hlc_wall, patch)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with one entry: purge first (`reset` names why), then apply it unless `skip`."""

    reset: str | None
    apply: bool


def judge(last: Position | None, entry: StreamEntry) -> Verdict:
    """The rules of edge.streamfollow's docstring for one entry after position `last` (None: no reference yet)."""
    if entry.is_reset:
        return Verdict(f"the publisher re-snapshotted (reset marker at {entry.pos.encode()})", apply=False)
    if last is None:
        return Verdict(None, apply=True)
    if entry.pos.epoch != last.epoch:
        return Verdict(f"the feed changed history without a reset marker: {last.encode()} then "
                       f"{entry.pos.encode()}", apply=True)  # fmt: skip
    if entry.pos.seq <= last.seq:
        return Verdict(None, apply=False)  # delivered again (at-least-once)
    if entry.pos.seq != last.seq + 1:
        return Verdict(f"gap in the stream: {last.encode()} then {entry.pos.encode()}", apply=True)
    return Verdict(None, apply=True)


StreamId = tuple[int, int]  # "ms-seq", compared as numbers


def parse_stream_id(text: object) -> StreamId:
    """A Redis stream id ``ms-seq``. Raises PeerError."""
    if not isinstance(text, str):
        raise PeerError(f"stream id {text!r} is not a string")
    ms, dash, seq = text.partition("-")
    if not (dash and ms.isascii() and ms.isdigit() and seq.isascii() and seq.isdigit()):
        raise PeerError(f"stream id {text[:60]!r} is not ms-seq")
    return int(ms), int(seq)


@dataclass(frozen=True, slots=True)
class GroupLag:
    """The group's line of XINFO GROUPS and the stream's XINFO STREAM, read in one transaction."""

    lag: int | None  # entries not yet delivered to the group; None when Redis cannot tell
    entries_read: int | None  # None until the group has read (and after XGROUP SETID)
    pending: int
    last_delivered: StreamId
    length: int
    entries_added: int
    first_entry: StreamId | None  # None when the stream is empty
    last_generated: StreamId


def lag_problem(lag: GroupLag) -> str | None:
    """Why the group's position cannot be trusted (entries it never read are gone), or None.

    Trimming removes the oldest entries. With ``entries_read`` known, the
    group still has ``lag`` entries to read, so ``lag > length`` means some of
    them were removed. Without it (a group that has not read yet), Redis
    estimates the lag from the first entry, which hides a trim; then any
    removed entry newer than the group's last delivered id means a gap, and
    when entries were removed and the oldest remaining one (or, the stream
    being empty, the newest ever) is past that id, some may have been: we
    purge then.
    """
    if lag.lag is None:
        return "the group's lag is unknown (entries were deleted or trimmed past it)"
    if lag.entries_read is not None:
        if lag.lag > lag.length:
            return f"{lag.lag - lag.length} entries were trimmed before the group read them"
        return None
    if lag.entries_added <= lag.length:
        return None  # nothing was ever removed
    oldest_kept = lag.first_entry
    if oldest_kept is None:
        if lag.last_delivered < lag.last_generated:
            return "the stream was trimmed empty past entries the group had not read"
        return None
    if lag.last_delivered < oldest_kept:
        # Cautious: the removed entries may all be at or before our position (then this purge was not
        # needed), but nothing left tells; a group that has read once has `entries_read` and is exact.
        return "entries were trimmed past the group's position before it read them"
    return None
