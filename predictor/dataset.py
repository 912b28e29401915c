"""Training and test rows from a written workload, split in time.

A purchase row is a human session: the user, the event they came for, the
cut-off at the session's arrival, the label (did it end in a purchase) and the
generator's truth ``p_true`` (kept aside, never a feature: it is what the best
possible model would say, and bounds the achievable AUC). Bot sessions are
left out: they never buy, and the serving side gives bots no hints at all, so
counting them would only flatter the AUC.

The split is by arrival time, never at random: the first ``train_share`` of
sessions train, the next ``calibration_share`` calibrate, the rest test. The
features of a test row may read training-period activity (that is what
serving sees); no row reads anything at or after its own cut-off.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

from predictor.errors import PredictorError
from predictor.features import (
    ACTIVITY,
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
from predictor.traces import read_summary

MIN_SHARE: Final = 0.05  # a slice smaller than this leaves too few purchases (2.5 %) to measure anything


@dataclass(frozen=True, slots=True)
class WorkloadTables:
    directory: Path
    summary: dict[str, Any]
    event_log: Any
    sessions: Any
    users: Any
    purchase_history: Any
    event_plan: Any

    @property
    def facts(self) -> EventFacts:
        return EventFacts.from_plan(self.event_plan)

    @property
    def profiles(self) -> Profiles:
        return Profiles.from_users(self.users)


@dataclass(frozen=True, slots=True)
class PurchaseRows:
    """Aligned arrays of one row per human session, in arrival order."""

    features: Any  # frame of predictor.features.FEATURES
    label: Any  # bool array
    p_true: Any
    now_ms: Any
    session_id: Any
    user_id: Any
    event_id: Any


def read_workload(directory: Path) -> WorkloadTables:
    """Read the tables `boxoffice predictor generate` wrote.

    Raises:
        PredictorError: the directory holds no complete workload, or a table is missing.
    """
    try:
        summary = read_summary(directory)
    except (OSError, ValueError) as exc:
        raise PredictorError(
            f"no complete workload in {directory} (run `boxoffice predictor generate`): {exc}"
        ) from None
    tables = {}
    for name in ("event_log", "sessions", "users", "purchase_history", "event_plan"):
        path = directory / f"{name}.parquet"
        try:
            tables[name] = pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            raise PredictorError(f"cannot read {path}: {exc}") from None
    return WorkloadTables(directory=directory, summary=summary, **tables)


def streams(tables: WorkloadTables, facts: EventFacts) -> dict[str, Any]:
    return {
        ACTIVITY: activity_stream(tables.event_log, facts),
        PURCHASES: purchase_stream(tables.event_log, tables.purchase_history, facts),
        PRESALE: presale_stream(tables.event_log),
    }


def purchase_rows(tables: WorkloadTables) -> PurchaseRows:
    """Every human session as a feature row at its arrival.

    Raises:
        PredictorError: no human sessions, or a session's event is not in the plan.
    """
    sessions = tables.sessions.loc[~tables.sessions["is_bot"].to_numpy(dtype=bool)]
    if sessions.empty:
        raise PredictorError("the workload has no human sessions")
    now = sessions["arrived_at"].astype("datetime64[ms, UTC]").astype(np.int64).to_numpy()
    order = np.argsort(now, kind="stable")
    sessions = sessions.iloc[order].reset_index(drop=True)
    queries = pd.DataFrame(
        {
            "user_id": sessions["user_id"].astype(str).to_numpy(),
            "event_id": sessions["event_id"].astype(str).to_numpy(),
            "now_ms": now[order],
        }
    )
    facts = tables.facts
    raw = batch_raw(streams(tables, facts), queries, facts)
    return PurchaseRows(
        features=derive(raw, tables.profiles, facts),
        label=sessions["purchased"].to_numpy(dtype=bool),
        p_true=sessions["p_true"].to_numpy(dtype=np.float64),
        now_ms=queries["now_ms"].to_numpy(),
        session_id=sessions["session_id"].to_numpy(),
        user_id=queries["user_id"].to_numpy(),
        event_id=queries["event_id"].to_numpy(),
    )


def time_split(now_ms: Any, train_share: float, calibration_share: float) -> tuple[Any, Any, Any]:
    """Boolean masks (train, calibration, test) over rows in arrival order, by row count.

    Raises:
        PredictorError: a slice would be smaller than MIN_SHARE.
    """
    test_share = 1 - train_share - calibration_share
    if min(train_share, calibration_share, test_share) < MIN_SHARE:
        raise PredictorError(
            f"train {train_share:.2f}, calibration {calibration_share:.2f} and test {test_share:.2f} shares "
            f"must each be at least {MIN_SHARE}"
        )
    rows = len(now_ms)
    position = np.arange(rows)
    first, second = int(rows * train_share), int(rows * (train_share + calibration_share))
    # rows at the same millisecond stay on one side of each boundary
    ts = np.asarray(now_ms)
    if rows:
        first = int(np.searchsorted(ts, ts[min(first, rows - 1)], side="left"))
        second = int(np.searchsorted(ts, ts[min(second, rows - 1)], side="left"))
    return position < first, (position >= first) & (position < second), position >= second
