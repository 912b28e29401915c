"""When sessions arrive, for which event and from which region.

How it works. Time is cut into hours; demand for event ``e`` from region
``g`` in hour ``h`` is

    scale * popularity[e] * interest[e, h] * share[e, g] * diurnal[g, h]

* ``popularity`` is Zipf over the catalog's popularity ranks;
* ``interest`` is the event's life: nothing before its announcement,
  ``announced_interest`` until the on-sale, then 1 fading exponentially to
  ``faded_interest``, nothing once the show has started;
* ``share`` puts ``home_region_share`` of the demand in the event's region and
  spreads the rest over the others by their size;
* ``diurnal`` is ``1 + A cos(2 pi (local hour - peak) / 24)`` at the hour's
  midpoint in the region's solar time; it averages to 1 over a day, so over
  whole days it moves demand between hours and never between regions;
* ``scale`` makes the expected number of browsing sessions
  ``sessions_per_day * days``, and exactly that many are drawn.

On-sales add a spike on top. The baseline is what the field's "4x to 100x"
is measured against: the normal browsing rate of the event's home region (its
POP's traffic) at the opening, and at the opening the on-sale adds ``spike -
1`` baselines of arrivals for the event, decaying as ``exp(-t / tau)``. (An
event's own browsing is a sliver of its region's, so "spike times the event's
own rate" would leave even a 100x on-sale invisible at the POP.) The spike
grows with the event's popularity percentile ``p`` (1 for the catalog's most
popular event) as ``min * (max / min) ** (p ** skew)``, with some log-normal
jitter: most on-sales are small, the top tenth of events are hot. Hot on-sales queue their arrivals in a waiting
room (:func:`waiting_room_release`) and popular ones hold a presale for
registered, invited fans first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np

from ops.settings import HOUR
from predictor.audience import Audience, pick_users
from predictor.catalogview import BoolArray, CatalogArrays, FloatArray, IntArray
from predictor.errors import WorkloadError
from predictor.workload_config import DAY, WorkloadConfig

HOUR_SECONDS: Final = HOUR
PRESALE_REGISTRATION_WINDOW: Final = 30 * DAY  # fans register from the announcement, at most this long ahead


@dataclass(frozen=True, slots=True)
class DemandModel:
    hours: int
    popularity: FloatArray  # per event, sums to 1
    announce: FloatArray  # per event, seconds after the start
    share: FloatArray  # events x regions: where an event's demand comes from
    diurnal: FloatArray  # regions x hours
    hourly: FloatArray  # events x hours: expected browsing sessions in the hour
    spike: FloatArray  # per event: the opening arrival rate over the baseline
    baseline: FloatArray  # per event: its home region's browsing sessions per second at the on-sale (NaN: far off)

    def regions_at(self, event: IntArray, hour: IntArray) -> FloatArray:
        """Rows of region weights for sessions of `event` in `hour` (clipped to the window's hours)."""
        weights: FloatArray = self.share[event] * self.diurnal[:, np.clip(hour, 0, self.hours - 1)].T
        return weights


@dataclass(frozen=True, slots=True)
class Arrivals:
    """Sessions before the funnel: who, for which event, from where and when."""

    event: IntArray
    region: IntArray
    time: FloatArray


@dataclass(frozen=True, slots=True)
class Presale:
    event: IntArray  # per registration
    user: IntArray
    registered: FloatArray  # may be before the window
    invited: BoolArray
    opens: FloatArray  # per registration: the presale's opening


def build_demand(
    config: WorkloadConfig, catalog: CatalogArrays, region_weight: FloatArray, rng: np.random.Generator
) -> DemandModel:
    """The hourly demand of every event and its on-sale spike."""
    hours = config.days * 24
    popularity = catalog.zipf_weights(config.zipf_exponent)
    lead = rng.uniform(config.announce_lead_min, config.announce_lead_max, catalog.event_count)
    announce = catalog.event_onsale - lead
    midpoints: FloatArray = (np.arange(hours, dtype=np.float64) + 0.5) * HOUR_SECONDS
    share = _region_share(config, catalog, region_weight)
    diurnal = diurnal_factor(config, catalog.region_utc_offset_hours, midpoints)
    interest = interest_level(config, announce, catalog.event_onsale, catalog.event_show, midpoints)
    raw = popularity[:, None] * interest * (share @ diurnal)
    total = raw.sum()
    if total <= 0:
        raise WorkloadError("no event of the catalog is announced and before its show during the window")
    scale = config.sessions_per_day * config.days / total
    spike = _spikes(config, catalog.event_rank, rng)
    baseline = np.full(catalog.event_count, np.nan)
    # On-sales the window can see (their presale may open in it): the home region's browsing rate at the
    # midpoint of the on-sale's first hour, the moment the hourly sampling uses for that hour.
    near = np.flatnonzero(
        (catalog.event_onsale >= 0) & (catalog.event_onsale < config.window_seconds + config.presale_lead)
    )
    if len(near):
        moment = catalog.event_onsale[near] + HOUR_SECONDS / 2
        level = interest_level(config, announce, catalog.event_onsale, catalog.event_show, moment[None, :])
        home = catalog.event_region[near]
        demand_from_home = (popularity[:, None] * level * share[:, home]).sum(axis=0)
        local = diurnal_factor(config, catalog.region_utc_offset_hours, moment)[home, np.arange(len(near))]
        baseline[near] = scale * demand_from_home * local / HOUR_SECONDS
    return DemandModel(hours, popularity, announce, share, diurnal, scale * raw, spike, baseline)


def diurnal_factor(config: WorkloadConfig, utc_offset_hours: IntArray, times: FloatArray) -> FloatArray:
    """Regions x times: ``1 + A cos(2 pi (local hour - peak) / 24)``."""
    local_hour = (times[None, :] / HOUR_SECONDS + utc_offset_hours[:, None]) % 24
    factor: FloatArray = 1 + config.diurnal_amplitude * np.cos(2 * np.pi * (local_hour - config.diurnal_peak_hour) / 24)
    return factor


def interest_level(
    config: WorkloadConfig, announce: FloatArray, onsale: FloatArray, show: FloatArray, times: FloatArray
) -> FloatArray:
    """Events x times (or broadcast): the event's demand relative to just after its on-sale."""
    announce, onsale, show = announce[:, None], onsale[:, None], show[:, None]
    faded = config.faded_interest + (1 - config.faded_interest) * np.exp(
        -np.maximum(times - onsale, 0.0) / config.interest_fade
    )
    level = np.where(times < onsale, config.announced_interest, faded)
    result: FloatArray = np.where((times < announce) | (times >= show), 0.0, level)
    return result


def onsale_events(config: WorkloadConfig, catalog: CatalogArrays) -> IntArray:
    """Events whose general on-sale opens inside the window."""
    onsale = catalog.event_onsale
    return np.flatnonzero((onsale >= 0) & (onsale < config.window_seconds)).astype(np.int64)


def hot_events(config: WorkloadConfig, catalog: CatalogArrays, demand: DemandModel) -> IntArray:
    """On-sales in the window that are hot: they open a waiting room and draw extra bots."""
    events = onsale_events(config, catalog)
    return events[demand.spike[events] >= config.hot_onsale_min_spike]


def browse_arrivals(config: WorkloadConfig, demand: DemandModel, rng: np.random.Generator) -> Arrivals:
    """Exactly ``sessions_per_day * days`` browsing sessions drawn from the hourly demand."""
    count = config.sessions_per_day * config.days
    cell = _draw_cells(demand.hourly.ravel(), count, rng)
    event, hour = np.divmod(cell, demand.hours)
    region = _draw_rows(demand.regions_at(event, hour), rng)
    time = (hour + rng.random(count)) * HOUR_SECONDS
    return Arrivals(event.astype(np.int64), region, time)


def spike_arrivals(
    config: WorkloadConfig, catalog: CatalogArrays, demand: DemandModel, rng: np.random.Generator
) -> Arrivals:
    """The extra sessions of every on-sale in the window: Poisson counts, exponentially decaying arrivals."""
    events = onsale_events(config, catalog)
    tau = config.onsale_spike_time_constant
    room = config.window_seconds - catalog.event_onsale[events]
    kept = 1 - np.exp(-room / tau)  # share of the decay that falls inside the window
    expected = demand.baseline[events] * (demand.spike[events] - 1) * tau * kept
    counts = rng.poisson(expected)
    event = np.repeat(events, counts)
    offset = -tau * np.log1p(-rng.random(len(event)) * np.repeat(kept, counts))
    time = catalog.event_onsale[event] + offset
    hour = np.floor(catalog.event_onsale[event] / HOUR_SECONDS).astype(np.int64)
    region = _draw_rows(demand.regions_at(event, hour), rng)
    return Arrivals(event, region, time)


def presale(
    config: WorkloadConfig,
    catalog: CatalogArrays,
    demand: DemandModel,
    audience: Audience,
    rng: np.random.Generator,
) -> tuple[Presale, Arrivals, IntArray]:
    """Registrations and invitations for presales opening in the window, and the invitees' sessions.

    Returns the registrations, the invitees' session arrivals and the user behind each arrival.
    """
    opens = catalog.event_onsale - config.presale_lead
    events = np.flatnonzero(
        (demand.spike >= config.presale_min_spike) & (opens >= 0) & (opens < config.window_seconds)
    ).astype(np.int64)
    expected = config.presale_registration_ratio * demand.baseline[events] * (demand.spike[events] - 1)
    counts = rng.poisson(expected * config.onsale_spike_time_constant)
    event = np.repeat(events, counts)
    region = _draw_rows(demand.share[event], rng)
    user = pick_users(audience, config, region, catalog.event_genre[event], catalog.event_artist[event], rng)
    pairs = np.unique(np.stack((event, user), axis=1), axis=0)  # one registration per fan and event
    event, user = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
    registration_start = np.maximum(demand.announce[event], opens[event] - PRESALE_REGISTRATION_WINDOW)
    registered = rng.uniform(registration_start, opens[event])
    invited = rng.random(len(event)) < config.presale_invite_rate
    guest_event, guest = event[invited], user[invited]
    closes = np.minimum(catalog.event_onsale[guest_event], config.window_seconds) - opens[guest_event]
    tau = config.presale_arrival_time_constant
    kept = 1 - np.exp(-closes / tau)
    arrival = opens[guest_event] - tau * np.log1p(-rng.random(len(guest)) * kept)
    registrations = Presale(event, user, registered, invited, opens[event])
    arrivals = Arrivals(guest_event, audience.region[guest], arrival)
    return registrations, arrivals, guest


def waiting_room_release(arrival: FloatArray, interval: float) -> FloatArray:
    """Release times of a first-come-first-released queue letting one visitor through per `interval` seconds.

    `arrival` must be sorted. The i-th visitor leaves at ``max(arrival[i],
    release[i - 1] + interval)``; unrolled, ``release[i] = i * interval +
    max over j <= i of (arrival[j] - j * interval)``, a running maximum.
    """
    steps: FloatArray = np.arange(len(arrival), dtype=np.float64) * interval
    release: FloatArray = steps + np.maximum.accumulate(arrival - steps)
    return release


def events_in_demand(demand: DemandModel, time: FloatArray, fallback: IntArray, rng: np.random.Generator) -> IntArray:
    """An event for each moment, drawn from that hour's demand (`fallback` when nothing is on)."""
    hour = np.clip(np.floor(time / HOUR_SECONDS).astype(np.int64), 0, demand.hours - 1)
    chosen = fallback.copy()
    uniform = rng.random(len(time))
    for value in np.unique(hour).tolist():
        rows = np.flatnonzero(hour == value)
        cumulative = np.cumsum(demand.hourly[:, value])
        if cumulative[-1] <= 0:
            continue
        picked = np.searchsorted(cumulative, uniform[rows] * cumulative[-1], side="right")
        chosen[rows] = np.minimum(picked, len(cumulative) - 1)
    return chosen


def _region_share(config: WorkloadConfig, catalog: CatalogArrays, region_weight: FloatArray) -> FloatArray:
    home = catalog.event_region
    away = np.broadcast_to(region_weight, (catalog.event_count, len(region_weight))).copy()
    away[np.arange(catalog.event_count), home] = 0.0
    away *= (1 - config.home_region_share) / away.sum(axis=1, keepdims=True)
    away[np.arange(catalog.event_count), home] = config.home_region_share
    return away


def _spikes(config: WorkloadConfig, rank: IntArray, rng: np.random.Generator) -> FloatArray:
    """``min * (max / min) ** (percentile ** skew)``, jittered, clipped to the configured range.

    The percentile is 1 for the catalog's most popular event and 0 for its least.
    """
    percentile = 1 - (rank - 1) / max(len(rank) - 1, 1)
    position = percentile**config.onsale_spike_skew
    ratio = config.onsale_spike_max / config.onsale_spike_min
    jitter = np.exp(config.onsale_spike_jitter * rng.standard_normal(len(rank)))
    spike: FloatArray = np.clip(
        config.onsale_spike_min * ratio**position * jitter, config.onsale_spike_min, config.onsale_spike_max
    )
    return spike


def _draw_cells(weights: FloatArray, count: int, rng: np.random.Generator) -> IntArray:
    cumulative = np.cumsum(weights)
    drawn: IntArray = np.minimum(
        np.searchsorted(cumulative, rng.random(count) * cumulative[-1], side="right"), len(weights) - 1
    ).astype(np.int64)
    return drawn


def _draw_rows(weights: FloatArray, rng: np.random.Generator) -> IntArray:
    """One column per row of non-negative `weights`, in proportion to them."""
    if weights.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    cumulative = np.cumsum(weights, axis=1)
    threshold = rng.random(weights.shape[0]) * cumulative[:, -1]
    drawn: IntArray = np.minimum((cumulative <= threshold[:, None]).sum(axis=1), weights.shape[1] - 1).astype(np.int64)
    return drawn


def expected_first_minute_ratio(config: WorkloadConfig, spike: FloatArray) -> FloatArray:
    """The home region's arrivals in an on-sale's first minute over a baseline minute: 1 + (m - 1) * mean decay."""
    tau = config.onsale_spike_time_constant
    mean_decay = tau / 60 * (1 - math.exp(-60 / tau))
    ratio: FloatArray = 1 + (spike - 1) * mean_decay
    return ratio
