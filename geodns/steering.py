"""Which POPs answer a client: nearest healthy first, weighted, load-aware.

Pure: plain data in (the client's location, the registered POPs, their health),
a :class:`~geodns.model.Choice` out. No sockets, no clocks, no randomness — the
same inputs always give the same answer, which is what makes answers cacheable
by resolvers (per ECS scope) and testable here.

The rules, in the order they apply:

1. A drained POP is never answered.
2. Only healthy POPs are considered. A POP with no health entry is unhealthy
   (the health tracker starts every POP unhealthy until proven; rule 6 keeps a
   fresh server useful before the first checks complete).
3. Known location: POPs are ranked by *effective distance* — the great-circle
   (haversine) distance from the client divided by the POP's weight, so a
   weight-2 POP 1000 km away ranks level with a weight-1 POP 500 km away. Ties
   go to the smaller POP id.
4. Load shedding: a POP whose reported load exceeds its capacity sheds the share
   ``1 - capacity / load`` of its clients to the POPs ranked after it. Which
   clients are shed is decided by `client_key` (e.g. a hash of the client
   network) mixed with the POP id and mapped to [0, 1): one client network
   always gets the same answer, and each overloaded POP sheds its own share
   independently of the others (the same raw key for every POP would make a
   second overloaded POP shed mostly the first one's overflow). A shed POP is
   demoted behind every POP that kept the client, not dropped, so a lone
   overloaded POP is still answered.
5. Unknown location (`location` is None): the healthy POPs of `default_pool`,
   in the pool's order (load shedding applies). If none of them is healthy, all
   healthy POPs, rotated by `client_key` so unknown clients spread out instead
   of all landing on the alphabetically first POP.
6. No healthy POP at all: the nearest non-drained POPs (rule 3 ranking; for an
   unknown location the default pool first, then by id) are answered anyway and
   the choice is flagged ``all_down`` — a possibly-dead POP beats NXDOMAIN. If
   every POP is drained the choice is empty, still flagged ``all_down``.

At most `count` POPs are returned, best first, without duplicates.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Final

from geodns.model import Choice, Location, Pop, PopHealth
from ops.geo import great_circle_km

# A POP absent from the health map has never passed a check (rule 2).
UNKNOWN_HEALTH: Final = PopHealth(healthy=False)

# Bytes of the blake2b digest turned into a fraction; 8 bytes = 64 bits gives a
# fraction resolution far below any share worth shedding.
_FRACTION_DIGEST_BYTES: Final = 8
_FRACTION_SCALE: Final = float(1 << (8 * _FRACTION_DIGEST_BYTES))
# Fixed-width encoding of client_key for hashing: 16 bytes covers a full IPv6
# address as an integer; larger or negative keys are reduced modulo 2**128.
_CLIENT_KEY_BYTES: Final = 16
_CLIENT_KEY_MODULUS: Final = 1 << (8 * _CLIENT_KEY_BYTES)


def client_fraction(client_key: int, salt: str = "") -> float:
    """Map `client_key` (and a salt such as a POP id) to a stable value in [0, 1).

    Stable across processes and machines (unlike the built-in ``hash`` of a str,
    which is randomised per process), so every GeoDNS replica agrees.
    """
    key = (client_key % _CLIENT_KEY_MODULUS).to_bytes(_CLIENT_KEY_BYTES, "big")
    digest = hashlib.blake2b(key + salt.encode("utf-8"), digest_size=_FRACTION_DIGEST_BYTES).digest()
    return int.from_bytes(digest, "big") / _FRACTION_SCALE


def shed_share(pop: Pop, health: PopHealth) -> float:
    """The share of clients `pop` sheds: ``1 - capacity/load`` when overloaded, else 0.

    A missing or non-finite load report sheds nothing (we only act on what the
    POP told us); a non-positive capacity with any load sheds everything.
    """
    load = health.load
    if load is None or not math.isfinite(load) or load <= pop.capacity:
        return 0.0
    if pop.capacity <= 0:
        return 1.0
    return 1.0 - pop.capacity / load


def choose_pops(
    location: Location | None,
    pops: Sequence[Pop],
    health: Mapping[str, PopHealth],
    *,
    count: int,
    default_pool: Sequence[str],
    client_key: int,
) -> Choice:
    """Pick up to `count` POPs for a client, best first (rules in the module docstring).

    Args:
        location: the client network's location, or None when unknown.
        pops: every registered POP (drained ones included); ids must be unique.
        health: the health tracker's view by POP id; missing means unhealthy.
        count: how many POPs to answer with, at least 1.
        default_pool: POP ids for clients of unknown location, in preference order.
        client_key: a stable integer per client network (e.g. the network address
            as an int); decides which clients an overloaded POP sheds.

    Returns:
        The chosen POPs; ``shed_from`` names the POPs that shed this client.

    Raises:
        ValueError: `count` < 1, duplicate POP ids, or a POP weight that is not
            a positive finite number (the registry must reject those).
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    _check_pops(pops)
    candidates = [pop for pop in pops if not pop.drained]
    healthy = [pop for pop in candidates if health.get(pop.id, UNKNOWN_HEALTH).healthy]

    if not healthy:
        if location is not None:
            ordered = _rank_by_distance(location, candidates)
        else:
            ordered = _default_order(candidates, default_pool)
        return Choice(pops=tuple(ordered[:count]), all_down=True)

    if location is not None:
        ordered = _rank_by_distance(location, healthy)
    else:
        in_pool = _pool_members(healthy, default_pool)
        ordered = in_pool or _rotate(sorted(healthy, key=lambda pop: pop.id), client_key)
    kept, shed = _apply_shedding(ordered, health, client_key)
    return Choice(pops=tuple((kept + shed)[:count]), shed_from=tuple(pop.id for pop in shed))


