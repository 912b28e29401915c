"""A realistic ticketing workload from one seed, because no public trace exists.

``generate(config, catalog)`` is a pure function: it reads no clock and no
files, and every random draw comes from ``config.seed`` through independent
streams (one per stage, from ``numpy.random.SeedSequence.spawn``), so equal
seeds give equal workloads and changing one stage's draws leaves the others
alone. It works over the origin's demo catalog, so every event and item id in
the output exists there.

The stages, each in its own module:

1. :mod:`predictor.audience` — users, tastes, favourite artists, histories;
2. :mod:`predictor.demand` — hourly demand per event and region (Zipf
   popularity, announcement and fading, home-region share, diurnal cycle),
   on-sale spikes, presales, the waiting room;
3. :mod:`predictor.funnel` — each human session's true purchase probability,
   the funnel it walks and its timed actions;
4. :mod:`predictor.bots` — labelled bot sessions sized from the human traffic.

Here they are put together, and :mod:`predictor.tables` turns them into the
pandas tables of :class:`Workload`, with ids in place of internal numbers. :mod:`predictor.realised` measures the
result and :mod:`predictor.traces` writes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from origin.catalog import Catalog
from predictor.audience import Audience, build_audience, pick_users
from predictor.bots import bot_traffic
from predictor.catalogview import BoolArray, CatalogArrays, FloatArray, IntArray, catalog_arrays
from predictor.demand import (
    HOUR_SECONDS,
    DemandModel,
    Presale,
    browse_arrivals,
    build_demand,
    expected_first_minute_ratio,
    hot_events,
    onsale_events,
    presale,
    spike_arrivals,
    waiting_room_release,
)
from predictor.funnel import (
    BOT,
    BROWSE,
    HOLD,
    ONSALE,
    PRESALE,
    PRESALE_INVITE,
    PRESALE_REGISTER,
    QUEUE_ENTER,
    REQUEST_ACTIONS,
    SEARCH,
    Actions,
    expand_actions,
    run_funnel,
    true_probability,
)
from predictor.tables import Tables, pop_of_region
from predictor.workload_config import WorkloadConfig

__all__ = ["Workload", "WorkloadConfig", "generate", "pop_of_region"]

INVITE_LEAD: Final = 2 * HOUR_SECONDS  # invitations (codes) go out this long before the presale opens
_STREAMS: Final = ("users", "demand", "browse", "spike", "presale", "funnel", "bots")
_ACTION_FIELDS: Final = ("session", "action", "time", "event", "item")


@dataclass(frozen=True, slots=True)
class Workload:
    """The generated tables; times are UTC timestamps, ids are the catalog's and ``usr-…``.

    * ``event_log`` — one row per user action (the training log): ``ts, session_id, user_id, is_bot,
      action, event_id, item_id, query_region, user_region, pop_id``; ``session_id`` is -1 for
      presale registrations and invitations.
    * ``requests`` — the rows of the log that reach a POP: ``ts, pop_id, method, url, user_id,
      session_id, is_bot, event_id``.
    * ``sessions`` — one row per session with its truth: ``p_true`` is the purchase probability at the
      session's start (0 for bots), ``purchased`` what happened.
    * ``users``, ``purchase_history``, ``presale`` — profiles, past purchases, presale registrations.
    * ``event_plan`` — per catalog event: rank, popularity, announcement, on-sale, spike, baseline.
    """

    config: WorkloadConfig
    event_log: Any
    requests: Any
    sessions: Any
    users: Any
    purchase_history: Any
    presale: Any
    event_plan: Any
    expected: dict[str, float]


def generate(config: WorkloadConfig, catalog: Catalog) -> Workload:
    """Generate the workload of `config` over `catalog` (built with ``start=config.start``).

    Raises:
        WorkloadConfigError: a setting is out of range or the rates contradict each other.
        WorkloadError: the catalog has no event that is visible during the window.
    """
    config.validate()
    arrays = catalog_arrays(catalog, config.start)
    rngs = dict(
        zip(
            _STREAMS,
            (np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(len(_STREAMS))),
            strict=True,
        )
    )
    audience = build_audience(config, arrays, rngs["users"])
    demand = build_demand(config, arrays, audience.region_weight, rngs["demand"])

    registrations, event, arrival, user, kind = _human_arrivals(config, arrays, demand, audience, rngs)
    start, queued = _waiting_room(config, arrays, demand, event, kind, arrival)
    probability = true_probability(config, arrays, audience, user, event, kind, arrival)
    funnel = run_funnel(config, probability, rngs["funnel"])
    human = expand_actions(config, arrays, demand, funnel, event, start, rngs["funnel"])
    background, hot, hot_requests = _bot_budgets(config, arrays, demand, human)
    bots = bot_traffic(config, arrays, demand, audience, background, hot, hot_requests, rngs["bots"])

    human_count = len(event)
    session_user = np.concatenate((user, bots.user))
    session_event = np.concatenate((event, bots.event))
    session_kind = np.concatenate((kind, np.full(len(bots.event), BOT, dtype=np.int64)))
    session_arrival = np.concatenate((arrival, bots.start))
    session_start = np.concatenate((start, bots.start))
    # session ids number sessions by arrival, humans and bots together
    chronological = np.argsort(session_arrival, kind="stable")
    session_id = np.empty(len(chronological), dtype=np.int64)
    session_id[chronological] = np.arange(len(chronological), dtype=np.int64)

    actions = _all_actions(human, bots.actions, human_count, queued, event, arrival, registrations)
    row_session = np.where(actions.session >= 0, session_id[np.maximum(actions.session, 0)], -1)
    row_user = np.where(actions.session >= 0, session_user[np.maximum(actions.session, 0)], actions.item)
    tables = Tables(config, arrays, audience)
    event_log = tables.event_log(actions, row_session, row_user)
    requests_count = np.zeros(len(session_id), dtype=np.int64)
    sessioned = (actions.session >= 0) & np.isin(actions.action, np.array(REQUEST_ACTIONS))
    np.add.at(requests_count, actions.session[sessioned], 1)
    sessions = tables.sessions(
        session_id=session_id,
        user=session_user,
        event=session_event,
        kind=session_kind,
        arrival=session_arrival,
        start=session_start,
        probability=np.concatenate((probability, np.zeros(len(bots.event)))),
        viewed=np.concatenate((funnel.viewed_event, np.ones(len(bots.event), dtype=np.bool_))),
        seat_map=np.concatenate((funnel.seat_map, np.zeros(len(bots.event), dtype=np.bool_))),
        held=np.concatenate((funnel.held, _any_per_session(bots.actions, HOLD, len(bots.event)))),
        purchased=np.concatenate((funnel.purchased, np.zeros(len(bots.event), dtype=np.bool_))),
        queued=np.concatenate((queued, np.zeros(len(bots.event), dtype=np.bool_))),
        requests=requests_count,
        end=_session_end(actions, len(session_id), session_start),
    )
    return Workload(
        config=config,
        event_log=event_log,
        requests=tables.requests(event_log),
        sessions=sessions,
        users=tables.users(),
        purchase_history=tables.purchase_history(),
        presale=tables.presale(registrations),
        event_plan=tables.event_plan(demand, registrations),
        expected=_expected(config, arrays, audience, demand),
    )


def _human_arrivals(
    config: WorkloadConfig,
    catalog: CatalogArrays,
    demand: DemandModel,
    audience: Audience,
    rngs: dict[str, np.random.Generator],
) -> tuple[Presale, IntArray, FloatArray, IntArray, IntArray]:
    """Presale registrations, and every human session's event, arrival, user and kind, in arrival order."""
    browse = browse_arrivals(config, demand, rngs["browse"])
    spike = spike_arrivals(config, catalog, demand, rngs["spike"])
    registrations, guests, guest_users = presale(config, catalog, demand, audience, rngs["presale"])
    users = [
        pick_users(audience, config, a.region, catalog.event_genre[a.event], catalog.event_artist[a.event], rngs[name])
        for a, name in ((browse, "browse"), (spike, "spike"))
    ]
    parts = (browse, spike, guests)
    event = np.concatenate([a.event for a in parts])
    arrival = np.concatenate([a.time for a in parts])
    user = np.concatenate([*users, guest_users])
    kind = np.concatenate(
        [np.full(len(a.event), k, dtype=np.int64) for a, k in zip(parts, (BROWSE, ONSALE, PRESALE), strict=True)]
    )
    order = np.argsort(arrival, kind="stable")
    return registrations, event[order], arrival[order], user[order], kind[order]


