"""Hybrid logical clocks: monotonic stamps, receive events, the text codec, causality across nodes."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from origin.hlc import MAX_CLOCK_OFFSET_MS, ClockSkewError, HybridClock, Stamp

FUZZ = settings(max_examples=200, deadline=None)
LOGICAL_LIMIT = 10**5
BASE_MS = 1_790_000_000_000  # late 2026

nodes = st.text(min_size=1, max_size=8).filter(lambda node: "-" not in node)
stamps = st.builds(
    Stamp,
    st.integers(min_value=0, max_value=10**13 - 1),
    st.integers(min_value=0, max_value=LOGICAL_LIMIT - 1),
    nodes,
)


def scripted_clock(readings_ms: Iterable[int]) -> Callable[[], float]:
    """A physical clock returning the given milliseconds, one per call, then standing still."""
    values = list(readings_ms)
    position = 0

    def read() -> float:
        nonlocal position
        value = values[min(position, len(values) - 1)]
        position += 1
        return value / 1000

    return read


class ManualTime:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


@FUZZ
@given(st.lists(st.integers(min_value=BASE_MS - 10_000, max_value=BASE_MS + 10_000), min_size=1, max_size=60))
def test_now_strictly_increases_whatever_the_physical_clock_does(readings: list[int]) -> None:
    clock = HybridClock("n1", scripted_clock(readings))
    previous = clock.last
    for _ in readings:
        stamp = clock.now()
        assert stamp > previous
        assert stamp.node == "n1" and stamp == clock.last
        previous = stamp


def test_now_follows_the_physical_clock_when_it_moves_forward() -> None:
    clock = HybridClock("n1", scripted_clock([1000, 1000, 900, 2000]))
    assert [clock.now() for _ in range(4)] == [
        Stamp(1000, 0, "n1"),
        Stamp(1000, 1, "n1"),  # standing still: the counter orders events
        Stamp(1000, 2, "n1"),  # going backwards: the wall part does not
        Stamp(2000, 0, "n1"),
    ]


def test_counter_overflow_borrows_a_millisecond() -> None:
    clock = HybridClock("n1", ManualTime(BASE_MS))
    stamps_seen = [clock.now() for _ in range(LOGICAL_LIMIT + 2)]
    assert stamps_seen[LOGICAL_LIMIT - 1] == Stamp(BASE_MS, LOGICAL_LIMIT - 1, "n1")
    assert stamps_seen[LOGICAL_LIMIT] == Stamp(BASE_MS + 1, 0, "n1")
    assert all(a < b and a.encode() < b.encode() for a, b in itertools.pairwise(stamps_seen))
    assert len({len(stamp.encode()) for stamp in stamps_seen}) == 1


@FUZZ
@given(
    st.lists(st.integers(min_value=-5_000, max_value=5_000), max_size=5),
    st.integers(min_value=-50_000, max_value=MAX_CLOCK_OFFSET_MS),
    st.integers(min_value=0, max_value=LOGICAL_LIMIT - 1),
    st.integers(min_value=-3, max_value=3),
)
def test_observe_is_greater_than_both_clocks(
    local_offsets: list[int], remote_offset: int, remote_logical: int, physical_offset: int
) -> None:
    time = ManualTime(BASE_MS)
    clock = HybridClock("local", time)
    for offset in local_offsets:
        time.ms = BASE_MS + offset
        clock.now()
    time.ms = BASE_MS + physical_offset
    last = clock.last
    remote = Stamp(time.ms + remote_offset, remote_logical, "remote")
    stamp = clock.observe(remote)
    assert stamp > last and stamp > remote
    assert (stamp.wall_ms, stamp.logical) > (remote.wall_ms, remote.logical)
    assert stamp.node == "local" and clock.last == stamp
    assert clock.now() > stamp


def test_observe_of_a_stale_stamp_still_moves_forward() -> None:
    time = ManualTime(BASE_MS)
    clock = HybridClock("local", time)
    clock.now()
    assert clock.observe(Stamp(5, 3, "remote")) == Stamp(BASE_MS, 1, "local")
    assert clock.observe(Stamp(BASE_MS, 7, "remote")) == Stamp(BASE_MS, 8, "local")
    assert clock.observe(Stamp(BASE_MS + 10, 2, "remote")) == Stamp(BASE_MS + 10, 3, "local")


def test_observe_refuses_a_stamp_beyond_the_clock_offset_and_keeps_its_state() -> None:
    time = ManualTime(BASE_MS)
    clock = HybridClock("local", time)
    before = clock.now()
    with pytest.raises(ClockSkewError, match="remote"):
        clock.observe(Stamp(BASE_MS + MAX_CLOCK_OFFSET_MS + 1, 0, "remote"))
    assert clock.last == before
    assert clock.observe(Stamp(BASE_MS + MAX_CLOCK_OFFSET_MS, 0, "remote")).wall_ms == BASE_MS + MAX_CLOCK_OFFSET_MS
    assert issubclass(ClockSkewError, ValueError)


@pytest.mark.parametrize("node", ["", "a-b", "-"])
def test_node_ids_must_be_encodable(node: str) -> None:
    with pytest.raises(ValueError, match="node id"):
        HybridClock(node, ManualTime(0))


@FUZZ
@given(stamps)
def test_encode_decode_round_trip(stamp: Stamp) -> None:
    assert Stamp.decode(stamp.encode()) == stamp


@FUZZ
@given(stamps, stamps)
def test_text_order_is_stamp_order(left: Stamp, right: Stamp) -> None:
    assert (left.encode() < right.encode()) == (left < right)
    assert (left.encode() == right.encode()) == (left == right)


@FUZZ
@given(st.text() | st.from_regex(r"\A[0-9²]{0,14}-[0-9]{0,6}-.{0,3}\Z"))
def test_decode_raises_only_value_error(text: str) -> None:
    try:
        stamp = Stamp.decode(text)
    except ValueError:
        return
    assert stamp.wall_ms >= 0 and stamp.logical >= 0 and stamp.node


@pytest.mark.parametrize("text", ["", "1-2", "1--n", "-1-n", "a-1-n", "1-a-n", "1-2-", " 1-2-n", "1.5-2-n"])
def test_decode_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="HLC"):
        Stamp.decode(text)


class ClockNetwork(RuleBasedStateMachine):
    """Three nodes with skewed, sometimes backwards clocks, exchanging stamped messages.

    Vector clocks track happens-before exactly; the HLC must order every pair of
    causally related events the same way (Kulkarni et al., theorem 1).
    """

    NODES = 3
    # Physical clocks stay within ±SKEW of a shared, advancing base, so no
    # stamp is ever more than 2 * SKEW ahead of a receiver: below MAX_CLOCK_OFFSET_MS.
    SKEW = 20_000

    @initialize()
    def start(self) -> None:
        self.base = BASE_MS
        self.times = [ManualTime(BASE_MS) for _ in range(self.NODES)]
        self.clocks = [HybridClock(f"n{index}", time) for index, time in enumerate(self.times)]
        self.vectors = [[0] * self.NODES for _ in range(self.NODES)]
        self.events: list[tuple[Stamp, tuple[int, ...]]] = []
        self.messages: list[tuple[Stamp, tuple[int, ...]]] = []
        self.previous = [clock.last for clock in self.clocks]

    def record(self, node: int, stamp: Stamp) -> tuple[Stamp, tuple[int, ...]]:
        assert stamp > self.previous[node], "a node's stamps must strictly increase"
        self.previous[node] = stamp
        vector = tuple(self.vectors[node])
        for earlier_stamp, earlier_vector in self.events:
            if all(a <= b for a, b in zip(earlier_vector, vector, strict=True)):
                assert earlier_stamp < stamp, f"{earlier_stamp} happened before {stamp}"
        event = (stamp, vector)
        self.events.append(event)
        return event

    @rule(step=st.integers(min_value=0, max_value=3_000))
    def base_advances(self, step: int) -> None:
        self.base += step

    @rule(node=st.integers(min_value=0, max_value=NODES - 1), offset=st.integers(min_value=-SKEW, max_value=SKEW))
    def physical_clock_jumps(self, node: int, offset: int) -> None:
        self.times[node].ms = self.base + offset

    @rule(node=st.integers(min_value=0, max_value=NODES - 1), send=st.booleans())
    def local_event(self, node: int, send: bool) -> None:
        self.vectors[node][node] += 1
        event = self.record(node, self.clocks[node].now())
        if send:
            self.messages.append(event)

    @precondition(lambda self: bool(self.messages))
    @rule(node=st.integers(min_value=0, max_value=NODES - 1), pick=st.integers(min_value=0))
    def receive(self, node: int, pick: int) -> None:
        # Any message, in any order, possibly again: the network reorders and duplicates.
        remote, remote_vector = self.messages[pick % len(self.messages)]
        stamp = self.clocks[node].observe(remote)
        assert stamp > remote
        self.vectors[node] = [max(a, b) for a, b in zip(self.vectors[node], remote_vector, strict=True)]
        self.vectors[node][node] += 1
        self.record(node, stamp)

    @invariant()
    def clocks_report_their_last_stamp(self) -> None:
        for clock, previous in zip(self.clocks, self.previous, strict=True):
            assert clock.last == previous


ClockNetwork.TestCase.settings = settings(max_examples=40, stateful_step_count=40, deadline=None)
TestClockNetwork = ClockNetwork.TestCase
