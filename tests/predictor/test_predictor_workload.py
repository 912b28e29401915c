"""The synthetic workload: realised statistics, determinism, consistency, ids, files."""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pytest

from origin.catalog import Catalog, build_catalog
from predictor.demand import waiting_room_release
from predictor.errors import WorkloadConfigError, WorkloadError
from predictor.realised import realised_statistics
from predictor.traces import SUMMARY, read_summary, trace_paths, write_workload
from predictor.workload import Workload, WorkloadConfig, generate

CATALOG_SEED = 2026  # the origin's demo_seed, so the ids are the ones the origin serves
# Small but not too small: ~110,000 sessions, ~2,600 purchases, ~2,500 presale invitees and a
# few hot on-sales, so every statistic below sits well inside 10 % for any seed (a 12-seed sweep
# stayed within 5 %); it generates in about 1.5 s.
SMALL = WorkloadConfig(seed=11, days=2, users=40_000, sessions_per_day=50_000, presale_registration_ratio=3.0)
TOLERANCE = 0.10


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return build_catalog(CATALOG_SEED, start=SMALL.start)


@pytest.fixture(scope="module")
def workload(catalog: Catalog) -> Workload:
    return generate(SMALL, catalog)


@pytest.fixture(scope="module")
def statistics(workload: Workload) -> dict[str, dict[str, float]]:
    return realised_statistics(workload)


def within(statistic: dict[str, float], tolerance: float = TOLERANCE) -> bool:
    return abs(statistic["realised"] - statistic["expected"]) <= tolerance * abs(statistic["expected"])


# --- the configured statistics ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "session_purchase_rate",
        "view_to_cart_rate",
        "cart_purchase_rate",
        "bot_request_share",
        "hot_onsale_bot_share",
        "zipf_exponent",
        "onsale_spike_ratio",
        "onsale_spike_decay",
        "presale_purchase_rate",
        "home_region_share",
        "diurnal_amplitude",
        "dwell_event_view_median",
        "dwell_item_view_median",
        "dwell_hold_median",
        "dwell_purchase_median",
        "dwell_event_view_log_sigma",
    ],
)
def test_realised_statistic_within_ten_percent(statistics: dict[str, dict[str, float]], name: str) -> None:
    assert within(statistics[name]), statistics[name]


def test_expectations_are_the_configured_figures(statistics: dict[str, dict[str, float]]) -> None:
    assert statistics["session_purchase_rate"]["expected"] == 0.025
    assert statistics["cart_purchase_rate"]["expected"] == 0.30
    assert 0.03 <= statistics["view_to_cart_rate"]["expected"] <= 0.09
    assert 0.03 <= statistics["view_to_cart_rate"]["realised"] <= 0.09
    assert statistics["bot_request_share"]["expected"] == 0.35
    assert statistics["zipf_exponent"]["expected"] == 0.8
    assert statistics["presale_purchase_rate"]["expected"] == 0.4
    assert statistics["onsale_spike_decay"]["expected"] == 15 * 60
    # the home share follows the configured figure (the model's exact value differs by diurnal timing only)
    assert within({"realised": statistics["home_region_share"]["realised"], "expected": SMALL.home_region_share})


def test_onsale_spikes_span_the_configured_range(workload: Workload, statistics: dict[str, dict[str, float]]) -> None:
    plan = workload.event_plan
    assert plan["spike"].between(SMALL.onsale_spike_min, SMALL.onsale_spike_max).all()
    assert statistics["onsale_spike_ratio"]["realised"] > SMALL.onsale_spike_min
    assert plan.loc[plan["onsale_in_window"], "hot"].any(), "the small run needs a hot on-sale"
    # the first minute alone has fewer arrivals; it still lands near its expectation
    assert within(statistics["onsale_first_minute_ratio"], 0.2), statistics["onsale_first_minute_ratio"]


def test_bots_are_busier_in_hot_onsales(statistics: dict[str, dict[str, float]]) -> None:
    assert statistics["hot_onsale_bot_share"]["realised"] > statistics["bot_request_share"]["realised"] + 0.1


def test_waiting_rooms_release_at_their_fixed_rate(workload: Workload, statistics: dict[str, dict[str, float]]) -> None:
    queued = workload.sessions.loc[workload.sessions["queued"]]
    assert len(queued) > 0
    assert (queued["started_at"] >= queued["arrived_at"]).all()
    assert (queued["queued_seconds"] > 0).mean() > 0.5  # the spike outruns the release rate
    assert statistics["waiting_room_release_spacing"]["realised"] >= 0.99  # millisecond rounding only