def _bot_budgets(
    config: WorkloadConfig, catalog: CatalogArrays, demand: DemandModel, human: Actions
) -> tuple[int, IntArray, IntArray]:
    """Bot requests to add: in the background, and per hot on-sale (the events and their budgets).

    Human requests are counted the way :mod:`predictor.realised` measures shares: a request is on-sale
    traffic when its event opened less than ``onsale_window`` earlier (a search names no event).
    """
    in_window = (human.action != SEARCH) & _in_onsale_window(config, catalog, human.event, human.time)
    normal = len(human.action) - int(in_window.sum())
    hot = hot_events(config, catalog, demand)
    hot_human = np.array([int((in_window & (human.event == e)).sum()) for e in hot.tolist()], dtype=np.int64)
    background = round(normal * config.bot_request_share / (1 - config.bot_request_share))
    per_hot = np.round(hot_human * config.hot_onsale_bot_share / (1 - config.hot_onsale_bot_share)).astype(np.int64)
    return background, hot, per_hot


def _waiting_room(
    config: WorkloadConfig,
    catalog: CatalogArrays,
    demand: DemandModel,
    event: IntArray,
    kind: IntArray,
    arrival: FloatArray,
) -> tuple[FloatArray, BoolArray]:
    """Session starts after the waiting rooms of hot on-sales, and which sessions waited in one."""
    start = arrival.copy()
    queued = np.zeros(len(arrival), dtype=np.bool_)
    for code in hot_events(config, catalog, demand).tolist():
        opens = catalog.event_onsale[code]
        rows = np.flatnonzero(
            (event == code) & (kind != PRESALE) & (arrival >= opens) & (arrival < opens + config.waiting_room_open)
        )  # rows are in arrival order: sessions were sorted by arrival
        interval = 1 / (config.waiting_room_release_multiple * demand.baseline[code])
        start[rows] = waiting_room_release(arrival[rows], interval)
        queued[rows] = True
    return start, queued


