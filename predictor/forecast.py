"""Demand forecast features: requests per region and event over the next horizon.

The shard manager sizes shards from ``GET /v1/forecast``: for each region and
event, the requests per second expected over the next ``horizon``. A row is a
(region, event, cut-off ``t``); its target is the count of requests naming the
event that the region's users send in ``[t, t + horizon)`` (bots included:
they are load too). Features read only requests before ``t``:

* recent counts for the pair, the event and the region over the last
  horizon, hour and day (a persistence forecast is one of them);
* the catalog's facts: popularity, region match, days to the show, time to
  or since the on-sale, and whether the on-sale opens inside the horizon (the
  spike that history cannot show);
* the region's local hour (the diurnal cycle), as sine and cosine.

Candidates at ``t``: pairs with a request in the last hour, and every region
for an event whose on-sale opens in the horizon. Pairs quieter than that are
forecast as zero. :class:`DemandState` keeps the same counters online and
gives the same rows; :func:`forecast_document` shapes the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

from origin.cities import REGION_BY_ID
from predictor.errors import PredictorError
from predictor.features import DAY_MS, HOUR_MS, MS_PER_SECOND, REQUEST_ACTIONS, EventFacts, to_ms
from predictor.online import SlidingWindow

ACTIVE_WINDOW_MS: Final = HOUR_MS  # a pair is a candidate when it had a request this recently
MAX_FORECAST_ROWS: Final = 5_000  # the busiest pairs; a shard manager acts on a few hundred at most
MIN_REQUESTS_PER_S: Final = 1e-4  # below one request in ~3 hours: nothing to provision for

DEMAND_FEATURES: Final = (
    "region_match", "log_popularity", "days_to_show", "hours_since_onsale", "onsale_in_horizon",
    "minutes_to_onsale", "local_hour_sin", "local_hour_cos",
    "pair_requests_h", "pair_requests_1h", "pair_requests_24h",
    "event_requests_h", "event_requests_1h", "event_requests_24h", "region_requests_h", "region_share_24h",
)  # fmt: skip
# (feature, key, window): "h" is the horizon itself
_COUNTS: Final = (
    ("pair_requests_h", ("region", "event"), "h"),
    ("pair_requests_1h", ("region", "event"), HOUR_MS),
    ("pair_requests_24h", ("region", "event"), DAY_MS),
    ("event_requests_h", ("event",), "h"),
    ("event_requests_1h", ("event",), HOUR_MS),
    ("event_requests_24h", ("event",), DAY_MS),
    ("region_requests_h", ("region",), "h"),
)


def request_stream(event_log: Any) -> Any:
    """Requests that name an event, in time order: ``ts`` (ms), ``region`` (the user's), ``event``."""
    rows = event_log.loc[
        event_log["action"].isin(REQUEST_ACTIONS) & event_log["event_id"].notna() & (event_log["session_id"] >= 0)
    ]
    return pd.DataFrame(
        {
            "ts": to_ms(rows["ts"]),
            "region": rows["user_region"].astype(str).to_numpy(),
            "event": rows["event_id"].astype(str).to_numpy(),
        }
    )


def candidates(requests: Any, facts: EventFacts, times_ms: Sequence[int], horizon_ms: int) -> Any:
    """Rows (``region, event, now_ms``) to forecast at each of `times_ms` (see the module docstring)."""
    if horizon_ms <= 0:
        raise PredictorError("the forecast horizon must be above 0")
    ts = requests["ts"].to_numpy()
    parts = []
    regions = sorted(REGION_BY_ID)
    onsale = facts.frame["onsale_ms"].to_numpy()
    for now in times_ms:
        lo, hi = np.searchsorted(ts, now - ACTIVE_WINDOW_MS, side="left"), np.searchsorted(ts, now, side="left")
        active = requests.iloc[lo:hi][["region", "event"]].drop_duplicates()
        opening = facts.frame.index[(onsale >= now) & (onsale < now + horizon_ms)]
        spikes = pd.DataFrame(
            {
                "region": np.repeat(regions, len(opening)),
                "event": np.tile(np.asarray(opening, dtype=object), len(regions)),
            }
        )
        both = pd.concat([active, spikes], ignore_index=True).drop_duplicates()
        both["now_ms"] = np.int64(now)
        parts.append(both)
    if not parts:
        return pd.DataFrame({"region": [], "event": [], "now_ms": np.zeros(0, dtype=np.int64)})
    frame = pd.concat(parts, ignore_index=True)
    return frame.sort_values(["now_ms", "region", "event"], kind="stable").reset_index(drop=True)


def batch_counts(requests: Any, queries: Any, horizon_ms: int) -> dict[str, Any]:
    """The recent-request counts of :data:`_COUNTS` for each query row, from requests before its ``now_ms``."""
    counts: dict[str, Any] = {}
    now = queries["now_ms"].to_numpy(dtype=np.int64)
    for name, key, window in _COUNTS:
        width = horizon_ms if window == "h" else int(window)
        row_key, query_key = _key(requests, queries, key)
        counts[name] = _count_before(requests["ts"].to_numpy(), row_key, now, query_key) - _count_before(
            requests["ts"].to_numpy(), row_key, now - width, query_key
        )
    return counts


def target(requests: Any, queries: Any, horizon_ms: int) -> Any:
    """Requests of each query's pair in ``[now, now + horizon)``."""
    now = queries["now_ms"].to_numpy(dtype=np.int64)
    row_key, query_key = _key(requests, queries, ("region", "event"))
    ts = requests["ts"].to_numpy()
    return _count_before(ts, row_key, now + horizon_ms, query_key) - _count_before(ts, row_key, now, query_key)


def derive_demand(queries: Any, counts: dict[str, Any], facts: EventFacts, horizon_ms: int) -> Any:
    """The demand model's columns (:data:`DEMAND_FEATURES`) from the candidates and their counts."""
    facts.require(queries["event"])
    event = facts.frame.reindex(queries["event"].to_numpy())
    now = queries["now_ms"].to_numpy(dtype=np.int64)
    region = queries["region"].to_numpy()
    unknown = set(np.unique(region).tolist()) - set(REGION_BY_ID)
    if unknown:
        raise PredictorError(f"unknown region {sorted(unknown)[0]!r}")
    offset = np.array([round(REGION_BY_ID[r].lon / 15) for r in region], dtype=np.float64)
    local_hour = (now / HOUR_MS + offset) % 24
    until_onsale = event["onsale_ms"].to_numpy() - now
    f: dict[str, Any] = {
        "region_match": (region == event["region"].to_numpy()).astype(np.float64),
        "log_popularity": event["log_popularity"].to_numpy(dtype=np.float64),
        "days_to_show": (event["starts_ms"].to_numpy() - now) / DAY_MS,
        "hours_since_onsale": -until_onsale / HOUR_MS,
        "onsale_in_horizon": ((until_onsale >= 0) & (until_onsale < horizon_ms)).astype(np.float64),
        "minutes_to_onsale": np.where(until_onsale >= 0, until_onsale / 60_000, np.nan),
        "local_hour_sin": np.sin(2 * np.pi * local_hour / 24),
        "local_hour_cos": np.cos(2 * np.pi * local_hour / 24),
    }
    f.update({name: np.asarray(values, dtype=np.float64) for name, values in counts.items()})
    with np.errstate(divide="ignore", invalid="ignore"):
        f["region_share_24h"] = np.where(
            f["event_requests_24h"] > 0, f["pair_requests_24h"] / np.maximum(f["event_requests_24h"], 1), np.nan
        )
    return pd.DataFrame({name: f[name] for name in DEMAND_FEATURES}, index=queries.index)


class DemandState:
    """The request counters of the demand features, kept online (same rows as the batch form)."""

    def __init__(self, facts: EventFacts, horizon_ms: int) -> None:
        if horizon_ms <= 0:
            raise PredictorError("the forecast horizon must be above 0")
        self.facts = facts
        self.horizon_ms = horizon_ms
        self._windows: dict[tuple[str, str, str], SlidingWindow] = {}  # (feature, region, event) -> window

    def update(self, ts_ms: int, region: str, event_id: str) -> None:
        """Count one request of a `region`'s user naming `event_id`.

        Raises:
            PredictorError: unknown region or event.
        """
        if region not in REGION_BY_ID:
            raise PredictorError(f"unknown region {region!r}")
        if event_id not in self.facts.frame.index:
            raise PredictorError(f"unknown event {event_id!r} (not in the catalog)")
        for name, key, window in _COUNTS:
            slot = (name, region if "region" in key else "", event_id if "event" in key else "")
            cell = self._windows.get(slot)
            if cell is None:
                cell = self._windows[slot] = SlidingWindow(self.horizon_ms if window == "h" else int(window))
            cell.add(int(ts_ms))
        active = ("active", region, event_id)
        if active not in self._windows:
            self._windows[active] = SlidingWindow(ACTIVE_WINDOW_MS)
        self._windows[active].add(int(ts_ms))

    def rows(self, now_ms: int) -> tuple[Any, Any]:
        """(candidates, feature frame) at `now_ms`, as the batch form builds them."""
        pairs = {(r, e) for (name, r, e), w in self._windows.items() if name == "active" and w.count(now_ms) > 0}
        onsale = self.facts.frame["onsale_ms"].to_numpy()
        opening = self.facts.frame.index[(onsale >= now_ms) & (onsale < now_ms + self.horizon_ms)]
        pairs.update((region, event) for region in REGION_BY_ID for event in opening)
        ordered = sorted(pairs)
        queries = pd.DataFrame(
            {
                "region": [r for r, _ in ordered],
                "event": [e for _, e in ordered],
                "now_ms": np.full(len(ordered), now_ms, dtype=np.int64),
            }
        )
        counts: dict[str, Any] = {}
        for name, key, _ in _COUNTS:
            values = []
            for region, event in ordered:
                cell = self._windows.get((name, region if "region" in key else "", event if "event" in key else ""))
                values.append(0.0 if cell is None else cell.count(now_ms))
            counts[name] = np.array(values, dtype=np.float64)
        return queries, derive_demand(queries, counts, self.facts, self.horizon_ms)


def forecast_document(queries: Any, expected_counts: Any, now_ms: int, horizon_ms: int) -> dict[str, Any]:
    """The ``GET /v1/forecast`` body: the busiest pairs first, at most MAX_FORECAST_ROWS, none below
    MIN_REQUESTS_PER_S."""
    seconds = horizon_ms / MS_PER_SECOND
    rate = np.asarray(expected_counts, dtype=np.float64) / seconds
    order = np.argsort(-rate, kind="stable")[:MAX_FORECAST_ROWS]
    region, event = queries["region"].to_numpy(), queries["event"].to_numpy()
    return {
        "generated_at": datetime.fromtimestamp(now_ms / MS_PER_SECOND, tz=UTC).isoformat().replace("+00:00", "Z"),
        "horizon_s": seconds,
        "forecast": [
            {"region": str(region[i]), "event_id": str(event[i]), "requests_per_s": round(float(rate[i]), 6)}
            for i in order.tolist()
            if rate[i] >= MIN_REQUESTS_PER_S
        ],
    }


def _key(requests: Any, queries: Any, key: tuple[str, ...]) -> tuple[Any, Any]:
    """Integer keys for request rows and queries: the same number for the same (region, event)."""
    combined = np.zeros(len(requests) + len(queries), dtype=np.int64)
    for column in key:
        values = pd.concat([requests[column], queries[column]], ignore_index=True)
        numbers, uniques = pd.factorize(values)
        combined = combined * (len(uniques) + 1) + numbers
    return combined[: len(requests)], combined[len(requests) :]


def _count_before(ts: Any, row_key: Any, when: Any, query_key: Any) -> Any:
    """Per query: rows of its key with time strictly before `when`.

    One sorted array of ``key * span + time`` answers every query with two binary searches.
    """
    when = np.asarray(when, dtype=np.int64)
    if len(ts) == 0:
        return np.zeros(len(query_key), dtype=np.float64)
    base = int(min(ts.min(), when.min(initial=ts.min()))) - 1
    span = int(max(ts.max(), when.max(initial=ts.max()))) - base + 1
    if (int(max(row_key.max(initial=0), query_key.max(initial=0))) + 1) * span >= 2**62:
        raise PredictorError("the requests span too long a time to count in one pass")
    composite = np.sort(row_key * span + (ts - base))
    position = np.searchsorted(composite, query_key * span + (when - base), side="left")
    first = np.searchsorted(composite, query_key * span, side="left")
    counts: Any = (position - first).astype(np.float64)
    return counts