def test_true_probabilities_are_informative_and_calibrated(
    workload: Workload, statistics: dict[str, dict[str, float]]
) -> None:
    sessions = workload.sessions
    human = sessions.loc[~sessions["is_bot"]]
    assert human["p_true"].between(0, 1).all()
    assert (sessions.loc[sessions["is_bot"], "p_true"] == 0).all()
    assert statistics["mean_p_true"]["realised"] == pytest.approx(SMALL.session_purchase_rate, rel=1e-6)
    # calibration by decile: what happened follows the truth
    decile = pd.qcut(human["p_true"], 10, labels=False, duplicates="drop")
    by_decile = human.groupby(decile)[["p_true", "purchased"]].mean()
    assert np.abs(by_decile["p_true"] - by_decile["purchased"]).max() < 0.02
    assert statistics["oracle_auc"]["realised"] > 0.88  # room for a model to reach the AUC 0.85


# --- determinism ----------------------------------------------------------------------------------


TABLES = ("event_log", "requests", "sessions", "users", "purchase_history", "presale", "event_plan")


def test_same_seed_same_workload(workload: Workload, catalog: Catalog) -> None:
    again = generate(SMALL, catalog)
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(workload, name), getattr(again, name), check_exact=True)
    assert again.expected == workload.expected


def test_other_seed_other_workload(workload: Workload, catalog: Catalog) -> None:
    other = generate(dataclasses.replace(SMALL, seed=SMALL.seed + 1), catalog)
    assert len(other.event_log) != len(workload.event_log) or not other.event_log.equals(workload.event_log)
    assert not other.sessions["p_true"].equals(workload.sessions["p_true"])
    assert not other.users["region"].equals(workload.users["region"])


# --- consistency between the tables ------------------------------------------------------------------


def test_requests_are_the_logged_actions_that_reach_a_pop(workload: Workload) -> None:
    log, requests, sessions = workload.event_log, workload.requests, workload.sessions
    reaching = log["action"].isin(["search", "event_view", "item_view", "hold", "purchase"])
    assert len(requests) == int(reaching.sum()) == int(sessions["requests"].sum())
    assert requests["ts"].is_monotonic_increasing
    assert (requests["user_id"].astype(str).to_numpy() == log.loc[reaching, "user_id"].astype(str).to_numpy()).all()
    urls = requests["url"].astype(str)
    method = requests["method"].astype(str)
    assert urls[method == "POST"].isin(["/v1/holds", "/v1/orders"]).all()
    get_url = r"^/v1/(events\?region=[a-z-]+|events/evt-\d{6}|items/itm-\d{6}-\d{2})$"
    assert urls[method == "GET"].str.match(get_url).all()


def test_sessions_agree_with_their_actions(workload: Workload) -> None:
    log, sessions = workload.event_log, workload.sessions
    human_log = log.loc[~log["is_bot"]]
    purchases = human_log.loc[human_log["action"] == "purchase"]
    assert sorted(purchases["session_id"]) == sorted(sessions.loc[sessions["purchased"], "session_id"])
    holds = set(human_log.loc[human_log["action"] == "hold", "session_id"])
    assert set(purchases["session_id"]) <= holds
    # an order is for the item that was held, and that item belongs to the session's event
    purchased = purchases.merge(sessions[["session_id", "event_id"]], on="session_id", suffixes=("", "_session"))
    assert (purchased["item_id"].astype(str).str[4:10] == purchased["event_id_session"].astype(str).str[4:]).all()
    # bots are labelled everywhere, and they never buy
    bot_users = set(workload.users.loc[workload.users["is_bot"], "user_id"])
    assert set(log.loc[log["is_bot"], "user_id"].astype(str)) <= bot_users
    assert not set(log.loc[~log["is_bot"], "user_id"].astype(str)) & bot_users
    assert not sessions.loc[sessions["is_bot"], "purchased"].any()
    assert (sessions["ended_at"] >= sessions["started_at"]).all()


def test_presale_invitees_get_one_session_each(workload: Workload) -> None:
    presale, sessions = workload.presale, workload.sessions
    invited = presale.loc[presale["invited"]]
    guests = sessions.loc[sessions["kind"] == "presale"]
    assert len(guests) == len(invited) > 1000
    pairs = set(zip(guests["user_id"].astype(str), guests["event_id"].astype(str), strict=True))
    assert pairs == set(zip(invited["user_id"].astype(str), invited["event_id"].astype(str), strict=True))
    assert (guests["arrived_at"].to_numpy() >= invited["presale_opens_at"].min()).all()
    assert 0.4 < presale["invited"].mean() < 0.6  # presale_invite_rate 0.5


def test_users_have_histories(workload: Workload) -> None:
    users, history = workload.users, workload.purchase_history
    humans = users.loc[~users["is_bot"]]
    assert len(humans) == SMALL.users
    assert users["user_id"].is_unique
    assert humans["past_purchases"].mean() == pytest.approx(SMALL.history_purchases_mean, rel=0.1)
    assert humans["past_purchases"].sum() == len(history)
    assert (history["purchased_at"] < pd.Timestamp(SMALL.start)).all()
    assert humans["favourite_artists"].str.len().gt(0).mean() > 0.5
    assert humans["region"].astype(str).value_counts().index[0] in {"na-east", "eu-west", "eu-central"}
    assert humans["consent"].mean() == pytest.approx(SMALL.consent_rate, abs=0.02)


