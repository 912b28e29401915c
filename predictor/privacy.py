"""Who the sidecar may remember, and what: the consent register.

The rules (issue 6, "privacy"):

* **Profiles exist only for users who consented.** A user has a
  :class:`UserRecord` from the moment their consent is recorded (an event
  with ``"consent": true``, ``PUT /v1/users/{id}/consent``, or a consenting
  profile of the workload) until they withdraw it, are deleted, or are
  evicted as the least recently active past :data:`MAX_USERS`. Events of
  anyone else still count in the per-event totals and the demand counters
  (how busy an event is, per region: not personal), but nothing is kept
  under their id, so the sidecar answers 404 for them.
* **Location only when given.** ``region`` is set only from an event's or
  a consent call's ``region`` (or the workload profile); it is never
  inferred.
* **Delete removes everything**: :meth:`ConsentRegister.forget` drops the
  record (profile, bot label, recent events, pending hints); the sidecar
  also drops the online features kept under the id and the user's retry
  ids (:meth:`predictor.sidecar.Sidecar.erase`), and keeps no copy of the
  workload's user tables after seeding.

Plain data, no I/O, no locks: the sidecar calls it from its one scoring thread.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

from predictor.features import Profiles

# Consenting users remembered at once. The default workload has 250,000 users,
# 80 % of them consenting; each record is small, but the online features kept
# under it grow with the user's activity (a few KiB for an active user).
MAX_USERS: Final = 500_000
# Events of a user remembered as hint candidates: a session touches a handful.
MAX_RECENT_EVENTS: Final = 16


@dataclass(slots=True)
class UserRecord:
    """What a consenting user's profile holds."""

    region: str | None = None
    favourite_genre: str = ""
    favourite_artists: frozenset[str] = frozenset()
    past_presale_registrations: float = 0.0
    bot: bool = False  # labelled by an event; sticky until the record goes
    recent_events: OrderedDict[str, None] = field(default_factory=OrderedDict)
    pending_hints: tuple[int, tuple[tuple[str, float], ...]] | None = None  # (expires at ms, hints)

    def saw(self, event_id: str) -> None:
        self.recent_events[event_id] = None
        self.recent_events.move_to_end(event_id)
        while len(self.recent_events) > MAX_RECENT_EVENTS:
            self.recent_events.popitem(last=False)


class ConsentRegister:
    """Records of consenting users, least recently active first."""

    def __init__(self, capacity: int = MAX_USERS) -> None:
        self.capacity = capacity
        self._records: OrderedDict[str, UserRecord] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def get(self, user_id: str) -> UserRecord | None:
        return self._records.get(user_id)

    def consent(self, user_id: str, region: str | None = None) -> tuple[UserRecord, list[str]]:
        """Record consent (idempotent; a given region replaces the old one).

        Returns the record and the users evicted to make room (their online state must go too).
        """
        record = self._records.get(user_id)
        if record is None:
            record = self._records[user_id] = UserRecord()
        if region is not None:
            record.region = region
        return record, self.touch(user_id)

    def touch(self, user_id: str) -> list[str]:
        """Mark a consenting user active; returns the users evicted past the capacity."""
        if user_id in self._records:
            self._records.move_to_end(user_id)
        evicted = []
        while len(self._records) > self.capacity:
            evicted.append(self._records.popitem(last=False)[0])
        return evicted

    def forget(self, user_id: str) -> bool:
        """Drop the user's record (consent withdrawn or deleted); whether there was one."""
        return self._records.pop(user_id, None) is not None

    def profiles(self, user_ids: Iterable[str]) -> Profiles:
        """The profile rows :func:`predictor.features.derive` reads, for consenting users among `user_ids`."""
        rows = [(user, self._records[user]) for user in dict.fromkeys(user_ids) if user in self._records]
        frame = pd.DataFrame(
            {
                "region": [record.region or "" for _, record in rows],
                "favourite_genre": [record.favourite_genre for _, record in rows],
                "favourite_artists": [record.favourite_artists for _, record in rows],
                "past_presale_registrations": np.array(
                    [record.past_presale_registrations for _, record in rows], dtype=np.float64
                ),
                "consent": np.ones(len(rows), dtype=np.bool_),
            },
            index=pd.Index([user for user, _ in rows], name="user_id"),
        )
        return Profiles(frame)
