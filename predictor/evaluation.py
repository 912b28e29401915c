"""The offline evaluation: every POP's trace through LRU, S3-FIFO, S3-FIFO with warming and Belady.

:func:`evaluate` reads a written workload (:mod:`predictor.traces`), rebuilds
its catalog to number and size the objects (:mod:`predictor.replay`), and for
each POP replays the trace at a capacity given as a share of that POP's
footprint (the bytes of every distinct object it requests) or in bytes:

* ``lru`` — edge.lru.LruCache, the baseline;
* ``s3fifo`` — edge.s3fifo.S3FifoCache, the POP's policy;
* ``s3fifo+oracle`` — the same, warmed before each on-sale with the objects
  the window really requests (the upper bound of warming);
* ``s3fifo+forecast`` — warmed with the forecast list (information before the
  on-sale only), see :mod:`predictor.warming`;
* ``s3fifo+oracle-wide`` — warmed with every object the window requests, on
  sale or not (the bound of warming beyond the on-sale's own objects);
* ``s3fifo+model`` and ``s3fifo+model-wide`` — with a demand model: the
  on-sale list with the model's event demand, and the model's forecast of
  every event for the POP's region (:class:`predictor.warming.ModelForecast`);
* ``belady`` — offline MIN (:mod:`predictor.belady`).

The options and the loaded workload are :mod:`predictor.evalinputs`. With
trained models (``Options.models_dir``), :func:`predictor.modelinputs.prepare_models`
computes once what the replay needs of them: demand forecasts at the warm
times, purchase probabilities for the hint replay, and ROC and calibration
points on the purchase model's test sessions.

It returns counts per POP and policy (hits, requests, warm outcomes, first-
minute fetches), a per-minute series around the hottest on-sale, a hit ratio
by capacity at that on-sale's POP, and the hint replay
(:mod:`predictor.hinteval`). Nothing here writes files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

from predictor.belady import replay_belady
from predictor.cachemetrics import (
    Ratio,
    binned,
    first_minute_fetches,
    in_onsale_windows,
    onsale_object_requests,
    ratio,
    warm_admission,
    warmed_first_request_misses,
)
from predictor.evalinputs import DEFAULT_CAPACITY_SHARE, DEFAULT_HINT_K, Options, Workload, load_workload
from predictor.hinteval import (
    HintFigures,
    HintGroups,
    OperatingPoint,
    choose_operating_point,
    replay_hints,
    replay_model_hints,
)
from predictor.modelinputs import ROC_POINTS, ModelInputs, prepare_models, roc_points
from predictor.replay import (
    BoolArray,
    ObjectTable,
    ReplayError,
    ReplayResult,
    Trace,
    footprint_bytes,
    lru_cache,
    replay,
    s3fifo_cache,
)
from predictor.warming import (
    EventDemand,
    ForecastWarmList,
    ModelForecast,
    ModelWarmList,
    OracleWarmList,
    OracleWideWarmList,
    WarmListSource,
    warm_loads,
)

# The options, the loaded workload and the model inputs live in predictor.evalinputs and
# predictor.modelinputs; they stay importable from here, where callers have always found them.
__all__ = [
    "DEFAULT_CAPACITY_SHARE",
    "DEFAULT_HINT_K",
    "HINT_AIM_COVERAGE",
    "HINT_AIM_PRECISION",
    "HINT_THRESHOLDS",
    "MODEL_POLICIES",
    "POLICIES",
    "RATE_AFTER_MS",
    "RATE_BEFORE_MS",
    "RATE_BIN_MS",
    "ROC_POINTS",
    "SERIES_AFTER_MS",
    "SERIES_BEFORE_MS",
    "SERIES_BIN_MS",
    "SWEEP_POLICIES",
    "SWEEP_SHARES",
    "Evaluation",
    "ModelInputs",
    "Options",
    "PolicyFigures",
    "PopFigures",
    "Series",
    "Workload",
    "capacity_for",
    "evaluate",
    "load_workload",
    "prepare_models",
    "roc_points",
    "run_policy",
    "warm_sources",
]

POLICIES: Final = ("lru", "s3fifo", "s3fifo+oracle", "s3fifo+forecast", "s3fifo+oracle-wide", "belady")
MODEL_POLICIES: Final = ("s3fifo+model", "s3fifo+model-wide")  # added when a demand model is given
SWEEP_SHARES: Final = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
SWEEP_POLICIES: Final = ("lru", "s3fifo", "s3fifo+oracle", "s3fifo+forecast", "belady")
# Hints from the purchase model: the calibrated-probability thresholds swept, and the aims.
HINT_THRESHOLDS: Final = (0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6)
HINT_AIM_PRECISION: Final = 0.5
HINT_AIM_COVERAGE: Final = 0.3
SERIES_BEFORE_MS: Final = 30 * 60_000  # the hit-ratio plot starts half an hour before the on-sale
SERIES_AFTER_MS: Final = 60 * 60_000
SERIES_BIN_MS: Final = 60_000
RATE_BEFORE_MS: Final = 5 * 60_000  # the origin-rate plot: 5 minutes before to 15 after, in 10 s bins
RATE_AFTER_MS: Final = 15 * 60_000
RATE_BIN_MS: Final = 10_000


@dataclass(slots=True)
class PolicyFigures:
    """Counts of one policy at one POP (or summed over POPs)."""

    overall: Ratio = field(default_factory=Ratio)
    windows: Ratio = field(default_factory=Ratio)
    onsale_objects: Ratio = field(default_factory=Ratio)
    first_minute: Ratio = field(default_factory=Ratio)  # (origin fetches, distinct objects)
    warmed_first_miss: Ratio = field(default_factory=Ratio)  # (first requests missed, warmed objects requested)
    warm_listed: int = 0
    warm_admitted: int = 0
    warm_already_cached: int = 0

    def add(self, other: PolicyFigures) -> None:
        self.overall += other.overall
        self.windows += other.windows
        self.onsale_objects += other.onsale_objects
        self.first_minute += other.first_minute
        self.warmed_first_miss += other.warmed_first_miss
        self.warm_listed += other.warm_listed
        self.warm_admitted += other.warm_admitted
        self.warm_already_cached += other.warm_already_cached


@dataclass(frozen=True, slots=True)
class PopFigures:
    pop_id: str
    requests: int
    uncacheable: int
    footprint_bytes: int
    capacity_bytes: int
    policies: dict[str, PolicyFigures]


@dataclass(frozen=True, slots=True)
class Series:
    """Per-bin values around one on-sale at one POP; ``start_ms`` is relative to the on-sale."""

    event_id: str
    pop_id: str
    onsale_ms: int
    start_ms: int
    bin_ms: int
    requests: list[int]
    hit_ratio: dict[str, list[float | None]]
    origin_per_second: dict[str, list[float]]


@dataclass(frozen=True, slots=True)
class Evaluation:
    options: Options
    pops: list[PopFigures]
    totals: dict[str, PolicyFigures]
    hit_ratio_series: Series | None
    origin_rate_series: Series | None
    # policy -> (capacity share, hit ratio overall, hit ratio of on-sale objects in their windows) at the focus POP
    sweep: dict[str, list[tuple[float, float | None, float | None]]]
    sweep_pop: str | None
    hints: dict[int, HintFigures]
    onsales: int
    onsale_times: int
    warm_sources: tuple[str, ...]
    hints_from_ms: int | None = None  # the heuristic hints count from then (the purchase model's test period)
    models: ModelInputs | None = None
    model_hints: tuple[HintGroups, ...] = ()  # one per k: period 0 validation, period 1 test
    hint_point: OperatingPoint | None = None


def capacity_for(trace: Trace, objects: ObjectTable, options: Options, share: float | None = None) -> int:
    if options.capacity_bytes is not None and share is None:
        return options.capacity_bytes
    return max(10, int(footprint_bytes(trace, objects) * (options.capacity_share if share is None else share)))


def warm_sources(
    workload: Workload,
    capacity: int,
    options: Options,
    event_demand: EventDemand | None = None,
    model_forecast: ModelForecast | None = None,
) -> dict[str, WarmListSource]:
    budget = int(capacity * options.warm_budget_share)
    sources: dict[str, WarmListSource] = {
        "s3fifo+oracle": OracleWarmList(workload.traces, workload.objects, workload.schedule, budget),
        "s3fifo+forecast": ForecastWarmList(workload.traces, workload.objects, workload.schedule, budget),
        "s3fifo+oracle-wide": OracleWideWarmList(workload.traces, workload.objects, budget),
    }
    if model_forecast is not None:
        event_demand = event_demand or model_forecast.event_demand(workload.objects)
        sources["s3fifo+model-wide"] = ModelWarmList(workload.traces, workload.objects, model_forecast, budget)
    if event_demand is not None:
        sources["s3fifo+model"] = ForecastWarmList(
            workload.traces, workload.objects, workload.schedule, budget, event_demand
        )
    return sources


def run_policy(
    workload: Workload, trace: Trace, policy: str, capacity: int, sources: dict[str, WarmListSource], options: Options
) -> ReplayResult:
    """One replay of one POP's trace under one policy name."""
    if policy == "belady":
        return replay_belady(trace, workload.objects, capacity)
    if policy == "lru":
        return replay(trace, workload.objects, policy, lru_cache(capacity))
    if policy == "s3fifo":
        return replay(trace, workload.objects, policy, s3fifo_cache(capacity))
    if policy in sources:
        loads = warm_loads(
            sources[policy],
            trace.pop_id,
            workload.schedule,
            workload.objects,
            round(options.lead_seconds * 1000),
            round(options.window_seconds * 1000),
        )
        return replay(trace, workload.objects, policy, s3fifo_cache(capacity), loads)
    raise ReplayError(f"unknown policy {policy!r}")


