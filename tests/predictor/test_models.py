"""Metrics, calibration, baselines, the xgboost models, their files and the scoring API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pytest

from origin.catalog import build_catalog
from predictor.baselines import LogisticRegression, RecencyFrequency
from predictor.calibration import (
    IsotonicCalibration,
    average_precision,
    expected_calibration_error,
    fit_isotonic,
    log_loss,
    roc_auc,
)
from predictor.dataset import PurchaseRows, WorkloadTables, purchase_rows, time_split
from predictor.errors import PredictorError
from predictor.evaluate import evaluate_purchase
from predictor.features import FEATURES, MINUTE_MS
from predictor.forecast import DemandState, request_stream
from predictor.models import DEMAND, PURCHASE, load, save, versions
from predictor.online import OnlineFeatures
from predictor.scoring import MAX_HINTS, Scorer
from predictor.settings import BoostParams
from predictor.training import TrainingPlan, demand_rows, train_demand, train_purchase
from predictor.workload import WorkloadConfig, generate

SMALL = WorkloadConfig(seed=5, days=2, users=6000, sessions_per_day=8000)
PLAN = TrainingPlan(
    train_share=0.6,
    calibration_share=0.15,
    horizon_ms=15 * MINUTE_MS,
    demand_step_ms=30 * MINUTE_MS,
    params=BoostParams(rounds=150, learning_rate=0.1, max_depth=4),
)


@pytest.fixture(scope="module")
def tables() -> WorkloadTables:
    workload = generate(SMALL, build_catalog(2026, venues=30, events=300, start=SMALL.start))
    return WorkloadTables(
        directory=Path("in-memory"),
        summary={},
        event_log=workload.event_log,
        sessions=workload.sessions,
        users=workload.users,
        purchase_history=workload.purchase_history,
        event_plan=workload.event_plan,
    )


@pytest.fixture(scope="module")
def rows(tables: WorkloadTables) -> PurchaseRows:
    return purchase_rows(tables)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, tables: WorkloadTables, rows: PurchaseRows) -> Path:
    directory = tmp_path_factory.mktemp("models")
    save(train_purchase(rows, PLAN), directory)
    save(train_demand(demand_rows(tables, PLAN.horizon_ms, PLAN.demand_step_ms), PLAN), directory)
    return directory


def test_metrics_on_known_cases() -> None:
    label = np.array([0, 0, 1, 1])
    assert roc_auc(label, [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc(label, [0.4, 0.3, 0.2, 0.1]) == 0.0
    assert roc_auc(label, [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert roc_auc(label, [0.1, 0.35, 0.3, 0.4]) == 0.75
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))
    # ranked: 1 (p 1/1), 0, 1 (p 2/3) -> AP = (1 + 2/3) / 2
    assert average_precision([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx(5 / 6)
    assert log_loss([1, 0], [0.5, 0.5]) == pytest.approx(np.log(2))
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.2, 200_000)
    y = rng.random(len(p)) < p
    assert expected_calibration_error(y, p) < 0.005  # calibrated by construction
    assert expected_calibration_error(y, p * 2) > 0.08  # twice too confident


def test_isotonic_calibration_is_monotone_and_fixes_a_distorted_score() -> None:
    rng = np.random.default_rng(1)
    truth = rng.uniform(0, 0.3, 50_000)
    label = rng.random(len(truth)) < truth
    score = np.sqrt(truth)  # same ranking, wrong scale
    calibration = fit_isotonic(score, label)
    calibrated = calibration(np.sort(score))
    assert (np.diff(calibrated) >= 0).all()
    assert expected_calibration_error(label, calibration(score)) < 0.01
    assert expected_calibration_error(label, score) > 0.1
    again = IsotonicCalibration.from_json(json.loads(json.dumps(calibration.to_json())))
    assert np.array_equal(again(score), calibration(score))
    with pytest.raises(PredictorError, match="malformed"):
        IsotonicCalibration.from_json({"kind": "isotonic", "low": [0.1], "high": [], "value": [0.5]})
    # pool adjacent violators on a textbook case: 1, 3, 2 pools the last two into 2.5
    tiny = fit_isotonic([1, 2, 3], [0.0, 1.0, 0.0])
    assert tiny.value == (0.0, 0.5)


def test_time_split_keeps_time_order_and_refuses_tiny_slices() -> None:
    now = np.arange(100)
    train, calibration, test = time_split(now, 0.6, 0.15)
    assert (train.sum(), calibration.sum(), test.sum()) == (60, 15, 25)
    assert now[train].max() < now[calibration].min() <= now[calibration].max() < now[test].min()
    with pytest.raises(PredictorError, match="at least"):
        time_split(now, 0.9, 0.08)


def test_model_beats_the_global_rate_and_is_calibrated(rows: PurchaseRows, models_dir: Path) -> None:
    model = load(models_dir, PURCHASE)
    result = evaluate_purchase(rows, model)
    metrics = result["metrics"]
    assert result["test_purchases"] > 50
    assert metrics["xgboost"]["roc_auc"] > metrics["global_rate"]["roc_auc"] + 0.2
    assert metrics["xgboost"]["log_loss"] < metrics["global_rate"]["log_loss"]
    assert metrics["xgboost"]["ece"] < 0.03  # loose: ~100 test purchases
    assert metrics["best_possible"]["roc_auc"] >= metrics["xgboost"]["roc_auc"] - 0.02
    assert set(metrics) == {"xgboost", "global_rate", "recency_frequency", "logistic_regression", "best_possible"}


def test_baselines_rank_better_than_chance(rows: PurchaseRows) -> None:
    train, calibration, test = time_split(rows.now_ms, 0.6, 0.15)
    f, y = rows.features, rows.label
    logistic = LogisticRegression.fit(f.loc[train], y[train]).predict(f.loc[test])
    heuristic = RecencyFrequency.fit(f.loc[calibration], y[calibration]).predict(f.loc[test])
    assert roc_auc(y[test], logistic) > 0.75
    assert roc_auc(y[test], heuristic) > 0.6
    with pytest.raises(PredictorError, match="both"):
        LogisticRegression.fit(f.loc[train], np.zeros(int(train.sum()), dtype=bool))


def test_model_files_round_trip_with_their_metrics(rows: PurchaseRows, models_dir: Path, tmp_path: Path) -> None:
    original = load(models_dir, PURCHASE)
    assert versions(models_dir, PURCHASE) == [1]
    assert original.features == FEATURES
    test = rows.features.iloc[-500:]
    # saving again writes version 2; it predicts the same and carries the same metrics
    save(original, tmp_path)
    save(original, tmp_path)
    assert versions(tmp_path, PURCHASE) == [1, 2]
    again = load(tmp_path, PURCHASE)
    assert again.version == 2
    assert np.allclose(again.predict(test), original.predict(test))
    meta = json.loads((tmp_path / "purchase-v2.meta.json").read_text())
    assert meta["metrics"]["test"]["roc_auc"] == pytest.approx(original.metadata["metrics"]["test"]["roc_auc"])
    assert meta["features"] == list(FEATURES)
    assert (tmp_path / meta["model_file"]).is_file()
    assert load(tmp_path, PURCHASE, version=1).version == 1


def test_broken_or_missing_model_files_raise_our_error(models_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(PredictorError, match="no purchase model"):
        load(tmp_path, PURCHASE)
    (tmp_path / "purchase-v1.meta.json").write_text("{not json")
    with pytest.raises(PredictorError, match="cannot load"):
        load(tmp_path, PURCHASE)
    with pytest.raises(PredictorError, match="version 9"):
        load(models_dir, PURCHASE, version=9)
    with pytest.raises(PredictorError, match="needs feature"):
        load(models_dir, PURCHASE).predict(pd.DataFrame({"purchases": [1.0]}))


def test_scorer_top_events_and_forecast(tables: WorkloadTables, models_dir: Path) -> None:
    scorer = Scorer.load(models_dir)
    assert scorer.demand is not None
    facts = tables.facts
    online = OnlineFeatures(facts, tables.profiles)
    state = DemandState(facts, scorer.horizon_ms)
    requests = request_stream(tables.event_log)
    now = int(requests["ts"].iloc[-1]) - 60 * MINUTE_MS
    for ts, region, event in requests.itertuples(index=False):
        if ts < now:
            state.update(int(ts), region, event)
    fan = tables.sessions.loc[tables.sessions["purchased"]].iloc[0]
    events = list(facts.frame.index[:200])
    top = scorer.top_events(online, str(fan["user_id"]), events, now, threshold=0.0)
    assert len(top) == MAX_HINTS
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)
    assert scorer.top_events(online, str(fan["user_id"]), events, now, threshold=1.0) == []
    every = scorer.score(online.rows([(str(fan["user_id"]), e) for e in events], now))
    assert top[0][1] == pytest.approx(float(every.max()))
    with pytest.raises(PredictorError, match="probability"):
        scorer.top_events(online, "usr-x", events, now, threshold=2.0)

    document = scorer.forecast(state, now)
    assert document["horizon_s"] == 900
    assert document["generated_at"].endswith("Z")
    assert document["forecast"]
    rates = [row["requests_per_s"] for row in document["forecast"]]
    assert rates == sorted(rates, reverse=True)
    assert set(document["forecast"][0]) == {"region", "event_id", "requests_per_s"}
    with pytest.raises(PredictorError, match="horizon"):
        scorer.forecast(DemandState(facts, 60_000), now)


def test_demand_model_beats_persistence(models_dir: Path) -> None:
    metrics = load(models_dir, DEMAND).metadata["metrics"]["test"]
    assert metrics["rows"] > 1000
    assert metrics["model"]["all"]["mae"] < metrics["last_horizon"]["all"]["mae"]