def _in_onsale_window(config: WorkloadConfig, catalog: CatalogArrays, event: IntArray, time: FloatArray) -> BoolArray:
    opens = catalog.event_onsale[np.maximum(event, 0)]
    inside: BoolArray = (event >= 0) & (time >= opens) & (time < opens + config.onsale_window)
    return inside


def _all_actions(
    human: Actions,
    bot: Actions,
    human_sessions: int,
    queued: BoolArray,
    event: IntArray,
    arrival: FloatArray,
    registrations: Presale,
) -> Actions:
    """Every row: human actions, bot actions, queue entries, presale registrations and invitations.

    Rows without a session (registrations, invitations) carry session -1 and the *user* in ``item``
    (they have no item), which :class:`~predictor.tables.Tables` reads back.
    """
    waiting = np.flatnonzero(queued)
    none = np.full(len(waiting), -1, dtype=np.int64)
    queue_rows = Actions(
        waiting, np.full(len(waiting), QUEUE_ENTER, dtype=np.int64), arrival[waiting], event[waiting], none
    )
    invite_time = registrations.opens - INVITE_LEAD
    registered = registrations.registered >= 0  # registrations before the window are history, not log rows
    invited = registrations.invited & (invite_time >= 0)
    presale_rows = [
        Actions(
            np.full(int(rows.sum()), -1, dtype=np.int64),
            np.full(int(rows.sum()), code, dtype=np.int64),
            times[rows],
            registrations.event[rows],
            registrations.user[rows],
        )
        for rows, code, times in (
            (registered, PRESALE_REGISTER, registrations.registered),
            (invited, PRESALE_INVITE, invite_time),
        )
    ]
    bot_rows = Actions(bot.session + human_sessions, bot.action, bot.time, bot.event, bot.item)
    parts = (human, bot_rows, queue_rows, *presale_rows)
    columns = [np.concatenate([getattr(part, name) for part in parts]) for name in _ACTION_FIELDS]
    order = np.argsort(columns[2], kind="stable")
    return Actions(*(column[order] for column in columns))


def _any_per_session(actions: Actions, code: int, sessions: int) -> BoolArray:
    found = np.zeros(sessions, dtype=np.bool_)
    found[actions.session[actions.action == code]] = True
    return found


def _session_end(actions: Actions, sessions: int, start: FloatArray) -> FloatArray:
    end = start.copy()
    rows = actions.session >= 0
    np.maximum.at(end, actions.session[rows], actions.time[rows])
    return end


def _expected(
    config: WorkloadConfig, catalog: CatalogArrays, audience: Audience, demand: DemandModel
) -> dict[str, float]:
    """What the model promises, computed exactly, for the statistics to be compared against."""
    home = catalog.event_region
    home_part = demand.share[np.arange(catalog.event_count), home][:, None] * demand.diurnal[home]
    reach = demand.share @ demand.diurnal
    with np.errstate(invalid="ignore", divide="ignore"):
        home_sessions = np.where(reach > 0, demand.hourly * home_part / reach, 0.0).sum()
    events = onsale_events(config, catalog)
    events = events[catalog.event_onsale[events] <= config.window_seconds - 60]
    baseline = demand.baseline[events]
    ratio = expected_first_minute_ratio(config, demand.spike[events])
    return {
        "home_region_share": float(home_sessions / demand.hourly.sum()),
        "onsale_first_minute_ratio": float((baseline * ratio).sum() / baseline.sum()) if len(events) else float("nan"),
        "view_to_cart_rate": config.view_to_cart_rate,
        "hold_rate": config.cart_session_rate,
        "bot_accounts": float(audience.bots),
    }
