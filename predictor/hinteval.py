"""Per-user prefetch hints, replayed: how much of what a browser prefetches is used, and how much it covers.

The service worker fetches a user's hints ahead of time; a hint pays off when
the user then opens that URL and it is served from the prefetch instead of the
network. Two hint sources are replayed, both using nothing after the moment
of the hint. The baseline is a transparent heuristic over the user's recent
views and affinity (:func:`replay_hints`):

* when a session opens an item of an event (the seat map is open), the hints
  are the ``k`` items of that event most viewed at the POP so far (by humans;
  ties by catalog order) that the session has not opened or prefetched —
  sessions that open one item of an event usually open more;
* when a user opens an event page of their favourite genre or one of their
  favourite artists (the profile's affinity), the same ``k`` items of that
  event are hinted: those views reach the seat map about three times as often
  as others (measured on the default workload: 0.28-0.35 against 0.11).

Only consenting human users get hints (as the predictor serves them: none for
bots, none without consent). A prefetch lives for the rest of its session.

* precision = prefetched bytes later used / prefetched bytes;
* coverage = first item views (the first time a session opens an item) of
  consenting users that were served from a prefetch / all such first views.

The model source (:func:`replay_model_hints`) gates the same kind of item
prefetch per (session, event) on the purchase model's calibrated probability,
scored at the session's first request naming the event. A group's outcome does
not depend on whether other groups are hinted, so one replay per ``k`` gives
the figures at every threshold (:class:`HintGroups`), and the operating point
is picked on a validation period and reported on a later test period
(:func:`choose_operating_point`). Measured on the default workload: the model
doubles the heuristic's precision at equal hint volume, but precision stays
near 0.2-0.3 even for sessions the model is sure of, because it is the *item*
(which seat map of the event) that is hard to guess, not the user's intent.
"""

from __future__ import annotations

import bisect
from collections.abc import Container, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from predictor.replay import ObjectTable, Trace


@dataclass(frozen=True, slots=True)
class HintFigures:
    """Sums over sessions; they add up across POPs."""

    hints: int = 0
    prefetched_bytes: int = 0
    used_bytes: int = 0
    first_item_views: int = 0
    covered_views: int = 0

    def __add__(self, other: HintFigures) -> HintFigures:
        return HintFigures(
            self.hints + other.hints,
            self.prefetched_bytes + other.prefetched_bytes,
            self.used_bytes + other.used_bytes,
            self.first_item_views + other.first_item_views,
            self.covered_views + other.covered_views,
        )

    @property
    def precision(self) -> float | None:
        return self.used_bytes / self.prefetched_bytes if self.prefetched_bytes else None

    @property
    def coverage(self) -> float | None:
        return self.covered_views / self.first_item_views if self.first_item_views else None


class _Session:
    __slots__ = ("prefetched", "seen")

    def __init__(self) -> None:
        self.prefetched: set[int] = set()
        self.seen: set[int] = set()


@dataclass(frozen=True, slots=True)
class Affinity:
    """What the profiles say: each consenting user's favourite genre and artists; each event's genre and artist."""

    favourite_genre: dict[str, str]
    favourite_artists: dict[str, frozenset[str]]
    event_genre: tuple[str, ...]  # by event number
    event_artist: tuple[str, ...]

    def likes(self, user: str, event: int) -> bool:
        return self.favourite_genre.get(user) == self.event_genre[event] or self.event_artist[
            event
        ] in self.favourite_artists.get(user, frozenset())


