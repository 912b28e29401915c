"""`boxoffice predictor evaluate`: the trained models beside the baselines and the generator's truth.

The purchase model is measured on the test sessions of the split stored in
its metadata (so training rows never score it), beside:

* the baselines of :mod:`predictor.baselines`, fitted on the same training
  rows (the heuristic calibrated on the same calibration rows);
* the **best possible** model: the generator's true purchase probability of
  each test session. No model can expect to beat its ROC AUC; the model's
  share of it is the fair grade (the aim: at least 95 %).

The demand model is measured on the test period beside persistence
forecasts. :func:`format_report` prints the tables; the CLI writes the whole
result as JSON.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np

from predictor.baselines import LogisticRegression, RecencyFrequency, global_rate
from predictor.calibration import binary_metrics
from predictor.dataset import PurchaseRows
from predictor.errors import PredictorError
from predictor.models import Model
from predictor.training import DemandRows, demand_metrics

AIM_AUC: Final = 0.85  # the aims for the purchase model
AIM_SHARE_OF_BEST: Final = 0.95
AIM_ECE: Final = 0.02


def evaluate_purchase(rows: PurchaseRows, model: Model) -> dict[str, Any]:
    """Metrics of the model, the baselines and the truth on the model's test slice.

    Raises:
        PredictorError: the model has no split, or a slice of these rows is empty or has one class.
    """
    try:
        split = model.metadata["split"]
        calibration_from, test_from = int(split["calibration_from_ms"]), int(split["test_from_ms"])
    except (KeyError, TypeError, ValueError):
        raise PredictorError("the purchase model's metadata has no split") from None
    now = rows.now_ms
    train, calibration, test = now < calibration_from, (now >= calibration_from) & (now < test_from), now >= test_from
    y, f = rows.label, rows.features
    for name, mask in (("training", train), ("calibration", calibration), ("test", test)):
        if not y[mask].any() or y[mask].all():
            raise PredictorError(f"the {name} slice of this workload has one class only: is it the training workload?")
    predictions = {
        "xgboost": model.predict(f.loc[test]),
        "global_rate": np.full(int(test.sum()), global_rate(y[train])),
        "recency_frequency": RecencyFrequency.fit(f.loc[calibration], y[calibration]).predict(f.loc[test]),
        "logistic_regression": LogisticRegression.fit(f.loc[train], y[train]).predict(f.loc[test]),
        "best_possible": rows.p_true[test],
    }
    metrics = {name: binary_metrics(y[test], p) for name, p in predictions.items()}
    auc, best = metrics["xgboost"]["roc_auc"], metrics["best_possible"]["roc_auc"]
    share = auc / best if best > 0 else float("nan")
    return {
        "model_version": model.version,
        "test_rows": int(test.sum()),
        "test_purchases": int(y[test].sum()),
        "metrics": metrics,
        "share_of_best_auc": share,
        "aims": {
            f"roc_auc >= {AIM_AUC}": bool(auc >= AIM_AUC),
            f"share_of_best_auc >= {AIM_SHARE_OF_BEST}": bool(share >= AIM_SHARE_OF_BEST),
            f"ece <= {AIM_ECE}": bool(metrics["xgboost"]["ece"] <= AIM_ECE),
        },
    }


def evaluate_demand(rows: DemandRows, model: Model) -> dict[str, Any]:
    """Errors of the demand model and the persistence baselines on the model's test period."""
    try:
        test_from = int(model.metadata["split"]["test_from_ms"])
        horizon_ms = round(float(model.metadata["horizon_s"]) * 1000)
    except (KeyError, TypeError, ValueError):
        raise PredictorError("the demand model's metadata has no split or horizon") from None
    test = rows.queries["now_ms"].to_numpy() >= test_from
    if not test.any():
        raise PredictorError("this workload has no demand rows in the model's test period")
    result = demand_metrics(rows, test, model.predict(rows.features.loc[test]), horizon_ms)
    result["model_version"] = model.version
    result["horizon_s"] = horizon_ms / 1000
    return result


def format_report(result: dict[str, Any]) -> str:
    """The evaluation as plain-text tables."""
    lines = []
    purchase = result.get("purchase")
    if purchase:
        lines.append(
            f"purchase model v{purchase['model_version']}: {purchase['test_rows']} test sessions, "
            f"{purchase['test_purchases']} purchases"
        )
        lines.append(f"{'model':<22}{'ROC AUC':>9}{'PR AUC':>9}{'log-loss':>10}{'ECE':>9}{'mean p':>9}")
        for name, m in purchase["metrics"].items():
            lines.append(
                f"{name:<22}{m['roc_auc']:>9.4f}{m['pr_auc']:>9.4f}{m['log_loss']:>10.4f}"
                f"{m['ece']:>9.4f}{m['mean_predicted']:>9.4f}"
            )
        lines.append(f"share of the best possible AUC: {purchase['share_of_best_auc']:.3f}")
        lines.append(
            "aims: " + ", ".join(f"{aim} {'met' if met else 'MISSED'}" for aim, met in purchase["aims"].items())
        )
    demand = result.get("demand")
    if demand:
        if lines:
            lines.append("")
        lines.append(
            f"demand model v{demand['model_version']}: horizon {demand['horizon_s']:.0f} s, "
            f"{demand['rows']} test rows ({demand['onsale_rows']} with an on-sale opening)"
        )
        lines.append(f"{'forecast':<16}{'MAE':>9}{'RMSE':>9}{'WAPE':>8}{'on-sale MAE':>13}{'on-sale WAPE':>14}")
        for name in ("model", "last_horizon", "last_hour_rate"):
            a, o = demand[name]["all"], demand[name]["onsale"]
            lines.append(
                f"{name:<16}{a['mae']:>9.3f}{a['rmse']:>9.3f}{a['wape']:>8.3f}{o['mae']:>13.2f}{o['wape']:>14.3f}"
            )
    return "\n".join(lines)
