"""Review of the predictor's features and model files: late and early rows online, model files that
load but cannot serve, catalog numbers xgboost refuses."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pytest

from predictor.calibration import IsotonicCalibration
from predictor.errors import PredictorError
from predictor.features import (
    ACTIVITY,
    FEATURES,
    MINUTE_MS,
    PRESALE,
    PURCHASES,
    EventFacts,
    Profiles,
    activity_stream,
    batch_raw,
    derive,
    presale_stream,
    purchase_stream,
)
from predictor.forecast import DEMAND_FEATURES, DemandState
from predictor.models import DEMAND, PURCHASE, Model, fit_booster, load, save
from predictor.online import MAX_AHEAD_MS, Activity, OnlineFeatures, SlidingWindow
from predictor.settings import BoostParams

START = datetime(2026, 3, 1, tzinfo=UTC)
T0 = round(START.timestamp() * 1000)
SECOND_MS = 1000


def facts_and_profiles() -> tuple[EventFacts, Profiles]:
    events = [
        SimpleNamespace(
            id="evt-a", region="eu-west", genre="rock", artist="The Band", popularity=0.02,
            onsale_at=START - timedelta(hours=1), starts_at=START + timedelta(days=10),
        ),
        SimpleNamespace(
            id="evt-b", region="na-east", genre="jazz", artist="Trio", popularity=0.001,
            onsale_at=START - timedelta(days=5), starts_at=START + timedelta(days=40),
        ),
    ]  # fmt: skip
    users = pd.DataFrame(
        {
            "user_id": ["usr-1"],
            "region": ["eu-west"],
            "favourite_genre": ["rock"],
            "favourite_artists": ["The Band"],
            "past_presale_registrations": [0],
            "consent": [True],
        }
    )
    return EventFacts.from_catalog(events), Profiles.from_users(users)


def batch_row(facts: EventFacts, profiles: Profiles, script: list[Activity], now_ms: int) -> Any:
    """The batch form's feature row of (usr-1, evt-a) at `now_ms` over the script's rows in time order."""
    ordered = sorted(script, key=lambda a: a.ts_ms)
    log = pd.DataFrame(
        {
            "ts": pd.to_datetime([a.ts_ms for a in ordered], unit="ms", utc=True),
            "session_id": [a.session_id for a in ordered],
            "user_id": [a.user_id for a in ordered],
            "action": [a.action for a in ordered],
            "event_id": [a.event_id for a in ordered],
        }
    )
    history = pd.DataFrame(
        {"user_id": [], "purchased_at": pd.to_datetime([], utc=True), "genre": [], "artist": []}
    ).astype({"user_id": str, "genre": str, "artist": str})
    streams = {
        ACTIVITY: activity_stream(log, facts),
        PURCHASES: purchase_stream(log, history, facts),
        PRESALE: presale_stream(log),
    }
    queries = pd.DataFrame({"user_id": ["usr-1"], "event_id": ["evt-a"], "now_ms": [now_ms]})
    return derive(batch_raw(streams, queries, facts), profiles, facts).iloc[0]


# Rows delivered late (a POP's batch retried, two POPs' batches crossing) --------------------

SCRIPT = [
    Activity(T0, "usr-1", "search", None, 7),
    Activity(T0 + 20 * SECOND_MS, "usr-1", "event_view", "evt-a", 7),
    Activity(T0 + 40 * SECOND_MS, "usr-1", "item_view", "evt-a", 7),
    Activity(T0 + 60 * SECOND_MS, "usr-1", "hold", "evt-a", 7),
    Activity(T0 + 10 * MINUTE_MS, "usr-1", "event_view", "evt-b", 8),
]


@pytest.mark.parametrize(
    "delivery",
    [
        pytest.param([0, 2, 3, 1], id="late-row-of-the-current-session"),
        pytest.param([0, 2, 3, 4, 1], id="late-row-of-an-earlier-session"),
        pytest.param([0, 1, 3, 2, 4], id="two-rows-swapped"),
    ],
)
def test_rows_delivered_late_give_the_batch_row(delivery: list[int]) -> None:
    """The ingest API accepts events up to an hour old: a row that arrives after a later one of the
    same user is no "fast" request (a bot signal), opens no session, and does not move "the last time"."""
    facts, profiles = facts_and_profiles()
    script = [SCRIPT[i] for i in delivery]
    now = T0 + 30 * MINUTE_MS
    online = OnlineFeatures(facts, profiles)
    for activity in script:
        online.update(activity)
    row = online.rows([("usr-1", "evt-a")], now).iloc[0]
    expected = batch_row(facts, profiles, script, now)
    assert row["fast_action_share"] == expected["fast_action_share"] == 0.0
    assert row["minutes_since_action"] == pytest.approx(expected["minutes_since_action"])
    np.testing.assert_allclose(row.to_numpy(), expected.to_numpy(), equal_nan=True, err_msg=str(list(FEATURES)))


def test_a_late_row_still_counts_before_the_latest_millisecond() -> None:
    """Asked at the latest row's own millisecond, a late row (earlier) counts and the latest does not."""
    facts, profiles = facts_and_profiles()
    online = OnlineFeatures(facts, profiles)
    for i in (0, 2, 3, 1):
        online.update(SCRIPT[i])
    at_hold = T0 + 60 * SECOND_MS
    row = online.rows([("usr-1", "evt-a")], at_hold).iloc[0]
    expected = batch_row(facts, profiles, SCRIPT[:4], at_hold)
    assert row["user_actions"] == expected["user_actions"] == 3.0
    np.testing.assert_allclose(row.to_numpy(), expected.to_numpy(), equal_nan=True)


