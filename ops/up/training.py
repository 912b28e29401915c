"""The predictor's first-start step of `boxoffice up`: generate a small workload and train on it.

`predictor serve` needs trained models, and models need a workload. On a
first start (no ``DATA_DIR/predictor/trained.json``), and on the first start
of a later day, `up` runs the two predictor commands as child processes, one
after the other, while the rest of the stack starts:

1. ``predictor generate`` over the very demo catalog the origin holds (the
   same seed, venue and event counts, and the same start: midnight UTC of the
   day the origin first seeded it, which `up` reads back from the origin with
   :func:`catalog_shift`), with a window of yesterday and today, so the window
   holds the current time with a day of history behind it, and every event and
   item id the predictor names is one the origin serves;
2. ``predictor train`` on it.

``predictor serve --replay-workload`` then applies that window's log up to
now, and ``summary.json``'s ``demo_users`` name whom the demo logs in as.

Each child's output goes to ``DATA_DIR/logs/predictor-train.log``; its log
lines (generated, model trained) are echoed as progress. The marker
``trained.json`` is written last, so an interrupted run is redone on the next
start rather than half reused. A later start on the same day reuses the
models when the marker names the same catalog (start included) and workload
settings; on a later day the window no longer holds now, so the workload is
generated again (over the origin's unchanged catalog) and trained again;
``--retrain`` redoes them anyway.

:func:`training_plan`, :func:`reusable` and :func:`catalog_shift` are pure;
:func:`train` runs the children (killing them, group and all, when `up` is
stopped meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from ops.up.settings import UpSettings

MARKER: Final = "trained.json"
LOG_NAME: Final = "predictor-train.log"
# Yesterday and today: the replay up to now then has at least a day of history (hints weigh the last
# hours' activity, and right after midnight today alone would hold minutes of it).
WORKLOAD_DAYS: Final = 2
# The lines of the children worth echoing: the predictor's own INFO log records.
PROGRESS_MARK: Final = " INFO predictor: "
MAX_LINE: Final = 64 * 1024  # a child's line beyond this is cut (stdout JSON is pretty-printed: short lines)


class TrainingError(RuntimeError):
    """A training child failed; the message names the step and quotes its output."""


@dataclass(frozen=True, slots=True)
class TrainingInputs:
    """Everything that decides the trained models; equal inputs mean the models can be reused."""

    catalog_seed: int
    catalog_venues: int
    catalog_events: int
    catalog_start: str  # RFC 3339: midnight UTC of the origin's first day (it seeds its catalog once)
    workload_start: str  # RFC 3339, midnight UTC yesterday
    workload_days: int
    workload_seed: int
    users: int
    sessions_per_day: int
    boost_rounds: int


@dataclass(frozen=True, slots=True)
class TrainingPlan:
    inputs: TrainingInputs
    directory: Path  # DATA_DIR/predictor
    workload_dir: Path
    models_dir: Path
    log_path: Path
    generate: tuple[str, ...]
    train: tuple[str, ...]

    @property
    def marker(self) -> Path:
        return self.directory / MARKER


def catalog_start(now: datetime) -> str:
    """Midnight UTC of `now`'s day, as origin.service.seed_demo_catalog starts the demo catalog."""
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight.isoformat().replace("+00:00", "Z")


def catalog_shift(served_starts_at: str, built_starts_at: datetime) -> timedelta | None:
    """How far the origin's catalog is from one built here: the served start of an event minus the
    built start of the same event, or None when that is not a whole number of days (another catalog).

    The demo catalog is a function of its seed, sizes and start, and a start moves every date by the
    same whole days (origin.catalog builds them from midnight of the start), so one event tells.
    """
    try:
        served = datetime.fromisoformat(served_starts_at.replace("Z", "+00:00"))
    except ValueError:
        return None
    if served.tzinfo is None:
        return None
    shift = served - built_starts_at
    return shift if shift % timedelta(days=1) == timedelta(0) else None


def training_plan(settings: UpSettings, *, python: str, now: datetime, catalog: str = "") -> TrainingPlan:
    """The two commands that write DATA_DIR/predictor/{workload,models} for `settings`.

    `catalog` is the origin's catalog start (RFC 3339, midnight UTC); empty: today's (a fresh origin's).
    """
    data_dir = settings.data_dir.resolve()
    directory = data_dir / "predictor"
    inputs = TrainingInputs(
        catalog_seed=settings.demo_seed, catalog_venues=settings.demo_venues, catalog_events=settings.demo_events,
        catalog_start=catalog or catalog_start(now),
        workload_start=catalog_start(now - timedelta(days=WORKLOAD_DAYS - 1)), workload_days=WORKLOAD_DAYS,
        workload_seed=settings.train_seed, users=settings.train_users,
        sessions_per_day=settings.train_sessions_per_day, boost_rounds=settings.train_boost_rounds,
    )  # fmt: skip
    workload_dir, models_dir = directory / "workload", directory / "models"
    predictor = (python, "-P", "-m", "ops.cli", "predictor")  # -P: see ops.up.plan (data_dir/predictor)
    generate = (
        *predictor, "generate", "--out", str(workload_dir), "--workload-seed", str(inputs.workload_seed),
        "--workload-start", inputs.workload_start, "--workload-days", str(inputs.workload_days),
        "--workload-users", str(inputs.users), "--sessions-per-day", str(inputs.sessions_per_day),
        "--catalog-seed", str(inputs.catalog_seed), "--catalog-venues", str(inputs.catalog_venues),
        "--catalog-events", str(inputs.catalog_events), "--catalog-start", inputs.catalog_start,
        "--log-level", "info",
    )  # fmt: skip
    train = (
        *predictor, "train", "--workload-dir", str(workload_dir), "--models-dir", str(models_dir),
        "--boost-rounds", str(inputs.boost_rounds), "--log-level", "info",
    )  # fmt: skip
    return TrainingPlan(inputs, directory, workload_dir, models_dir, data_dir / "logs" / LOG_NAME, generate, train)