def evaluate(
    workload: Workload,
    options: Options,
    event_demand: EventDemand | None = None,
    progress: Callable[[str], None] = lambda message: None,
    models: ModelInputs | None = None,
) -> Evaluation:
    """Replay every loaded POP under every policy and gather the figures (see the module docstring).

    Args:
        event_demand: a per-event demand forecast; when given, a ``s3fifo+model`` policy is added.
        progress: called with a line of text as each POP finishes.
        models: what :func:`predictor.modelinputs.prepare_models` computed: with a demand forecast, the
            ``s3fifo+model`` and ``s3fifo+model-wide`` policies are added; with purchase probabilities, the
            model's hints.

    Raises:
        ReplayError: an option is out of range.
    """
    options.validate()
    window_ms = round(options.window_seconds * 1000)
    focus_event, focus_pop, focus_ms = _focus_onsale(workload)
    model_forecast = models.forecast if models is not None else None
    if model_forecast is not None:
        policies: tuple[str, ...] = (*POLICIES[:-1], *MODEL_POLICIES, POLICIES[-1])
    elif event_demand is not None:
        policies = (*POLICIES[:-1], "s3fifo+model", POLICIES[-1])
    else:
        policies = POLICIES
    pops: list[PopFigures] = []
    totals = {policy: PolicyFigures() for policy in policies}
    hit_series: Series | None = None
    rate_series: Series | None = None
    sweep: dict[str, list[tuple[float, float | None, float | None]]] = {}
    for pop_id, trace in workload.traces.items():
        capacity = capacity_for(trace, workload.objects, options)
        sources = warm_sources(workload, capacity, options, event_demand, model_forecast)
        windows = in_onsale_windows(trace, workload.schedule, window_ms)
        onsale_objects = onsale_object_requests(trace, workload.objects, workload.schedule, window_ms)
        figures: dict[str, PolicyFigures] = {}
        results: dict[str, ReplayResult] = {}
        for policy in policies:
            result = run_policy(workload, trace, policy, capacity, sources, options)
            listed, admitted, cached = warm_admission(result)
            figures[policy] = PolicyFigures(
                overall=ratio(result.hits),
                windows=ratio(result.hits, windows),
                onsale_objects=ratio(result.hits, onsale_objects),
                first_minute=first_minute_fetches(trace, workload.objects, workload.schedule, result),
                warmed_first_miss=warmed_first_request_misses(trace, result),
                warm_listed=listed,
                warm_admitted=admitted,
                warm_already_cached=cached,
            )
            totals[policy].add(figures[policy])
            results[policy] = result
        pops.append(
            PopFigures(
                pop_id,
                len(trace),
                trace.uncacheable,
                footprint_bytes(trace, workload.objects),
                capacity,
                figures,
            )
        )
        if pop_id == focus_pop and focus_event is not None:
            hit_series = _series(
                trace, results, focus_event, focus_ms, SERIES_BEFORE_MS, SERIES_AFTER_MS, SERIES_BIN_MS
            )
            rate_series = _series(trace, results, focus_event, focus_ms, RATE_BEFORE_MS, RATE_AFTER_MS, RATE_BIN_MS)
            if options.sweep:
                sweep = _sweep(workload, trace, options, event_demand, model_forecast, onsale_objects)
        progress(f"{pop_id}: {len(trace)} requests at {capacity} bytes")
    periods = models.periods if models is not None and models.probability else None
    hints_from = periods[1] if periods is not None else None
    hints = {k: HintFigures() for k in options.hint_k}
    for trace in workload.traces.values():
        for k in options.hint_k:
            hints[k] = hints[k] + replay_hints(trace, workload.objects, workload.affinity, k, hints_from)
    model_hints: list[HintGroups] = []
    point = None
    if models is not None and periods is not None:
        consenting = workload.affinity.favourite_genre
        for k in options.hint_k:
            groups = [
                replay_model_hints(trace, workload.objects, consenting, models.probability[pop_id], k, periods)
                for pop_id, trace in workload.traces.items()
            ]
            total = groups[0]
            for more in groups[1:]:
                total = total + more
            model_hints.append(total)
        point = choose_operating_point(model_hints, HINT_THRESHOLDS, HINT_AIM_PRECISION, HINT_AIM_COVERAGE)
        progress("model hints replayed")
    return Evaluation(
        options=options,
        pops=pops,
        totals=totals,
        hit_ratio_series=hit_series,
        origin_rate_series=rate_series,
        sweep=sweep,
        sweep_pop=focus_pop if sweep else None,
        hints=hints,
        onsales=len(workload.schedule.events),
        onsale_times=len(workload.schedule.distinct_times()),
        warm_sources=tuple(policy for policy in policies if "+" in policy),
        hints_from_ms=hints_from,
        models=models,
        model_hints=tuple(model_hints),
        hint_point=point,
    )


