"""Exponential backoff with jitter, shared by every retry loop that talks to a peer.

Pure: no clock and no sleeping. The caller asks :meth:`Backoff.next_delay`
for how long to wait before its next attempt, waits that long itself, and
calls :meth:`Backoff.reset` once an attempt did what it was for (for the
change-feed followers and the stream publisher: once a batch was applied,
not merely when the peer answered).

Used by origin.streams (the Redis Streams publisher) and by the POP's
change-feed followers (edge.followcore); ops is the layer both may import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

# 2**64 times any sensible initial delay is far past any cap; capping the
# exponent keeps the power from overflowing a float however long we retry.
_MAX_EXPONENT: Final = 64


class Backoff:
    """Exponential backoff with "equal jitter": attempt n waits uniformly in [d/2, d],
    d = min(maximum, initial * 2**n). Every delay lies in [initial / 2, maximum].

    Half the delay is fixed so that a recovering peer is not hit at once by
    every client; the random half spreads them.

    Args:
        initial: the ceiling of the first delay, in seconds (> 0).
        maximum: the largest ceiling, in seconds (>= initial).
        rand: returns floats in [0, 1); ``random.random`` in production, a
            fixed or seeded function in tests.
    """

    def __init__(self, initial: float, maximum: float, rand: Callable[[], float]) -> None:
        self._initial = initial
        self._maximum = maximum
        self._rand = rand
        self._attempt = 0

    def next_delay(self) -> float:
        """The seconds to wait before the next attempt; each call counts one more attempt."""
        ceiling = min(self._maximum, self._initial * 2.0 ** min(self._attempt, _MAX_EXPONENT))
        self._attempt += 1
        return ceiling / 2 + self._rand() * ceiling / 2

    def reset(self) -> None:
        """Start over at `initial`: the attempts succeeded."""
        self._attempt = 0
