"""The purchase features kept up to date one user event at a time, for the serving sidecar.

:class:`OnlineFeatures` holds the raw counters of :data:`predictor.features.COUNTERS`
in dictionaries (per user, per event) and answers :meth:`OnlineFeatures.rows`
with exactly the columns :func:`predictor.features.derive` gives the batch
form, because it calls that same function on its counters. Fed the log's rows
in log order, it gives the batch form's values for any cut-off at or after
the latest row it saw (tested in ``tests/predictor/test_features.py``).

"Strictly before the cut-off" holds online too: every cumulative cell keeps
its value before the latest millisecond it changed in, and reads that one when
asked about that same millisecond. A window keeps its rows' times in a sorted
list trimmed to the window and MAX_AHEAD_MS more (a row ahead of the clock
must not drop rows the present still counts), so its memory is bounded by
the window's traffic.

Rows may arrive late (the ingest API accepts events up to an hour old, and
two POPs' batches cross): a row earlier than the user's latest is counted
where it belongs in time, but it is never a "fast" request (its gap to the
latest row is negative, not short), never opens a session (it most likely
belongs to one already counted), and never moves "the time of the last one".

It is plain Python without locks or I/O: the server owns one instance and
calls it from one thread (or an executor with one worker).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

from predictor.errors import PredictorError
from predictor.features import (
    ACTIVITY,
    ANY,
    COUNTERS,
    FAST,
    FAST_GAP_MS,
    HOLD,
    INVITE,
    ITEM_VIEW,
    MINUTE_MS,
    NEW_SESSION,
    PRESALE,
    PRESALE_ACTIONS,
    PURCHASE,
    PURCHASES,
    REGISTER,
    REQUEST_ACTIONS,
    VIEW,
    Counter,
    EventFacts,
    Profiles,
    derive,
)

MAX_ROWS_PER_CALL: Final = 10_000  # one scoring batch; a hint request needs a few hundred at most
# A window keeps rows this much longer than its width, so that a row up to this far ahead of the clock
# does not trim rows `now` still counts: 3 x the ingest API's default max_clock_skew (5 min).
MAX_AHEAD_MS: Final = 15 * MINUTE_MS


class ActivityError(PredictorError, ValueError):
    """An incoming user event is malformed (the peer's fault: a 400, never a crash)."""


@dataclass(frozen=True, slots=True)
class Activity:
    """One user action: ``action`` is a request (``search``, ``event_view``, ``item_view``, ``hold``,
    ``purchase``, inside session ``session_id`` >= 0) or ``presale_register`` / ``presale_invite``
    (no session). ``ts_ms`` is milliseconds since the Unix epoch."""

    ts_ms: int
    user_id: str
    action: str
    event_id: str | None = None
    session_id: int = -1


class _Cell:
    """A cumulative value with the value it had before its latest millisecond (see the module docstring)."""

    __slots__ = ("before", "last", "previous", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.before = 0.0
        self.last: int | None = None
        self.previous: int | None = None

    def put(self, ts: int, value: float) -> None:
        """The value from `ts` on. A late `ts` (before the latest millisecond) shifts the value seen before
        that millisecond by as much as the latest one, and never moves the time of the latest change."""
        if self.last is not None and ts < self.last:
            self.before += value - self.value
            self.value = value
            if self.previous is None or ts > self.previous:
                self.previous = ts
            return
        if ts != self.last:
            self.before, self.previous, self.last = self.value, self.last, ts
        self.value = value

    def read(self, now: int) -> tuple[float, float]:
        """(value, time of the latest change) as seen strictly before `now`; time NaN when never."""
        if self.last is None:
            return 0.0, math.nan
        if now > self.last:
            return self.value, float(self.last)
        return self.before, math.nan if self.previous is None else float(self.previous)


class SlidingWindow:
    """Times of rows in a sliding window; counts rows in ``[now - width, now)``."""

    __slots__ = ("times", "width")

    def __init__(self, width: int) -> None:
        self.width = width
        self.times: list[int] = []

    def add(self, ts: int) -> None:
        if self.times and ts < self.times[-1]:
            bisect.insort(self.times, ts)
        else:
            self.times.append(ts)
        stale = bisect.bisect_left(self.times, ts - self.width - MAX_AHEAD_MS)
        if stale > len(self.times) // 2:  # trim in halves: amortised O(1) per row
            del self.times[:stale]

    def count(self, now: int) -> float:
        return float(bisect.bisect_left(self.times, now) - bisect.bisect_left(self.times, now - self.width))


class _Sequence:
    """A user's previous activity row: to tell a new session, a fast request and the session's depth."""

    __slots__ = ("depth", "last_ts", "session")

    def __init__(self) -> None:
        self.session: int | None = None
        self.last_ts: int | None = None
        self.depth = 0


class OnlineFeatures:
    """Per-user and per-event counters, updated per event, read as feature rows."""

    def __init__(self, facts: EventFacts, profiles: Profiles) -> None:
        self.facts = facts
        self.profiles = profiles
        self._events = facts.frame[["genre", "artist"]].to_dict("index")
        self._users: dict[str, dict[tuple[str, str], _Cell | SlidingWindow]] = {}
        self._event_state: dict[str, dict[str, _Cell | SlidingWindow]] = {}
        self._sequence: dict[str, _Sequence] = {}

    def add_past_purchase(self, user_id: str, ts_ms: int, genre: str, artist: str) -> None:
        """A purchase from the user's history (before the events this instance sees)."""
        self._apply(PURCHASES, {ANY: True}, ts_ms, {"user": user_id, "genre": genre, "artist": artist}, {})

    def update(self, activity: Activity) -> None:
        """Count one user action.

        Raises:
            ActivityError: unknown action, a missing or unknown event, or an empty user id.
        """
        if not activity.user_id:
            raise ActivityError("user_id is empty")
        action, event = activity.action, activity.event_id
        if action not in REQUEST_ACTIONS and action not in PRESALE_ACTIONS:
            raise ActivityError(f"unknown action {action!r}")
        if event is None and action != "search":
            raise ActivityError(f"a {action} needs an event_id")
        if event is not None and event not in self._events:
            raise ActivityError(f"unknown event {event!r} (not in the catalog)")
        if action in REQUEST_ACTIONS and activity.session_id < 0:
            raise ActivityError(f"a {action} needs its session_id (a number from 0)")
        ts = int(activity.ts_ms)
        known = self._events[event] if event is not None else {"genre": None, "artist": None}
        key = {"user": activity.user_id, "event": event, "genre": known["genre"], "artist": known["artist"]}
        if action in PRESALE_ACTIONS:
            self._apply(PRESALE, {REGISTER: action == REGISTER, INVITE: action == INVITE}, ts, key, {})
            return
        sequence = self._sequence.setdefault(activity.user_id, _Sequence())
        if sequence.last_ts is not None and ts < sequence.last_ts:  # late: see the module docstring
            new_session = fast = False
            if sequence.session == activity.session_id:
                sequence.depth += 1
        else:
            new_session = sequence.session != activity.session_id
            fast = sequence.last_ts is not None and ts - sequence.last_ts < FAST_GAP_MS
            sequence.depth = 1 if new_session else sequence.depth + 1
            sequence.session, sequence.last_ts = activity.session_id, ts
        flags = {
            ANY: True,
            VIEW: action in ("event_view", "item_view"),
            ITEM_VIEW: action == "item_view",
            HOLD: action == "hold",
            PURCHASE: action == "purchase",
            NEW_SESSION: new_session,
            FAST: fast,
        }
        self._apply(ACTIVITY, flags, ts, key, {"session_depth": float(sequence.depth)})
        if action == "purchase":
            self._apply(PURCHASES, {ANY: True}, ts, key, {})

    def forget(self, user_id: str) -> None:
        """Drop everything kept about a user (their share of event totals stays: it is not personal)."""
        self._users.pop(user_id, None)
        self._sequence.pop(user_id, None)

    def knows(self, user_id: str) -> bool:
        return user_id in self._users

    def rows(self, pairs: Sequence[tuple[str, str]], now_ms: int) -> Any:
        """Feature rows (:data:`predictor.features.FEATURES`) for (user_id, event_id) pairs at `now_ms`.

        Raises:
            ActivityError: too many pairs, or an event not in the catalog.
        """
        if len(pairs) > MAX_ROWS_PER_CALL:
            raise ActivityError(f"at most {MAX_ROWS_PER_CALL} rows per call, got {len(pairs)}")
        for _, event in pairs:
            if event not in self._events:
                raise ActivityError(f"unknown event {event!r} (not in the catalog)")
        return derive(self.raw(pairs, now_ms), self.profiles, self.facts)

    def row(self, user_id: str, event_id: str, now_ms: int) -> dict[str, float]:
        frame = self.rows([(user_id, event_id)], now_ms)
        return {name: float(value) for name, value in frame.iloc[0].items()}

    def raw(self, pairs: Sequence[tuple[str, str]], now_ms: int) -> Any:
        """The raw counters (:data:`predictor.features.RAW_COLUMNS`) for the pairs, as :func:`batch_raw` gives."""
        columns: dict[str, list[float]] = {}
        for counter in COUNTERS:
            columns[counter.name] = []
            if counter.last_seen:
                columns[f"{counter.name}_last_ms"] = []
        for user, event in pairs:
            known = self._events[event]
            key = {"user": user, "event": event, "genre": known["genre"], "artist": known["artist"]}
            user_cells = self._users.get(user, {})
            event_cells = self._event_state.get(event, {})
            for counter in COUNTERS:
                if counter.key == ("event",):
                    cell = event_cells.get(counter.name)
                else:
                    cell = user_cells.get((counter.name, _rest(counter, key)))
                value, seen = _read(cell, now_ms)
                columns[counter.name].append(value)
                if counter.last_seen:
                    columns[f"{counter.name}_last_ms"].append(seen)
        frame = pd.DataFrame(
            {
                "user_id": [user for user, _ in pairs],
                "event_id": [event for _, event in pairs],
                "now_ms": np.full(len(pairs), now_ms, dtype=np.int64),
            }
        )
        for name, values in columns.items():
            frame[name] = np.array(values, dtype=np.float64)
        return frame

    def _apply(
        self, stream: str, flags: dict[str, bool], ts: int, key: dict[str, Any], values: dict[str, float]
    ) -> None:
        for counter in COUNTERS:
            if counter.stream != stream or not flags.get(counter.when, False):
                continue
            if any(key[part] is None for part in counter.key):
                continue
            if counter.key == ("event",):
                cells: dict[Any, _Cell | SlidingWindow] = self._event_state.setdefault(key["event"], {})
                slot: Any = counter.name
            else:
                cells = self._users.setdefault(key["user"], {})
                slot = (counter.name, _rest(counter, key))
            cell = cells.get(slot)
            if cell is None:
                cell = SlidingWindow(counter.window_ms) if counter.window_ms is not None else _Cell()
                cells[slot] = cell
            if isinstance(cell, SlidingWindow):
                cell.add(ts)
            elif counter.value is not None:
                cell.put(ts, values[counter.value])
            else:
                cell.put(ts, cell.value + 1.0)


def _rest(counter: Counter, key: dict[str, Any]) -> str:
    """The part of a user-keyed counter's key after the user ("" for per-user counters)."""
    return "" if len(counter.key) == 1 else str(key[counter.key[1]])


def _read(cell: _Cell | SlidingWindow | None, now: int) -> tuple[float, float]:
    if cell is None:
        return 0.0, math.nan
    if isinstance(cell, SlidingWindow):
        return cell.count(now), math.nan
    return cell.read(now)
