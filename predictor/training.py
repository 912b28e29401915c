"""Train the purchase and demand models from a written workload.

Both models split by time (see :mod:`predictor.dataset`): the purchase model
trains on the first ``train_share`` of sessions (early-stopping on the last
15 % of those), is calibrated on the next ``calibration_share`` and measured
on the rest; the demand model trains and early-stops on the same two periods
and is measured on the rest. The measurements travel with the model files
(:mod:`predictor.models`); ``boxoffice predictor evaluate`` repeats them beside
the baselines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from predictor.calibration import binary_metrics, fit_isotonic
from predictor.dataset import PurchaseRows, WorkloadTables, purchase_rows, time_split
from predictor.errors import PredictorError
from predictor.features import FEATURES, HOUR_MS
from predictor.forecast import DEMAND_FEATURES, batch_counts, candidates, derive_demand, request_stream, target
from predictor.models import DEMAND, PURCHASE, Model, fit_booster
from predictor.settings import BoostParams

EARLY_STOP_SHARE: Final = 0.15  # the latest part of the training rows, held out to stop boosting


@dataclass(frozen=True, slots=True)
class TrainingPlan:
    train_share: float
    calibration_share: float
    horizon_ms: int
    demand_step_ms: int  # spacing of the demand rows' cut-offs
    params: BoostParams


@dataclass(frozen=True, slots=True)
class DemandRows:
    queries: Any  # region, event, now_ms
    features: Any
    target: Any  # requests in the horizon


def train_purchase(rows: PurchaseRows, plan: TrainingPlan) -> Model:
    """Fit, early-stop, calibrate and measure the purchase model (metrics in ``model.metadata``).

    Raises:
        PredictorError: a slice has no purchases (too small a workload).
    """
    train, calibration, test = time_split(rows.now_ms, plan.train_share, plan.calibration_share)
    for name, mask in (("training", train), ("calibration", calibration), ("test", test)):
        if not rows.label[mask].any():
            raise PredictorError(f"the {name} slice has no purchase: generate a larger workload")
    fit_rows = np.flatnonzero(train)
    cut = int(len(fit_rows) * (1 - EARLY_STOP_SHARE))
    f, y = rows.features, rows.label
    booster, rounds = fit_booster(
        "binary:logistic",
        f.iloc[fit_rows[:cut]],
        y[fit_rows[:cut]],
        f.iloc[fit_rows[cut:]],
        y[fit_rows[cut:]],
        FEATURES,
        plan.params,
    )
    model = Model(PURCHASE, booster, FEATURES)
    model.calibration = fit_isotonic(model.raw(f.loc[calibration]), y[calibration])
    predicted = model.predict(f.loc[test])
    gain = booster.get_score(importance_type="gain")
    model.metadata.update(
        {
            "rounds": rounds,
            "params": _params(plan.params),
            "split": _split_info(rows.now_ms, train, calibration, test),
            "metrics": {
                "test": binary_metrics(y[test], predicted),
                "test_uncalibrated": binary_metrics(y[test], model.raw(f.loc[test])),
                "best_possible_test": binary_metrics(y[test], rows.p_true[test]),
            },
            "feature_gain": {name: round(float(gain.get(name, 0.0)), 4) for name in FEATURES},
        }
    )
    return model


def demand_rows(tables: WorkloadTables, horizon_ms: int, step_ms: int) -> DemandRows:
    """Demand rows at cut-offs every `step_ms` from one hour into the log to one horizon before its end.

    Raises:
        PredictorError: the log is shorter than an hour and a horizon, or the step is not positive.
    """
    if step_ms <= 0:
        raise PredictorError("the demand rows' step must be above 0")
    requests = request_stream(tables.event_log)
    if requests.empty:
        raise PredictorError("the workload has no requests naming an event")
    first = int(requests["ts"].iloc[0])
    first -= first % step_ms  # whole steps: on-sales open on the hour, so they start a row's horizon
    times = list(range(first + HOUR_MS, int(requests["ts"].iloc[-1]) - horizon_ms + 1, step_ms))
    if len(times) < 3:
        raise PredictorError("the workload is too short for demand rows: it needs a few horizons after its first hour")
    facts = tables.facts
    queries = candidates(requests, facts, times, horizon_ms)
    features = derive_demand(queries, batch_counts(requests, queries, horizon_ms), facts, horizon_ms)
    return DemandRows(queries, features, target(requests, queries, horizon_ms))


def train_demand(rows: DemandRows, plan: TrainingPlan) -> Model:
    """Fit and measure the demand model (metrics, with the persistence baseline, in ``model.metadata``)."""
    now = rows.queries["now_ms"].to_numpy()
    train, stop, test = time_split(now, plan.train_share, plan.calibration_share)
    if not (train.any() and stop.any() and test.any()):
        raise PredictorError("the demand rows are too few to split in time: generate a longer workload")
    booster, rounds = fit_booster(
        "count:poisson",
        rows.features.loc[train],
        rows.target[train],
        rows.features.loc[stop],
        rows.target[stop],
        DEMAND_FEATURES,
        plan.params,
    )
    model = Model(DEMAND, booster, DEMAND_FEATURES)
    predicted = model.predict(rows.features.loc[test])
    model.metadata.update(
        {
            "rounds": rounds,
            "params": _params(plan.params),
            "horizon_s": plan.horizon_ms / 1000,
            "split": _split_info(now, train, stop, test),
            "metrics": {"test": demand_metrics(rows, test, predicted, plan.horizon_ms)},
        }
    )
    return model


def demand_metrics(rows: DemandRows, mask: Any, predicted: Any, horizon_ms: int) -> dict[str, Any]:
    """Errors of the model and of two persistence baselines (the last horizon's count, the last hour's
    rate), overall and where an on-sale opens inside the horizon."""
    actual = rows.target[mask]
    features = rows.features.loc[mask]
    candidates_ = {
        "model": np.asarray(predicted, dtype=np.float64),
        "last_horizon": features["pair_requests_h"].to_numpy(dtype=np.float64),
        "last_hour_rate": features["pair_requests_1h"].to_numpy(dtype=np.float64) * horizon_ms / HOUR_MS,
    }
    onsale = features["onsale_in_horizon"].to_numpy() > 0
    result: dict[str, Any] = {"rows": int(mask.sum()), "onsale_rows": int(onsale.sum())}
    for name, values in candidates_.items():
        result[name] = {"all": _errors(actual, values), "onsale": _errors(actual[onsale], values[onsale])}
    return result


def _errors(actual: Any, predicted: Any) -> dict[str, float]:
    if len(actual) == 0:
        return {"mae": float("nan"), "rmse": float("nan"), "wape": float("nan")}
    error = predicted - actual
    total = float(np.sum(actual))
    return {
        "mae": float(np.mean(np.abs(error))),
        "rmse": float(np.sqrt(np.mean(error**2))),
        "wape": float(np.sum(np.abs(error)) / total) if total > 0 else float("nan"),
    }


def _split_info(now: Any, train: Any, middle: Any, test: Any) -> dict[str, Any]:
    return {
        "rows": {"train": int(train.sum()), "calibration": int(middle.sum()), "test": int(test.sum())},
        "calibration_from_ms": int(now[middle][0]),
        "test_from_ms": int(now[test][0]),
    }


def _params(params: BoostParams) -> dict[str, Any]:
    return {
        "rounds": params.rounds,
        "learning_rate": params.learning_rate,
        "max_depth": params.max_depth,
        "min_child_weight": params.min_child_weight,
        "subsample": params.subsample,
        "colsample_bytree": params.colsample_bytree,
    }


__all__ = ["DemandRows", "TrainingPlan", "demand_rows", "purchase_rows", "train_demand", "train_purchase"]
