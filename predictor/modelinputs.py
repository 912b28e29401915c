"""What the trained models say about a workload, computed once before the offline replay.

:func:`prepare_models` loads the purchase and demand models of
``Options.models_dir`` (:mod:`predictor.models`) and computes what
:func:`predictor.evaluation.evaluate` needs of them, as a :class:`ModelInputs`:

* the demand model's forecasts at the warm times (a
  :class:`predictor.warming.ModelForecast`), for the model warm lists;
* the purchase model's calibrated probability of every consenting human
  session's first request naming an event, for the model hint replay
  (:mod:`predictor.hinteval`), scored in one batch feature pass
  (:mod:`predictor.features`);
* ROC (:func:`roc_points`) and calibration points of the purchase model and of
  the generator's truth on the model's test sessions, with their metrics.

A model that is missing, cannot be loaded, or was trained on another workload
is said so in ``ModelInputs.notes``; it never stops the evaluation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

from predictor.calibration import binary_metrics, calibration_curve
from predictor.dataset import read_workload, streams
from predictor.errors import PredictorError
from predictor.evalinputs import Options, Workload
from predictor.features import batch_raw, derive
from predictor.forecast import request_stream
from predictor.hinteval import first_requests
from predictor.models import DEMAND, PURCHASE, Model, load, versions
from predictor.warming import ModelForecast

log = logging.getLogger("predictor.modelinputs")

ROC_POINTS: Final = 200  # a ROC curve is drawn through at most this many points


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