def replay_hints(
    trace: Trace, objects: ObjectTable, affinity: Affinity, top_k: int, from_ms: int | None = None
) -> HintFigures:
    """Replay the hint heuristic over a POP trace for the users in `affinity` and score the prefetches.

    Users absent from ``affinity.favourite_genre`` (no consent) and bots get no hints. With `from_ms`,
    only requests from then on are hinted and counted (earlier ones still count views for the ranking).

    Raises:
        ValueError: top_k is below 1.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    consenting = affinity.favourite_genre
    event_page = np.full(len(objects.urls), -1, dtype=np.int64)
    event_page[objects.event_object] = np.arange(len(objects.event_ids), dtype=np.int64)
    page_event: list[int] = event_page.tolist()
    item_event: list[int] = np.where(event_page >= 0, -1, objects.event_of).tolist()
    sizes: list[int] = objects.sizes.tolist()
    items_of_event = objects.items_of_event
    cut = 0 if from_ms is None else int(np.searchsorted(trace.times, from_ms, side="left"))
    # human views at this POP so far
    views: list[int] = np.bincount(trace.objects[:cut][~trace.is_bot[:cut]], minlength=len(objects.urls)).tolist()
    sessions: dict[int, _Session] = {}
    hints = prefetched_bytes = used_bytes = first_views = covered = 0
    for key, session_id, user, bot in zip(
        trace.objects[cut:].tolist(),
        trace.sessions[cut:].tolist(),
        trace.users[cut:].tolist(),
        trace.is_bot[cut:].tolist(),
        strict=True,
    ):
        if bot:
            continue
        views[key] += 1
        if user not in consenting:
            continue
        session = sessions.get(session_id)
        if session is None:
            session = sessions[session_id] = _Session()
        event = item_event[key]
        if event >= 0:
            if key in session.seen:
                continue
            session.seen.add(key)
            first_views += 1
            if key in session.prefetched:
                covered += 1
                used_bytes += sizes[key]
        else:
            event = page_event[key]
            if event < 0 or not affinity.likes(user, event):
                continue
        candidates = [
            item for item in items_of_event[event] if item not in session.seen and item not in session.prefetched
        ]
        candidates.sort(key=lambda item: (-views[item], item))
        for item in candidates[:top_k]:
            session.prefetched.add(item)
            hints += 1
            prefetched_bytes += sizes[item]
    return HintFigures(hints, prefetched_bytes, used_bytes, first_views, covered)


# --------------------------------------------------------------------------- hints from the purchase model


@dataclass(frozen=True, slots=True)
class HintGroups:
    """What hinting every (session, event) group with ``k`` items did, one entry per group.

    A group is a consenting human session's first request naming an event, in
    one of the periods; its ``probability`` is the purchase model's calibrated
    probability for (user, event) at that request. Whether a group is hinted
    changes nothing for another group (each prefetches only its own event's
    items), so the figures at any threshold are sums over the groups at or
    above it (:meth:`at`).
    """

    top_k: int
    probability: npt.NDArray[np.float64]
    period: npt.NDArray[np.int64]
    hints: npt.NDArray[np.int64]
    prefetched_bytes: npt.NDArray[np.int64]
    used_bytes: npt.NDArray[np.int64]
    covered_views: npt.NDArray[np.int64]
    first_item_views: tuple[int, ...]  # per period: first item views of consenting users

    def at(self, threshold: float, period: int) -> HintFigures:
        """The figures of the groups of `period` whose probability is at least `threshold`."""
        chosen = (self.period == period) & (self.probability >= threshold)
        return HintFigures(
            int(self.hints[chosen].sum()),
            int(self.prefetched_bytes[chosen].sum()),
            int(self.used_bytes[chosen].sum()),
            self.first_item_views[period],
            int(self.covered_views[chosen].sum()),
        )

    def __add__(self, other: HintGroups) -> HintGroups:
        if other.top_k != self.top_k:
            raise ValueError("hint groups of different k do not add up")
        return HintGroups(
            self.top_k,
            np.concatenate([self.probability, other.probability]),
            np.concatenate([self.period, other.period]),
            np.concatenate([self.hints, other.hints]),
            np.concatenate([self.prefetched_bytes, other.prefetched_bytes]),
            np.concatenate([self.used_bytes, other.used_bytes]),
            np.concatenate([self.covered_views, other.covered_views]),
            tuple(a + b for a, b in zip(self.first_item_views, other.first_item_views, strict=True)),
        )


def first_requests(
    trace: Trace, objects: ObjectTable, consenting: Container[str], from_ms: int
) -> npt.NDArray[np.int64]:
    """Positions of the requests a hint is scored at: each consenting human session's first request naming an
    event (its page or an item), at or after `from_ms`."""
    event = objects.event_of[trace.objects]
    wanted = (event >= 0) & ~trace.is_bot & (trace.times >= from_ms)
    wanted &= np.fromiter((user in consenting for user in trace.users.tolist()), dtype=np.bool_, count=len(trace))
    positions = np.flatnonzero(wanted)
    pairs = trace.sessions[positions] * (len(objects.event_ids) + 1) + event[positions]
    _, first = np.unique(pairs, return_index=True)
    return np.sort(positions[first])


def replay_model_hints(
    trace: Trace,
    objects: ObjectTable,
    consenting: Container[str],
    probability: dict[tuple[int, int], float],
    top_k: int,
    period_starts: Sequence[int],
) -> HintGroups:
    """Replay hints for every scored (session, event) group with k items each, whatever its probability.

    A group is triggered by the session's first request naming the event, and
    again by each first view of one of its items (sessions that open one seat
    map usually open more); each trigger prefetches the ``k`` items of the
    event most viewed at the POP so far (by humans, ties by catalog order) that
    the session has not opened or prefetched. ``probability`` maps
    ``(session, event number)`` to the model's score at the group's first
    request; a group without one (its first request came before the first
    period) is never hinted. ``period_starts`` (ascending, ms) tags groups and
    first item views by period; requests before the first start only count
    views for the popularity ranking.

    Raises:
        ValueError: top_k below 1, or no periods.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if not period_starts:
        raise ValueError("at least one period is needed")
    starts = list(period_starts)
    cut = int(np.searchsorted(trace.times, starts[0], side="left"))
    humans_before = trace.objects[:cut][~trace.is_bot[:cut]]
    views: list[int] = np.bincount(humans_before, minlength=len(objects.urls)).tolist()
    event_page = np.full(len(objects.urls), -1, dtype=np.int64)
    event_page[objects.event_object] = np.arange(len(objects.event_ids), dtype=np.int64)
    item_event: list[int] = np.where(event_page >= 0, -1, objects.event_of).tolist()
    any_event: list[int] = objects.event_of.tolist()
    sizes: list[int] = objects.sizes.tolist()
    items_of_event = objects.items_of_event
    sessions: dict[int, _Session] = {}
    group_of: dict[tuple[int, int], int] = {}
    scores: list[float] = []
    periods: list[int] = []
    hints: list[int] = []
    prefetched: list[int] = []
    used: list[int] = []
    covered: list[int] = []
    first_views = [0] * len(starts)
    for ts, key, session_id, user, bot in zip(
        trace.times[cut:].tolist(),
        trace.objects[cut:].tolist(),
        trace.sessions[cut:].tolist(),
        trace.users[cut:].tolist(),
        trace.is_bot[cut:].tolist(),
        strict=True,
    ):
        if bot:
            continue
        views[key] += 1
        event = any_event[key]
        if event < 0 or user not in consenting:
            continue
        period = bisect.bisect_right(starts, ts) - 1
        session = sessions.get(session_id)
        if session is None:
            session = sessions[session_id] = _Session()
        group = group_of.get((session_id, event))
        if group is None:
            score = probability.get((session_id, event))
            if score is None:
                group = -1
            else:
                group = len(scores)
                scores.append(score)
                periods.append(period)
                hints.append(0)
                prefetched.append(0)
                used.append(0)
                covered.append(0)
            group_of[(session_id, event)] = group
            trigger = True
        else:
            trigger = False
        if item_event[key] >= 0:
            if key in session.seen:
                continue
            session.seen.add(key)
            first_views[period] += 1
            if key in session.prefetched and group >= 0:
                covered[group] += 1
                used[group] += sizes[key]
            trigger = True
        if not trigger or group < 0:
            continue
        candidates = [
            item for item in items_of_event[event] if item not in session.seen and item not in session.prefetched
        ]
        candidates.sort(key=lambda item: (-views[item], item))
        for item in candidates[:top_k]:
            session.prefetched.add(item)
            hints[group] += 1
            prefetched[group] += sizes[item]
    return HintGroups(
        top_k,
        np.array(scores, dtype=np.float64),
        np.array(periods, dtype=np.int64),
        np.array(hints, dtype=np.int64),
        np.array(prefetched, dtype=np.int64),
        np.array(used, dtype=np.int64),
        np.array(covered, dtype=np.int64),
        tuple(first_views),
    )


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """A (threshold, k) chosen on the validation period, and its figures there and on the test period."""

    threshold: float
    top_k: int
    rule: str
    validation: HintFigures
    test: HintFigures


