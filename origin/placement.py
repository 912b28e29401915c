"""Where regional shards should be: the shard manager's decisions, without I/O.

The shard manager reads a demand forecast (region × event → expected requests
per second), calls :func:`plan` with the current :class:`Placement`, the set of
shards that failed their health checks and the time, and performs the returned
:class:`Plan` through a backend (local processes, Kubernetes): start the shards
in ``create``, add and drop events on running shards as ``changes`` say (a shard
bootstraps a new event from a filtered snapshot and forgets a dropped one; the
rest of its rows stay), stop the shards in ``retire``, then publish
``shard_map`` at ``GET /v1/shardmap`` and keep ``placement`` for the next round.

Hysteresis is what keeps a noisy forecast from churning shards: an event is
placed in a region when its demand reaches ``create_threshold`` but dropped only
after it has stayed below the lower ``retire_threshold`` for a whole
``cool_down``; an emptied shard lives at least ``min_shard_lifetime``. A demand
that oscillates around either threshold therefore changes placement at most
once. Placement is per (region, event) pair: an event is mirrored by at most
one shard in each region.

Decision table, for each (region, event) with ``demand`` from the forecast
(missing means 0), evaluated in this order:

====  ======================================  ==============================================
rule  when                                    then
====  ======================================  ==============================================
P1    not placed, demand ≥ create             place it: on the healthy shard of the region
                                              with room that mirrors the most events (ties:
                                              smaller shard id), else on a new shard
P2    placed, demand ≥ retire                 keep; clear its quiet timer
P3    placed, demand < retire, timer unset    keep; start the quiet timer now (drops at once
                                              only when ``cool_down`` is zero)
P4    placed, demand < retire,                keep
      now − quiet since < cool_down
P5    placed, demand < retire,                drop it from its shard
      now − quiet since ≥ cool_down
P6    not placed, demand < create             nothing (between the thresholds: hysteresis)
====  ======================================  ==============================================

Then for each shard:

====  ======================================  ==============================================
S1    no events, age ≥ min_shard_lifetime     retire it
S2    no events, age < min_shard_lifetime     keep it, empty; P1 fills it before creating
S3    unhealthy                               keep its placement (its leases stay frozen
                                              until they expire, and the backend restarts
                                              it); P1 never adds to it; the map skips it
S4    more than max_events_per_shard          never happens through P1; a lowered limit
                                              only stops further additions
====  ======================================  ==============================================

And the shard map, for each event and each region where the event is placed
or whose secondary region has it placed:

====  ===========================================================================
M1    the list is [shard of the region, shard of the secondary region, "origin"],
      each shard present only if it mirrors the event and is healthy
M2    so a failed primary moves its region to the secondary (or the origin)
M3    a region missing from an event's entry routes to the origin
====  ===========================================================================

Shard ids are ``{region}-{n}`` with ``n`` from a counter kept in the placement,
so a retired shard's id is never reused (leases and feed positions name shards).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Final

from ops.geo import great_circle_km
from origin.cities import REGION_DETAILS, Region
from origin.errors import BadRequest

ORIGIN: Final = "origin"  # the last entry of every shard-map list: the primary always answers

# region → event → expected requests per second
Forecast = Mapping[str, Mapping[str, float]]
# event → region → ordered shard ids ending with ORIGIN
ShardMap = Mapping[str, Mapping[str, tuple[str, ...]]]


class InvalidForecast(BadRequest):
    """The forecast names an unknown region or a demand that is not a finite number ≥ 0."""

    code = "invalid_forecast"


def nearest_other_regions(regions: Collection[Region]) -> Mapping[str, str]:
    """Each region's secondary: the other region whose centre is nearest by great-circle distance.

    Ties go to the smaller region id. With fewer than two regions there is no
    secondary and the mapping is empty. Centres are network hubs, so this is a
    proxy for latency; a deployment overrides it where the cables disagree
    (sa-east's nearest centre is af-south, while its traffic usually goes north).
    """
    secondary: dict[str, str] = {}
    for region in regions:
        others = [other for other in regions if other.id != region.id]
        if others:
            nearest = min(
                others, key=lambda other: (great_circle_km(region.lat, region.lon, other.lat, other.lon), other.id)
            )
            secondary[region.id] = nearest.id
    return MappingProxyType(secondary)


SECONDARY_REGION: Final[Mapping[str, str]] = nearest_other_regions(REGION_DETAILS)

# Defaults sized for the demo catalog: a shard is worth its bootstrap and
# change-feed stream when an event draws tens of requests per second in a region.
DEFAULT_CREATE_THRESHOLD: Final = 50.0  # requests/s
DEFAULT_RETIRE_THRESHOLD: Final = 20.0  # requests/s; well below create so noise does not cross both
# A forecast refreshes every few minutes; ten minutes of quiet is several
# consecutive low forecasts, not one dip.
DEFAULT_COOL_DOWN: Final = timedelta(minutes=10)
# Starting a shard costs a snapshot bootstrap; keep it at least this long.
DEFAULT_MIN_SHARD_LIFETIME: Final = timedelta(minutes=30)
# Bounds one shard's bootstrap size and change-feed fan-in.
DEFAULT_MAX_EVENTS_PER_SHARD: Final = 200


@dataclass(frozen=True, slots=True)
class PlacementConfig:
    """The shard manager's thresholds. Raises ValueError naming the bad key."""

    create_threshold: float = DEFAULT_CREATE_THRESHOLD
    retire_threshold: float = DEFAULT_RETIRE_THRESHOLD
    cool_down: timedelta = DEFAULT_COOL_DOWN
    min_shard_lifetime: timedelta = DEFAULT_MIN_SHARD_LIFETIME
    max_events_per_shard: int = DEFAULT_MAX_EVENTS_PER_SHARD
    # region → its failover region; its keys are the regions that may hold shards
    secondary_region: Mapping[str, str] = field(default_factory=lambda: SECONDARY_REGION)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.create_threshold) and self.create_threshold > 0):
            raise ValueError(f"create_threshold must be a finite number > 0, got {self.create_threshold!r}")
        if not (math.isfinite(self.retire_threshold) and 0 <= self.retire_threshold < self.create_threshold):
            raise ValueError(
                f"retire_threshold must be ≥ 0 and below create_threshold ({self.create_threshold}), "
                f"got {self.retire_threshold!r}"
            )
        if self.cool_down < timedelta(0):
            raise ValueError(f"cool_down must not be negative, got {self.cool_down}")
        if self.min_shard_lifetime < timedelta(0):
            raise ValueError(f"min_shard_lifetime must not be negative, got {self.min_shard_lifetime}")
        if self.max_events_per_shard < 1:
            raise ValueError(f"max_events_per_shard must be at least 1, got {self.max_events_per_shard}")
        for region, secondary in self.secondary_region.items():
            if secondary == region or secondary not in self.secondary_region:
                raise ValueError(f"secondary_region[{region!r}] must be another configured region, got {secondary!r}")


