"""The POP registry: POPs and pools as configured, changed at runtime by the admin API.

Every change bumps `generation`, which the answerer watches to drop answers it
packed for the old registry. Pure: the admin API and SIGHUP reload call it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from geodns.config import PoolConfig, ZoneConfig
from geodns.model import Pop


class UnknownPop(KeyError):
    """No POP with that id is registered."""


class PopInUse(ValueError):
    """The POP is named by a pool in the config file and cannot be removed at runtime."""


class PopRegistry:
    def __init__(self, pops: Mapping[str, Pop], pools: Mapping[str, PoolConfig]) -> None:
        self._pops = dict(pops)
        self._pools = dict(pools)
        self.generation = 0

    @classmethod
    def from_config(cls, config: ZoneConfig) -> PopRegistry:
        return cls(config.pops, config.pools)

    @property
    def pops(self) -> Mapping[str, Pop]:
        return self._pops

    @property
    def pools(self) -> Mapping[str, PoolConfig]:
        return self._pools

    def get(self, pop_id: str) -> Pop:
        try:
            return self._pops[pop_id]
        except KeyError:
            raise UnknownPop(pop_id) from None

    def candidates(self, pool_id: str) -> list[Pop]:
        """The POPs a pool steers over: its listed members, or every registered POP."""
        pool = self._pools.get(pool_id)
        if pool is None or pool.pops is None:
            return list(self._pops.values())
        return [self._pops[pop_id] for pop_id in pool.pops if pop_id in self._pops]

    def default_pool(self, pool_id: str) -> tuple[str, ...]:
        pool = self._pools.get(pool_id)
        return () if pool is None else pool.default

    def put(self, pop: Pop) -> bool:
        """Add or replace a POP; returns True when it was new."""
        created = pop.id not in self._pops
        self._pops[pop.id] = pop
        self.generation += 1
        return created

    def drain(self, pop_id: str, drained: bool = True) -> Pop:
        pop = dataclasses.replace(self.get(pop_id), drained=drained)
        self._pops[pop_id] = pop
        self.generation += 1
        return pop

    def remove(self, pop_id: str) -> None:
        self.get(pop_id)
        named_by = [pool.id for pool in self._pools.values() if pop_id in (pool.pops or ()) + pool.default]
        if named_by:
            raise PopInUse(f"POP {pop_id} is named by pool(s) {', '.join(named_by)}; drain it, or edit the config")
        del self._pops[pop_id]
        self.generation += 1

    def replace(self, config: ZoneConfig) -> None:
        """Take a reloaded config file's POPs and pools (SIGHUP)."""
        self._pops = dict(config.pops)
        self._pools = dict(config.pools)
        self.generation += 1