def choose_operating_point(
    groups: Sequence[HintGroups], thresholds: Sequence[float], min_precision: float, min_coverage: float
) -> OperatingPoint | None:
    """Pick (threshold, k) on period 0 (validation) and report it on period 1 (test), never tuning on the test.

    The rule, in order: the highest coverage with precision at least `min_precision`; failing that, the
    highest precision with coverage at least `min_coverage`; failing that, the highest precision.
    None when no group was scored.
    """
    table = [(t, g, g.at(t, 0)) for g in groups for t in thresholds]
    table = [(t, g, f) for t, g, f in table if f.precision is not None and f.coverage is not None]
    if not table:
        return None
    precise = [row for row in table if (row[2].precision or 0.0) >= min_precision]
    wide = [row for row in table if (row[2].coverage or 0.0) >= min_coverage]
    if precise:
        threshold, group, figures = max(precise, key=lambda row: (row[2].coverage or 0.0, row[0]))
        rule = f"highest validation coverage with precision >= {min_precision:g}"
    elif wide:
        threshold, group, figures = max(wide, key=lambda row: (row[2].precision or 0.0, row[0]))
        rule = (
            f"no validation point reached precision {min_precision:g}: "
            f"highest precision with coverage >= {min_coverage:g}"
        )
    else:
        threshold, group, figures = max(table, key=lambda row: (row[2].precision or 0.0, row[0]))
        rule = "no validation point met either aim: highest precision"
    return OperatingPoint(threshold, group.top_k, rule, figures, group.at(threshold, 1))
