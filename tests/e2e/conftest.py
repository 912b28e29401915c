"""Fixtures of the end-to-end tests: one real `boxoffice up` per test module.

The stack runs on free ports from a random base (every port of the plan is
probed first, DNS on UDP too) in a temporary data directory, with a smaller
demo catalog than the default so it seeds in a second, and a tiny predictor
workload (:data:`TINY_TRAINING`: generated and trained in a few seconds, while
the other services start). `up` runs in a session
of its own, so the test can signal it (and its process group) like a terminal
would; teardown sends SIGINT, and SIGKILLs whatever is left only if `up` did
not stop in time (the orphan check is a test of its own, not the teardown's
job).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ops.up.plan import pop_address

REPO = Path(__file__).resolve().parents[2]
REGIONS = ("na-east", "eu-west", "ap-northeast")
START_DEADLINE = 120.0  # seconds for the whole stack to come up on a busy two-core host
# The predictor's first-start training, made small: the tests/predictor workload's size (3,000 users,
# 4,000 sessions a day, 60 rounds; seconds to train). Smaller models calibrate too coarsely to score
# anyone above the hint threshold (1,000 users and 20 rounds top out at 0.06), and the demo user must
# get hints from the replayed log alone.
TINY_TRAINING = ("--train-users", "3000", "--train-sessions-per-day", "4000", "--train-boost-rounds", "60")
STOP_DEADLINE = 60.0
PORT_ATTEMPTS = 50


@dataclass
class Stack:
    process: subprocess.Popen[bytes]
    data_dir: Path
    output: Path

    def state(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.data_dir / "stack.json").read_text())
        return document

    def service(self, name: str) -> dict[str, Any]:
        for service in self.state()["services"]:
            if service["name"] == name:
                return dict(service)
        raise KeyError(name)

    def log(self) -> str:
        return self.output.read_text(errors="replace")


def _bindable(address: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def free_base_port(regions: int) -> int:
    """A base port whose whole block (as ops.up.plan lays it out) is free right now."""
    span = 5 + 2 * regions
    rng = random.Random()
    for _ in range(PORT_ATTEMPTS):
        base = rng.randrange(20_000, 60_000 - span)
        tcp = [("127.0.0.1", port) for port in range(base, base + span)]
        tcp += [(pop_address(k), base + 1 + regions + k) for k in range(regions)]
        dns = base + 1 + 2 * regions
        if all(_bindable(a, p, socket.SOCK_STREAM) for a, p in tcp) and _bindable("127.0.0.1", dns, socket.SOCK_DGRAM):
            return base
    raise RuntimeError(f"no free block of {span} ports found in {PORT_ATTEMPTS} tries")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("stack")
    output = data_dir / "up.out"
    command = [sys.executable, "-m", "ops.cli", "up", "--data-dir", str(data_dir),
               "--base-port", str(free_base_port(len(REGIONS))), "--regions", ",".join(REGIONS),
               "--demo-events", "600", "--demo-venues", "60", *TINY_TRAINING]  # fmt: skip
    with output.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    running = Stack(process, data_dir, output)
    try:
        deadline = time.monotonic() + START_DEADLINE
        while True:
            if process.poll() is not None:
                pytest.fail(f"boxoffice up exited with {process.returncode}:\n{running.log()}")
            with contextlib.suppress(OSError, ValueError, KeyError):
                if running.state()["state"] == "running":
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"boxoffice up was not running within {START_DEADLINE:g} s:\n{running.log()}")
            time.sleep(0.2)
        yield running
    finally:
        _stop(running)


def _stop(running: Stack) -> None:
    process = running.process
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGINT)
        try:
            process.wait(STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_DEADLINE)
    # Belt and braces for a failed test run: no child may outlive the module.
    with contextlib.suppress(OSError, ValueError, KeyError):
        for service in running.state()["services"]:
            for pid in service.get("pids", []):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGCONT)
                    os.killpg(pid, signal.SIGKILL)
