"""Warm lists for the replay: which URLs to load into a POP before its on-sales.

A warm list source is any function ``warm_list(pop_id, at, horizon) -> [url]``
naming, most valuable first, the URLs a POP should hold for the requests of
``[at, at + horizon)``. The replay calls it once per POP for each distinct
scheduled on-sale time ``T`` with ``at = T - lead`` and loads the list then.

Two sources are built here, both restricted to the objects (event page and
items) of the events whose on-sale falls in the window, and both cut to a byte
budget (a share of the cache) and to the edge's limit on one warm request:

* :class:`OracleWarmList` — the objects that *are* requested at the POP in
  the window, by request count: an upper bound on what any forecast can warm.
* :class:`ForecastWarmList` — uses only what is known at ``at``: the public
  on-sale schedule and each event's announced spike (``event_plan``), and the
  POP's own request counts *before* ``at``. An event's expected demand is
  ``spike x (requests for its objects at this POP so far + 1)``: the spike is
  the opening multiple of the event's baseline, and the count so far is the
  POP's best estimate of that baseline (announced events draw a steady share
  of their later demand). The demand is split over the event's objects in
  proportion to their past counts plus one (a uniform prior for the unseen).
  The event demand is pluggable (:data:`EventDemand`): a model's per-region,
  per-event forecast drops in there without changing anything else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

import numpy as np

from ops.settings import MINUTE
from predictor.replay import IntArray, ObjectTable, ReplayError, Trace, WarmLoad

# The edge refuses a warm request naming more URLs (edge/routes.py MAX_WARM_URLS):
# a warm list is a POP's top objects, not a crawl.
MAX_WARM_URLS: Final = 1_000
# Defaults of the replay's warming: loaded 1 minute ahead, covering the first
# 15 minutes of the on-sale (the spike's decay time), with at most a quarter of
# the cache's bytes (the rest keeps serving everything else). A minute is ample
# for a POP to fetch a thousand objects at its warm concurrency, and short on
# purpose: S3-FIFO admits warmed entries into its small queue (10 % of the
# bytes) with frequency 0, so regular traffic pushes them out within minutes.
# Measured on eu-central at 5 % of its footprint: a 10-minute lead let 98 % of
# warmed objects be evicted before their first request, a 1-minute lead 84 %;
# at 20 % of the footprint, 9 % and 1 %.
DEFAULT_LEAD_SECONDS: Final = 1 * MINUTE
DEFAULT_WINDOW_SECONDS: Final = 15 * MINUTE
DEFAULT_BUDGET_SHARE: Final = 0.25


class WarmListSource(Protocol):
    """``warm_list(pop_id, at, horizon)``: URLs, most valuable first, for the POP's requests in the window."""

    def __call__(self, pop_id: str, at: datetime, horizon: timedelta) -> list[str]: ...


# (pop_id, at, horizon, candidate event numbers) -> expected requests per event at the POP in the window.
EventDemand = Callable[[str, datetime, timedelta, Sequence[int]], dict[int, float]]


def millis(moment: datetime) -> int:
    """Milliseconds since the epoch (the traces' clock)."""
    return round(moment.timestamp() * 1000)


