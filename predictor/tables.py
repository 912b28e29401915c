"""The generated workload as pandas tables: public ids, categoricals and UTC timestamps.

:class:`Tables` turns the generator's internal numbers (event, item, user and
region codes; seconds after the start) into the tables of
:class:`~predictor.workload.Workload`. Ids become pandas categoricals over the
catalog's (or the users') full id list, so a table stays small and its codes
line up with the catalog; times become millisecond UTC timestamps.
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

from predictor.audience import Audience
from predictor.catalogview import CatalogArrays, FloatArray, IntArray
from predictor.demand import DemandModel, Presale
from predictor.funnel import (
    ACTIONS,
    BOT,
    EVENT_VIEW,
    HOLD,
    ITEM_VIEW,
    KINDS,
    PURCHASE,
    REQUEST_ACTIONS,
    SEARCH,
    Actions,
)
from predictor.workload_config import DAY, WorkloadConfig

METHODS: Final = ("GET", "POST")


def pop_of_region(region: str) -> str:
    """The POP that serves a region's users: one POP per region, named after it."""
    return region


class Tables:
    """Turns internal numbers into the public tables (ids, categoricals, UTC timestamps)."""

    def __init__(self, config: WorkloadConfig, catalog: CatalogArrays, audience: Audience) -> None:
        self.config = config
        self.catalog = catalog
        self.audience = audience
        self.base = pd.Timestamp(config.start).tz_convert("UTC")
        self.user_ids = pd.Index(audience.user_ids)
        self.pops = tuple(pop_of_region(region) for region in catalog.regions)

    def times(self, seconds: FloatArray) -> Any:
        """UTC timestamps (millisecond precision) `seconds` after the start; NaN and inf become NaT."""
        finite = np.isfinite(seconds)
        millis = np.where(finite, np.round(np.where(finite, seconds, 0.0) * 1000), 0).astype(np.int64)
        stamps = self.base + pd.to_timedelta(millis, unit="ms")
        return pd.Series(stamps).where(finite).astype("datetime64[ms, UTC]")

    def codes(self, codes: IntArray, categories: tuple[str, ...]) -> Any:
        return pd.Categorical.from_codes(codes, categories=list(categories))

    def event_log(self, actions: Actions, session: IntArray, user: IntArray) -> Any:
        is_search = actions.action == SEARCH
        event = np.where(is_search, -1, actions.event)
        item = np.where(actions.session >= 0, actions.item, -1)
        query_region = np.where(is_search, self.catalog.event_region[np.maximum(actions.event, 0)], -1)
        region = self.audience.region[user]
        return pd.DataFrame(
            {
                "ts": self.times(actions.time),
                "session_id": session,
                "user_id": self.codes(user, self.audience.user_ids),
                "is_bot": self.audience.is_bot[user],
                "action": self.codes(actions.action, ACTIONS),
                "event_id": self.codes(event, self.catalog.event_ids),
                "item_id": self.codes(item, self.catalog.item_ids),
                "query_region": self.codes(query_region, self.catalog.regions),
                "user_region": self.codes(region, self.catalog.regions),
                "pop_id": self.codes(region, self.pops),
            }
        )

    def requests(self, event_log: Any) -> Any:
        """The log's rows that are HTTP requests, with their method and URL."""
        action = event_log["action"].cat.codes.to_numpy()
        rows = np.isin(action, np.array(REQUEST_ACTIONS))
        log = event_log.loc[rows]
        action = action[rows]
        regions, events = len(self.catalog.regions), self.catalog.event_count
        items = len(self.catalog.item_ids)
        urls = (
            *(f"/v1/events?region={region}" for region in self.catalog.regions),
            *(f"/v1/events/{event_id}" for event_id in self.catalog.event_ids),
            *(f"/v1/items/{item_id}" for item_id in self.catalog.item_ids),
            "/v1/holds",
            "/v1/orders",
        )
        url = np.select(
            [action == SEARCH, action == EVENT_VIEW, action == ITEM_VIEW, action == HOLD],
            [
                log["query_region"].cat.codes.to_numpy(),
                regions + log["event_id"].cat.codes.to_numpy(),
                regions + events + log["item_id"].cat.codes.to_numpy(),
                np.full(len(action), regions + events + items),
            ],
            default=regions + events + items + 1,
        ).astype(np.int64)
        method = np.where((action == HOLD) | (action == PURCHASE), 1, 0)
        table = log[["ts", "pop_id", "user_id", "session_id", "is_bot", "event_id"]].reset_index(drop=True)
        table.insert(2, "method", self.codes(method, METHODS))
        table.insert(3, "url", self.codes(url, urls))
        return table

    def sessions(self, **columns: Any) -> Any:
        order = np.argsort(columns["session_id"])
        c = {name: value[order] for name, value in columns.items()}
        region = self.audience.region[c["user"]]
        human = c["kind"] != BOT
        return pd.DataFrame(
            {
                "session_id": c["session_id"],
                "user_id": self.codes(c["user"], self.audience.user_ids),
                "is_bot": ~human,
                "kind": self.codes(c["kind"], KINDS),
                "event_id": self.codes(c["event"], self.catalog.event_ids),
                "user_region": self.codes(region, self.catalog.regions),
                "pop_id": self.codes(region, self.pops),
                "arrived_at": self.times(c["arrival"]),
                "started_at": self.times(c["start"]),
                "ended_at": self.times(c["end"]),
                "queued": c["queued"],
                "queued_seconds": c["start"] - c["arrival"],
                "requests": c["requests"],
                "p_true": c["probability"],
                "viewed_event": c["viewed"],
                "seat_map": c["seat_map"],
                "held": c["held"],
                "purchased": c["purchased"],
            }
        )

    def users(self) -> Any:
        audience, catalog = self.audience, self.catalog
        bots = audience.bots
        artists = np.array([*catalog.artists, ""], dtype=object)
        favourites = artists[np.where(audience.favourites >= 0, audience.favourites, len(catalog.artists))]
        favourite_text = ["|".join(name for name in row if name) for row in favourites.tolist()]
        last = np.concatenate((-audience.last_purchase_age_days * DAY, np.full(bots, -np.inf)))
        table = pd.DataFrame(
            {
                "user_id": list(audience.user_ids),
                "is_bot": audience.is_bot,
                "region": self.codes(audience.region, catalog.regions),
                "pop_id": self.codes(audience.region, self.pops),
                "consent": audience.consent,
                "past_purchases": np.concatenate((audience.past_purchases, np.zeros(bots, dtype=np.int64))),
                "last_purchase_at": self.times(last),
                "past_presale_registrations": np.concatenate(
                    (audience.past_presale_registrations, np.zeros(bots, dtype=np.int64))
                ),
                "favourite_genre": self.codes(
                    np.concatenate((audience.affinity.argmax(axis=1), np.full(bots, -1))).astype(np.int64),
                    catalog.genres,
                ),
                "favourite_artists": [*favourite_text, *([""] * bots)],
            }
        )
        return table.iloc[np.argsort(np.array(audience.user_ids), kind="stable")].reset_index(drop=True)

    def purchase_history(self) -> Any:
        audience, catalog = self.audience, self.catalog
        order = np.lexsort((audience.history_user, audience.history_time))
        return pd.DataFrame(
            {
                "user_id": self.codes(audience.history_user[order], audience.user_ids),
                "purchased_at": self.times(audience.history_time[order]),
                "genre": self.codes(audience.history_genre[order], catalog.genres),
                "artist": self.codes(audience.history_artist[order], catalog.artists),
                "region": self.codes(audience.history_region[order], catalog.regions),
            }
        )

    def presale(self, registrations: Presale) -> Any:
        order = np.lexsort((registrations.user, registrations.registered))
        return pd.DataFrame(
            {
                "event_id": self.codes(registrations.event[order], self.catalog.event_ids),
                "user_id": self.codes(registrations.user[order], self.audience.user_ids),
                "registered_at": self.times(registrations.registered[order]),
                "invited": registrations.invited[order],
                "presale_opens_at": self.times(registrations.opens[order]),
            }
        )

    def event_plan(self, demand: DemandModel, registrations: Presale) -> Any:
        config, catalog = self.config, self.catalog
        onsale = catalog.event_onsale
        in_window = (onsale >= 0) & (onsale < config.window_seconds)
        hot = in_window & (demand.spike >= config.hot_onsale_min_spike)
        has_presale = np.zeros(catalog.event_count, dtype=np.bool_)
        has_presale[registrations.event] = True
        return pd.DataFrame(
            {
                "event_id": list(catalog.event_ids),
                "region": self.codes(catalog.event_region, catalog.regions),
                "genre": self.codes(catalog.event_genre, catalog.genres),
                "artist": self.codes(catalog.event_artist, catalog.artists),
                "rank": catalog.event_rank,
                "popularity": demand.popularity,
                "announced_at": self.times(demand.announce),
                "onsale_at": self.times(onsale),
                "starts_at": self.times(catalog.event_show),
                "expected_browse_sessions": demand.hourly.sum(axis=1),
                "onsale_in_window": in_window,
                "spike": demand.spike,
                "baseline_per_minute": demand.baseline * 60,
                "hot": hot,
                "waiting_room_release_per_minute": np.where(
                    hot, config.waiting_room_release_multiple * demand.baseline * 60, np.nan
                ),
                "presale": has_presale,
                "presale_opens_at": self.times(np.where(has_presale, onsale - config.presale_lead, np.nan)),
            }
        )
