"""The circuit breaker's state table, its doubling open period, the single half-open trial,
and a property: no request is ever allowed while OPEN before the open period ends."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.breaker import LATENCY_EWMA_WEIGHT, BreakerConfig, BreakerState, CircuitBreaker

FUZZ = settings(max_examples=300, deadline=None)

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
CONFIG = BreakerConfig(failure_threshold=3, open_for=10.0, max_open_for=35.0, trial_timeout=100.0)


def opened(now: float = 0.0) -> CircuitBreaker:
    """A breaker that opened at `now` after CONFIG.failure_threshold failures."""
    breaker = CircuitBreaker(CONFIG)
    for _ in range(CONFIG.failure_threshold):
        breaker.record(False, now)
    assert breaker.state is OPEN
    return breaker


# ---------------------------------------------------------------- the state table, row by row


def test_closed_allows_and_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(CONFIG)
    assert breaker.allow(0.0)
    breaker.record(False, 0.0)
    breaker.record(False, 0.0)
    assert (breaker.state, breaker.consecutive_failures) == (CLOSED, 2)
    breaker.record(True, 0.0)
    assert (breaker.state, breaker.consecutive_failures) == (CLOSED, 0)
    # Failures must be consecutive: two, a success, two more never open it.
    breaker.record(False, 0.0)
    breaker.record(False, 0.0)
    assert breaker.state is CLOSED


def test_threshold_consecutive_failures_open_it() -> None:
    breaker = opened(now=5.0)
    assert breaker.open_until == 5.0 + CONFIG.open_for
    assert breaker.consecutive_failures == CONFIG.failure_threshold


def test_open_refuses_until_open_for_then_lets_one_trial_through() -> None:
    breaker = opened(now=0.0)
    assert not breaker.allow(0.0)
    assert not breaker.allow(CONFIG.open_for - 0.001)
    assert breaker.state is OPEN
    assert breaker.allow(CONFIG.open_for)
    assert breaker.state is HALF_OPEN
    assert breaker.open_until is None


def test_results_recorded_while_open_are_ignored() -> None:
    breaker = opened(now=0.0)
    breaker.record(True, 1.0)  # a request that started before the breaker opened
    assert (breaker.state, breaker.open_until) == (OPEN, CONFIG.open_for)
    breaker.record(False, 2.0)
    assert (breaker.state, breaker.open_until) == (OPEN, CONFIG.open_for)


def test_half_open_allows_a_single_trial() -> None:
    breaker = opened(now=0.0)
    assert breaker.allow(10.0)
    assert not breaker.allow(10.0)
    assert not breaker.allow(10.0 + CONFIG.trial_timeout - 0.001)
    assert breaker.state is HALF_OPEN


def test_a_lost_trial_is_replaced_after_trial_timeout() -> None:
    breaker = opened(now=0.0)
    assert breaker.allow(10.0)  # this trial never reports back (its caller was cancelled)
    assert breaker.allow(10.0 + CONFIG.trial_timeout)
    assert not breaker.allow(10.0 + CONFIG.trial_timeout)


def test_trial_success_closes_and_resets_the_open_period() -> None:
    breaker = opened(now=0.0)
    assert breaker.allow(10.0)
    breaker.record(False, 10.5)  # period doubles to 20
    assert breaker.allow(30.5)
    breaker.record(True, 31.0)
    assert (breaker.state, breaker.consecutive_failures, breaker.open_period) == (CLOSED, 0, CONFIG.open_for)
    assert breaker.allow(31.0)
    # Opening again starts from open_for, not from the doubled period.
    for _ in range(CONFIG.failure_threshold):
        breaker.record(False, 40.0)
    assert breaker.open_until == 40.0 + CONFIG.open_for


def test_trial_failure_reopens_with_the_period_doubling_up_to_the_max() -> None:
    breaker = opened(now=0.0)
    now = 0.0
    periods = []
    for _ in range(5):
        until = breaker.open_until
        assert until is not None
        now = until
        assert breaker.allow(now)
        breaker.record(False, now)
        assert breaker.state is OPEN
        periods.append(breaker.open_period)
    assert periods == [20.0, 35.0, 35.0, 35.0, 35.0]  # 10 → 20 → 40 capped at 35


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_threshold": 0},
        {"open_for": 0.0},
        {"open_for": 10.0, "max_open_for": 5.0},
        {"trial_timeout": 0.0},
    ],
)
def test_config_refuses_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        BreakerConfig(**kwargs)  # type: ignore[arg-type]


def test_latency_moving_average() -> None:
    breaker = CircuitBreaker(CONFIG)
    assert breaker.ewma_latency is None
    breaker.record(True, 0.0, latency=0.100)
    assert breaker.ewma_latency == pytest.approx(0.100)
    breaker.record(False, 0.0, latency=0.200)
    assert breaker.ewma_latency == pytest.approx(0.100 + LATENCY_EWMA_WEIGHT * 0.100)
    breaker.record(False, 0.0)  # no answer, no sample
    assert breaker.ewma_latency == pytest.approx(0.100 + LATENCY_EWMA_WEIGHT * 0.100)


# ---------------------------------------------------------------- properties

events = st.lists(
    st.tuples(
        st.sampled_from(["allow", "success", "failure"]),
        st.floats(min_value=0.0, max_value=15.0, allow_nan=False),  # time step before the event
    ),
    max_size=80,
)


@FUZZ
@given(events)
def test_never_allows_while_open_before_the_open_period_ends(script: list[tuple[str, float]]) -> None:
    breaker = CircuitBreaker(CONFIG)
    now = 0.0
    opened_at: float | None = None
    trial_started_at: float | None = None
    for event, step in script:
        now += step
        if event == "allow":
            was_open = breaker.state is OPEN
            allowed = breaker.allow(now)
            if was_open:
                assert opened_at is not None
                if now < opened_at + CONFIG.open_for:
                    assert not allowed
                if allowed:
                    trial_started_at = now
            elif breaker.state is HALF_OPEN:
                assert trial_started_at is not None
                # One trial at a time: a second only after the first was lost.
                assert allowed == (now >= trial_started_at + CONFIG.trial_timeout)
                if allowed:
                    trial_started_at = now
            else:
                assert allowed
        else:
            was_open = breaker.state is OPEN
            breaker.record(event == "success", now)
            if breaker.state is OPEN and not was_open:
                opened_at = now
                until = breaker.open_until
                assert until is not None
                assert now + CONFIG.open_for <= until <= now + CONFIG.max_open_for
        assert breaker.state is not CLOSED or breaker.consecutive_failures < CONFIG.failure_threshold