def _focus_onsale(workload: Workload) -> tuple[str | None, str | None, int]:
    """The on-sale with the largest expected opening traffic (spike x baseline, both announced) at a loaded POP.

    Returns its event id, its home region's POP and its time (ms); (None, None, 0) if there is none.
    """
    plan = workload.event_plan
    rows = plan.loc[plan["onsale_in_window"] & plan["region"].astype(str).isin(list(workload.traces))]
    if rows.empty:
        return None, None, 0
    row = rows.loc[(rows["spike"] * rows["baseline_per_minute"]).idxmax()]
    return str(row["event_id"]), str(row["region"]), int(pd.Timestamp(row["onsale_at"]).value // 1_000_000)


def _series(
    trace: Trace,
    results: dict[str, ReplayResult],
    event_id: str,
    onsale_ms: int,
    before_ms: int,
    after_ms: int,
    bin_ms: int,
) -> Series:
    start, end = onsale_ms - before_ms, onsale_ms + after_ms
    hit_ratio: dict[str, list[float | None]] = {}
    origin: dict[str, list[float]] = {}
    total = np.zeros(0, dtype=np.int64)
    for policy, result in results.items():
        hits, total = binned(trace, result.hits, start, end, bin_ms)
        hit_ratio[policy] = [None if n == 0 else h / n for h, n in zip(hits.tolist(), total.tolist(), strict=True)]
        origin[policy] = ((total - hits) / (bin_ms / 1000)).tolist()
    return Series(event_id, trace.pop_id, onsale_ms, -before_ms, bin_ms, total.tolist(), hit_ratio, origin)


def _sweep(
    workload: Workload,
    trace: Trace,
    options: Options,
    event_demand: EventDemand | None,
    model_forecast: ModelForecast | None,
    onsale_objects: BoolArray,
) -> dict[str, list[tuple[float, float | None, float | None]]]:
    policies: tuple[str, ...] = SWEEP_POLICIES
    if model_forecast is not None or event_demand is not None:
        policies = (*SWEEP_POLICIES[:-1], "s3fifo+model", SWEEP_POLICIES[-1])
    sweep: dict[str, list[tuple[float, float | None, float | None]]] = {policy: [] for policy in policies}
    for share in SWEEP_SHARES:
        capacity = capacity_for(trace, workload.objects, options, share)
        sources = warm_sources(workload, capacity, options, event_demand, model_forecast)
        for policy in policies:
            result = run_policy(workload, trace, policy, capacity, sources, options)
            sweep[policy].append((share, ratio(result.hits).value, ratio(result.hits, onsale_objects).value))
    return sweep
