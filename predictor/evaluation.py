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

With trained models (``Options.models_dir``), :func:`prepare_models` computes
once what the replay needs of them: demand forecasts at the warm times,
purchase probabilities for the hint replay, and ROC and calibration points on
the purchase model's test sessions.

It returns counts per POP and policy (hits, requests, warm outcomes, first-
minute fetches), a per-minute series around the hottest on-sale, a hit ratio
by capacity at that on-sale's POP, and the hint replay
(:mod:`predictor.hinteval`). Nothing here writes files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

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
from predictor.calibration import binary_metrics, calibration_curve
from predictor.dataset import read_workload, streams
from predictor.errors import PredictorError
from predictor.features import batch_raw, derive
from predictor.forecast import request_stream
from predictor.hinteval import (
    Affinity,
    HintFigures,
    HintGroups,
    OperatingPoint,
    choose_operating_point,
    first_requests,
    replay_hints,
    replay_model_hints,
)
from predictor.models import DEMAND, PURCHASE, Model, load, versions
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
    ModelForecast,
    ModelWarmList,
    OnsaleSchedule,
    OracleWarmList,
    OracleWideWarmList,
    WarmListSource,
    onsale_schedule,
    warm_loads,
)

log = logging.getLogger("predictor.evaluation")

log = logging.getLogger("predictor.evaluation")

POLICIES: Final = ("lru", "s3fifo", "s3fifo+oracle", "s3fifo+forecast", "s3fifo+oracle-wide", "belady")
MODEL_POLICIES: Final = ("s3fifo+model", "s3fifo+model-wide")  # added when a demand model is given
# Default cache size: 20 % of each POP's footprint (the bytes of every object it
# requests in the window). The edge's default cache (256 MiB) holds the whole
# demo catalog (~30 MB), where every policy misses only first requests and only
# warming changes anything; a fifth of the footprint is a regime where eviction
# decides hits (LRU near 0.85 on the default workload). The sweep shows others.
DEFAULT_CAPACITY_SHARE: Final = 0.2
SWEEP_SHARES: Final = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
SWEEP_POLICIES: Final = ("lru", "s3fifo", "s3fifo+oracle", "s3fifo+forecast", "belady")
# Hints from the purchase model: the calibrated-probability thresholds swept, and the aims.
HINT_THRESHOLDS: Final = (0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6)
HINT_AIM_PRECISION: Final = 0.5
HINT_AIM_COVERAGE: Final = 0.3
ROC_POINTS: Final = 200  # a ROC curve is drawn through at most this many points
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
    models_dir: Path | None = None  # trained models (purchase, demand); None or empty: no model figures

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
    hints_from_ms: int | None = None  # the heuristic hints count from then (the purchase model's test period)
    models: ModelInputs | None = None
    model_hints: tuple[HintGroups, ...] = ()  # one per k: period 0 validation, period 1 test
    hint_point: OperatingPoint | None = None


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


@dataclass(frozen=True, slots=True)
class ModelInputs:
    """What the trained models say about the workload, computed once before the replay.

    ``probability[pop][(session, event number)]`` is the purchase model's calibrated
    probability at the session's first request naming the event (features from the
    event log strictly before it), for consenting human sessions from the model's
    calibration period on. ``periods`` are (validation from, test from) in ms: the
    purchase model's calibration and test slices, so hints are never scored on the
    sessions it was fitted on, and the operating point is chosen on validation only.
    ``curves`` holds ROC and calibration points of the model and of the generator's
    truth on the test slice, with their metrics. ``notes`` say what is missing.
    """

    models_dir: Path
    purchase_version: int | None
    demand_version: int | None
    forecast: ModelForecast | None
    probability: dict[str, dict[tuple[int, int], float]]
    periods: tuple[int, int] | None
    curves: dict[str, dict[str, Any]]
    notes: tuple[str, ...]


def _load(models_dir: Path, kind: str, notes: list[str]) -> Model | None:
    if not versions(models_dir, kind):
        notes.append(f"no {kind} model in {models_dir}")
        return None
    try:
        return load(models_dir, kind)
    except PredictorError as exc:
        log.warning("%s", exc.message)
        notes.append(f"{kind} model not loaded: {exc.message}")
        return None


def _same_workload(model: Model, summary: dict[str, Any]) -> bool:
    trained = model.metadata.get("workload", {})
    config = summary.get("config", {})
    return bool(
        trained.get("seed") == config.get("seed")
        and trained.get("days") == config.get("days")
        and trained.get("users") == config.get("users")
        and trained.get("catalog") == summary.get("catalog")
    )


