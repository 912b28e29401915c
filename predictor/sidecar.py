"""The serving sidecar's state and decisions: ingest events, answer hints, warm lists and forecasts.

One :class:`Sidecar` owns everything the HTTP API serves from: the online
purchase features (:class:`predictor.online.OnlineFeatures`), the demand
counters (:class:`predictor.forecast.DemandState`), the consent register
(:mod:`predictor.privacy`), the ids of recently applied events, and the
loaded models. It is synchronous and not thread-safe on purpose: the API
calls it only from one executor thread, so a batch is applied whole before
anything reads, and pandas and xgboost never run on the event loop.

Retries. Every event carries a client id; the ids of the last
:data:`DEDUP_CAPACITY` applied events are remembered and a repeated id (of
the same user) is counted as a duplicate and skipped, so a batch retried
after a lost answer is not counted twice (a retry arriving after that many
newer events would be; clients retry within seconds). What is remembered is
a keyed digest of (user id, event id) with a keyed digest of the user id, the
key random per process: client ids often embed the user id, and nothing is
kept under the id of a user without consent. ``DELETE`` (:meth:`Sidecar.erase`)
drops the user's entries too.

Hints name event pages (``/v1/events/{id}``): the purchase model scores
(user, event) pairs, and its calibrated purchase probability is the score,
a lower bound on the probability that the user requests the page soon.
Candidates are the user's recent events and their region's most popular
events around their on-sale; at most :data:`predictor.scoring.MAX_HINTS`
at or above the threshold are kept, for ``hint_lifetime`` (the pending
hints, dropped when the user's next event arrives or they are deleted).

Item hints fill the slots the event pages leave free. A buyer opens the seat
map (``/v1/items/{id}``) of the item they buy, so a hinted event's item ``i``
scores the event's probability times ``i``'s share of the event's item
requests (item views, holds and purchases naming it, counted from everyone's
events since start, add-one smoothed over the event's catalog items; ties go
in catalog order). Only items somebody requested are hinted: without
observations every seat map is as likely as the next, and a guess among them
costs a prefetch that is mostly wasted. The product stays at most the page's
score and, like it, a lower bound; items below the threshold are dropped like
pages. Pages come first: an item never displaces a page that qualifies.

Bots get no hints: a user labelled ``"bot": true`` by any event, or whose
online features look like one — at least :data:`BOT_MIN_ACTIONS` requests of
which :data:`BOT_FAST_SHARE` or more came less than 3 s after the previous
one (on the generated workload, bots' share is ~0.96 and humans' under 0.1).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import secrets
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

from predictor.errors import PredictorError
from predictor.features import DAY_MS, HOUR_MS, MINUTE_MS, REQUEST_ACTIONS, EventFacts, derive
from predictor.forecast import DemandState
from predictor.ingest import IGNORED_ACTIONS, IncomingEvent
from predictor.online import Activity, OnlineFeatures
from predictor.privacy import MAX_USERS, ConsentRegister, UserRecord
from predictor.scoring import MAX_HINTS, Scorer
from predictor.warmlist import WarmUrl, warm_list

DEDUP_CAPACITY: Final = 200_000  # event ids remembered against retries: 200 full batches
BOT_MIN_ACTIONS: Final = 10  # fewer requests say too little to call anyone a bot
BOT_FAST_SHARE: Final = 0.5  # humans read ~25 s between pages; bots poll every ~1.5 s
# Hint candidates besides the user's own recent events: the most popular events
# of their region whose on-sale is within a day either side (what a visitor is
# likely to look at next), scored together in one batch.
REGIONAL_CANDIDATES: Final = 32
CANDIDATE_ONSALE_WINDOW_MS: Final = DAY_MS
RECENT_WINDOW_MS: Final = HOUR_MS  # "requested now" for warm lists
ITEM_ACTIONS: Final = frozenset({"item_view", "hold", "purchase"})  # requests that name the item chosen
DIGEST_BYTES: Final = 16  # 128-bit keyed digests: no collision among DEDUP_CAPACITY ids


@dataclass(frozen=True, slots=True)
class CatalogData:
    """What the sidecar knows of the catalog and, from a workload, of its users."""

    facts: EventFacts
    items_by_event: Mapping[str, tuple[str, ...]]
    users: Any = None  # the workload's users table (only consenting rows are used)
    purchase_history: Any = None


@dataclass(frozen=True, slots=True)
class IngestResult:
    accepted: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class HintAnswer:
    """A known user's hints: (url, calibrated probability), best first; empty for bots."""

    user_id: str
    hints: tuple[tuple[str, float], ...]
    expires_ms: int
    bot: bool


