"""Purchase-model features: one row per (user, event, cut-off), from data strictly before the cut-off.

How it works. Every feature is built in two steps shared by the batch and the
online form, so the two cannot drift apart:

1. **Raw counters** (:data:`COUNTERS`): counts of a user's, a user-event
   pair's or an event's actions before the cut-off, either since the
   beginning or in a sliding window, sometimes with the time of the last one.
   The batch form (:func:`batch_raw`) computes them for many rows at once with
   ``merge_asof`` over the time-sorted log (``allow_exact_matches=False``: a
   row at the cut-off's own millisecond is not seen, so a session's first
   action never describes the session); the online form
   (:class:`predictor.online.OnlineFeatures`) keeps the same counters in a
   small per-key state updated event by event.
2. **Derivation** (:func:`derive`): the raw counters, the user's profile and
   the catalog's facts about the event become the model's columns
   (:data:`FEATURES`), vectorised over a frame.

Times are integer milliseconds since the Unix epoch everywhere, so "before"
is exact. The log's rows are streams (:data:`ACTIVITY`, :data:`PURCHASES`,
:data:`PRESALE`): past purchases (the profile's history) and in-window
purchases form one purchase stream, so a purchase counts from the moment it
happened and never earlier.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

from predictor.errors import PredictorError

MS_PER_SECOND: Final = 1000
MINUTE_MS: Final = 60 * MS_PER_SECOND
HOUR_MS: Final = 60 * MINUTE_MS
DAY_MS: Final = 24 * HOUR_MS
FAST_GAP_MS: Final = 3 * MS_PER_SECOND  # humans read for ~25 s between pages (median dwell); bots poll every ~1.5 s

# Streams: which rows a counter reads.
ACTIVITY: Final = "activity"  # a user's requests inside sessions: search, pages, seat maps, holds, orders
PURCHASES: Final = "purchases"  # past purchases (profile history) and in-window orders, with genre and artist
PRESALE: Final = "presale"  # presale registrations and invitations
REQUEST_ACTIONS: Final = frozenset({"search", "event_view", "item_view", "hold", "purchase"})
PRESALE_ACTIONS: Final = frozenset({"presale_register", "presale_invite"})

# Conditions on a row (a flag column in the batch frame, a flag of the update online).
ANY: Final = "any"
VIEW: Final = "view"  # an event page or a seat map
ITEM_VIEW: Final = "item_view"
HOLD: Final = "hold"
PURCHASE: Final = "purchase"
NEW_SESSION: Final = "new_session"  # the user's previous activity row had another session id
FAST: Final = "fast"  # less than FAST_GAP_MS after the user's previous activity row
REGISTER: Final = "presale_register"
INVITE: Final = "presale_invite"


@dataclass(frozen=True, slots=True)
class Counter:
    """A raw counter: rows of `stream` where `when` holds, per `key`, before the cut-off.

    ``window_ms`` None counts since the beginning, else rows in ``[cut-off - window, cut-off)``.
    ``last_seen`` also records the time of the latest such row (as ``<name>_last_ms``).
    ``value`` names a per-row number to report (the latest row's) instead of a count.
    """

    name: str
    stream: str
    when: str
    key: tuple[str, ...]
    window_ms: int | None = None
    last_seen: bool = False
    value: str | None = None


COUNTERS: Final = (
    Counter("user_actions", ACTIVITY, ANY, ("user",), last_seen=True),
    Counter("user_sessions", ACTIVITY, NEW_SESSION, ("user",)),
    Counter("last_session_depth", ACTIVITY, ANY, ("user",), value="session_depth"),
    Counter("user_views", ACTIVITY, VIEW, ("user",)),
    Counter("user_item_views", ACTIVITY, ITEM_VIEW, ("user",)),
    Counter("user_holds", ACTIVITY, HOLD, ("user",)),
    Counter("user_fast_actions", ACTIVITY, FAST, ("user",)),
    Counter("user_actions_1h", ACTIVITY, ANY, ("user",), window_ms=HOUR_MS),
    Counter("user_event_views", ACTIVITY, VIEW, ("user", "event"), last_seen=True),
    Counter("user_event_holds", ACTIVITY, HOLD, ("user", "event")),
    Counter("user_genre_views", ACTIVITY, VIEW, ("user", "genre")),
    Counter("user_artist_views", ACTIVITY, VIEW, ("user", "artist")),
    Counter("purchases", PURCHASES, ANY, ("user",), last_seen=True),
    Counter("genre_purchases", PURCHASES, ANY, ("user", "genre")),
    Counter("artist_purchases", PURCHASES, ANY, ("user", "artist")),
    Counter("presale_registered", PRESALE, REGISTER, ("user", "event")),
    Counter("presale_invited", PRESALE, INVITE, ("user", "event")),
    Counter("event_requests_5m", ACTIVITY, ANY, ("event",), window_ms=5 * MINUTE_MS),
    Counter("event_requests_1h", ACTIVITY, ANY, ("event",), window_ms=HOUR_MS),
    Counter("event_requests_24h", ACTIVITY, ANY, ("event",), window_ms=DAY_MS),
    Counter("event_purchases_1h", ACTIVITY, PURCHASE, ("event",), window_ms=HOUR_MS),
    Counter("event_purchases", ACTIVITY, PURCHASE, ("event",)),
)
RAW_COLUMNS: Final = tuple(
    name for c in COUNTERS for name in ((c.name, f"{c.name}_last_ms") if c.last_seen else (c.name,))
)

FEATURES: Final = (
    # the user and the event
    "region_match", "favourite_genre", "favourite_artist", "past_presale_registrations",
    # history: recency and frequency of purchases, per genre and artist
    "purchases", "days_since_purchase", "genre_purchase_share", "artist_purchases",
    # activity in the log: frequency, recency, session depth
    "user_actions", "user_sessions", "actions_per_session", "last_session_depth", "minutes_since_action",
    "user_actions_1h", "user_event_views", "minutes_since_event_view", "user_event_holds",
    "genre_view_share", "user_artist_views", "presale_registered", "presale_invited",
    # bot signals
    "fast_action_share", "item_view_share", "hold_share",
    # the event: popularity, days to show, time to on-sale, sales velocity
    "log_popularity", "days_to_show", "hours_since_onsale", "in_onsale_hour",
    "event_requests_5m", "event_requests_1h", "event_requests_24h", "event_burst",
    "event_purchases_1h", "event_purchases",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class EventFacts:
    """What the catalog says about each event, indexed by ``event_id``.

    ``frame`` columns: ``region, genre, artist`` (strings), ``log_popularity``,
    ``onsale_ms``, ``starts_ms``. Build it from the workload's event plan
    (:meth:`from_plan`) or from the origin's catalog (:meth:`from_catalog`);
    both carry only what the origin publishes.
    """

    frame: Any

    @classmethod
    def from_plan(cls, plan: Any) -> EventFacts:
        return cls._build(
            plan["event_id"].astype(str),
            plan["region"].astype(str),
            plan["genre"].astype(str),
            plan["artist"].astype(str),
            plan["popularity"].to_numpy(dtype=np.float64),
            to_ms(plan["onsale_at"]),
            to_ms(plan["starts_at"]),
        )

    @classmethod
    def from_catalog(cls, events: Iterable[Any]) -> EventFacts:
        """From :class:`origin.model.Event` objects (anything with their attributes)."""
        rows = list(events)
        return cls._build(
            [e.id for e in rows],
            [e.region for e in rows],
            [e.genre for e in rows],
            [e.artist for e in rows],
            np.array([e.popularity for e in rows], dtype=np.float64),
            np.array([round(e.onsale_at.timestamp() * MS_PER_SECOND) for e in rows], dtype=np.int64),
            np.array([round(e.starts_at.timestamp() * MS_PER_SECOND) for e in rows], dtype=np.int64),
        )

    @classmethod
    def _build(
        cls, ids: Any, region: Any, genre: Any, artist: Any, popularity: Any, onsale: Any, starts: Any
    ) -> EventFacts:
        if len(popularity) == 0:
            raise PredictorError("the catalog has no events")
        if not (np.asarray(popularity) > 0).all() or not np.isfinite(popularity).all():  # NaN fails `> 0`
            raise PredictorError("every event's popularity must be a finite number above 0")
        frame = pd.DataFrame(
            {
                "region": list(region),
                "genre": list(genre),
                "artist": list(artist),
                "log_popularity": np.log(np.asarray(popularity, dtype=np.float64)),
                "onsale_ms": np.asarray(onsale, dtype=np.int64),
                "starts_ms": np.asarray(starts, dtype=np.int64),
            },
            index=pd.Index(list(ids), name="event_id"),
        )
        if not frame.index.is_unique:
            raise PredictorError("event ids repeat in the catalog")
        return cls(frame)

    def require(self, event_ids: Any) -> None:
        """Raise PredictorError naming an event id the catalog does not have."""
        unknown = pd.Index(pd.unique(np.asarray(event_ids, dtype=object))).difference(self.frame.index)
        if len(unknown):
            raise PredictorError(f"unknown event {unknown[0]!r} (not in the catalog)")


@dataclass(frozen=True, slots=True)
class Profiles:
    """What users told us, indexed by ``user_id``: ``region``, ``favourite_genre``,
    ``favourite_artists`` (a frozenset), ``past_presale_registrations``, ``consent``."""

    frame: Any

    @classmethod
    def from_users(cls, users: Any) -> Profiles:
        artists = [frozenset(a for a in text.split("|") if a) for text in users["favourite_artists"].astype(str)]
        frame = pd.DataFrame(
            {
                "region": users["region"].astype(str).to_numpy(),
                "favourite_genre": users["favourite_genre"].astype(object).fillna("").astype(str).to_numpy(),
                "favourite_artists": artists,
                "past_presale_registrations": users["past_presale_registrations"].to_numpy(dtype=np.float64),
                "consent": users["consent"].to_numpy(dtype=np.bool_),
            },
            index=pd.Index(users["user_id"].astype(str).to_numpy(), name="user_id"),
        )
        return cls(frame)


def activity_stream(event_log: Any, facts: EventFacts) -> Any:
    """The log's request rows as the activity stream, with the per-user sequence flags.

    Columns: ``ts`` (ms), ``user``, ``session``, ``action``, ``event``, ``genre``, ``artist``
    (None for a search), and the flags ``new_session``, ``fast`` and ``session_depth``.
    Rows stay in log order (time order, ties as logged): the online form must be fed in that order.
    """
    log = event_log.loc[event_log["action"].isin(REQUEST_ACTIONS) & (event_log["session_id"] >= 0)]
    frame = pd.DataFrame(
        {
            "ts": to_ms(log["ts"]),
            "user": log["user_id"].astype(str).to_numpy(),
            "session": log["session_id"].to_numpy(dtype=np.int64),
            "action": log["action"].astype(str).to_numpy(),
            "event": log["event_id"].astype(object).where(log["event_id"].notna(), None).to_numpy(),
        }
    )
    _require_sorted(frame["ts"])
    _add_event_facts(frame, facts)
    by_user = frame.groupby("user", sort=False)
    previous_session = by_user["session"].shift(1)
    previous_ts = by_user["ts"].shift(1)
    frame["new_session"] = (previous_session != frame["session"]).to_numpy()
    frame["fast"] = ((frame["ts"] - previous_ts) < FAST_GAP_MS).to_numpy()
    run = frame["new_session"].astype(np.int64).groupby(frame["user"], sort=False).cumsum()
    frame["session_depth"] = frame.groupby([frame["user"], run], sort=False).cumcount().to_numpy() + 1
    return frame


def purchase_stream(event_log: Any, purchase_history: Any, facts: EventFacts) -> Any:
    """Past purchases and in-window orders in time order: ``ts, user, genre, artist``."""
    orders = event_log.loc[(event_log["action"] == "purchase") & (event_log["session_id"] >= 0)]
    window = pd.DataFrame(
        {"ts": to_ms(orders["ts"]), "user": orders["user_id"].astype(str).to_numpy(), "event": orders["event_id"]}
    )
    window["event"] = window["event"].astype(str)
    _add_event_facts(window, facts)
    past = pd.DataFrame(
        {
            "ts": to_ms(purchase_history["purchased_at"]),
            "user": purchase_history["user_id"].astype(str).to_numpy(),
            "genre": purchase_history["genre"].astype(str).to_numpy(),
            "artist": purchase_history["artist"].astype(str).to_numpy(),
        }
    )
    both = pd.concat([past, window[["ts", "user", "genre", "artist"]]], ignore_index=True)
    return both.sort_values("ts", kind="stable").reset_index(drop=True)


def presale_stream(event_log: Any) -> Any:
    """Presale registrations and invitations: ``ts, user, event, action``."""
    rows = event_log.loc[event_log["action"].isin(PRESALE_ACTIONS)]
    return pd.DataFrame(
        {
            "ts": to_ms(rows["ts"]),
            "user": rows["user_id"].astype(str).to_numpy(),
            "event": rows["event_id"].astype(str).to_numpy(),
            "action": rows["action"].astype(str).to_numpy(),
        }
    )


def flags(frame: Any, stream: str) -> dict[str, Any]:
    """The boolean masks `Counter.when` names, over a stream frame."""
    if stream == PRESALE:
        return {REGISTER: frame["action"] == REGISTER, INVITE: frame["action"] == INVITE}
    masks = {ANY: pd.Series(True, index=frame.index)}
    if stream == ACTIVITY:
        action = frame["action"]
        masks.update(
            {
                VIEW: action.isin(("event_view", "item_view")),
                ITEM_VIEW: action == "item_view",
                HOLD: action == "hold",
                PURCHASE: action == "purchase",
                NEW_SESSION: frame["new_session"],
                FAST: frame["fast"],
            }
        )
    return masks


def batch_raw(streams: Mapping[str, Any], queries: Any, facts: EventFacts) -> Any:
    """Raw counters for each query row (``user_id``, ``event_id``, ``now_ms``), from stream rows before ``now_ms``.

    Returns a frame aligned with `queries` (same index) holding the query columns and :data:`RAW_COLUMNS`.
    """
    facts.require(queries["event_id"])
    base = pd.DataFrame(
        {
            "user": queries["user_id"].astype(str).to_numpy(),
            "event": queries["event_id"].astype(str).to_numpy(),
            "now": queries["now_ms"].to_numpy(dtype=np.int64),
        }
    )
    _add_event_facts(base, facts)
    base["row"] = np.arange(len(base))
    out = pd.DataFrame(
        {"user_id": base["user"].to_numpy(), "event_id": base["event"].to_numpy(), "now_ms": base["now"].to_numpy()},
        index=queries.index,
    )
    masks = {name: flags(frame, name) for name, frame in streams.items()}
    codes = _encode(streams, base)
    for counter in COUNTERS:
        frame = streams[counter.stream]
        present = frame[list(counter.key)].notna().all(axis=1).to_numpy()
        selected = masks[counter.stream][counter.when].to_numpy() & present
        rows = frame.loc[selected]
        row_key, query_key = _keys(codes, counter.stream, selected, counter.key)
        keyed_rows = pd.DataFrame({"key": row_key})
        keyed_queries = pd.DataFrame({"key": query_key})
        if counter.value is None:
            cumulative = keyed_rows.groupby("key", sort=False).cumcount().to_numpy() + 1.0
        else:
            cumulative = rows[counter.value].to_numpy(dtype=np.float64)
        right = pd.DataFrame({"ts": rows["ts"].to_numpy(), "key": keyed_rows["key"].to_numpy(), "value": cumulative})
        right["seen"] = right["ts"]
        value, seen = _as_of(keyed_queries, right, base["now"].to_numpy())
        if counter.window_ms is not None:
            before, _ = _as_of(keyed_queries, right, base["now"].to_numpy() - counter.window_ms)
            value = value - before
        out[counter.name] = value
        if counter.last_seen:
            out[f"{counter.name}_last_ms"] = seen
    return out


def derive(raw: Any, profiles: Profiles, facts: EventFacts) -> Any:
    """The model's columns (:data:`FEATURES`, float64, NaN where unknown) from raw counters.

    Raises:
        PredictorError: an event id is not in the catalog.
    """
    facts.require(raw["event_id"])
    event = facts.frame.reindex(raw["event_id"].to_numpy())
    profile = profiles.frame.reindex(raw["user_id"].to_numpy())
    now = raw["now_ms"].to_numpy(dtype=np.int64)
    f: dict[str, Any] = {}
    f["region_match"] = (profile["region"].to_numpy() == event["region"].to_numpy()).astype(np.float64)
    f["favourite_genre"] = (profile["favourite_genre"].to_numpy() == event["genre"].to_numpy()).astype(np.float64)
    f["favourite_artist"] = np.array(
        [
            float(isinstance(liked, frozenset) and artist in liked)
            for liked, artist in zip(profile["favourite_artists"].to_numpy(), event["artist"].to_numpy(), strict=True)
        ],
        dtype=np.float64,
    )
    f["past_presale_registrations"] = profile["past_presale_registrations"].to_numpy(dtype=np.float64)
    r = {name: raw[name].to_numpy(dtype=np.float64) for name in RAW_COLUMNS}
    f["purchases"] = r["purchases"]
    f["days_since_purchase"] = (now - r["purchases_last_ms"]) / DAY_MS
    f["genre_purchase_share"] = _share(r["genre_purchases"], r["purchases"])
    f["artist_purchases"] = r["artist_purchases"]
    f["user_actions"] = r["user_actions"]
    f["user_sessions"] = r["user_sessions"]
    f["actions_per_session"] = _ratio(r["user_actions"], r["user_sessions"])
    f["last_session_depth"] = r["last_session_depth"]
    f["minutes_since_action"] = (now - r["user_actions_last_ms"]) / MINUTE_MS
    f["user_actions_1h"] = r["user_actions_1h"]
    f["user_event_views"] = r["user_event_views"]
    f["minutes_since_event_view"] = (now - r["user_event_views_last_ms"]) / MINUTE_MS
    f["user_event_holds"] = r["user_event_holds"]
    f["genre_view_share"] = _share(r["user_genre_views"], r["user_views"])
    f["user_artist_views"] = r["user_artist_views"]
    f["presale_registered"] = np.minimum(r["presale_registered"], 1.0)
    f["presale_invited"] = np.minimum(r["presale_invited"], 1.0)
    f["fast_action_share"] = _ratio(r["user_fast_actions"], r["user_actions"])
    f["item_view_share"] = _ratio(r["user_item_views"], r["user_actions"])
    f["hold_share"] = _ratio(r["user_holds"], r["user_actions"])
    f["log_popularity"] = event["log_popularity"].to_numpy(dtype=np.float64)
    f["days_to_show"] = (event["starts_ms"].to_numpy() - now) / DAY_MS
    since_onsale = (now - event["onsale_ms"].to_numpy()) / HOUR_MS
    f["hours_since_onsale"] = since_onsale
    f["in_onsale_hour"] = ((since_onsale >= 0) & (since_onsale < 1)).astype(np.float64)
    f["event_requests_5m"] = r["event_requests_5m"]
    f["event_requests_1h"] = r["event_requests_1h"]
    f["event_requests_24h"] = r["event_requests_24h"]
    f["event_burst"] = 12 * r["event_requests_5m"] / (r["event_requests_1h"] + 1)  # last 5 minutes vs the hour
    f["event_purchases_1h"] = r["event_purchases_1h"]
    f["event_purchases"] = r["event_purchases"]
    return pd.DataFrame({name: f[name] for name in FEATURES}, index=raw.index)


def _share(part: Any, whole: Any) -> Any:
    """part / whole, 0 when whole is 0 (no history says nothing either way: the neutral value)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(whole > 0, part / np.maximum(whole, 1), 0.0)


def _ratio(part: Any, whole: Any) -> Any:
    """part / whole, NaN when whole is 0 (undefined: the model learns what "no activity" means)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(whole > 0, part / np.maximum(whole, 1), np.nan)


def _encode(streams: Mapping[str, Any], base: Any) -> dict[tuple[str, str], Any]:
    """Integer codes of every key column, one vocabulary per column across the streams and the queries."""
    codes: dict[tuple[str, str], Any] = {}
    for column in ("user", "event", "genre", "artist"):
        owners = [(name, frame) for name, frame in streams.items() if column in frame.columns]
        values = pd.concat([frame[column] for _, frame in owners] + [base[column]], ignore_index=True)
        numbers, _ = pd.factorize(values, use_na_sentinel=True)
        start = 0
        for name, frame in [*owners, ("query", base)]:
            codes[(name, column)] = numbers[start : start + len(frame)].astype(np.int64)
            start += len(frame)
    return codes


def _keys(codes: Mapping[tuple[str, str], Any], stream: str, selected: Any, key: tuple[str, ...]) -> tuple[Any, Any]:
    """Integer keys for the selected stream rows and for the queries, the same number for the same key values."""
    rows = [codes[(stream, column)][selected] for column in key]
    queries = [codes[("query", column)] for column in key]
    if len(key) == 1:
        return rows[0], queries[0]
    width = int(max(rows[1].max(initial=0), queries[1].max(initial=0))) + 1
    return rows[0] * width + rows[1], queries[0] * width + queries[1]


def _as_of(keyed_queries: Any, right: Any, when: Any) -> tuple[Any, Any]:
    """Per query: the latest row of its key strictly before `when` (its value, 0 if none; its time, NaN)."""
    left = pd.DataFrame({"when": np.asarray(when, dtype=np.int64), "key": keyed_queries["key"].to_numpy()})
    left["row"] = np.arange(len(left))
    left = left.sort_values("when", kind="stable")
    merged = pd.merge_asof(
        left, right, left_on="when", right_on="ts", by="key", allow_exact_matches=False, direction="backward"
    )
    value = np.zeros(len(left))
    seen = np.full(len(left), np.nan)
    order = merged["row"].to_numpy()
    value[order] = merged["value"].fillna(0.0).to_numpy(dtype=np.float64)
    seen[order] = merged["seen"].to_numpy(dtype=np.float64)
    return value, seen


def _add_event_facts(frame: Any, facts: EventFacts) -> None:
    known = facts.frame.reindex(frame["event"].to_numpy())
    for column in ("genre", "artist"):
        frame[column] = known[column].to_numpy(dtype=object)


def _require_sorted(ts: Any) -> None:
    if not ts.is_monotonic_increasing:
        raise PredictorError("the event log is not in time order")


def to_ms(column: Any) -> Any:
    """UTC timestamps as integer milliseconds since the epoch (NaT is refused: every row has a time)."""
    stamps = pd.to_datetime(column, utc=True)
    if stamps.isna().any():
        raise PredictorError("a timestamp is missing")
    return stamps.astype("datetime64[ms, UTC]").astype(np.int64).to_numpy()
