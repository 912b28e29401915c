"""`boxoffice predictor serve` as a process: refuses to start without a model, serves, stops on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

BOUND = 60.0  # seconds: loading pandas, xgboost and the catalog on a busy machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "predictor", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **{name: value for name, value in os.environ.items() if not name.startswith("BOXOFFICE_")},
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        },
    )


def test_serve_without_a_model_exits_with_a_clear_error(tmp_path: Path) -> None:
    process = serve("--models", str(tmp_path / "empty"), "--listen", f"127.0.0.1:{free_port()}")
    _, stderr = process.communicate(timeout=BOUND)
    assert process.returncode == 1
    assert "no purchase model" in stderr
    assert "boxoffice predictor train" in stderr


def test_serve_refuses_bad_settings_naming_them(tmp_path: Path) -> None:
    process = serve("--models", str(tmp_path), "--listen", "nowhere")
    _, stderr = process.communicate(timeout=BOUND)
    assert process.returncode == 2
    assert "predictor_serve.listen" in stderr
    process = serve("--models", str(tmp_path), "--pops", "eu-west=http://127.0.0.1:1")
    _, stderr = process.communicate(timeout=BOUND)
    assert process.returncode == 2
    assert "predictor_serve.warm_token" in stderr


def test_serve_answers_and_stops_on_sigterm(trained_workload: Any) -> None:
    port = free_port()
    process = serve(
        "--models", str(trained_workload.models_dir), "--workload", str(trained_workload.workload_dir),
        "--listen", f"127.0.0.1:{port}",
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # blocks until the port is open (or the process died)
        assert f"listening on http://127.0.0.1:{port}" in line, process.stderr.read() if process.stderr else ""
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=BOUND) as response:
            health = json.loads(response.read())
        assert health["status"] == "ok"
        assert health["models"] == {"purchase": 1, "demand": 1}
        assert health["users"] > 0  # the workload's consenting profiles
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + BOUND
        while process.poll() is None:
            assert time.monotonic() < deadline, "serve did not stop on SIGTERM"
            time.sleep(0.05)
        assert process.returncode == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=BOUND)
