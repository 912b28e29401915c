"""Measure a generated workload: the statistics its config promises, as realised.

:func:`realised_statistics` reads only the public tables of a
:class:`~predictor.workload.Workload` (what a consumer of the files sees) and
returns, per statistic, the realised value beside the value the config
promises. How each is measured:

* ``session_purchase_rate`` — purchases over human sessions.
* ``view_to_cart_rate`` — human holds over human event-page views.
* ``cart_purchase_rate`` — human purchases over human holds.
* ``bot_request_share`` — bots' share of requests outside on-sale windows (a
  request is in one when its event opened its on-sale less than
  ``onsale_window`` earlier); ``hot_onsale_bot_share`` the same inside hot
  on-sales' windows.
* ``zipf_exponent`` — Poisson maximum likelihood of ``alpha`` in ``sessions[e]
  ~ exposure[e] * rank[e] ** -alpha`` over browsing sessions, where the
  exposure is the event's expected demand without its popularity (how long it
  was visible and how interesting): solving ``sum(c log r) / sum(c) ==
  sum(x r**-a log r) / sum(x r**-a)`` by bisection. A plain rank-frequency
  slope is reported too; it mixes popularity with lifecycle.
* ``onsale_spike_ratio`` — the opening traffic over the baseline, estimated
  from the whole spike: 1 plus the on-sales' extra arrivals over ``baseline *
  tau`` (the Poisson maximum likelihood of the multiple, given the decay's
  shape), over on-sales whose decay fits in the window; expected is the
  baseline-weighted mean of their spikes. ``onsale_first_minute_ratio`` the
  same from the first minute only (fewer arrivals: noisier), and
  ``onsale_spike_decay`` three times the extra arrivals' mean delay.
* ``presale_purchase_rate`` — purchases in presale sessions over invitees.
* ``home_region_share`` — browsing sessions whose user lives in the event's region.
* ``diurnal_amplitude`` — first Fourier harmonic of browsing sessions by local hour.
* ``dwell_*`` — median seconds before each action within human sessions.
* ``waiting_room_release_spacing`` — the closest two releases of one waiting
  room came, in release intervals: at least 1 (less only by millisecond rounding).
* ``oracle_auc`` — ROC AUC of the true probabilities against what happened:
  the best any model can reach on these sessions.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from ops.settings import HOUR
from predictor.calibration import roc_auc
from predictor.catalogview import BoolArray, FloatArray

if TYPE_CHECKING:
    from predictor.workload import Workload

Statistic = dict[str, float]
_BISECTION_STEPS: Final = 60
_MINUTE: Final = 60.0


def realised_statistics(workload: Workload) -> dict[str, Statistic]:
    """``{name: {"realised": x, "expected": y}}`` for every statistic in the module docstring."""
    config = workload.config
    sessions, log, plan = workload.sessions, workload.event_log, workload.event_plan
    human = sessions.loc[~sessions["is_bot"].to_numpy()]
    human_log = log.loc[~log["is_bot"].to_numpy()]
    actions = human_log["action"].astype(str).to_numpy()
    purchases = float(human["purchased"].sum())
    holds = float((actions == "hold").sum())
    stats: dict[str, Statistic] = {
        "session_purchase_rate": _pair(purchases / max(len(human), 1), config.session_purchase_rate),
        "view_to_cart_rate": _pair(holds / max(float((actions == "event_view").sum()), 1.0), config.view_to_cart_rate),
        "cart_purchase_rate": _pair(purchases / max(holds, 1.0), config.cart_purchase_rate),
    }
    stats.update(_bot_shares(workload))
    stats["zipf_exponent"] = _pair(_zipf_fit(workload), config.zipf_exponent)
    stats["zipf_rank_frequency_slope"] = _pair(_rank_frequency_slope(human), config.zipf_exponent)
    stats.update(_onsales(workload))
    presale = human.loc[human["kind"].astype(str).to_numpy() == "presale"]
    invitees = float(workload.presale["invited"].sum())
    stats["presale_purchase_rate"] = _pair(
        float(presale["purchased"].sum()) / invitees if invitees else math.nan, config.presale_purchase_rate
    )
    browse = human.loc[human["kind"].astype(str).to_numpy() == "browse"]
    event_region = plan.set_index("event_id")["region"].astype(str)
    home = (
        browse["user_region"].astype(str).to_numpy() == event_region.reindex(browse["event_id"].astype(str)).to_numpy()
    )
    stats["home_region_share"] = _pair(float(home.mean()), workload.expected["home_region_share"])
    stats["diurnal_amplitude"] = _pair(_diurnal_amplitude(workload, browse), config.diurnal_amplitude)
    stats.update(_dwell(workload, human_log))
    stats["oracle_auc"] = _pair(roc_auc(human["purchased"].to_numpy(), human["p_true"].to_numpy()), math.nan)
    stats["mean_p_true"] = _pair(float(human["p_true"].mean()), config.session_purchase_rate)
    return stats


def _pair(realised: float, expected: float) -> Statistic:
    return {"realised": float(realised), "expected": float(expected)}


def _seconds(workload: Workload, stamps: Any) -> FloatArray:
    start = np.datetime64(workload.config.start.replace(tzinfo=None), "ms")
    values = stamps.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[ms]")
    seconds: FloatArray = (values - start).astype(np.int64) / 1000.0
    return seconds


def _onsale_seconds(workload: Workload, event_ids: Any) -> FloatArray:
    plan = workload.event_plan
    if str(event_ids.dtype) != "category":
        event_ids = event_ids.astype("category")
    onsale = _seconds(workload, plan["onsale_at"])
    position = {event_id: number for number, event_id in enumerate(plan["event_id"].tolist())}
    codes = np.array([position.get(e, -1) for e in event_ids.cat.categories.tolist()], dtype=np.int64)
    row_codes = event_ids.cat.codes.to_numpy()
    mapped = np.where(row_codes >= 0, codes[np.maximum(row_codes, 0)], -1)
    result: FloatArray = np.where(mapped >= 0, onsale[np.maximum(mapped, 0)], np.nan)
    return result


def _bot_shares(workload: Workload) -> dict[str, Statistic]:
    config, requests, plan = workload.config, workload.requests, workload.event_plan
    time = _seconds(workload, requests["ts"])
    opens = _onsale_seconds(workload, requests["event_id"])
    with np.errstate(invalid="ignore"):
        in_window = (time >= opens) & (time < opens + config.onsale_window)
    is_bot = requests["is_bot"].to_numpy()
    hot_ids = set(plan.loc[plan["hot"].to_numpy(), "event_id"].tolist())
    hot = in_window & requests["event_id"].astype(str).isin(hot_ids).to_numpy()
    normal = ~in_window
    return {
        "bot_request_share": _pair(float(is_bot[normal].mean()), config.bot_request_share),
        "hot_onsale_bot_share": _pair(
            float(is_bot[hot].mean()) if hot.any() else math.nan, config.hot_onsale_bot_share
        ),
        "bot_request_share_overall": _pair(float(is_bot.mean()), math.nan),
    }


def _zipf_fit(workload: Workload) -> float:
    plan, sessions = workload.event_plan, workload.sessions
    browse = sessions.loc[sessions["kind"].astype(str).to_numpy() == "browse"]
    counts = browse["event_id"].astype(str).value_counts().reindex(plan["event_id"], fill_value=0).to_numpy()
    exposure = plan["expected_browse_sessions"].to_numpy() / plan["popularity"].to_numpy()
    log_rank = np.log(plan["rank"].to_numpy().astype(np.float64))
    visible = exposure > 0
    counts, exposure, log_rank = counts[visible], exposure[visible], log_rank[visible]
    if counts.sum() == 0:
        return math.nan
    observed = float((counts * log_rank).sum() / counts.sum())
    low, high = 0.0, 4.0
    for _ in range(_BISECTION_STEPS):
        alpha = (low + high) / 2
        weight = exposure * np.exp(-alpha * (log_rank - log_rank.min()))
        predicted = float((weight * log_rank).sum() / weight.sum())
        # a larger alpha moves the predicted mean log-rank down
        if predicted > observed:
            low = alpha
        else:
            high = alpha
    return (low + high) / 2


def _rank_frequency_slope(human: Any) -> float:
    """-slope of log(sessions) against log(realised rank) over the 100 most visited events."""
    counts = np.sort(human["event_id"].astype(str).value_counts().to_numpy())[::-1][:100].astype(np.float64)
    if len(counts) < 3:
        return math.nan
    ranks = np.log(np.arange(1, len(counts) + 1))
    slope = np.polyfit(ranks, np.log(counts), 1)[0]
    return float(-slope)


def _onsales(workload: Workload) -> dict[str, Statistic]:
    config, plan, sessions = workload.config, workload.event_plan, workload.sessions
    tau = config.onsale_spike_time_constant
    window = plan.loc[plan["onsale_in_window"].to_numpy()]
    room = config.window_seconds - _seconds(workload, window["onsale_at"])
    spike = sessions.loc[sessions["kind"].astype(str).to_numpy() == "onsale"]
    spike_event = spike["event_id"].astype(str).to_numpy()
    offset = _seconds(workload, spike["arrived_at"]) - _onsale_seconds(workload, spike["event_id"])

    def measure(enough_room: float) -> tuple[Any, Any, BoolArray]:
        """On-sales with at least `enough_room` left in the window, their baselines (per second) and sessions."""
        chosen = window.loc[room >= enough_room]
        return chosen, chosen["baseline_per_minute"].to_numpy() / _MINUTE, np.isin(spike_event, chosen["event_id"])

    # the whole spike: every on-sale whose decay fits in the window (10 time constants leave e**-10)
    whole, whole_baseline, whole_rows = measure(10 * tau)
    # the opening minute
    opening, opening_baseline, opening_rows = measure(_MINUTE)
    mean_decay = tau / _MINUTE * (1 - math.exp(-_MINUTE / tau))
    first_minute = opening_rows & (offset < _MINUTE)
    return {
        "onsale_spike_ratio": _pair(
            1 + whole_rows.sum() / (whole_baseline.sum() * tau) if len(whole) else math.nan,
            1 + (whole_baseline * (whole["spike"].to_numpy() - 1)).sum() / whole_baseline.sum()
            if len(whole)
            else math.nan,
        ),
        "onsale_first_minute_ratio": _pair(
            1 + first_minute.sum() / (opening_baseline.sum() * _MINUTE) if len(opening) else math.nan,
            1 + (opening_baseline * (opening["spike"].to_numpy() - 1)).sum() * mean_decay / opening_baseline.sum()
            if len(opening)
            else math.nan,
        ),
        # the mean of an exponential is its time constant; the configured decay is three of them
        "onsale_spike_decay": _pair(
            3 * float(offset[whole_rows].mean()) if whole_rows.any() else math.nan, config.onsale_spike_decay
        ),
        "onsale_spike_lowest": _pair(
            float(window["spike"].min()) if len(window) else math.nan, config.onsale_spike_min
        ),
        "onsale_spike_highest": _pair(
            float(window["spike"].max()) if len(window) else math.nan, config.onsale_spike_max
        ),
        "waiting_room_release_spacing": _pair(_waiting_room_ratio(workload), 1.0),
        "queued_sessions": _pair(float(sessions["queued"].sum()), math.nan),
    }


def _waiting_room_ratio(workload: Workload) -> float:
    """The closest two releases of one waiting room came, in units of its release interval (at least 1)."""
    sessions, plan = workload.sessions, workload.event_plan
    queued = sessions.loc[sessions["queued"].to_numpy()]
    if queued.empty:
        return math.nan
    rate = plan.set_index("event_id")["waiting_room_release_per_minute"]
    closest = math.inf
    started = _seconds(workload, queued["started_at"])
    event_ids = queued["event_id"].astype(str).to_numpy()
    for event_id in np.unique(event_ids).tolist():
        times = np.sort(started[event_ids == event_id])
        if len(times) > 1:
            closest = min(closest, float(np.diff(times).min()) * float(rate[event_id]) / _MINUTE)
    return closest


def _diurnal_amplitude(workload: Workload, browse: Any) -> float:
    from origin.cities import REGION_BY_ID

    offsets = {region: round(REGION_BY_ID[region].lon / 15) for region in REGION_BY_ID}
    hours = _seconds(workload, browse["arrived_at"]) / HOUR
    offset = browse["user_region"].astype(str).map(offsets).to_numpy().astype(np.float64)
    local = np.floor((hours + offset) % 24)
    counts = np.bincount(local.astype(np.int64), minlength=24)[:24].astype(np.float64)
    angle = 2 * np.pi * (np.arange(24) + 0.5 - workload.config.diurnal_peak_hour) / 24
    if counts.sum() == 0:
        return math.nan
    return float(2 * abs((counts * np.exp(-1j * angle)).sum()) / counts.sum())


def _dwell(workload: Workload, human_log: Any) -> dict[str, Statistic]:
    config = workload.config
    rows = human_log.loc[human_log["session_id"].to_numpy() >= 0]
    rows = rows.loc[rows["action"].astype(str).to_numpy() != "queue_enter"]
    rows = rows.sort_values(["session_id", "ts"], kind="stable")
    session = rows["session_id"].to_numpy()
    time = _seconds(workload, rows["ts"])
    action = rows["action"].astype(str).to_numpy()
    same = np.zeros(len(rows), dtype=np.bool_)
    same[1:] = session[1:] == session[:-1]
    gap = np.zeros(len(rows))
    gap[1:] = time[1:] - time[:-1]
    expected = {
        "event_view": config.dwell_event_view,
        "item_view": config.dwell_item_view,
        "hold": config.dwell_hold,
        "purchase": config.dwell_purchase,
    }
    result = {}
    for name, median in expected.items():
        gaps = gap[same & (action == name)]
        result[f"dwell_{name}_median"] = _pair(float(np.median(gaps)) if len(gaps) else math.nan, median)
    positive = gap[same & (gap > 0)]
    spread = float(np.log(positive).std()) if len(positive) else math.nan
    result["dwell_event_view_log_sigma"] = _pair(
        float(np.log(np.maximum(gap[same & (action == "event_view")], 1e-3)).std()), config.dwell_sigma
    )
    result["dwell_log_spread_all"] = _pair(spread, math.nan)
    return result