@dataclass(frozen=True, slots=True)
class ShardPlacement:
    """One shard: where it runs, since when, which events it mirrors."""

    shard_id: str
    region: str
    created_at: datetime
    events: frozenset[str] = frozenset()
    # event → since when its demand has been below the retire threshold (P3);
    # only events in `events`, only while their demand stays low
    quiet_since: Mapping[str, datetime] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class Placement:
    """Every shard, in shard-id order, and the counter that names the next one."""

    shards: tuple[ShardPlacement, ...] = ()
    next_shard_number: int = 1

    def shard(self, shard_id: str) -> ShardPlacement | None:
        return next((shard for shard in self.shards if shard.shard_id == shard_id), None)


@dataclass(frozen=True, slots=True)
class NewShard:
    shard_id: str
    region: str
    events: frozenset[str]  # what it bootstraps with


@dataclass(frozen=True, slots=True)
class ShardChange:
    """Events to add to (bootstrap) and drop from a running shard; its other rows stay."""

    shard_id: str
    add: frozenset[str]
    drop: frozenset[str]


@dataclass(frozen=True, slots=True)
class Plan:
    create: tuple[NewShard, ...]
    retire: tuple[str, ...]
    changes: tuple[ShardChange, ...]  # existing shards only; not the created or retired ones
    placement: Placement  # the state after the plan, for the next call
    shard_map: ShardMap

    @property
    def is_noop(self) -> bool:
        """True when no shard is started, stopped or changed (timers may still have moved)."""
        return not (self.create or self.retire or self.changes)


def _check_forecast(forecast: Forecast, config: PlacementConfig) -> None:
    for region, demands in forecast.items():
        if region not in config.secondary_region:
            raise InvalidForecast(f"forecast names unknown region {region!r}")
        for event_id, demand in demands.items():
            if not (math.isfinite(demand) and demand >= 0):
                raise InvalidForecast(f"forecast demand for {event_id!r} in {region!r} must be ≥ 0, got {demand!r}")


@dataclass(slots=True)
class _Draft:
    """A shard while the plan is being built (mutable, private to `plan`)."""

    shard_id: str
    region: str
    created_at: datetime
    events: set[str]
    quiet_since: dict[str, datetime]
    healthy: bool
    new: bool

    def frozen(self) -> ShardPlacement:
        return ShardPlacement(
            self.shard_id,
            self.region,
            self.created_at,
            frozenset(self.events),
            MappingProxyType({event: self.quiet_since[event] for event in sorted(self.quiet_since)}),
        )


