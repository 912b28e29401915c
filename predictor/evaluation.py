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
* ``belady`` — offline MIN (:mod:`predictor.belady`).

It returns counts per POP and policy (hits, requests, warm outcomes, first-
minute fetches), a per-minute series around the hottest on-sale, a hit ratio
by capacity at that on-sale's POP, and the hint replay
(:mod:`predictor.hinteval`). Nothing here writes files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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
from predictor.hinteval import Affinity, HintFigures, replay_hints
from predictor.replay import (
    BoolArray,
    ObjectTable,
    ReplayError,
    ReplayResult,
    Trace,
    footprint_bytes,
    load_trace,
    lru_cache,
    object_table,
    replay,
    s3fifo_cache,
    workload_catalog,
)
from predictor.traces import read_summary, trace_paths
from predictor.warming import (
    DEFAULT_BUDGET_SHARE,
    DEFAULT_LEAD_SECONDS,
    DEFAULT_WINDOW_SECONDS,
    EventDemand,
    ForecastWarmList,
    OnsaleSchedule,
    OracleWarmList,
    WarmListSource,
    onsale_schedule,
    warm_loads,
)

POLICIES: Final = ("lru", "s3fifo", "s3fifo+oracle", "s3fifo+forecast", "belady")
# Default cache size: 20 % of each POP's footprint (the bytes of every object it
# requests in the window). The edge's default cache (256 MiB) holds the whole
# demo catalog (~30 MB), where every policy misses only first requests and only
# warming changes anything; a fifth of the footprint is a regime where eviction
# decides hits (LRU near 0.85 on the default workload). The sweep shows others.
DEFAULT_CAPACITY_SHARE: Final = 0.2
SWEEP_SHARES: Final = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
SWEEP_POLICIES: Final = ("lru", "s3fifo", "s3fifo+oracle", "s3fifo+forecast", "belady")
DEFAULT_HINT_K: Final = (1, 2, 3)
SERIES_BEFORE_MS: Final = 30 * 60_000  # the hit-ratio plot starts half an hour before the on-sale
SERIES_AFTER_MS: Final = 60 * 60_000
SERIES_BIN_MS: Final = 60_000
RATE_BEFORE_MS: Final = 5 * 60_000  # the origin-rate plot: 5 minutes before to 15 after, in 10 s bins
RATE_AFTER_MS: Final = 15 * 60_000
RATE_BIN_MS: Final = 10_000


@dataclass(frozen=True, slots=True)
class Options:
    """How to replay: cache size, warming timing and budget, which POPs, hint list lengths."""

    capacity_share: float = DEFAULT_CAPACITY_SHARE
    capacity_bytes: int | None = None  # overrides capacity_share when given
    lead_seconds: float = DEFAULT_LEAD_SECONDS
    window_seconds: float = DEFAULT_WINDOW_SECONDS
    warm_budget_share: float = DEFAULT_BUDGET_SHARE
    pops: tuple[str, ...] = ()  # empty: every POP
    hint_k: tuple[int, ...] = DEFAULT_HINT_K
    sweep: bool = True

    def validate(self) -> None:
        """Raise ReplayError naming the first option out of range."""
        if not 0 < self.capacity_share <= 1:
            raise ReplayError(f"capacity share must be in (0, 1], got {self.capacity_share}")
        if self.capacity_bytes is not None and self.capacity_bytes < 10:
            raise ReplayError(f"capacity must be at least 10 bytes, got {self.capacity_bytes}")
        if self.lead_seconds < 0 or self.window_seconds <= 0:
            raise ReplayError("warming lead must be >= 0 and the on-sale window > 0 seconds")
        if not 0 < self.warm_budget_share <= 1:
            raise ReplayError(f"warm budget share must be in (0, 1], got {self.warm_budget_share}")
        if any(k < 1 for k in self.hint_k):
            raise ReplayError("hint list lengths must be at least 1")


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


@dataclass(frozen=True, slots=True)
class Workload:
    """A written workload, loaded for replay."""

    directory: Path
    objects: ObjectTable
    traces: dict[str, Trace]
    schedule: OnsaleSchedule
    event_plan: pd.DataFrame
    affinity: Affinity  # consenting human users' tastes, and each event's genre and artist


