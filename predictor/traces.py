"""Write a generated workload to a directory, and read its summary back.

The layout (every table is parquet, times are UTC timestamps in milliseconds):

* ``event_log.parquet`` — the user event log for training, one row per action;
* ``traces/<pop_id>.parquet`` — each POP's requests for cache replay: ``ts,
  method, url, user_id, session_id, is_bot, event_id``, in time order; URLs are
  the origin's (``/v1/events?region=…``, ``/v1/events/{id}``,
  ``/v1/items/{id}``, ``/v1/holds``, ``/v1/orders``);
* ``sessions.parquet`` — one row per session with ``p_true``, its true
  purchase probability at the start, and what happened;
* ``users.parquet``, ``purchase_history.parquet``, ``presale.parquet`` —
  profiles, past purchases, presale registrations and invitations;
* ``event_plan.parquet`` — per catalog event: rank, popularity, announcement,
  on-sale, spike, baseline, waiting room and presale;
* ``summary.json`` — the config, the catalog it was built over, counts,
  the realised statistics beside what the config promises, and
  ``demo_users``: a few consenting humans to log in as in a demo (see
  :func:`demo_users`).

Each file is written under a temporary name and renamed into place, so a
reader never sees half a file; the summary is written last, so its presence
means the directory is complete.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

from predictor.atomicfile import write_text_atomically
from predictor.features import REQUEST_ACTIONS
from predictor.realised import realised_statistics
from predictor.workload import Workload

SUMMARY: Final = "summary.json"
TRACES: Final = "traces"
FORMAT_VERSION: Final = 1  # bump when a table's columns change meaning
DEMO_USERS: Final = 5  # users named in summary.json: the demo's login, and a few spares
# A demo user's interest must be recent at the demo's time: the purchase model weighs the last hours' activity.
DEMO_ACTIVITY_WINDOW_MS: Final = 6 * 3600 * 1000
_TABLES: Final = ("event_log", "sessions", "users", "purchase_history", "presale", "event_plan")


def write_workload(
    workload: Workload, directory: Path, catalog: Mapping[str, Any], demo: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Write every table, the per-POP traces and the summary into `directory`; return the summary.

    Args:
        workload: what :func:`predictor.workload.generate` returned.
        directory: created if missing; files of an earlier run are replaced.
        catalog: how the catalog was built (``seed``, ``venues``, ``events``, and ``start`` when it is not
            the window's), so a reader can rebuild it.
        demo: the summary's ``demo_users`` (:func:`demo_users`).

    Raises:
        OSError: the directory or a file cannot be written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for name in _TABLES:
        path = directory / f"{name}.parquet"
        _write_parquet(getattr(workload, name), path)
        files[name] = path.name
    trace_dir = directory / TRACES
    trace_dir.mkdir(exist_ok=True)
    requests = workload.requests
    per_pop: dict[str, int] = {}
    for pop_id, rows in requests.groupby("pop_id", observed=True, sort=True):
        trace = rows.drop(columns=["pop_id"]).reset_index(drop=True)
        for column in ("url", "user_id", "event_id", "method"):
            trace[column] = trace[column].cat.remove_unused_categories()
        _write_parquet(trace, trace_dir / f"{pop_id}.parquet")
        per_pop[str(pop_id)] = len(trace)
    files["traces"] = f"{TRACES}/<pop_id>.parquet"
    summary: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "generator": "boxoffice predictor generate",
        "config": dataclasses.asdict(workload.config),
        "catalog": dict(catalog),
        "files": files,
        "counts": _counts(workload, per_pop),
        "statistics": realised_statistics(workload),
        "demo_users": list(demo),
    }
    summary = _plain(summary)
    write_text_atomically(directory / SUMMARY, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return summary


def read_summary(directory: Path) -> dict[str, Any]:
    """The summary of a written workload.

    Raises:
        OSError: there is no complete workload in `directory`.
        ValueError: the summary is not JSON.
    """
    summary: dict[str, Any] = json.loads((directory / SUMMARY).read_text(encoding="utf-8"))
    return summary


def demo_users(workload: Workload, as_of_ms: int, limit: int = DEMO_USERS) -> tuple[str, ...]:
    """Up to `limit` consenting humans most engaged, shortly before `as_of_ms`, with an event still to come.

    A demo logs in as one of them and should see hints at once: the purchase model scores highest a
    user with heavy, recent interest in one event, so (user, event) pairs of the
    :data:`DEMO_ACTIVITY_WINDOW_MS` before `as_of_ms` are ranked by holds, then requests, then the
    latest request, over events that start after `as_of_ms`; each user is named once, best pair first.
    Pure: the time is the caller's (`generate` passes the wall clock, clamped into the window).
    """
    log = workload.event_log
    ts = _epoch_ms(log["ts"])
    plan = workload.event_plan.set_index("event_id")
    users = workload.users.set_index("user_id")
    recent = (
        (ts <= as_of_ms)
        & (ts > as_of_ms - DEMO_ACTIVITY_WINDOW_MS)
        & (log["session_id"].to_numpy() >= 0)
        & log["event_id"].notna().to_numpy()
        & log["action"].astype(str).isin(REQUEST_ACTIONS).to_numpy()
    )
    rows = log.loc[recent]
    user_ids = rows["user_id"].astype(str)
    event_ids = rows["event_id"].astype(str)
    starts = _epoch_ms(plan["starts_at"].reindex(event_ids.to_numpy()))
    wanted = (
        users["consent"].reindex(user_ids).fillna(False).to_numpy(dtype=np.bool_)
        & ~users["is_bot"].reindex(user_ids).fillna(True).to_numpy(dtype=np.bool_)
        & (starts > as_of_ms)
    )
    pairs = pd.DataFrame({
        "user": user_ids.to_numpy()[wanted],
        "event": event_ids.to_numpy()[wanted],
        "hold": (rows["action"].astype(str) == "hold").to_numpy()[wanted],
        "ts": ts[recent][wanted],
    })  # fmt: skip
    ranked = (
        pairs.groupby(["user", "event"], sort=True)
        .agg(holds=("hold", "sum"), requests=("hold", "size"), last=("ts", "max"))
        .sort_values(["holds", "requests", "last"], ascending=False, kind="stable")
    )
    chosen = dict.fromkeys(str(user) for user, _ in ranked.index)
    return tuple(list(chosen)[:limit])


def _epoch_ms(column: Any) -> Any:
    """Milliseconds since the epoch of a timestamp column (NaT becomes the smallest int64)."""
    return pd.to_datetime(pd.Series(column), utc=True).astype("datetime64[ms, UTC]").astype(np.int64).to_numpy()


def trace_paths(directory: Path) -> dict[str, Path]:
    """Each POP's trace file in a written workload, by POP id."""
    return {path.stem: path for path in sorted((directory / TRACES).glob("*.parquet"))}


def _counts(workload: Workload, per_pop: dict[str, int]) -> dict[str, Any]:
    sessions = workload.sessions
    return {
        "users": int((~workload.users["is_bot"]).sum()),
        "bot_accounts": int(workload.users["is_bot"].sum()),
        "sessions": {str(kind): int(count) for kind, count in sessions["kind"].value_counts(sort=False).items()},
        "actions": len(workload.event_log),
        "requests": len(workload.requests),
        "requests_per_pop": per_pop,
        "purchases": int(sessions["purchased"].sum()),
        "onsales_in_window": int(workload.event_plan["onsale_in_window"].sum()),
        "hot_onsales": int(workload.event_plan["hot"].sum()),
        "presales": int(workload.event_plan["presale"].sum()),
        "presale_registrations": len(workload.presale),
        "past_purchases": len(workload.purchase_history),
    }


def _plain(value: Any) -> Any:
    """JSON-ready: datetimes as ISO 8601, NaN and infinities as null (JSON has no numbers for them)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _write_parquet(table: Any, path: Path) -> None:
    temporary = path.with_name(path.name + ".tmp")
    table.to_parquet(temporary, index=False)
    os.replace(temporary, path)