# Rows ahead of the clock (the ingest API accepts them up to max_clock_skew) -------------------


def test_a_row_ahead_of_the_clock_does_not_empty_the_windows() -> None:
    facts, profiles = facts_and_profiles()
    online = OnlineFeatures(facts, profiles)
    demand = DemandState(facts, 5 * MINUTE_MS)
    now = T0 + HOUR
    for i in range(10):  # ten views in the last four minutes
        ts = now - 4 * MINUTE_MS + i * 20 * SECOND_MS
        online.update(Activity(ts, f"usr-{i + 10}", "event_view", "evt-a", i))
        demand.update(ts, "eu-west", "evt-a")
    # one client whose clock runs five minutes fast
    online.update(Activity(now + 5 * MINUTE_MS, "usr-99", "event_view", "evt-a", 99))
    demand.update(now + 5 * MINUTE_MS, "eu-west", "evt-a")
    row = online.rows([("usr-1", "evt-a")], now).iloc[0]
    assert row["event_requests_5m"] == 10.0
    assert row["event_requests_1h"] == 10.0
    _, features = demand.rows(now)
    assert features["pair_requests_h"].tolist() == [10.0]
    assert features["event_requests_h"].tolist() == [10.0]


def test_a_window_still_forgets_old_rows() -> None:
    window = SlidingWindow(5 * MINUTE_MS)
    for second in range(4 * 3600):  # four hours, a row a second
        window.add(T0 + second * SECOND_MS)
    kept = (5 * MINUTE_MS + MAX_AHEAD_MS) // SECOND_MS
    assert kept <= len(window.times) <= 2 * kept + 1
    assert window.count(T0 + 4 * HOUR) == 300.0


HOUR = 60 * MINUTE_MS


# Model files that load but could not serve ---------------------------------------------------