def _check_pops(pops: Sequence[Pop]) -> None:
    seen: set[str] = set()
    for pop in pops:
        if pop.id in seen:
            raise ValueError(f"duplicate POP id {pop.id!r}")
        seen.add(pop.id)
        if not (math.isfinite(pop.weight) and pop.weight > 0):
            raise ValueError(f"POP {pop.id!r} has weight {pop.weight!r}; it must be a positive finite number")


def _effective_distance(location: Location, pop: Pop) -> float:
    return great_circle_km(location.lat, location.lon, pop.lat, pop.lon) / pop.weight


def _rank_by_distance(location: Location, pops: Sequence[Pop]) -> list[Pop]:
    return sorted(pops, key=lambda pop: (_effective_distance(location, pop), pop.id))


def _pool_members(pops: Sequence[Pop], default_pool: Sequence[str]) -> list[Pop]:
    """The members of `pops` named in `default_pool`, in the pool's order, once each."""
    by_id = {pop.id: pop for pop in pops}
    members: list[Pop] = []
    for pop_id in dict.fromkeys(default_pool):  # dedupe, keep order
        if pop_id in by_id:
            members.append(by_id[pop_id])
    return members


def _default_order(pops: Sequence[Pop], default_pool: Sequence[str]) -> list[Pop]:
    """All-down order for an unknown location: the default pool, then the rest by id."""
    members = _pool_members(pops, default_pool)
    chosen = {pop.id for pop in members}
    return members + sorted((pop for pop in pops if pop.id not in chosen), key=lambda pop: pop.id)


def _rotate(pops: list[Pop], client_key: int) -> list[Pop]:
    start = int(client_fraction(client_key) * len(pops))
    return pops[start:] + pops[:start]


def _apply_shedding(
    ordered: Sequence[Pop], health: Mapping[str, PopHealth], client_key: int
) -> tuple[list[Pop], list[Pop]]:
    """Split `ordered` into POPs that keep this client and POPs that shed it (rule 4)."""
    kept: list[Pop] = []
    shed: list[Pop] = []
    for pop in ordered:
        share = shed_share(pop, health.get(pop.id, UNKNOWN_HEALTH))
        if share > 0 and client_fraction(client_key, pop.id) < share:
            shed.append(pop)
        else:
            kept.append(pop)
    return kept, shed