def reusable(marker: Mapping[str, Any] | None, inputs: TrainingInputs) -> bool:
    """Whether models described by `marker` fit `inputs`: the same catalog (start included) and the same
    workload over the same window (on a later day the window no longer holds now: nothing to replay)."""
    if not isinstance(marker, dict):
        return False
    recorded = marker.get("inputs")
    if not isinstance(recorded, dict):
        return False
    return all(recorded.get(key) == value for key, value in asdict(inputs).items())


def demo_users(plan: TrainingPlan) -> list[str]:
    """The workload's ``demo_users`` (its summary.json), best first; none when it has none or is unreadable."""
    try:
        summary = json.loads((plan.workload_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    users = summary.get("demo_users") if isinstance(summary, dict) else None
    return [user for user in users if isinstance(user, str)] if isinstance(users, list) else []


def read_marker(plan: TrainingPlan) -> dict[str, Any] | None:
    """The marker of an earlier training, or None when there is none (or it is unreadable)."""
    try:
        document = json.loads(plan.marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


async def train(plan: TrainingPlan, say: Callable[[str], None]) -> dict[str, Any]:
    """Generate and train (both children), then write and return the marker. Raises TrainingError.

    Earlier files are removed first (the marker before anything else), so a failure leaves no models
    that a later start could mistake for finished ones.
    """
    with contextlib.suppress(FileNotFoundError):
        plan.marker.unlink()
    for directory in (plan.workload_dir, plan.models_dir):
        await asyncio.to_thread(shutil.rmtree, directory, True)
    plan.directory.mkdir(parents=True, exist_ok=True)
    plan.log_path.parent.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    await _run_step("generate", plan.generate, plan.log_path, say)
    output = await _run_step("train", plan.train, plan.log_path, say)
    seconds = time.monotonic() - began
    marker = {
        "inputs": asdict(plan.inputs),
        "workload_dir": str(plan.workload_dir),
        "models_dir": str(plan.models_dir),
        "trained_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "seconds": round(seconds, 1),
        "purchase_roc_auc": _purchase_auc(output),
    }
    temporary = plan.marker.with_suffix(".tmp")
    temporary.write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    temporary.replace(plan.marker)
    return marker


async def _run_step(step: str, command: tuple[str, ...], log_path: Path, say: Callable[[str], None]) -> str:
    """Run one child to completion, appending its output to the log and echoing its progress lines.

    Returns its standard output. Raises TrainingError when it cannot start or exits non-zero.
    """
    with log_path.open("ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {step}: {' '.join(command)}\n".encode())
    try:
        process = await asyncio.create_subprocess_exec(
            *command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, limit=MAX_LINE,
        )  # fmt: skip
    except OSError as exc:
        raise TrainingError(f"cannot start `predictor {step}`: {exc}") from exc
    assert process.stdout is not None and process.stderr is not None
    stdout: list[str] = []
    stderr: list[str] = []
    try:
        await asyncio.gather(
            _pump(process.stdout, stdout, log_path, None),
            _pump(process.stderr, stderr, log_path, lambda line: _progress(step, line, say)),
        )
        code = await process.wait()
    except BaseException:  # cancelled (`up` is stopping) or broken: the child must not outlive us
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(BaseException):
            await asyncio.shield(process.wait())
        raise
    if code != 0:
        tail = "".join(stderr[-10:]).strip() or "".join(stdout[-10:]).strip()
        raise TrainingError(f"`predictor {step}` exited with status {code}: {tail} (log {log_path})")
    return "".join(stdout)


async def _pump(
    stream: asyncio.StreamReader, lines: list[str], log_path: Path, echo: Callable[[str], None] | None
) -> None:
    while True:
        try:
            raw = await stream.readline()
        except ValueError:  # a line beyond MAX_LINE: keep what was buffered, cut
            raw = await stream.read(MAX_LINE)
        if not raw:
            return
        line = raw.decode("utf-8", "replace")
        lines.append(line)
        with log_path.open("a", encoding="utf-8") as log:
            log.write(line)
        if echo is not None:
            echo(line)


def _progress(step: str, line: str, say: Callable[[str], None]) -> None:
    _, mark, message = line.rstrip().partition(PROGRESS_MARK)
    if mark:
        say(f"  {'predictor training':<22} {step}: {message}")


def _purchase_auc(output: str) -> float | None:
    """The purchase model's test ROC AUC from `predictor train`'s JSON, if it is there."""
    try:
        value = json.loads(output)["purchase"]["test"]["roc_auc"]
    except (ValueError, KeyError, TypeError):
        return None
    return round(float(value), 3) if isinstance(value, int | float) else None