class _RegionRequests:
    """Requests per region and event in minute buckets over the last hour (for warm lists)."""

    def __init__(self) -> None:
        self._buckets: dict[str, dict[str, OrderedDict[int, int]]] = {}

    def add(self, region: str, event_id: str, ts_ms: int) -> None:
        minutes = self._buckets.setdefault(region, {}).setdefault(event_id, OrderedDict())
        minute = ts_ms // MINUTE_MS
        minutes[minute] = minutes.get(minute, 0) + 1
        _trim(minutes, minute - RECENT_WINDOW_MS // MINUTE_MS)

    def counts(self, region: str, now_ms: int) -> dict[str, float]:
        per_event = self._buckets.get(region, {})
        now_minute = now_ms // MINUTE_MS
        result: dict[str, float] = {}
        for event_id in list(per_event):
            minutes = per_event[event_id]
            _trim(minutes, now_minute - RECENT_WINDOW_MS // MINUTE_MS)
            if not minutes:
                del per_event[event_id]
                continue
            result[event_id] = float(sum(count for minute, count in minutes.items() if minute <= now_minute))
        return result


def _trim(minutes: OrderedDict[int, int], oldest: int) -> None:
    for minute in [m for m in minutes if m < oldest]:
        del minutes[minute]


class Sidecar:
    def __init__(
        self,
        catalog: CatalogData,
        scorer: Scorer,
        hint_threshold: float,
        hint_lifetime_ms: int,
        *,
        max_users: int = MAX_USERS,
        dedup_capacity: int = DEDUP_CAPACITY,
    ) -> None:
        # The workload's tables are read once, for the consenting profiles: kept, they would hold every
        # user's row (consenting or not) past a DELETE.
        self.catalog = dataclasses.replace(catalog, users=None, purchase_history=None)
        self.facts = catalog.facts
        self.scorer = scorer
        self.hint_threshold = hint_threshold
        self.hint_lifetime_ms = hint_lifetime_ms
        self.users = ConsentRegister(max_users)
        self.online = OnlineFeatures(self.facts, self.users.profiles(()))
        self.demand = DemandState(self.facts, scorer.horizon_ms) if scorer.demand is not None else None
        self.known_events = frozenset(self.facts.frame.index)
        self.events_applied = 0
        self.dedup_capacity = dedup_capacity
        self._digest_key = secrets.token_bytes(32)
        self._seen_ids: OrderedDict[bytes, bytes] = OrderedDict()  # digest(user, event id) -> digest(user)
        self._region_requests = _RegionRequests()
        # item -> its event, for the catalog's items only (so counting cannot grow past the catalog)
        self._item_event = {item: event for event, items in catalog.items_by_event.items() for item in items}
        self._item_views: dict[str, dict[str, int]] = {}  # event -> item -> requests naming it
        self._seed_users(catalog.users, catalog.purchase_history)

    # Models --------------------------------------------------------------------------
    def use_scorer(self, scorer: Scorer) -> bool:
        """Serve from a newly loaded `scorer`; True when the demand counters had to restart
        (the new demand model counts over another horizon)."""
        reset = False
        if scorer.demand is None:
            reset, self.demand = self.demand is not None, None
        elif self.demand is None or self.demand.horizon_ms != scorer.horizon_ms:
            reset, self.demand = True, DemandState(self.facts, scorer.horizon_ms)
        self.scorer = scorer
        return reset

    # Events and consent ---------------------------------------------------------------
    def ingest(self, events: Sequence[IncomingEvent]) -> IngestResult:
        """Apply a validated batch (:func:`predictor.ingest.parse_batch`), skipping ids already applied."""
        accepted = duplicates = 0
        for event in events:
            key = self._digest(event.user_id, event.id)
            if key in self._seen_ids:
                duplicates += 1
                continue
            self._remember(key, self._digest(event.user_id))
            self._apply(event)
            accepted += 1
        self.events_applied += accepted
        return IngestResult(accepted, duplicates)

    def set_consent(self, user_id: str, consent: bool, region: str | None = None) -> None:
        """Record consent (optionally with the user's region), or withdraw it: withdrawing forgets the user."""
        if consent:
            _, evicted = self.users.consent(user_id, region)
            for gone in evicted:
                self.online.forget(gone)
        else:
            self.forget(user_id)

    def forget(self, user_id: str) -> bool:
        """Remove everything kept under `user_id` (profile, features, pending hints); whether anything was."""
        known = self.users.forget(user_id) or self.online.knows(user_id)
        self.online.forget(user_id)
        return known

    def erase(self, user_id: str) -> bool:
        """``DELETE``: :meth:`forget`, and the user's retry ids too (one pass over them: deletes are rare)."""
        user_digest = self._digest(user_id)
        gone = [key for key, owner in self._seen_ids.items() if owner == user_digest]
        for key in gone:
            del self._seen_ids[key]
        return self.forget(user_id) or bool(gone)

    def knows(self, user_id: str) -> bool:
        return self.users.get(user_id) is not None or self.online.knows(user_id)

    # Answers --------------------------------------------------------------------------
    def hints(self, user_id: str, now_ms: int) -> HintAnswer | None:
        """The user's hints at `now_ms`, or None for a user without a consent record (the API's 404)."""
        record = self.users.get(user_id)
        if record is None:
            return None
        if record.pending_hints is not None and record.pending_hints[0] > now_ms:
            return HintAnswer(user_id, record.pending_hints[1], record.pending_hints[0], record.bot)
        candidates = self._candidates(record, now_ms)
        hints: tuple[tuple[str, float], ...] = ()
        bot = record.bot
        if candidates and not bot:
            features = derive(
                self.online.raw([(user_id, event) for event in candidates], now_ms),
                self.users.profiles([user_id]),
                self.facts,
            )
            bot = _looks_like_bot(features.iloc[0])
            if not bot:
                probability = self.scorer.score(features)
                order = np.argsort(-probability, kind="stable")[:MAX_HINTS]
                events = [
                    (candidates[i], float(probability[i]))
                    for i in order.tolist()
                    if probability[i] >= self.hint_threshold
                ]
                hints = self._with_items(events)
        expires = now_ms + self.hint_lifetime_ms
        record.pending_hints = (expires, hints)
        return HintAnswer(user_id, hints, expires, bot)

    def warm(self, region: str, now_ms: int, lookahead_ms: int) -> list[WarmUrl]:
        return warm_list(
            region,
            now_ms,
            lookahead_ms,
            self.facts.frame,
            self.catalog.items_by_event,
            self._region_requests.counts(region, now_ms),
        )

    def forecast(self, now_ms: int) -> dict[str, Any]:
        """The ``GET /v1/forecast`` document.

        Raises:
            PredictorError: no demand model is loaded.
        """
        if self.demand is None:
            raise PredictorError("no demand model in the models directory (run `boxoffice predictor train`)")
        return self.scorer.forecast(self.demand, now_ms)

    # Internals ------------------------------------------------------------------------
    def _with_items(self, events: list[tuple[str, float]]) -> tuple[tuple[str, float], ...]:
        """The hinted events' pages, best first, then their likeliest items in the slots left (module docstring)."""
        pages = [(f"/v1/events/{event}", probability) for event, probability in events]
        items = [
            (f"/v1/items/{item}", probability * share)
            for event, probability in events
            for item, share in self._likely_items(event)[: MAX_HINTS - len(pages)]
            if probability * share >= self.hint_threshold
        ]
        items.sort(key=lambda hint: -hint[1])  # stable: on a tie, the better event's item first
        return tuple((url, round(score, 6)) for url, score in [*pages, *items][:MAX_HINTS])

    def _likely_items(self, event_id: str) -> list[tuple[str, float]]:
        """The event's requested catalog items with their add-one smoothed share of its item requests,
        likeliest first (ties in catalog order); none before anybody requested one."""
        items = self.catalog.items_by_event.get(event_id, ())
        views = self._item_views.get(event_id, {})
        total = sum(views.values()) + len(items)
        ranked = sorted((item for item in items if views.get(item, 0) > 0), key=lambda item: -views[item])
        return [(item, (views[item] + 1) / total) for item in ranked]  # sorted is stable: catalog order on ties

    def _digest(self, *parts: str) -> bytes:
        digest = hashlib.blake2b(key=self._digest_key, digest_size=DIGEST_BYTES)
        for part in parts:  # length-prefixed: ("ab", "c") and ("a", "bc") differ
            data = part.encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(4, "big"))
            digest.update(data)
        return digest.digest()

    def _apply(self, event: IncomingEvent) -> None:
        user = event.user_id
        if event.consent is True:
            self.set_consent(user, True, event.region)
        elif event.consent is False:
            self.forget(user)
        record = self.users.get(user)
        if record is not None:
            for gone in self.users.touch(user):
                self.online.forget(gone)
            if event.region is not None:
                record.region = event.region
            record.bot = record.bot or event.bot
            if event.event_id is not None:
                record.saw(event.event_id)
            record.pending_hints = None
        if event.action in IGNORED_ACTIONS:
            return
        # an item of another event, or not in the catalog, is not counted (the counts stay within the catalog)
        item_event = None if event.item_id is None else self._item_event.get(event.item_id)
        if event.action in ITEM_ACTIONS and item_event is not None and item_event == event.event_id:
            assert event.item_id is not None
            views = self._item_views.setdefault(event.event_id, {})
            views[event.item_id] = views.get(event.item_id, 0) + 1
        self.online.update(Activity(event.ts_ms, user, event.action, event.event_id, event.session_id))
        if record is None:  # no consent: only the per-event totals keep this event
            self.online.forget(user)
        region = event.region or (record.region if record is not None else None)
        if event.action in REQUEST_ACTIONS and event.event_id is not None and region is not None:
            self._region_requests.add(region, event.event_id, event.ts_ms)
            if self.demand is not None:
                self.demand.update(event.ts_ms, region, event.event_id)

    def _remember(self, key: bytes, user_digest: bytes) -> None:
        self._seen_ids[key] = user_digest
        if len(self._seen_ids) > self.dedup_capacity:
            self._seen_ids.popitem(last=False)

    def _candidates(self, record: UserRecord, now_ms: int) -> list[str]:
        frame = self.facts.frame
        onsale = frame["onsale_ms"].to_numpy()
        near = (np.abs(onsale - now_ms) <= CANDIDATE_ONSALE_WINDOW_MS) & (frame["starts_ms"].to_numpy() > now_ms)
        if record.region is not None:
            near &= frame["region"].to_numpy() == record.region
        regional = frame.loc[near, "log_popularity"].sort_values(ascending=False, kind="stable")
        return list(dict.fromkeys([*reversed(record.recent_events), *regional.index[:REGIONAL_CANDIDATES]]))

    def _seed_users(self, users: Any, history: Any) -> None:
        """Consenting profiles of the workload, and their purchase history; nobody else's."""
        if users is None:
            return
        consenting = users.loc[users["consent"].to_numpy(dtype=np.bool_)]
        for user, region, genre, artists, presales in zip(
            consenting["user_id"].astype(str),
            consenting["region"].astype(str),
            consenting["favourite_genre"].astype(object).fillna("").astype(str),
            consenting["favourite_artists"].astype(object).fillna("").astype(str),
            consenting["past_presale_registrations"].to_numpy(dtype=np.float64),
            strict=True,
        ):
            record, _ = self.users.consent(user, region)
            record.favourite_genre = genre
            record.favourite_artists = frozenset(a for a in artists.split("|") if a)
            record.past_presale_registrations = float(presales)
        if history is None or not len(history):
            return
        purchased = pd.to_datetime(history["purchased_at"], utc=True).astype("datetime64[ms, UTC]").astype(np.int64)
        for user, ts, genre, artist in zip(
            history["user_id"].astype(str),
            purchased,
            history["genre"].astype(str),
            history["artist"].astype(str),
            strict=True,
        ):
            if self.users.get(user) is not None:
                self.online.add_past_purchase(user, int(ts), genre, artist)


def _looks_like_bot(features: Any) -> bool:
    actions = float(features["user_actions"])
    share = float(features["fast_action_share"])
    return actions >= BOT_MIN_ACTIONS and not math.isnan(share) and share >= BOT_FAST_SHARE
