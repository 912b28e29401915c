"""`boxoffice predictor train` and `boxoffice predictor evaluate`.

``train`` reads a written workload (``--workload-dir``), fits the purchase and
demand models and writes them as the next versions in ``--models-dir``
(:mod:`predictor.models`), printing what it wrote and the test metrics as
JSON. ``evaluate`` loads the latest versions (or ``--version``), measures
them on the same workload beside the baselines and the generator's truth
(:mod:`predictor.evaluate`), prints the tables and writes the result as JSON
(``--metrics-out``, default ``<models-dir>/evaluation.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from predictor.atomicfile import write_text_atomically
from predictor.dataset import WorkloadTables, purchase_rows, read_workload
from predictor.evaluate import evaluate_demand, evaluate_purchase, format_report
from predictor.models import DEMAND, PURCHASE, jsonable, load, save, versions
from predictor.settings import PredictorSettings
from predictor.training import TrainingPlan, demand_rows, train_demand, train_purchase

log = logging.getLogger("predictor")


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-out", metavar="FILE", help="where to write the metrics JSON")
    parser.add_argument("--version", type=int, metavar="N", help="evaluate purchase model version N (default: latest)")


def train(settings: PredictorSettings) -> dict[str, Any]:
    """Train both models on the workload and save them; return what was written and the test metrics.

    Raises:
        PredictorError: no workload, or one too small to split.
        OSError: the models directory cannot be written.
    """
    tables = read_workload(settings.workload_dir)
    plan = _plan(settings)
    trained_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    began = time.monotonic()
    purchase = train_purchase(purchase_rows(tables), plan)
    purchase.metadata.update({"trained_at": trained_at, "workload": _workload_info(tables)})
    purchase_meta = save(purchase, settings.models_dir)
    log.info("purchase model v%d trained in %.1f s", purchase.version, time.monotonic() - began)
    began = time.monotonic()
    demand = train_demand(demand_rows(tables, plan.horizon_ms, plan.demand_step_ms), plan)
    demand.metadata.update({"trained_at": trained_at, "workload": _workload_info(tables)})
    demand_meta = save(demand, settings.models_dir)
    log.info("demand model v%d trained in %.1f s", demand.version, time.monotonic() - began)
    return {
        "models_dir": str(settings.models_dir),
        PURCHASE: {"version": purchase.version, "metadata": str(purchase_meta), **purchase.metadata["metrics"]},
        DEMAND: {"version": demand.version, "metadata": str(demand_meta), **demand.metadata["metrics"]},
    }


def evaluate(settings: PredictorSettings, version: int | None) -> dict[str, Any]:
    """Evaluate the latest models (purchase `version` if given) on the configured workload.

    Raises:
        PredictorError: no workload or no model, or the workload does not cover the model's test period.
    """
    tables = read_workload(settings.workload_dir)
    purchase = load(settings.models_dir, PURCHASE, version)
    result: dict[str, Any] = {
        "workload": _workload_info(tables),
        "purchase": evaluate_purchase(purchase_rows(tables), purchase),
    }
    if versions(settings.models_dir, DEMAND):
        demand = load(settings.models_dir, DEMAND)
        horizon_ms = round(float(demand.metadata["horizon_s"]) * 1000)
        rows = demand_rows(tables, horizon_ms, round(settings.forecast_train_step * 1000))
        result["demand"] = evaluate_demand(rows, demand)
    return result


def run_train(settings: PredictorSettings) -> str:
    return json.dumps(jsonable(train(settings)), indent=2, allow_nan=False)


def run_evaluate(settings: PredictorSettings, args: argparse.Namespace) -> str:
    """Evaluate, write the metrics JSON, and return the printed report."""
    result = evaluate(settings, args.version)
    out = Path(args.metrics_out) if args.metrics_out else settings.models_dir / "evaluation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out, json.dumps(jsonable(result), indent=2, allow_nan=False) + "\n")
    return format_report(result) + f"\n\nmetrics written to {out}"


def _plan(settings: PredictorSettings) -> TrainingPlan:
    return TrainingPlan(
        train_share=settings.train_share,
        calibration_share=settings.calibration_share,
        horizon_ms=round(settings.forecast_horizon * 1000),
        demand_step_ms=round(settings.forecast_train_step * 1000),
        params=settings.boost_params(),
    )


def _workload_info(tables: WorkloadTables) -> dict[str, Any]:
    config = tables.summary.get("config", {})
    return {
        "directory": str(tables.directory),
        "seed": config.get("seed"),
        "days": config.get("days"),
        "users": config.get("users"),
        "catalog": tables.summary.get("catalog"),
    }
