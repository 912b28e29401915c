"""Human sessions: their true purchase probability, the funnel they walk, and its actions.

How it works:

1. **Truth.** A session's true purchase probability is
   ``sigmoid(intercept + sum of weight * feature)`` over what is known when it
   starts: the user's affinity to the event's genre, whether they are a fan of
   its artist, their purchase history and its recency, whether the event is in
   their region, the event's popularity, days to the show, whether they came
   for the on-sale, and their hidden propensity. Two intercepts are solved by
   bisection: presale sessions average ``presale_purchase_rate``, and all
   human sessions together average ``session_purchase_rate``.
2. **Funnel.** A session buys with its true probability. The other steps
   nest (every purchase had a hold, every hold a seat map, every seat map an
   event page), and the chance of each step for sessions that did not reach
   the next one is set from the realised counts so the shares land on
   ``cart_purchase_rate``, ``session_seat_map_rate`` and
   ``session_event_view_rate``. Sessions that never open their event's page
   bounce after a search; the others search with ``search_rate``.
3. **Actions.** A session becomes rows in funnel order: search, pages of
   other events, the event's page, seat-map look-ups (one per item viewed),
   hold, purchase. Each row after the first waits a log-normal dwell.

The probability is the one at the session's start: a model that reads the
session's own later actions (a hold) predicts something else, and can beat it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from predictor.audience import Audience, is_fan
from predictor.catalogview import BoolArray, CatalogArrays, FloatArray, IntArray
from predictor.demand import DemandModel, events_in_demand
from predictor.errors import WorkloadConfigError
from predictor.workload_config import DAY, WorkloadConfig

# Action codes, in funnel order for the first five.
SEARCH: Final = 0
EVENT_VIEW: Final = 1
ITEM_VIEW: Final = 2
HOLD: Final = 3
PURCHASE: Final = 4
PRESALE_REGISTER: Final = 5
PRESALE_INVITE: Final = 6
QUEUE_ENTER: Final = 7
ACTIONS: Final = (
    "search", "event_view", "item_view", "hold", "purchase", "presale_register", "presale_invite", "queue_enter",
)  # fmt: skip
REQUEST_ACTIONS: Final = (SEARCH, EVENT_VIEW, ITEM_VIEW, HOLD, PURCHASE)  # the ones that reach the edge as requests

# Session kinds.
BROWSE: Final = 0
ONSALE: Final = 1
PRESALE: Final = 2
BOT: Final = 3
KINDS: Final = ("browse", "onsale", "presale", "bot")

AFFINITY_CLIP: Final = 3.0  # log relative affinity beyond e**3 either way adds nothing: taste saturates
_BISECTION_STEPS: Final = 60  # halves a 60-wide bracket to ~5e-17: below float resolution


@dataclass(frozen=True, slots=True)
class Funnel:
    """How far each human session went."""

    purchased: BoolArray
    held: BoolArray
    seat_map: BoolArray
    viewed_event: BoolArray
    searched: BoolArray
    other_views: IntArray
    items_viewed: IntArray


@dataclass(frozen=True, slots=True)
class Actions:
    """Rows of the event log before ids: one per action, sorted by session and then by time."""

    session: IntArray
    action: IntArray
    time: FloatArray
    event: IntArray  # -1 when none
    item: IntArray  # -1 when none


def true_probability(
    config: WorkloadConfig,
    catalog: CatalogArrays,
    audience: Audience,
    user: IntArray,
    event: IntArray,
    kind: IntArray,
    time: FloatArray,
) -> FloatArray:
    """Each human session's purchase probability at its start, calibrated to the configured rates.

    Raises:
        WorkloadConfigError: the presale sessions alone buy more than ``session_purchase_rate`` allows.
    """
    logit = _score(config, catalog, audience, user, event, kind, time)
    presale = kind == PRESALE
    probability = np.empty(len(user))
    target = config.session_purchase_rate * len(user)
    if presale.any():
        presale_intercept = _solve_intercept(logit[presale], config.presale_purchase_rate * presale.sum())
        probability[presale] = _sigmoid(presale_intercept + logit[presale])
        target -= probability[presale].sum()
    rest = ~presale
    if rest.any():
        if target <= 0:
            raise WorkloadConfigError(
                "session_purchase_rate",
                "presale purchases alone exceed it: lower presale_registration_ratio or raise presale_min_spike",
            )
        probability[rest] = _sigmoid(_solve_intercept(logit[rest], target) + logit[rest])
    return probability


def run_funnel(config: WorkloadConfig, probability: FloatArray, rng: np.random.Generator) -> Funnel:
    """Walk every session down the funnel; see the module docstring for how the step chances are set."""
    count = len(probability)
    purchased = rng.random(count) < probability
    held = purchased | _fill(purchased, purchased.sum() / config.cart_purchase_rate, rng)
    seat_map = held | _fill(held, config.session_seat_map_rate * count, rng)
    viewed = seat_map | _fill(seat_map, config.session_event_view_rate * count, rng)
    searched = ~viewed | (rng.random(count) < config.search_rate)
    other_views = rng.poisson(config.extra_event_views_mean, count).astype(np.int64)
    items = np.where(seat_map, 1 + rng.poisson(config.items_viewed_mean - 1, count), 0).astype(np.int64)
    return Funnel(purchased, held, seat_map, viewed, searched, other_views, items)


def expand_actions(
    config: WorkloadConfig,
    catalog: CatalogArrays,
    demand: DemandModel,
    funnel: Funnel,
    event: IntArray,
    start: FloatArray,
    rng: np.random.Generator,
) -> Actions:
    """The rows of every human session, in funnel order, timed by log-normal dwells from `start`."""
    count = len(event)
    segments = np.stack(
        (
            funnel.searched.astype(np.int64),
            funnel.other_views,
            funnel.viewed_event.astype(np.int64),
            funnel.items_viewed,
            funnel.held.astype(np.int64),
            funnel.purchased.astype(np.int64),
        ),
        axis=1,
    )
    segment_action = np.array([SEARCH, EVENT_VIEW, EVENT_VIEW, ITEM_VIEW, HOLD, PURCHASE], dtype=np.int64)
    flat = segments.ravel()
    session = np.repeat(np.repeat(np.arange(count, dtype=np.int64), segments.shape[1]), flat)
    segment = np.repeat(np.tile(np.arange(segments.shape[1], dtype=np.int64), count), flat)
    # rows come out grouped by session and in segment order already: np.repeat keeps the order
    action = segment_action[segment]
    row_event = event[session].copy()

    others = np.flatnonzero(segment == 1)
    row_event[others] = events_in_demand(demand, start[session[others]], event[session[others]], rng)
    items = np.full(len(session), -1, dtype=np.int64)
    looks = np.flatnonzero(action == ITEM_VIEW)
    looked_event = row_event[looks]
    items[looks] = catalog.item_start[looked_event] + np.floor(
        rng.random(len(looks)) * catalog.item_count[looked_event]
    ).astype(np.int64)
    holds = np.flatnonzero(action == HOLD)
    items[holds] = items[holds - 1]  # the hold takes the last item looked at
    purchases = np.flatnonzero(action == PURCHASE)
    items[purchases] = items[purchases - 1]  # the order is for what was held

    # a search is always a session's first action, which waits for nothing: its median is never used
    medians = np.array([0.0, config.dwell_event_view, config.dwell_item_view, config.dwell_hold, config.dwell_purchase])
    dwell = medians[action] * np.exp(config.dwell_sigma * rng.standard_normal(len(action)))
    first = np.ones(len(session), dtype=np.bool_)
    first[1:] = session[1:] != session[:-1]
    dwell[first] = 0.0
    elapsed = np.cumsum(dwell)
    session_first = np.flatnonzero(first)
    elapsed -= np.repeat(elapsed[session_first], np.diff(np.append(session_first, len(session))))
    time = start[session] + elapsed
    return Actions(session, action, time, np.where(action == SEARCH, event[session], row_event), items)


def _score(
    config: WorkloadConfig,
    catalog: CatalogArrays,
    audience: Audience,
    user: IntArray,
    event: IntArray,
    kind: IntArray,
    time: FloatArray,
) -> FloatArray:
    genres = len(catalog.genres)
    affinity = np.log(audience.affinity[user, catalog.event_genre[event]] * genres)
    log_popularity = np.log(catalog.zipf_weights(config.zipf_exponent))
    popularity = (log_popularity - log_popularity.mean()) / max(float(log_popularity.std()), 1e-9)
    days_to_show = np.maximum(catalog.event_show[event] - time, 0.0) / DAY
    score: FloatArray = (
        config.weight_genre_affinity * np.clip(affinity, -AFFINITY_CLIP, AFFINITY_CLIP)
        + config.weight_artist_fan * is_fan(audience, user, catalog.event_artist[event])
        + config.weight_history * np.log1p(audience.past_purchases[user])
        + config.weight_recency * np.exp(-audience.last_purchase_age_days[user] / config.recency_scale_days)
        + config.weight_region_match * (audience.region[user] == catalog.event_region[event])
        + config.weight_popularity * popularity[event]
        + config.weight_onsale * (kind == ONSALE)
        - config.weight_days_to_show * np.log1p(days_to_show / 30)
        + config.weight_propensity * audience.propensity[user]
    )
    return score


def _sigmoid(values: FloatArray) -> FloatArray:
    result: FloatArray = 0.5 * (1 + np.tanh(values / 2))  # tanh form: no overflow warning for large |x|
    return result


def _solve_intercept(logit: FloatArray, expected_total: float) -> float:
    """The intercept b with sum(sigmoid(b + logit)) == expected_total (monotone in b: bisection)."""
    low, high = -30.0, 30.0
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        if _sigmoid(middle + logit).sum() < expected_total:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def _fill(reached: BoolArray, wanted: float, rng: np.random.Generator) -> BoolArray:
    """Draw the sessions that did not get further so that about `wanted` in all reach this step."""
    remaining = len(reached) - int(reached.sum())
    chance = 0.0 if remaining == 0 else min(1.0, max(0.0, (wanted - reached.sum()) / remaining))
    drawn: BoolArray = ~reached & (rng.random(len(reached)) < chance)
    return drawn
