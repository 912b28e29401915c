"""Checked steps with rollback: run in order, print each result, undo the finished ones on a failure.

A step's `run` returns a one-line result or raises :class:`PopError`; `undo`
reverses a finished `run`. :func:`wait_for` polls a probe until it answers or a
deadline passes, so every wait of a step is finite.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, TextIO

from ops.settings import SECOND

POLL_INTERVAL: Final = 0.2 * SECOND


class PopError(Exception):
    """A step failed; the message says what and why, in terms an operator can act on."""


@dataclass(frozen=True, slots=True)
class Step:
    """One step: `run` returns a one-line result or raises PopError; `undo` reverses a finished `run`."""

    title: str
    run: Callable[[], str]
    undo: Callable[[], str] | None = None


def run_steps(steps: Sequence[Step], out: TextIO, *, rollback: bool) -> bool:
    """Run `steps` in order, printing each; on a failure undo the finished ones (if `rollback`).

    Returns True when every step succeeded. Ctrl-C counts as a failure of the
    current step (then re-raised after the rollback).
    """
    done: list[Step] = []
    for number, step in enumerate(steps, 1):
        print(f"[{number}/{len(steps)}] {step.title}", file=out, flush=True)
        try:
            result = step.run()
        except (PopError, KeyboardInterrupt) as exc:
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
            print(f"      FAILED: {reason}", file=out, flush=True)
            if rollback:
                _undo(done, out)
            if isinstance(exc, KeyboardInterrupt):
                raise
            return False
        print(f"      ok: {result}", file=out, flush=True)
        done.append(step)
    return True


def _undo(done: list[Step], out: TextIO) -> None:
    undoable = [step for step in reversed(done) if step.undo is not None]
    if not undoable:
        return
    print("rolling back:", file=out, flush=True)
    for step in undoable:
        assert step.undo is not None
        try:
            print(f"  undo {step.title}: {step.undo()}", file=out, flush=True)
        except PopError as exc:
            print(f"  undo {step.title}: FAILED: {exc}", file=out, flush=True)


def wait_for(probe: Callable[[], str | None], *, within: float, what: str) -> str:
    """Call `probe` until it returns a result (not None) or `within` seconds pass (PopError naming `what`)."""
    deadline = time.monotonic() + within
    last_problem = "no answer yet"
    while True:
        try:
            result = probe()
        except PopError as exc:
            result, last_problem = None, str(exc)
        if result is not None:
            return result
        if time.monotonic() >= deadline:
            raise PopError(f"{what} within {within:g} s (last: {last_problem})")
        time.sleep(POLL_INTERVAL)