def moment(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


@dataclass(frozen=True, slots=True)
class OnsaleSchedule:
    """The on-sales inside the workload's window: event numbers, their times (ms) and announced spikes."""

    events: IntArray
    times: IntArray
    spikes: np.ndarray[Any, np.dtype[np.float64]]

    def distinct_times(self) -> list[int]:
        return sorted(set(self.times.tolist()))

    def events_between(self, start_ms: int, end_ms: int) -> list[int]:
        """Events whose on-sale is in [start, end)."""
        inside = (self.times >= start_ms) & (self.times < end_ms)
        events: list[int] = self.events[inside].tolist()
        return events


def onsale_schedule(event_plan: Any, objects: ObjectTable) -> OnsaleSchedule:
    """The scheduled on-sales of ``event_plan.parquet`` that fall inside the workload's window.

    Raises:
        ReplayError: the plan names an event that is not in the catalog.
    """
    rows = event_plan.loc[event_plan["onsale_in_window"]]
    number = {event_id: index for index, event_id in enumerate(objects.event_ids)}
    try:
        events = np.array([number[str(event_id)] for event_id in rows["event_id"]], dtype=np.int64)
    except KeyError as exc:
        raise ReplayError(f"event_plan names {exc.args[0]!r}, which the catalog does not have") from None
    times = rows["onsale_at"].dt.as_unit("ms").astype("int64").to_numpy()
    return OnsaleSchedule(events, times, rows["spike"].to_numpy(dtype=np.float64))


def _cut_to_budget(ranked: Sequence[int], objects: ObjectTable, budget_bytes: int) -> list[str]:
    urls: list[str] = []
    spent = 0
    for key in ranked:
        size = int(objects.sizes[key])
        if spent + size > budget_bytes:
            continue  # a smaller object further down may still fit
        spent += size
        urls.append(objects.urls[key])
        if len(urls) == MAX_WARM_URLS:
            break
    return urls


class OracleWarmList:
    """The on-sale objects actually requested at the POP in the window, most requested first (an upper bound)."""

    def __init__(self, traces: dict[str, Trace], objects: ObjectTable, schedule: OnsaleSchedule, budget_bytes: int):
        self._traces = traces
        self._objects = objects
        self._schedule = schedule
        self._budget = budget_bytes

    def __call__(self, pop_id: str, at: datetime, horizon: timedelta) -> list[str]:
        trace = self._traces[pop_id]
        start, end = millis(at), millis(at + horizon)
        events = self._schedule.events_between(start, end)
        first, last = np.searchsorted(trace.times, [start, end], side="left").tolist()
        requested = trace.objects[first:last]
        requested = requested[np.isin(self._objects.event_of[requested], events)]
        keys, counts = np.unique(requested, return_counts=True)
        ranked = keys[np.lexsort((keys, -counts))].tolist()
        return _cut_to_budget(ranked, self._objects, self._budget)


class ForecastWarmList:
    """The on-sale objects ranked by demand forecast from information available at ``at`` only."""

    def __init__(
        self,
        traces: dict[str, Trace],
        objects: ObjectTable,
        schedule: OnsaleSchedule,
        budget_bytes: int,
        event_demand: EventDemand | None = None,
    ):
        self._traces = traces
        self._objects = objects
        self._schedule = schedule
        self._budget = budget_bytes
        self._event_demand = event_demand or self.history_demand
        self._spike = dict(zip(schedule.events.tolist(), schedule.spikes.tolist(), strict=True))

    def past_counts(self, pop_id: str, at: datetime) -> IntArray:
        """Requests per object at the POP strictly before `at` (nothing later is looked at)."""
        trace = self._traces[pop_id]
        cut = int(np.searchsorted(trace.times, millis(at), side="left"))
        counts: IntArray = np.bincount(trace.objects[:cut], minlength=len(self._objects.urls)).astype(np.int64)
        return counts

    def history_demand(self, pop_id: str, at: datetime, horizon: timedelta, events: Sequence[int]) -> dict[int, float]:
        """The default event demand: announced spike x (the event's requests at the POP so far + 1)."""
        counts = self.past_counts(pop_id, at)
        return {
            event: self._spike.get(event, 1.0)
            * (1.0 + float(counts[list(self._objects.objects_of_event(event))].sum()))
            for event in events
        }

    def __call__(self, pop_id: str, at: datetime, horizon: timedelta) -> list[str]:
        events = self._schedule.events_between(millis(at), millis(at + horizon))
        if not events:
            return []
        demand = self._event_demand(pop_id, at, horizon, events)
        counts = self.past_counts(pop_id, at)
        scored: list[tuple[float, int]] = []
        for event in events:
            keys = list(self._objects.objects_of_event(event))
            weights = counts[keys].astype(np.float64) + 1.0
            shares = weights / weights.sum()
            scored.extend(zip((demand.get(event, 0.0) * shares).tolist(), keys, strict=True))
        scored.sort(key=lambda pair: (-pair[0], pair[1]))
        return _cut_to_budget([key for score, key in scored if score > 0], self._objects, self._budget)


def warm_loads(
    source: WarmListSource,
    pop_id: str,
    schedule: OnsaleSchedule,
    objects: ObjectTable,
    lead_ms: int,
    window_ms: int,
) -> list[WarmLoad]:
    """One warm load per distinct on-sale time: the source's list for [T - lead, T + window), loaded at T - lead.

    Raises:
        ReplayError: the source names a URL outside the catalog.
    """
    loads: list[WarmLoad] = []
    for onsale in schedule.distinct_times():
        at = onsale - lead_ms
        urls = source(pop_id, moment(at), timedelta(milliseconds=lead_ms + window_ms))
        loads.append(WarmLoad(at, tuple(objects.encode(urls)), onsale + window_ms))
    return loads