def roc_points(label: Any, score: Any, points: int = ROC_POINTS) -> dict[str, list[float]]:
    """(false positive rate, true positive rate) at every distinct score, thinned to about `points` points."""
    y = np.asarray(label, dtype=np.bool_)
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")
    ranked = np.asarray(score, dtype=np.float64)[order]
    positives, negatives = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    true_positives = np.cumsum(y[order])
    false_positives = np.cumsum(~y[order])
    last_of_score = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])  # one point per distinct score
    step = max(1, len(last_of_score) // points)
    keep = np.unique(np.r_[last_of_score[::step], last_of_score[-1:]])
    return {
        "fpr": [0.0, *(false_positives[keep] / negatives).tolist()],
        "tpr": [0.0, *(true_positives[keep] / positives).tolist()],
    }


def prepare_models(
    workload: Workload, options: Options, progress: Callable[[str], None] = lambda message: None
) -> ModelInputs | None:
    """Load the models of ``options.models_dir`` and compute what the replay needs of them.

    Returns None when no directory is given or it holds no model. A model that cannot be
    loaded is left out (and said so in ``notes``), never a crash.
    """
    models_dir = options.models_dir
    if models_dir is None or not (versions(models_dir, PURCHASE) or versions(models_dir, DEMAND)):
        return None
    notes: list[str] = []
    purchase, demand = _load(models_dir, PURCHASE, notes), _load(models_dir, DEMAND, notes)
    if purchase is None and demand is None:
        return ModelInputs(models_dir, None, None, None, {}, None, {}, tuple(notes))
    tables = read_workload(workload.directory)
    for model in (purchase, demand):
        if model is not None and not _same_workload(model, tables.summary):
            notes.append(
                f"the {model.kind} model was trained on another workload ({model.metadata.get('workload')}): "
                "its test split does not separate training rows from these"
            )
    facts = tables.facts
    forecast = None
    if demand is not None:
        horizon_ms = round(float(demand.metadata["horizon_s"]) * 1000)
        lead_ms = round(options.lead_seconds * 1000)
        times = [onsale - lead_ms for onsale in workload.schedule.distinct_times()]
        forecast = ModelForecast(demand, request_stream(tables.event_log), facts, times, horizon_ms)
        test_from = demand.metadata.get("split", {}).get("test_from_ms")
        if test_from is not None:
            inside = sum(1 for at in times if at < int(test_from))
            notes.append(
                f"demand model: {inside} of {len(times)} warm times fall before its test period "
                "(the period it was fitted and early-stopped on), where its forecasts are in-sample"
            )
        progress(f"demand model v{demand.version}: forecasts at {len(times)} warm times")
    probability: dict[str, dict[tuple[int, int], float]] = {}
    periods: tuple[int, int] | None = None
    curves: dict[str, dict[str, Any]] = {}
    if purchase is not None:
        try:
            split = purchase.metadata["split"]
            periods = (int(split["calibration_from_ms"]), int(split["test_from_ms"]))
        except (KeyError, TypeError, ValueError):
            notes.append("the purchase model's metadata has no split: no hint or curve figures")
    if purchase is not None and periods is not None:
        probability, curves = _score_purchase(workload, tables, purchase, periods)
        progress(f"purchase model v{purchase.version}: {sum(map(len, probability.values()))} hint groups scored")
    return ModelInputs(
        models_dir,
        None if purchase is None else purchase.version,
        None if demand is None else demand.version,
        forecast,
        probability,
        periods,
        curves,
        tuple(notes),
    )


def _score_purchase(
    workload: Workload, tables: Any, model: Model, periods: tuple[int, int]
) -> tuple[dict[str, dict[tuple[int, int], float]], dict[str, dict[str, Any]]]:
    """Hint-group probabilities per POP, and the test slice's ROC and calibration, in one feature pass."""
    facts = tables.facts
    consenting = workload.affinity.favourite_genre
    parts: list[pd.DataFrame] = []
    keys: list[tuple[str, Any, Any]] = []
    for pop_id, trace in workload.traces.items():
        positions = first_requests(trace, workload.objects, consenting, periods[0])
        events = workload.objects.event_of[trace.objects[positions]]
        parts.append(
            pd.DataFrame(
                {
                    "user_id": trace.users[positions].astype(str),
                    "event_id": np.asarray(workload.objects.event_ids, dtype=object)[events],
                    "now_ms": trace.times[positions],
                }
            )
        )
        keys.append((pop_id, trace.sessions[positions], events))
    # The model's test rows as predictor.dataset.purchase_rows builds them: human sessions at their arrival.
    sessions = tables.sessions.loc[~tables.sessions["is_bot"].to_numpy(dtype=bool)]
    arrived = sessions["arrived_at"].astype("datetime64[ms, UTC]").astype(np.int64).to_numpy()
    test = sessions.loc[arrived >= periods[1]]
    parts.append(
        pd.DataFrame(
            {
                "user_id": test["user_id"].astype(str).to_numpy(),
                "event_id": test["event_id"].astype(str).to_numpy(),
                "now_ms": arrived[arrived >= periods[1]],
            }
        )
    )
    queries = pd.concat(parts, ignore_index=True)
    raw = batch_raw(streams(tables, facts), queries, facts)
    scores = np.asarray(model.predict(derive(raw, tables.profiles, facts)), dtype=np.float64)
    probability: dict[str, dict[tuple[int, int], float]] = {}
    start = 0
    for pop_id, session_ids, events in keys:
        end = start + len(session_ids)
        probability[pop_id] = dict(
            zip(zip(session_ids.tolist(), events.tolist(), strict=True), scores[start:end].tolist(), strict=True)
        )
        start = end
    curves: dict[str, dict[str, Any]] = {}
    label = test["purchased"].to_numpy(dtype=bool)
    if label.any() and not label.all():
        for name, predicted in (
            (f"purchase v{model.version} (xgboost, calibrated)", scores[start:]),
            ("best possible (generator's truth)", test["p_true"].to_numpy(dtype=np.float64)),
        ):
            curves[name] = {
                **binary_metrics(label, predicted),
                "roc": roc_points(label, predicted),
                "calibration": calibration_curve(label, predicted),
                "test_sessions": len(label),
            }
    return probability, curves


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
        models: what :func:`prepare_models` computed: with a demand forecast, the ``s3fifo+model`` and
            ``s3fifo+model-wide`` policies are added; with purchase probabilities, the model's hints.

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
