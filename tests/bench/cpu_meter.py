"""Where the CPU went during one benchmark phase (Linux /proc; zeros elsewhere).

On a two-core machine the load generator, the origin and PostgreSQL share the
cores, so a throughput figure means little without knowing who was busy:
an origin at 100 % of a core is CPU-bound, one at 40 % is waiting on something.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True, slots=True)
class CpuShare:
    """CPU used during a phase, in cores (1.0 = one core busy the whole time)."""

    origin: float  # the origin processes being measured
    load: float  # this script and the children it waited for (wrk)
    machine: float  # every process on the machine
    cores: int

    @property
    def rest(self) -> float:
        """Everything else: the PostgreSQL server, mostly."""
        return max(0.0, self.machine - self.origin - self.load)


def _process_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # utime and stime are fields 14 and 15 of stat(5); fields[0] is field 3.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _machine_busy_seconds() -> float:
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(value) for value in first[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def _own_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class CpuMeter:
    """`start()` then `stop()` around a phase; `stop()` returns the shares."""

    def __init__(self, origin_pids: list[int]) -> None:
        self._pids = origin_pids
        self._started = 0.0
        self._origin = 0.0
        self._load = 0.0
        self._machine = 0.0

    def start(self) -> None:
        self._started = time.monotonic()
        self._origin = sum(_process_seconds(pid) for pid in self._pids)
        self._load = _own_seconds()
        self._machine = _machine_busy_seconds()

    def stop(self) -> CpuShare:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        origin = sum(_process_seconds(pid) for pid in self._pids) - self._origin
        load = _own_seconds() - self._load
        machine = _machine_busy_seconds() - self._machine
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return CpuShare(origin / elapsed, load / elapsed, machine / elapsed, cores)
