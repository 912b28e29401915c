"""What a replay's hits and misses say: hit ratios, gap closure, warming and on-sale figures.

Every function reads a :class:`~predictor.replay.ReplayResult` (one hit flag
per request) beside the trace it came from and returns counts, so figures of
several POPs add up by summing counts, never by averaging ratios.

* Hit ratio: hits / cacheable requests, overall or over a mask.
* Gap closure ``G = (HR - HR_LRU) / (HR_Belady - HR_LRU)``: the share of the
  distance from LRU to the offline optimum that a policy covers. It is
  undefined (None) when Belady is no better than LRU (every request that can
  hit already does), and can exceed 1 with warming: Belady bounds caches that
  fetch on demand, and warming fetches ahead of demand.
* On-sale windows: the requests in ``[T, T + window)`` of any scheduled
  on-sale ``T``; *on-sale objects* narrows that to requests for the objects
  (event page, items) of the event going on sale at ``T``.
* First-request miss rate of warmed objects: of the objects a warm load
  admitted that are requested before the load's ``until``, the share whose
  first request after the load missed.
* Origin fetches per object in an on-sale's first minute: misses for the
  on-sale event's objects in ``[T, T + 1 min)`` divided by how many distinct
  objects were requested then (1 means every object was fetched once; the
  edge coalesces concurrent misses into one fetch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from ops.settings import MINUTE, SECOND
from predictor.replay import BoolArray, IntArray, ObjectTable, ReplayResult, Trace
from predictor.warming import OnsaleSchedule

FIRST_MINUTE_MS: Final = round(1 * MINUTE / SECOND * 1000)


@dataclass(frozen=True, slots=True)
class Ratio:
    """A count over a count; sums across POPs."""

    hits: int = 0
    total: int = 0

    def __add__(self, other: Ratio) -> Ratio:
        return Ratio(self.hits + other.hits, self.total + other.total)

    @property
    def value(self) -> float | None:
        return self.hits / self.total if self.total else None


def ratio(flags: BoolArray, mask: BoolArray | None = None) -> Ratio:
    chosen = flags if mask is None else flags[mask]
    return Ratio(int(chosen.sum()), len(chosen))


def gap_closure(hit_ratio: float | None, lru: float | None, belady: float | None) -> float | None:
    """G = (HR - HR_LRU) / (HR_Belady - HR_LRU), or None when undefined (no gap to close)."""
    if hit_ratio is None or lru is None or belady is None:
        return None
    gap = belady - lru
    if gap <= 1e-12:
        return None
    return (hit_ratio - lru) / gap


def onsale_times_of_events(schedule: OnsaleSchedule, event_count: int) -> IntArray:
    """Per event number, its on-sale time in ms, or -1 if it has none in the window."""
    times = np.full(event_count + 1, -1, dtype=np.int64)  # the extra slot answers event -1 (listings)
    times[schedule.events] = schedule.times
    return times


def in_onsale_windows(trace: Trace, schedule: OnsaleSchedule, window_ms: int) -> BoolArray:
    """Requests inside [T, T + window) of any on-sale time T."""
    starts = np.array(schedule.distinct_times(), dtype=np.int64)
    if not len(starts):
        return np.zeros(len(trace), dtype=np.bool_)
    latest = np.searchsorted(starts, trace.times, side="right") - 1
    inside: BoolArray = (latest >= 0) & (trace.times < starts[np.maximum(latest, 0)] + window_ms)
    return inside


def onsale_object_requests(trace: Trace, objects: ObjectTable, schedule: OnsaleSchedule, window_ms: int) -> BoolArray:
    """Requests for an on-sale event's objects inside [T, T + window) of that event's on-sale T."""
    onsale = onsale_times_of_events(schedule, len(objects.event_ids))[objects.event_of[trace.objects]]
    inside: BoolArray = (onsale >= 0) & (trace.times >= onsale) & (trace.times < onsale + window_ms)
    return inside


def first_minute_fetches(trace: Trace, objects: ObjectTable, schedule: OnsaleSchedule, result: ReplayResult) -> Ratio:
    """(origin fetches, distinct objects requested) for on-sale objects in each on-sale's first minute."""
    first_minute = onsale_object_requests(trace, objects, schedule, FIRST_MINUTE_MS)
    fetches = int((~result.hits & first_minute).sum())
    return Ratio(fetches, len(np.unique(trace.objects[first_minute])))


def warmed_first_request_misses(trace: Trace, result: ReplayResult) -> Ratio:
    """(first requests that missed, warmed objects requested) over the result's warm loads."""
    misses = 0
    requested = 0
    for outcome in result.warm:
        if not outcome.admitted:
            continue
        first, last = np.searchsorted(trace.times, [outcome.load.at, outcome.load.until], side="left").tolist()
        window = trace.objects[first:last]
        keys, positions = np.unique(window, return_index=True)
        admitted = np.isin(keys, np.array(outcome.admitted, dtype=np.int64))
        requested += int(admitted.sum())
        misses += int((~result.hits[first:last][positions[admitted]]).sum())
    return Ratio(misses, requested)


def warm_admission(result: ReplayResult) -> tuple[int, int, int]:
    """(objects listed, admitted, already cached) over the result's warm loads."""
    listed = sum(len(set(outcome.load.objects)) for outcome in result.warm)
    admitted = sum(len(outcome.admitted) for outcome in result.warm)
    cached = sum(len(outcome.already_cached) for outcome in result.warm)
    return listed, admitted, cached


def binned(trace: Trace, flags: BoolArray, start_ms: int, end_ms: int, bin_ms: int) -> tuple[IntArray, IntArray]:
    """Per bin of [start, end): (count of flagged requests, count of requests)."""
    bins = (end_ms - start_ms) // bin_ms
    first, last = np.searchsorted(trace.times, [start_ms, start_ms + bins * bin_ms], side="left").tolist()
    index = (trace.times[first:last] - start_ms) // bin_ms
    flagged = np.bincount(index, weights=flags[first:last], minlength=bins).astype(np.int64)
    total = np.bincount(index, minlength=bins).astype(np.int64)
    return flagged, total
