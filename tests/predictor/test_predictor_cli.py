"""`python -m predictor generate` and `boxoffice predictor generate` as users run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd  # type: ignore[import-untyped]

# A tiny workload: one day over a small catalog, a second or two with the interpreter's start.
SMALL = (
    "--workload-days", "1", "--workload-users", "3000", "--sessions-per-day", "4000",
    "--catalog-venues", "30", "--catalog-events", "300",
)  # fmt: skip


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("BOXOFFICE_")}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, env={**environment, **(env or {})}
    )


def test_generate_writes_the_workload(tmp_path: Path) -> None:
    out = tmp_path / "workload"
    done = run("-m", "predictor", "generate", "--seed", "1", "--out", str(out), *SMALL)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["directory"] == str(out)
    for name in ("event_log", "sessions", "users", "purchase_history", "presale", "event_plan"):
        assert (out / f"{name}.parquet").is_file(), name
    traces = sorted((out / "traces").glob("*.parquet"))
    assert traces
    assert sum(len(pd.read_parquet(path)) for path in traces) == printed["counts"]["requests"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["seed"] == 1
    assert summary["config"]["days"] == 1
    assert summary["catalog"] == {"seed": 2026, "venues": 30, "events": 300}
    assert summary["counts"]["sessions"]["browse"] == 4000


def test_same_seed_same_files_through_the_boxoffice_command(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        done = run("-m", "ops", "predictor", "generate", "--seed", "3", "--out", str(out), *SMALL)
        assert done.returncode == 0, done.stderr
    a = pd.read_parquet(first / "event_log.parquet")
    b = pd.read_parquet(second / "event_log.parquet")
    pd.testing.assert_frame_equal(a, b)


def test_bad_flag_exits_2_naming_the_key(tmp_path: Path) -> None:
    done = run("-m", "predictor", "generate", "--out", str(tmp_path), *SMALL, "--bot-request-share", "1.5")
    assert done.returncode == 2
    assert "predictor.bot_request_share" in done.stderr
    assert not list(tmp_path.iterdir())


def test_bad_environment_value_exits_2_naming_the_key(tmp_path: Path) -> None:
    done = run("-m", "predictor", "generate", "--out", str(tmp_path), env={"BOXOFFICE_PREDICTOR_WORKLOAD_DAYS": "0"})
    assert done.returncode == 2
    assert "predictor.workload_days" in done.stderr


def test_unparseable_values_exit_2_naming_the_key(tmp_path: Path) -> None:
    for flag, value, key in (
        ("--seed", "x", "predictor.workload_seed"),
        ("--workload-start", "yesterday", "predictor.workload_start"),
        ("--onsale-spike-decay", "soon", "predictor.onsale_spike_decay"),
    ):
        done = run("-m", "predictor", "generate", "--out", str(tmp_path), flag, value)
        assert done.returncode == 2, (flag, done.stderr)
        assert key in done.stderr, (flag, done.stderr)


def test_unknown_key_in_the_config_file_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "boxoffice.toml"
    config.write_text("[predictor]\nworkload_dayz = 3\n")
    done = run("-m", "predictor", "generate", "--config", str(config))
    assert done.returncode == 2
    assert "workload_dayz" in done.stderr
    assert "workload_days" in done.stderr  # the suggestion


def test_config_prints_the_effective_settings() -> None:
    done = run("-m", "predictor", "config", "--workload-seed", "5")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("[predictor]\n")
    assert "workload_seed = 5\n" in done.stdout
    assert 'workload_dir = "var/workload"\n' in done.stdout