@pytest.fixture(scope="module")
def purchase_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) purchase model on synthetic rows, saved as version 1."""
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(rng.normal(size=(600, len(FEATURES))), columns=list(FEATURES))
    label = rng.random(600) < 1 / (1 + np.exp(-2 * frame["purchases"].to_numpy()))
    params = BoostParams(rounds=20, max_depth=3, threads=1)
    booster, _ = fit_booster(
        "binary:logistic", frame.iloc[:500], label[:500], frame.iloc[500:], label[500:], FEATURES, params
    )
    model = Model(PURCHASE, booster, FEATURES, IsotonicCalibration((0.0, 0.5), (0.4, 1.0), (0.1, 0.6)))
    directory = tmp_path_factory.mktemp("models")
    save(model, directory)
    return directory


def tampered(source: Path, target: Path, change: dict[str, Any]) -> Path:
    target.mkdir()
    meta = json.loads((source / "purchase-v1.meta.json").read_text())
    (target / "purchase-v1.json").write_bytes((source / "purchase-v1.json").read_bytes())
    (target / "purchase-v1.meta.json").write_text(json.dumps({**meta, **change}))
    return target


def test_the_saved_model_loads_and_predicts(purchase_dir: Path) -> None:
    model = load(purchase_dir, PURCHASE)
    frame = pd.DataFrame(np.zeros((3, len(FEATURES))), columns=list(FEATURES))
    assert ((model.predict(frame) >= 0.1) & (model.predict(frame) <= 0.6)).all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"features": list(reversed(FEATURES))}, "feature", id="features-in-another-order"),
        pytest.param({"features": [*FEATURES[:-1], "shoe_size"]}, "feature", id="a-feature-serving-lacks"),
        pytest.param({"calibration": None}, "calibration", id="purchase-model-without-calibration"),
        pytest.param(
            {"calibration": {"kind": "isotonic", "low": [0.5, 0.0], "high": [0.6, 0.1], "value": [0.2, 0.1]}},
            "calibration",
            id="calibration-out-of-order",
        ),
        pytest.param(
            {"calibration": {"kind": "isotonic", "low": [0.0], "high": [1.0], "value": [1.5]}},
            "calibration",
            id="calibration-not-a-probability",
        ),
        pytest.param({"kind": "demand"}, "describes a .demand. model", id="a-demand-model-named-purchase"),
        pytest.param({"format": 99}, "format", id="a-newer-format"),
        pytest.param({"version": 3}, "version 3", id="metadata-copied-under-another-version"),
        pytest.param({"model_file": "../purchase-v1.json"}, "model_file", id="model-file-outside-the-directory"),
    ],
)
def test_a_model_that_could_not_serve_is_refused_at_load(
    purchase_dir: Path, tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    """The server's reloader swaps in whatever `load` returns: a model that would fail (or answer
    uncalibrated scores) on every request must fail to load instead, so the current one keeps serving."""
    directory = tampered(purchase_dir, tmp_path / "models", change)
    if change.get("model_file") == "../purchase-v1.json":
        (tmp_path / "purchase-v1.json").write_bytes((purchase_dir / "purchase-v1.json").read_bytes())
    with pytest.raises(PredictorError, match=message):
        load(directory, PURCHASE)


def test_a_model_of_columns_serving_does_not_compute_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(rng.normal(size=(300, 2)), columns=["shoe_size", "purchases"])
    label = rng.random(300) < 0.3
    params = BoostParams(rounds=5, max_depth=2, threads=1)
    booster, _ = fit_booster("binary:logistic", frame, label, frame, label, ("shoe_size", "purchases"), params)
    calibration = IsotonicCalibration((0.0,), (1.0,), (0.3,))
    save(Model(PURCHASE, booster, ("shoe_size", "purchases"), calibration), tmp_path)
    with pytest.raises(PredictorError, match="'shoe_size' is not one this version computes"):
        load(tmp_path, PURCHASE)


@pytest.mark.parametrize("horizon", ["soon", None, 0, 1e-9, float("inf"), float("nan"), True])
def test_a_demand_model_without_a_usable_horizon_is_refused(tmp_path: Path, horizon: Any) -> None:
    """`Scorer.horizon_ms` would raise ValueError or OverflowError (not our error) at startup, or give 0."""
    rng = np.random.default_rng(4)
    frame = pd.DataFrame(rng.normal(size=(300, len(DEMAND_FEATURES))), columns=list(DEMAND_FEATURES))
    target = rng.poisson(2.0, 300)
    params = BoostParams(rounds=5, max_depth=2, threads=1)
    booster, _ = fit_booster("count:poisson", frame, target, frame, target, DEMAND_FEATURES, params)
    save(Model(DEMAND, booster, DEMAND_FEATURES, metadata={"horizon_s": 900.0}), tmp_path)
    assert load(tmp_path, DEMAND).metadata["horizon_s"] == 900.0
    meta_path = tmp_path / "demand-v1.meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "horizon_s": horizon}))
    with pytest.raises(PredictorError, match="horizon_s"):
        load(tmp_path, DEMAND)


def test_calibration_json_with_nan_is_malformed() -> None:
    document = {"kind": "isotonic", "low": [0.0, float("nan")], "high": [0.1, 0.2], "value": [0.1, 0.2]}
    with pytest.raises(PredictorError, match="malformed"):
        IsotonicCalibration.from_json(document)


# Catalog numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize("popularity", [float("inf"), float("nan")])
def test_a_popularity_xgboost_would_refuse_is_refused_by_name(popularity: float) -> None:
    event = SimpleNamespace(
        id="evt-a", region="eu-west", genre="rock", artist="The Band", popularity=popularity,
        onsale_at=START, starts_at=START + timedelta(days=3),
    )  # fmt: skip
    with pytest.raises(PredictorError, match="popularity"):
        EventFacts.from_catalog([event])