def load_workload(directory: Path, pops: Sequence[str] = ()) -> Workload:
    """Read the summary, the event plan, the users' consent and the POP traces (all, or those named).

    Raises:
        ReplayError: the directory holds no complete workload, or a named POP has no trace.
        OSError: a file cannot be read.
    """
    try:
        summary = read_summary(directory)
    except FileNotFoundError:
        raise ReplayError(
            f"{directory} holds no workload (no summary.json): run `boxoffice predictor generate`"
        ) from None
    except ValueError as exc:
        raise ReplayError(f"{directory}/summary.json is not JSON: {exc}") from None
    objects = object_table(workload_catalog(summary))
    paths = trace_paths(directory)
    if not paths:
        raise ReplayError(f"{directory} has no traces/<pop_id>.parquet")
    wanted = list(pops) or sorted(paths)
    missing = [pop for pop in wanted if pop not in paths]
    if missing:
        raise ReplayError(f"no trace for POP {', '.join(missing)} (have: {', '.join(sorted(paths))})")
    event_plan = pd.read_parquet(directory / "event_plan.parquet")
    users = pd.read_parquet(
        directory / "users.parquet", columns=["user_id", "consent", "is_bot", "favourite_genre", "favourite_artists"]
    )
    users = users.loc[users["consent"] & ~users["is_bot"]]
    ids = users["user_id"].astype(str).tolist()
    events = event_plan.set_index(event_plan["event_id"].astype(str)).reindex(list(objects.event_ids))
    affinity = Affinity(
        favourite_genre=dict(zip(ids, users["favourite_genre"].astype(str).tolist(), strict=True)),
        favourite_artists={
            user: frozenset(name for name in str(names).split("|") if name)
            for user, names in zip(ids, users["favourite_artists"].tolist(), strict=True)
        },
        event_genre=tuple(events["genre"].astype(str).tolist()),
        event_artist=tuple(events["artist"].astype(str).tolist()),
    )
    traces = {pop: load_trace(paths[pop], pop, objects) for pop in wanted}
    return Workload(directory, objects, traces, onsale_schedule(event_plan, objects), event_plan, affinity)


def capacity_for(trace: Trace, objects: ObjectTable, options: Options, share: float | None = None) -> int:
    if options.capacity_bytes is not None and share is None:
        return options.capacity_bytes
    return max(10, int(footprint_bytes(trace, objects) * (options.capacity_share if share is None else share)))


def warm_sources(
    workload: Workload, capacity: int, options: Options, event_demand: EventDemand | None = None
) -> dict[str, WarmListSource]:
    budget = int(capacity * options.warm_budget_share)
    sources: dict[str, WarmListSource] = {
        "s3fifo+oracle": OracleWarmList(workload.traces, workload.objects, workload.schedule, budget),
        "s3fifo+forecast": ForecastWarmList(workload.traces, workload.objects, workload.schedule, budget),
    }
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
) -> Evaluation:
    """Replay every loaded POP under every policy and gather the figures (see the module docstring).

    Args:
        event_demand: a model's per-event demand forecast; when given, a ``s3fifo+model`` policy is added.
        progress: called with a line of text as each POP finishes.

    Raises:
        ReplayError: an option is out of range.
    """
    options.validate()
    window_ms = round(options.window_seconds * 1000)
    focus_event, focus_pop, focus_ms = _focus_onsale(workload)
    policies = (*POLICIES, "s3fifo+model") if event_demand is not None else POLICIES
    pops: list[PopFigures] = []
    totals = {policy: PolicyFigures() for policy in policies}
    hit_series: Series | None = None
    rate_series: Series | None = None
    sweep: dict[str, list[tuple[float, float | None, float | None]]] = {}
    for pop_id, trace in workload.traces.items():
        capacity = capacity_for(trace, workload.objects, options)
        sources = warm_sources(workload, capacity, options, event_demand)
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
                sweep = _sweep(workload, trace, options, event_demand, onsale_objects)
        progress(f"{pop_id}: {len(trace)} requests at {capacity} bytes")
    hints = {k: HintFigures() for k in options.hint_k}
    for trace in workload.traces.values():
        for k in options.hint_k:
            hints[k] = hints[k] + replay_hints(trace, workload.objects, workload.affinity, k)
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
    workload: Workload, trace: Trace, options: Options, event_demand: EventDemand | None, onsale_objects: BoolArray
) -> dict[str, list[tuple[float, float | None, float | None]]]:
    sweep: dict[str, list[tuple[float, float | None, float | None]]] = {policy: [] for policy in SWEEP_POLICIES}
    for share in SWEEP_SHARES:
        capacity = capacity_for(trace, workload.objects, options, share)
        sources = warm_sources(workload, capacity, options, event_demand)
        for policy in SWEEP_POLICIES:
            result = run_policy(workload, trace, policy, capacity, sources, options)
            sweep[policy].append((share, ratio(result.hits).value, ratio(result.hits, onsale_objects).value))
    return sweep