# --- ids -----------------------------------------------------------------------------------------


def used(column: Any) -> set[str]:
    """The values a categorical column holds (not merely its categories)."""
    return {str(value) for value in column.cat.remove_unused_categories().cat.categories}


def test_ids_exist_in_the_demo_catalog(workload: Workload) -> None:
    # the origin seeds its demo catalog with today's date: ids do not depend on the start
    origin_catalog = build_catalog(CATALOG_SEED, start=datetime(2031, 7, 1, tzinfo=UTC))
    event_ids = {event.id for event in origin_catalog.events}
    item_ids = {item.id for item in origin_catalog.items}
    log = workload.event_log
    assert used(log["event_id"]) <= event_ids
    assert used(log["item_id"]) <= item_ids
    assert len(used(log["item_id"])) > 1000  # the workload reaches well beyond a few hot items
    assert used(workload.sessions["event_id"]) <= event_ids
    urls = used(workload.requests["url"])
    assert {url.removeprefix("/v1/items/") for url in urls if url.startswith("/v1/items/")} <= item_ids
    assert {url.removeprefix("/v1/events/") for url in urls if url.startswith("/v1/events/")} <= event_ids
    assert set(workload.event_plan["event_id"]) == event_ids


# --- files ---------------------------------------------------------------------------------------


def test_files_are_written_and_readable(workload: Workload, tmp_path: Path) -> None:
    summary = write_workload(workload, tmp_path, {"seed": CATALOG_SEED, "venues": 300, "events": 3000})
    assert read_summary(tmp_path) == summary == json.loads((tmp_path / SUMMARY).read_text())
    log = pd.read_parquet(tmp_path / "event_log.parquet")
    assert len(log) == len(workload.event_log)
    assert list(log.columns) == list(workload.event_log.columns)
    assert str(log["ts"].dtype) == "datetime64[ms, UTC]"
    sessions = pd.read_parquet(tmp_path / "sessions.parquet")
    assert sessions["p_true"].to_numpy().tolist() == workload.sessions["p_true"].to_numpy().tolist()
    for name in ("users", "purchase_history", "presale", "event_plan"):
        assert len(pd.read_parquet(tmp_path / f"{name}.parquet")) == len(getattr(workload, name))
    traces = trace_paths(tmp_path)
    assert set(traces) == set(workload.requests["pop_id"].astype(str))
    total = 0
    for pop_id, path in traces.items():
        trace = pd.read_parquet(path)
        assert list(trace.columns) == ["ts", "method", "url", "user_id", "session_id", "is_bot", "event_id"]
        assert trace["ts"].is_monotonic_increasing
        assert summary["counts"]["requests_per_pop"][pop_id] == len(trace)
        total += len(trace)
    assert total == len(workload.requests)
    assert summary["config"]["seed"] == SMALL.seed
    assert summary["statistics"]["session_purchase_rate"]["expected"] == 0.025
    assert not list(tmp_path.rglob("*.tmp"))

    def refuse(constant: str) -> Any:
        raise AssertionError(f"{constant} is not JSON")

    json.loads((tmp_path / SUMMARY).read_text(), parse_constant=refuse)  # no NaN: strict JSON


# --- cores ---------------------------------------------------------------------------------------


def test_waiting_room_releases_first_come_first_served_at_a_fixed_interval() -> None:
    arrival = np.array([0.0, 0.1, 0.2, 0.3, 5.0, 20.0, 20.5])
    release = waiting_room_release(arrival, 2.0)
    assert release.tolist() == [0.0, 2.0, 4.0, 6.0, 8.0, 20.0, 22.0]
    assert (release >= arrival).all()
    assert (np.diff(release) >= 2.0).all()
    assert waiting_room_release(np.array([]), 1.0).tolist() == []


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"days": 0}, "days"),
        ({"bot_request_share": 1.0}, "bot_request_share"),
        ({"onsale_spike_min": 200.0}, "onsale_spike_min"),
        ({"session_seat_map_rate": 0.05}, "session_seat_map_rate"),  # below the hold rate 0.025 / 0.3
        ({"diurnal_amplitude": 1.0}, "diurnal_amplitude"),
        ({"zipf_exponent": math.nan}, "zipf_exponent"),
        ({"start": datetime(2026, 1, 5)}, "start"),
        ({"presale_lead": 5 * 86400.0}, "presale_lead"),
    ],
)
def test_bad_config_names_the_field(change: dict[str, Any], key: str, catalog: Catalog) -> None:
    with pytest.raises(WorkloadConfigError) as caught:
        generate(dataclasses.replace(SMALL, **change), catalog)
    assert caught.value.key == key


def test_a_catalog_with_nothing_on_refuses() -> None:
    start = SMALL.start
    empty = build_catalog(1, venues=1, events=0, start=start)
    with pytest.raises(WorkloadError):
        generate(dataclasses.replace(SMALL, users=100, sessions_per_day=10), empty)