def plan(
    forecast: Forecast,
    placement: Placement,
    config: PlacementConfig,
    now: datetime,
    unhealthy: Collection[str] = frozenset(),
) -> Plan:
    """Decide the next placement (rules P1–P6, S1–S3, M1–M3 in the module docstring).

    Args:
        forecast: region → event → expected requests per second.
        placement: the state returned by the previous plan (``Placement()`` at first).
        config: thresholds and the secondary region of each region.
        now: the manager's clock; only compared with times this module stored.
        unhealthy: ids of shards that failed their health checks.

    Returns the plan; performing it turns ``placement`` into ``plan.placement``.
    Raises InvalidForecast for an unknown region or a negative or non-finite demand.
    """
    _check_forecast(forecast, config)

    def demand(region: str, event_id: str) -> float:
        return forecast.get(region, {}).get(event_id, 0.0)

    drafts = [
        _Draft(
            shard.shard_id,
            shard.region,
            shard.created_at,
            set(shard.events),
            dict(shard.quiet_since),
            shard.shard_id not in unhealthy,
            new=False,
        )
        for shard in placement.shards
    ]

    # P2–P5: keep or drop what is placed.
    for draft in drafts:
        for event_id in sorted(draft.events):
            if demand(draft.region, event_id) >= config.retire_threshold:  # P2
                draft.quiet_since.pop(event_id, None)
                continue
            quiet_since = draft.quiet_since.setdefault(event_id, now)  # P3
            if now - quiet_since >= config.cool_down:  # P5 (else P4: keep)
                draft.events.discard(event_id)
                del draft.quiet_since[event_id]

    # P1: place what is hot and not placed, hottest first so a tie for room goes to demand.
    placed = {(draft.region, event_id) for draft in drafts for event_id in draft.events}
    wanted = sorted(
        (
            (region, event_id, rate)
            for region, demands in forecast.items()
            for event_id, rate in demands.items()
            if rate >= config.create_threshold and (region, event_id) not in placed
        ),
        key=lambda want: (want[0], -want[2], want[1]),
    )
    next_number = placement.next_shard_number
    for region, event_id, _rate in wanted:
        roomy = [
            draft
            for draft in drafts
            if draft.region == region and draft.healthy and len(draft.events) < config.max_events_per_shard
        ]
        if roomy:
            target = min(roomy, key=lambda draft: (-len(draft.events), draft.shard_id))
        else:
            target = _Draft(f"{region}-{next_number}", region, now, set(), {}, healthy=True, new=True)
            next_number += 1
            drafts.append(target)
        target.events.add(event_id)

    # S1: retire the empty shards that have lived long enough.
    retire = sorted(
        draft.shard_id
        for draft in drafts
        if not draft.events and not draft.new and now - draft.created_at >= config.min_shard_lifetime
    )
    survivors = sorted((draft for draft in drafts if draft.shard_id not in retire), key=lambda draft: draft.shard_id)

    before = {shard.shard_id: shard.events for shard in placement.shards}
    create: list[NewShard] = []
    changes: list[ShardChange] = []
    for draft in survivors:
        if draft.new:
            create.append(NewShard(draft.shard_id, draft.region, frozenset(draft.events)))
            continue
        add = frozenset(draft.events - before[draft.shard_id])
        drop = frozenset(before[draft.shard_id] - draft.events)
        if add or drop:
            changes.append(ShardChange(draft.shard_id, add, drop))

    after = Placement(tuple(draft.frozen() for draft in survivors), next_number)
    return Plan(tuple(create), tuple(retire), tuple(changes), after, build_shard_map(after, config, unhealthy))


def build_shard_map(
    placement: Placement, config: PlacementConfig, unhealthy: Collection[str] = frozenset()
) -> ShardMap:
    """The routing table ``GET /v1/shardmap`` serves (rules M1–M3).

    Returns event → region → ordered shard ids (primary, secondary) ending with
    :data:`ORIGIN`. Call it again when health changes; placement need not.
    """
    mirror: dict[tuple[str, str], str] = {}  # (region, event) → shard id
    for shard in placement.shards:
        for event_id in shard.events:
            mirror[(shard.region, event_id)] = shard.shard_id
    served_regions: dict[str, set[str]] = {}  # event → regions with an entry
    for region, event_id in mirror:
        served_regions.setdefault(event_id, set()).add(region)
        for other, secondary in config.secondary_region.items():
            if secondary == region:
                served_regions[event_id].add(other)

    shard_map: dict[str, Mapping[str, tuple[str, ...]]] = {}
    for event_id in sorted(served_regions):
        routes: dict[str, tuple[str, ...]] = {}
        for region in sorted(served_regions[event_id]):
            candidates = (
                mirror.get((region, event_id)),
                mirror.get((config.secondary_region.get(region, ""), event_id)),
            )
            shards = tuple(shard for shard in candidates if shard is not None and shard not in unhealthy)
            routes[region] = (*shards, ORIGIN)
        shard_map[event_id] = MappingProxyType(routes)
    return MappingProxyType(shard_map)
