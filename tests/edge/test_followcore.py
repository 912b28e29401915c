"""edge.followcore: the resets, failures, backoff, outages and lag both change-feed followers share.

Pure: the core is driven with scripted failures and two hand-moved clocks
(monotonic for the outage, POSIX for the lag); jitter is pinned with a fixed
`rand`. The followers' own tests cover the same rules over real transports.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from edge.errors import PeerError
from edge.followcore import CallbackFailed, FollowerCore, parse_position, validate_retry_options
from ops.backoff import Backoff

NOW = 1_800_000_000.0


@dataclass
class Clock:
    now: float

    def __call__(self) -> float:
        return self.now


@dataclass
class Pop:
    """The POP's callbacks; each fails while its `failing` flag is set."""

    changes: list[tuple[str, int]] = field(default_factory=list)
    resets: list[str] = field(default_factory=list)
    change_failing: bool = False
    reset_failing: bool = False

    def on_change(self, item_id: str, version: int, patch: dict[str, Any]) -> None:
        if self.change_failing:
            raise RuntimeError("cache is full")
        self.changes.append((item_id, version))

    def on_reset(self, reason: str) -> None:
        if self.reset_failing:
            raise RuntimeError("purge failed")
        self.resets.append(reason)


def make_core(
    pop: Pop, *, max_outage: float | None = 1.0, pending_reset: str | None = None
) -> tuple[FollowerCore, Clock, Clock]:
    monotonic, posix = Clock(100.0), Clock(NOW)
    core = FollowerCore(
        "feed-under-test",
        None,
        pop.on_change,
        pop.on_reset,
        backoff=Backoff(0.1, 0.4, lambda: 0.0),  # rand 0: each delay is half its ceiling
        max_outage=max_outage,
        pending_reset=pending_reset,
        physical_time=posix,
        monotonic=monotonic,
    )
    return core, monotonic, posix


def test_backoff_grows_while_failures_repeat_and_starts_over_only_once_recovered() -> None:
    core, _, _ = make_core(Pop(), max_outage=None)
    delays = [core._failed(OSError("refused")) for _ in range(5)]
    assert delays == [0.05, 0.1, 0.2, 0.2, 0.2]
    assert (core.consecutive_failures, core.retry_delay, core.connected) == (5, 0.2, False)
    assert core.last_error == "OSError: refused"
    core._recovered()
    assert (core.consecutive_failures, core.retry_delay, core.connected) == (0, None, True)
    assert core._failed(OSError("refused")) == 0.05


def test_an_outage_purges_once_at_its_deadline_and_again_after_a_recovery() -> None:
    pop = Pop()
    core, monotonic, _ = make_core(pop, max_outage=1.0)
    purged_at = []
    for _ in range(10):
        monotonic.now += core._failed(TimeoutError("no answer"))
        core._check_outage()
        purged_at += [monotonic.now] * (len(pop.resets) - len(purged_at))
    # The wait before the deadline was cut short to end exactly at it, and the purge came once.
    assert purged_at == [pytest.approx(101.0)]
    assert pop.resets[0].startswith("feed unreachable for 1.0 s (max_outage 1 s): TimeoutError: no answer")
    assert core.last_reset_reason == pop.resets[0] and core.resets == 1
    core._recovered()
    for _ in range(10):
        monotonic.now += core._failed(TimeoutError("no answer"))
        core._check_outage()
    assert len(pop.resets) == 2


def test_no_outage_purge_when_max_outage_is_none() -> None:
    pop = Pop()
    core, monotonic, _ = make_core(pop, max_outage=None)
    for _ in range(20):
        monotonic.now += core._failed(OSError("down"))
        core._check_outage()
    assert pop.resets == [] and monotonic.now > 100.0 + 3.0


def test_a_failing_reset_stays_pending_until_it_runs() -> None:
    pop = Pop(reset_failing=True)
    core, monotonic, _ = make_core(pop, max_outage=0.5, pending_reset="start")
    with pytest.raises(CallbackFailed, match="on_reset failed"):
        core._run_pending_reset()
    assert core._pending_reset == "start"
    # An outage purge whose callback fails is not lost either: it replaces the pending reason.
    for _ in range(5):
        monotonic.now += core._failed(OSError("down"))
        core._check_outage()
    assert core._pending_reset is not None and core._pending_reset.startswith("feed unreachable")
    pop.reset_failing = False
    core._run_pending_reset()
    core._run_pending_reset()  # nothing pending any more: no second purge
    assert len(pop.resets) == 1 and core._pending_reset is None


def test_a_failing_change_callback_is_a_failure_and_is_not_counted() -> None:
    pop = Pop(change_failing=True)
    core, _, _ = make_core(pop)
    with pytest.raises(CallbackFailed, match="cache is full"):
        core._apply_change("item-1", 3, {"available": 3})
    assert core.applied == 0
    pop.change_failing = False
    core._apply_change("item-1", 3, {"available": 3})
    assert (core.applied, pop.changes) == (1, [("item-1", 3)])


def test_lag_follows_stamps_but_never_past_our_own_clock() -> None:
    core, _, posix = make_core(Pop())
    assert core.lag_seconds is None  # never verified
    core._applied_stamp(None)
    assert core.lag_seconds is None
    core._applied_stamp(NOW - 4.0)
    assert core.lag_seconds == pytest.approx(4.0)
    core._applied_stamp(NOW - 10.0)  # an older stamp does not move the figure back
    assert core.lag_seconds == pytest.approx(4.0)
    core._applied_stamp(NOW + 3600.0)  # a publisher whose clock runs an hour ahead
    posix.now += 7.0
    assert core.lag_seconds == pytest.approx(7.0)
    core._connected = core._caught_up = True
    assert core.lag_seconds == 0.0


def test_backoff_delays_stay_within_half_the_ceiling_and_the_maximum() -> None:
    backoff = Backoff(0.1, 5.0, random.Random(11).random)
    delays = [backoff.next_delay() for _ in range(200)]
    assert all(0.05 <= delay <= 5.0 for delay in delays)
    assert max(delays[-50:]) > 2.5  # the cap is reached, not overflowed


def test_shared_option_checks_and_position_parsing() -> None:
    validate_retry_options(0.1, 0.1, None)
    with pytest.raises(ValueError, match="backoff_max"):
        validate_retry_options(0.2, 0.1, None)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="max_outage"):
            validate_retry_options(0.1, 0.2, bad)
    assert parse_position("ep1:42", "next").encode() == "ep1:42"
    with pytest.raises(PeerError, match="next is not a position string"):
        parse_position(42, "next")
    with pytest.raises(PeerError, match=r"^head: "):
        parse_position("no-colon", "head")
