"""A circuit breaker per upstream, with passive health: the decision core of failover.

The POP never probes its upstreams on its own; it learns their health from the
requests it sends anyway ("passive health", as Envoy's outlier detection and
nginx's ``max_fails`` do). After `failure_threshold` failures **in a row** the
breaker opens and the POP stops sending to that upstream for `open_for`
seconds; then one trial request decides whether it closes again or stays open
for twice as long (up to `max_open_for`).

Consecutive failures, not an error rate over a window: a POP sends each shard
anything from a trickle to thousands of requests a second, and a windowed rate
needs a minimum volume and a window length tuned to traffic, while "N in a row"
reads the same at any rate and costs one counter. A flapping upstream whose
failures never line up N in a row stays closed; the failover it still gets per
request (the adapter moves on after any failure) covers that case.

State table (``allow`` asks "may a request go now?", ``record`` reports how one
ended; `period` starts at `open_for`)::

    state      event               condition                     next       effect
    ---------  ------------------  ----------------------------  ---------  ------------------------------------
    CLOSED     allow                                             CLOSED     True
    CLOSED     record(success)                                   CLOSED     failures = 0
    CLOSED     record(failure)     failures + 1 < threshold      CLOSED     failures += 1
    CLOSED     record(failure)     failures + 1 >= threshold     OPEN       open_until = now + period
    OPEN       allow               now < open_until              OPEN       False
    OPEN       allow               now >= open_until             HALF_OPEN  True: this request is the trial,
                                                                            trial_expires = now + trial_timeout
    OPEN       record(any)                                       OPEN       ignored (see rule 2)
    HALF_OPEN  allow               now < trial_expires           HALF_OPEN  False: one trial at a time
    HALF_OPEN  allow               now >= trial_expires          HALF_OPEN  True: a new trial (rule 3),
                                                                            trial_expires = now + trial_timeout
    HALF_OPEN  record(success)                                   CLOSED     failures = 0, period = open_for
    HALF_OPEN  record(failure)                                   OPEN       period = min(2 * period, max_open_for),
                                                                            open_until = now + period

Rules the table encodes:

1. Only ``allow`` moves OPEN to HALF_OPEN, so the breaker never lets a request
   through while OPEN before `open_until` (at least `open_for` after opening).
2. Results recorded while OPEN belong to requests that started before the
   breaker opened (or to a caller that went ahead regardless); they say nothing
   about the upstream *now*, so they neither close it nor extend the period.
3. A trial whose result never comes back (its caller was cancelled) must not
   wedge the breaker in HALF_OPEN, so after `trial_timeout` another request may
   become the trial.
4. A result recorded in HALF_OPEN is taken as the trial's, even when it comes
   from a request that started earlier: it is a real answer from that upstream.

Latency is tracked apart from the states, as an exponentially weighted moving
average for the health report. The breaker performs no I/O and reads no clock:
`now` is passed in, from a monotonic clock (a wall clock can jump back and
reopen or hold open a breaker for hours).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

SECOND: Final = 1.0

# Five in a row: a healthy loopback or LAN upstream essentially never fails
# five consecutive requests, while one dying shard is skipped after a handful
# of requests instead of costing every request a timeout.
DEFAULT_FAILURE_THRESHOLD: Final = 5

# Long enough that a restarting shard is not hammered by every POP, short
# enough that a shard back after a blip takes traffic again within seconds.
DEFAULT_OPEN_FOR: Final = 5 * SECOND

# The open period doubles per failed trial up to this: a shard that stays down
# gets one trial a minute from each POP rather than a storm.
DEFAULT_MAX_OPEN_FOR: Final = 60 * SECOND

# Longer than any single upstream request the POP allows (its total timeout),
# so a trial that is merely slow is not joined by a second one.
DEFAULT_TRIAL_TIMEOUT: Final = 30 * SECOND

# Weight of the newest sample in the latency EWMA: 0.2 follows a change within
# about ten requests (0.8**10 ≈ 0.1) without jumping on one slow response.
LATENCY_EWMA_WEIGHT: Final = 0.2


class BreakerState(enum.Enum):
    """Where a breaker is in its cycle (see the module's state table)."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """How quickly a breaker opens and how long it stays open.

    Attributes:
        failure_threshold: consecutive failures that open a closed breaker (>= 1).
        open_for: seconds the first open period lasts (> 0).
        max_open_for: the cap for the doubling open period (>= open_for).
        trial_timeout: seconds after which an unanswered half-open trial is
            given up and another request may become the trial (> 0).
    """

    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    open_for: float = DEFAULT_OPEN_FOR
    max_open_for: float = DEFAULT_MAX_OPEN_FOR
    trial_timeout: float = DEFAULT_TRIAL_TIMEOUT

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, not {self.failure_threshold}")
        if not self.open_for > 0:
            raise ValueError(f"open_for must be positive, not {self.open_for}")
        if not self.max_open_for >= self.open_for:
            raise ValueError(f"max_open_for ({self.max_open_for}) must be at least open_for ({self.open_for})")
        if not self.trial_timeout > 0:
            raise ValueError(f"trial_timeout must be positive, not {self.trial_timeout}")


class CircuitBreaker:
    """One upstream's breaker and latency average. Not thread-safe: one per event loop."""

    __slots__ = (
        "_config",
        "_consecutive_failures",
        "_ewma_latency",
        "_open_period",
        "_open_until",
        "_state",
        "_trial_started_at",
    )

    def __init__(self, config: BreakerConfig | None = None) -> None:
        self._config = config if config is not None else BreakerConfig()
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._open_period = self._config.open_for
        self._open_until = 0.0
        self._trial_started_at = 0.0
        self._ewma_latency: float | None = None

    @property
    def config(self) -> BreakerConfig:
        return self._config

    @property
    def state(self) -> BreakerState:
        """The state as of the last ``allow`` or ``record`` call.

        An OPEN breaker whose period has run out still reads OPEN here until
        the next ``allow`` turns it HALF_OPEN (rule 1).
        """
        return self._state

    @property
    def consecutive_failures(self) -> int:
        """Failures in a row since the last success (kept while open, for the health report)."""
        return self._consecutive_failures

    @property
    def open_until(self) -> float | None:
        """When an OPEN breaker next lets a trial through; None in the other states."""
        return self._open_until if self._state is BreakerState.OPEN else None

    @property
    def open_period(self) -> float:
        """The length of the current (or next) open period, in seconds."""
        return self._open_period

    @property
    def ewma_latency(self) -> float | None:
        """The moving average of observed latencies in seconds; None before the first one."""
        return self._ewma_latency

    def allow(self, now: float) -> bool:
        """Whether a request may go to this upstream at `now` (monotonic seconds).

        A True answer in OPEN or HALF_OPEN makes that request the trial: the
        caller must ``record`` its outcome.
        """
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            if now < self._open_until:
                return False
            self._state = BreakerState.HALF_OPEN
            self._trial_started_at = now
            return True
        # HALF_OPEN: one trial at a time, unless the trial was lost (rule 3).
        if now - self._trial_started_at < self._config.trial_timeout:
            return False
        self._trial_started_at = now
        return True

    def record(self, success: bool, now: float, *, latency: float | None = None) -> None:
        """Report how a request that went to this upstream ended.

        Args:
            success: the upstream answered usefully (any status below 500).
            now: monotonic seconds when it ended.
            latency: seconds the request took, when it got an answer; feeds
                the moving average in every state.
        """
        if latency is not None:
            self.observe_latency(latency)
        if self._state is BreakerState.OPEN:
            return  # rule 2
        if success:
            self._consecutive_failures = 0
            if self._state is BreakerState.HALF_OPEN:
                self._state = BreakerState.CLOSED
                self._open_period = self._config.open_for
            return
        self._consecutive_failures += 1
        if self._state is BreakerState.HALF_OPEN:
            self._open_period = min(2 * self._open_period, self._config.max_open_for)
            self._open(now)
        elif self._consecutive_failures >= self._config.failure_threshold:
            self._open(now)

    def observe_latency(self, seconds: float) -> None:
        """Fold one latency sample (seconds, >= 0) into the moving average."""
        seconds = max(seconds, 0.0)
        if self._ewma_latency is None:
            self._ewma_latency = seconds
        else:
            self._ewma_latency += LATENCY_EWMA_WEIGHT * (seconds - self._ewma_latency)

    def _open(self, now: float) -> None:
        self._state = BreakerState.OPEN
        self._open_until = now + self._open_period
