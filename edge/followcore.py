"""What the POP's two change-feed followers share: callbacks, resets, failures, backoff, outages, lag.

The HTTP follower (edge.feedfollow) and the Redis Streams follower
(edge.streamfollow) read different transports but keep the same promises to
the POP, and those promises live here, once, in :class:`FollowerCore`, which
both subclass:

- every change goes to ``on_change`` in order; a callback that raises is a
  failure like an unreachable upstream (:class:`CallbackFailed`), so the
  record is delivered again (at-least-once);
- a reset (``on_reset``) is never skipped: one whose callback raised stays
  pending and is run again before the next read (:meth:`_run_pending_reset`);
- failures back off exponentially with jitter (ops.backoff), and the backoff,
  the failure count and the outage clock start over only once a batch was
  applied (:meth:`_recovered`), never merely because the upstream answered:
  a callback that keeps raising is retried ever more slowly;
- an outage longer than ``max_outage`` purges once (see edge.feedfollow for
  why during the outage rather than after); the wait before a retry is cut
  short so that the purge happens at the deadline, not up to one delay later;
- ``lag_seconds`` is an upper bound on how long a committed change may have
  gone unapplied: 0 while connected and caught up, otherwise the time since
  the later of the last applied record's HLC wall time (never past our own
  clock) and the last time we knew we were at the head.

No I/O here and no waiting: :meth:`_failed` records a failure and returns how
long to wait, the adapter sleeps, then calls :meth:`_check_outage`. Clocks are
passed in. The figures both report (:class:`FollowHealth`, which each
follower's status extends with where it reads from), the pure helpers both
parsers use (:func:`parse_position`, :func:`validate_retry_options`) and the
defaults they share are here too.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from edge.errors import PeerError
from ops.backoff import Backoff
from origin.changefeed import Position
from origin.errors import BadRequest

log = logging.getLogger("boxoffice.edge.feed")

SECOND: Final = 1.0
DEFAULT_CONNECT_TIMEOUT: Final = 2 * SECOND
DEFAULT_BACKOFF_INITIAL: Final = 0.1 * SECOND
DEFAULT_BACKOFF_MAX: Final = 5 * SECOND
# Item documents have max-age 2 s and stale-while-revalidate 30 s at the
# origin: past 30 s of a blind POP, its entries are older than the origin
# ever lets a cache serve without revalidating.
DEFAULT_MAX_OUTAGE: Final = 30 * SECOND
# `last_error` is for health pages and logs: the first line of a long error is enough.
_MAX_ERROR_CHARS: Final = 500

OnChange = Callable[[str, int, dict[str, Any]], None]
OnReset = Callable[[str], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class FollowHealth:
    """What `/_edge/health` and `/metrics` report about any follower; each adds where it reads from."""

    position: str | None
    connected: bool
    caught_up: bool
    # An upper bound on how long a committed change may have gone unapplied:
    # 0 while connected and at the head; otherwise now minus the later of the
    # last applied record's HLC wall time and the last time we were at the head.
    lag_seconds: float | None
    applied: int
    resets: int
    last_reset_reason: str | None
    last_error: str | None
    consecutive_failures: int

    def _health_document(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "connected": self.connected,
            "caught_up": self.caught_up,
            "lag_seconds": None if self.lag_seconds is None else round(self.lag_seconds, 3),
            "applied": self.applied,
            "resets": self.resets,
            "last_reset_reason": self.last_reset_reason,
            "last_error": self.last_error,
            "consecutive_failures": self.consecutive_failures,
        }


Status = TypeVar("Status", bound=FollowHealth)


class CallbackFailed(Exception):
    """on_change or on_reset raised; retried like an upstream failure (at-least-once)."""


def parse_position(text: object, what: str) -> Position:
    """`EPOCH:SEQ` as sent by the upstream or the publisher. Raises PeerError naming `what`."""
    if not isinstance(text, str):
        raise PeerError(f"{what} is not a position string")
    try:
        return Position.parse(text)
    except BadRequest as exc:
        raise PeerError(f"{what}: {exc.message}") from None


def validate_retry_options(backoff_initial: float, backoff_max: float, max_outage: float | None) -> None:
    """The checks of the options both followers share; raise ValueError naming the first bad one.

    Each follower checks first that its durations are finite and positive.
    """
    if backoff_max < backoff_initial:
        raise ValueError("backoff_max: must be at least backoff_initial")
    if max_outage is not None and not (math.isfinite(max_outage) and max_outage > 0):
        raise ValueError("max_outage: must be a positive number of seconds, or None")


class FollowerCore:
    """The state and the decisions of a change-feed follower, without its transport.

    Args:
        name: what the logs call the feed (the upstream URL or the stream key).
        position: where following starts (None: not known yet).
        on_change: called once per change, in feed order. Must not block.
        on_reset: called with a reason when the POP must purge every item entry.
        backoff: spaces the retries after failures.
        max_outage: purge once when failures last this long; None never does.
        pending_reset: a reset to run before the first read (the start purge), or None.
        physical_time: POSIX seconds, for the lag figure.
        monotonic: seconds of a clock that never jumps, for the outage clock.
    """

    def __init__(
        self,
        name: str,
        position: Position | None,
        on_change: OnChange,
        on_reset: OnReset,
        *,
        backoff: Backoff,
        max_outage: float | None,
        pending_reset: str | None,
        physical_time: Callable[[], float],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._name = name
        self._position = position  # every change up to here is applied
        self._on_change = on_change
        self._on_reset = on_reset
        self._backoff = backoff
        self._max_outage = max_outage
        self._pending_reset = pending_reset
        self._physical_time = physical_time
        self._monotonic = monotonic
        self._connected = False
        self._caught_up = False
        self._verified_at: float | None = None  # every change committed before this POSIX time is applied
        self._applied = 0
        self._resets = 0
        self._last_reset_reason: str | None = None
        self._last_error: str | None = None
        self._failures = 0
        self._outage_since: float | None = None  # monotonic
        self._outage_reset_done = False
        self._retry_delay: float | None = None  # the wait before the current retry; None when not retrying

    # State for health and metrics -------------------------------------------

    @property
    def position(self) -> str | None:
        return None if self._position is None else self._position.encode()

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def applied(self) -> int:
        return self._applied

    @property
    def resets(self) -> int:
        return self._resets

    @property
    def last_reset_reason(self) -> str | None:
        return self._last_reset_reason

    @property
    def last_error(self) -> str | None:
        return self._last_error

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    @property
    def retry_delay(self) -> float | None:
        """Seconds waited before the current retry (it grows while failures repeat); None once recovered."""
        return self._retry_delay

    @property
    def lag_seconds(self) -> float | None:
        if self._connected and self._caught_up:
            return 0.0
        if self._verified_at is None:
            return None
        return max(0.0, self._physical_time() - self._verified_at)

    def _status(self, status_type: type[Status], **transport: Any) -> Status:
        """A `status_type` (a FollowHealth) with this core's figures and the follower's own `transport` fields."""
        return status_type(
            position=self.position,
            connected=self._connected,
            caught_up=self._caught_up,
            lag_seconds=self.lag_seconds,
            applied=self._applied,
            resets=self._resets,
            last_reset_reason=self._last_reset_reason,
            last_error=self._last_error,
            consecutive_failures=self._failures,
            **transport,
        )

    # Changes and resets -----------------------------------------------------

    def _apply_change(self, item_id: str, version: int, patch: dict[str, Any]) -> None:
        """Hand one change to the POP. Raises CallbackFailed when on_change raised."""
        try:
            self._on_change(item_id, version, patch)
        except Exception as exc:
            log.exception("feed %s: on_change(%s, %d) failed", self._name, item_id, version)
            raise CallbackFailed(f"on_change failed: {exc!r}") from exc
        self._applied += 1

    def _applied_stamp(self, hlc_wall: float | None) -> None:
        """A record stamped `hlc_wall` (POSIX seconds, None: unknown) was applied: every change before it was."""
        if hlc_wall is None:
            return
        # Never past our own clock: one stamp from an upstream whose clock runs ahead would otherwise
        # hold the lag figure at 0 through any later outage.
        stamped = min(hlc_wall, self._physical_time())
        self._verified_at = max(self._verified_at or stamped, stamped)

    def _reset(self, reason: str) -> None:
        """Tell the POP to purge. Raises CallbackFailed when on_reset raised; the reset then stays pending."""
        self._resets += 1
        self._last_reset_reason = reason
        try:
            self._on_reset(reason)
        except Exception as exc:
            log.exception("feed %s: on_reset failed", self._name)
            self._pending_reset = reason  # purge again on the next attempt: a reset is never skipped
            raise CallbackFailed(f"on_reset failed: {exc!r}") from exc

    def _run_pending_reset(self) -> None:
        """Run the reset left pending (at start, after a re-snapshot, or by a failing on_reset)."""
        if self._pending_reset is not None:
            self._reset(self._pending_reset)
            self._pending_reset = None

    # Failures and outages ---------------------------------------------------

    def _recovered(self) -> None:
        """A batch was applied (perhaps an empty one): the failures, the backoff and the outage are over."""
        if self._outage_since is not None:
            log.info("feed %s: applying again after %d failure(s)", self._name, self._failures)
        self._connected = True
        self._failures = 0
        self._outage_since = None
        self._outage_reset_done = False
        self._backoff.reset()
        self._retry_delay = None

    def _failed(self, exc: Exception) -> float:
        """Record a failure; return the seconds to wait before retrying (then call :meth:`_check_outage`)."""
        self._last_error = f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS]
        self._connected = False
        self._caught_up = False
        self._failures += 1
        now = self._monotonic()
        if self._outage_since is None:
            self._outage_since = now
            log.warning("feed %s: %s; backing off", self._name, self._last_error)
        else:
            log.debug("feed %s: failure %d: %s", self._name, self._failures, self._last_error)
        delay = self._backoff.next_delay()
        if self._max_outage is not None and not self._outage_reset_done:
            # Wake at the outage deadline rather than up to one delay past it.
            delay = min(delay, max(0.0, self._outage_since + self._max_outage - now))
        self._retry_delay = delay
        return delay

    def _check_outage(self) -> None:
        """Purge once per outage, when failures have lasted `max_outage`."""
        max_outage = self._max_outage
        if max_outage is None or self._outage_since is None or self._outage_reset_done:
            return
        down_for = self._monotonic() - self._outage_since
        if down_for >= max_outage:
            self._outage_reset_done = True
            # A failing on_reset leaves the reset pending; the loop runs it before its next read.
            with contextlib.suppress(CallbackFailed):
                self._reset(f"feed unreachable for {down_for:.1f} s (max_outage {max_outage:g} s): {self._last_error}")
