"""`pop retire`: deregister from GeoDNS, wait out the DNS TTL, drain, stop. Never undoes a step.

Once a POP is out of DNS it is never put back by accident, and it is never
stopped while GeoDNS may still hand out its address.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ops.pop.deploy import deregister
from ops.pop.peers import edge_health
from ops.pop.process import PopRecord, state_path, stop_process
from ops.pop.steps import POLL_INTERVAL, PopError, Step
from ops.settings import SECOND

# Retire: traffic counts as drained when the POP's request counter moved by no
# more than our own probe for this long.
DRAIN_QUIET: Final = 2 * SECOND


@dataclass(frozen=True, slots=True)
class RetirePlan:
    record: PopRecord
    geodns_admin: str
    token: str
    dns_ttl: float
    ttl_source: str
    drain_timeout: float
    stop_grace: float
    run_dir: Path


class Retirement:
    def __init__(self, plan: RetirePlan) -> None:
        self.plan = plan

    def steps(self) -> list[Step]:
        plan, record = self.plan, self.plan.record
        return [
            Step(f"deregister {record.name} from GeoDNS at {plan.geodns_admin}", self.deregister),
            Step(f"wait out the DNS TTL: {plan.dns_ttl:g} s ({plan.ttl_source})", self.wait_ttl),
            Step(f"drain: wait until requests stop (at most {plan.drain_timeout:g} s)", self.drain),
            Step(self._stop_title(), self.stop),
        ]

    def _stop_title(self) -> str:
        if self.plan.record.pid is None:
            return "stop"
        return f"stop pid {self.plan.record.pid} (SIGTERM, SIGKILL after {self.plan.stop_grace:g} s)"

    def deregister(self) -> str:
        return deregister(self.plan.geodns_admin, self.plan.record.name, self.plan.token)

    def wait_ttl(self) -> str:
        time.sleep(self.plan.dns_ttl)
        return f"waited {self.plan.dns_ttl:g} s: answers cached by resolvers have expired"

    def drain(self) -> str:
        """Wait until the request counter moves by at most our own probe for DRAIN_QUIET seconds."""
        record = self.plan.record
        deadline = time.monotonic() + self.plan.drain_timeout
        try:
            last = _request_count(edge_health(record))
        except PopError as exc:
            return f"nothing to drain: {exc}"
        quiet_since = time.monotonic()
        while True:
            time.sleep(POLL_INTERVAL)
            now = time.monotonic()
            try:
                count = _request_count(edge_health(record))
            except PopError as exc:
                return f"stopped following the drain: {exc}"
            if count - last > 1:  # more than our own probe arrived
                quiet_since = now
            last = count
            if now - quiet_since >= DRAIN_QUIET:
                return f"no requests for {DRAIN_QUIET:g} s"
            if now >= deadline:
                return "deadline reached with requests still arriving: the POP's shutdown grace finishes them"

    def stop(self) -> str:
        record = self.plan.record
        if record.pid is None:
            return "skipped: attached POP, not started by `pop deploy`: stop it where it runs"
        result = stop_process(record.pid, record.name, self.plan.stop_grace)
        with contextlib.suppress(FileNotFoundError):
            state_path(self.plan.run_dir, record.name).unlink()
        return result


def _request_count(health: dict[str, object]) -> int:
    """The `requests` counter of a POP's health document. Raises PopError when it is not a count."""
    count = health.get("requests", 0)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise PopError(f"its health document's requests is {count!r}, not a count: cannot tell when it drained")
    return count
