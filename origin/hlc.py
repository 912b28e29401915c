"""Hybrid logical clocks (Kulkarni et al., "Logical Physical Clocks", 2014).

A stamp is (wall milliseconds, logical counter, node id). ``now()`` is the
local/send event: the wall part never goes backwards even when the physical
clock does, and the counter orders events inside one millisecond.
``observe(remote)`` is the receive event: it moves past a stamp seen from
another node, so causally later writes always carry larger stamps.

Stamps order by (wall, logical, node); the node id is the last-write-wins
tiebreak for non-stock metadata (ARCHITECTURE.md, consistency rules). Encoded
stamps sort the same way as text, because both numbers are zero padded.
The physical clock is passed in: nothing here reads the time itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

# A remote stamp this far ahead of our physical clock is refused instead of
# dragging every later stamp into the future (CockroachDB uses 500 ms by default;
# ours is looser because local stacks run on laptops with sleepy clocks).
MAX_CLOCK_OFFSET_MS: Final = 60_000

_WALL_DIGITS: Final = 13  # milliseconds since 1970 fit 13 digits until the year 2286
_LOGICAL_DIGITS: Final = 5
_LOGICAL_LIMIT: Final = 10**_LOGICAL_DIGITS


class ClockSkewError(ValueError):
    """A remote stamp is further ahead than MAX_CLOCK_OFFSET_MS allows."""


@dataclass(frozen=True, order=True, slots=True)
class Stamp:
    wall_ms: int
    logical: int
    node: str

    def encode(self) -> str:
        return f"{self.wall_ms:0{_WALL_DIGITS}d}-{self.logical:0{_LOGICAL_DIGITS}d}-{self.node}"

    @classmethod
    def decode(cls, text: str) -> Stamp:
        """Parse an encoded stamp. Raises ValueError on anything else."""
        wall, sep1, rest = text.partition("-")
        logical, sep2, node = rest.partition("-")
        if not (sep1 and sep2 and node and wall.isdigit() and logical.isdigit()):
            raise ValueError(f"not an HLC stamp: {text!r}")
        return cls(int(wall), int(logical), node)


class HybridClock:
    """One node's hybrid logical clock. Not thread-safe; use one per event loop."""

    def __init__(self, node: str, physical_time: Callable[[], float]) -> None:
        if not node or "-" in node:
            raise ValueError(f"HLC node id must be non-empty and free of '-': {node!r}")
        self.node = node
        self._physical_time = physical_time
        self._last = Stamp(0, 0, node)

    @property
    def last(self) -> Stamp:
        return self._last

    def now(self) -> Stamp:
        """Stamp a local event."""
        physical = self._physical_ms()
        if physical > self._last.wall_ms:
            self._last = Stamp(physical, 0, self.node)
        else:
            self._last = self._advance(self._last.wall_ms, self._last.logical + 1)
        return self._last

    def observe(self, remote: Stamp) -> Stamp:
        """Stamp the receipt of `remote`; the result is greater than both clocks.

        Raises ClockSkewError when `remote` is implausibly far in the future.
        """
        physical = self._physical_ms()
        if remote.wall_ms - physical > MAX_CLOCK_OFFSET_MS:
            raise ClockSkewError(f"stamp from {remote.node} is {remote.wall_ms - physical} ms ahead of our clock")
        wall = max(physical, self._last.wall_ms, remote.wall_ms)
        if wall == self._last.wall_ms == remote.wall_ms:
            logical = max(self._last.logical, remote.logical) + 1
        elif wall == self._last.wall_ms:
            logical = self._last.logical + 1
        elif wall == remote.wall_ms:
            logical = remote.logical + 1
        else:
            logical = 0
        self._last = self._advance(wall, logical)
        return self._last

    def _advance(self, wall: int, logical: int) -> Stamp:
        # The counter only overflows under >100k events in one millisecond;
        # borrowing a millisecond keeps stamps monotonic and encodable.
        if logical >= _LOGICAL_LIMIT:
            return Stamp(wall + 1, 0, self.node)
        return Stamp(wall, logical, self.node)

    def _physical_ms(self) -> int:
        return int(self._physical_time() * 1000)
