"""Bot traffic: labelled, funnel-skipping, availability-hammering sessions.

How it works. Bots are sized from the human traffic they sit beside, so the
shares come out as configured whatever the workload's size:

* **Background bots** send ``bot_request_share / (1 - bot_request_share)``
  requests per human request outside on-sales. Their sessions start uniformly
  around the clock (bots do not sleep) and watch events in proportion to the
  hour's demand.
* **On-sale bots** add, for each hot on-sale, ``hot_onsale_bot_share / (1 -
  hot_onsale_bot_share)`` requests per human request of that on-sale's window,
  arriving like the spike (exponential decay from the opening). They skip the
  waiting room.

A bot session opens the event's page, then polls item availability (and now
and then the page again), trying a hold in ``bot_hold_share`` of its requests,
at short, regular intervals. It never orders. Session lengths are drawn so the
requests add up to the budget exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

from predictor.audience import Audience
from predictor.catalogview import BoolArray, CatalogArrays, FloatArray, IntArray
from predictor.demand import DemandModel, events_in_demand
from predictor.funnel import EVENT_VIEW, HOLD, ITEM_VIEW, Actions
from predictor.workload_config import WorkloadConfig

ITEM_POLL_SHARE: Final = 0.8  # of a bot's non-hold requests: availability; the rest re-read the event page


@dataclass(frozen=True, slots=True)
class BotTraffic:
    user: IntArray  # per bot session: the account (internal user number)
    event: IntArray
    start: FloatArray
    onsale_wave: BoolArray  # sent by the wave of a hot on-sale
    actions: Actions  # `session` indexes this object's sessions


def bot_traffic(
    config: WorkloadConfig,
    catalog: CatalogArrays,
    demand: DemandModel,
    audience: Audience,
    background_requests: int,
    hot_events: IntArray,
    hot_requests: IntArray,
    rng: np.random.Generator,
) -> BotTraffic:
    """Bot sessions and their requests: `background_requests` in all, plus `hot_requests[i]` for `hot_events[i]`."""
    sessions = _session_count(background_requests, config.bot_requests_per_session)
    background_start = rng.uniform(0.0, config.window_seconds, sessions)
    background_event = events_in_demand(demand, background_start, rng.integers(0, catalog.event_count, sessions), rng)
    lengths = [_lengths(background_requests, sessions, rng)]
    starts, events, waves = [background_start], [background_event], [np.zeros(sessions, dtype=np.bool_)]
    tau = config.onsale_spike_time_constant
    kept = 1 - np.exp(-config.onsale_window / tau)
    for event, budget in zip(hot_events.tolist(), hot_requests.tolist(), strict=True):
        count = _session_count(budget, config.bot_requests_per_session)
        offset = -tau * np.log1p(-rng.random(count) * kept)
        starts.append(catalog.event_onsale[event] + offset)
        events.append(np.full(count, event, dtype=np.int64))
        waves.append(np.ones(count, dtype=np.bool_))
        lengths.append(_lengths(budget, count, rng))
    start = np.concatenate(starts)
    event_of = np.concatenate(events).astype(np.int64)
    length = np.concatenate(lengths)
    user = audience.humans + rng.integers(0, audience.bots, len(start))
    return BotTraffic(
        user, event_of, start, np.concatenate(waves), _actions(config, catalog, event_of, start, length, rng)
    )


def _actions(
    config: WorkloadConfig,
    catalog: CatalogArrays,
    event: IntArray,
    start: FloatArray,
    length: IntArray,
    rng: np.random.Generator,
) -> Actions:
    session = np.repeat(np.arange(len(event), dtype=np.int64), length)
    first = np.ones(len(session), dtype=np.bool_)
    first[1:] = session[1:] != session[:-1]
    draw = rng.random(len(session))
    poll = rng.random(len(session)) < ITEM_POLL_SHARE
    action = np.where(draw < config.bot_hold_share, HOLD, np.where(poll, ITEM_VIEW, EVENT_VIEW))
    action[first] = EVENT_VIEW
    row_event = event[session]
    item = catalog.item_start[row_event] + np.floor(rng.random(len(session)) * catalog.item_count[row_event]).astype(
        np.int64
    )
    item = np.where(action == EVENT_VIEW, -1, item)
    gap = config.bot_request_interval * np.exp(config.bot_interval_sigma * rng.standard_normal(len(session)))
    gap[first] = 0.0
    elapsed = np.cumsum(gap)
    session_first = np.flatnonzero(first)
    elapsed -= np.repeat(elapsed[session_first], length[length > 0])
    return Actions(session, action.astype(np.int64), start[session] + elapsed, row_event, item)


def _session_count(requests: int, per_session: float) -> int:
    return 0 if requests <= 0 else max(1, round(requests / per_session))


def _lengths(requests: int, sessions: int, rng: np.random.Generator) -> IntArray:
    """`sessions` lengths of at least 1 that add up to `requests` exactly."""
    if sessions == 0:
        return np.zeros(0, dtype=np.int64)
    extra = rng.multinomial(requests - sessions, np.full(sessions, 1 / sessions))
    lengths: IntArray = (1 + extra).astype(np.int64)
    return lengths
