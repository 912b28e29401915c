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
  The event demand is pluggable (:data:`EventDemand`): the demand model's
  per-region, per-event forecast (:class:`ModelForecast`, fed only requests
  before ``at``) drops in there without changing anything else.

Two *wide* sources warm whatever the window is expected to request, on sale
or not, within the same budget: :class:`ModelWarmList` (the demand model's
forecast of every event for the POP's region) and :class:`OracleWideWarmList`
(the objects the window really requests: the bound of any wide list).
Measured on the default workload at 20 % of the footprint, even the wide
oracle closes only about a third of the LRU-to-Belady gap over all traffic in
on-sale windows, at any budget from 25 % to 100 % of the cache and with a
1- or 5-minute lead: most misses there are re-requests of long-tail objects
evicted during the window, which no single load ahead of it prevents.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

import numpy as np

from ops.settings import MINUTE
from predictor import forecast
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


# --------------------------------------------------------------------------- the demand model as a source


class ModelForecast:
    """The demand model's expected requests per (region, event) at given times, from requests before each.

    For every warm time ``at`` it builds the demand model's candidate rows and
    features exactly as :mod:`predictor.forecast` does for serving — pairs
    active in the hour before ``at`` and every region for an event whose
    on-sale opens within the model's horizon — from the requests strictly
    before ``at`` (``forecast.batch_counts`` counts rows with ``ts < at``, the
    state the sidecar's ``DemandState`` would hold if fed the log up to then).
    Nothing at or after ``at`` is read. The model predicts requests over its
    own horizon; :meth:`expected` scales that to the asked window linearly.

    ``requests`` is ``forecast.request_stream(event_log)``: every request
    naming an event, bots included (they are load too), keyed by the user's
    region. A POP is taken to serve its own region (POP ids are region ids).
    """

    def __init__(self, model: Any, requests: Any, facts: Any, times_ms: Sequence[int], horizon_ms: int):
        self._model = model
        self._requests = requests
        self._facts = facts
        self.horizon_ms = horizon_ms
        self._table: dict[int, dict[str, dict[str, float]]] = {}
        self._prepare(sorted(set(times_ms)))

    def _prepare(self, times_ms: Sequence[int]) -> None:
        if not times_ms:
            return
        queries = forecast.candidates(self._requests, self._facts, times_ms, self.horizon_ms)
        if queries.empty:
            for now in times_ms:
                self._table[now] = {}
            return
        counts = forecast.batch_counts(self._requests, queries, self.horizon_ms)
        features = forecast.derive_demand(queries, counts, self._facts, self.horizon_ms)
        expected = np.asarray(self._model.predict(features), dtype=np.float64)
        for now in times_ms:
            self._table.setdefault(now, {})
        for region, event, now, value in zip(
            queries["region"].tolist(), queries["event"].tolist(), queries["now_ms"].tolist(), expected.tolist(),
            strict=True,
        ):  # fmt: skip
            self._table[int(now)].setdefault(str(region), {})[str(event)] = float(value)

    def expected(self, region: str, at_ms: int, window_ms: int) -> dict[str, float]:
        """Expected requests per event id from `region` in ``[at, at + window)``; events not listed expect ~0."""
        if at_ms not in self._table:
            self._prepare([at_ms])
        scale = window_ms / self.horizon_ms
        return {event: value * scale for event, value in self._table[at_ms].get(region, {}).items()}

    def event_demand(self, objects: ObjectTable) -> EventDemand:
        """This forecast as a :data:`EventDemand` for :class:`ForecastWarmList` (event numbers of `objects`)."""

        def demand(pop_id: str, at: datetime, horizon: timedelta, events: Sequence[int]) -> dict[int, float]:
            expected = self.expected(pop_id, millis(at), millis(at + horizon) - millis(at))
            return {event: expected.get(objects.event_ids[event], 0.0) for event in events}

        return demand


class ModelWarmList:
    """Every event the model forecasts for the POP's region in the window, on sale or not, hottest first.

    The on-sale lists warm only the events going on sale; most of a window's
    traffic is for other events, so this list asks the demand model for all
    of them and fills the same byte budget with the objects it expects to be
    requested most: an event's expected requests split over its page and items
    in proportion to their requests at the POP before ``at`` plus one, as in
    :class:`ForecastWarmList`. Uses nothing at or after ``at``.
    """

    def __init__(
        self, traces: dict[str, Trace], objects: ObjectTable, model_forecast: ModelForecast, budget_bytes: int
    ):
        self._history = ForecastWarmList(traces, objects, OnsaleSchedule(*_empty_schedule()), budget_bytes)
        self._objects = objects
        self._forecast = model_forecast
        self._budget = budget_bytes
        self._event_number = {event_id: number for number, event_id in enumerate(objects.event_ids)}

    def __call__(self, pop_id: str, at: datetime, horizon: timedelta) -> list[str]:
        start = millis(at)
        expected = self._forecast.expected(pop_id, start, millis(at + horizon) - start)
        counts = self._history.past_counts(pop_id, at)
        scored: list[tuple[float, int]] = []
        for event_id, demand in expected.items():
            event = self._event_number.get(event_id)
            if event is None or demand <= 0:
                continue
            keys = list(self._objects.objects_of_event(event))
            weights = counts[keys].astype(np.float64) + 1.0
            scored.extend(zip((demand * weights / weights.sum()).tolist(), keys, strict=True))
        scored.sort(key=lambda pair: (-pair[0], pair[1]))
        return _cut_to_budget([key for _, key in scored], self._objects, self._budget)


class OracleWideWarmList:
    """Every object actually requested at the POP in the window, most requested first: the bound of wide warming."""

    def __init__(self, traces: dict[str, Trace], objects: ObjectTable, budget_bytes: int):
        self._traces = traces
        self._objects = objects
        self._budget = budget_bytes

    def __call__(self, pop_id: str, at: datetime, horizon: timedelta) -> list[str]:
        trace = self._traces[pop_id]
        first, last = np.searchsorted(trace.times, [millis(at), millis(at + horizon)], side="left").tolist()
        keys, counts = np.unique(trace.objects[first:last], return_counts=True)
        return _cut_to_budget(keys[np.lexsort((keys, -counts))].tolist(), self._objects, self._budget)


def _empty_schedule() -> tuple[IntArray, IntArray, np.ndarray[Any, np.dtype[np.float64]]]:
    return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
