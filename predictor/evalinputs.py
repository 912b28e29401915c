"""What an offline evaluation runs on: the replay options and a written workload loaded for replay.

:class:`Options` says how to replay (cache size, warming timing and budget,
which POPs, hint list lengths, where trained models are); :func:`load_workload`
reads a workload written by ``boxoffice predictor generate`` — its catalog as an
object table (:mod:`predictor.replay`), the chosen POPs' traces, the on-sale
schedule, the event plan and the consenting human users' tastes — into a
:class:`Workload`. :mod:`predictor.modelinputs` and :mod:`predictor.evaluation`
both take these; this module depends on neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pandas as pd  # type: ignore[import-untyped]

from predictor.hinteval import Affinity
from predictor.replay import ObjectTable, ReplayError, Trace, load_trace, object_table, workload_catalog
from predictor.traces import read_summary, trace_paths
from predictor.warming import (
    DEFAULT_BUDGET_SHARE,
    DEFAULT_LEAD_SECONDS,
    DEFAULT_WINDOW_SECONDS,
    OnsaleSchedule,
    onsale_schedule,
)

# Default cache size: 20 % of each POP's footprint (the bytes of every object it
# requests in the window). The edge's default cache (256 MiB) holds the whole
# demo catalog (~30 MB), where every policy misses only first requests and only
# warming changes anything; a fifth of the footprint is a regime where eviction
# decides hits (LRU near 0.85 on the default workload). The sweep shows others.
DEFAULT_CAPACITY_SHARE: Final = 0.2
DEFAULT_HINT_K: Final = (1, 2, 3)


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
