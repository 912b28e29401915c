"""The `boxoffice` command as users run it: real processes, real sockets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

BOXOFFICE = [sys.executable, "-m", "ops"]
# Startup of a fresh interpreter, the imports and seeding a small catalog.
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BOXOFFICE, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


@pytest.fixture
def origin_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    process = subprocess.Popen(
        [*BOXOFFICE, "origin", "serve", "--port", str(port), "--database", f"sqlite:{tmp_path / 'o.db'}",
         "--seed-demo", "--demo-venues", "20", "--demo-events", "40", "--no-access-log"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert f"listening on http://127.0.0.1:{port}" in banner, process.stderr.read() if process.stderr else ""
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def fetch(url: str, body: dict[str, object] | None = None) -> tuple[int, dict[str, object]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def test_serve_seeds_answers_and_stops_gracefully(origin_process: tuple[subprocess.Popen[str], str]) -> None:
    process, base = origin_process
    assert process.stdout is not None
    hint = process.stdout.readline()
    assert "curl -i" in hint
    item_url = hint.split()[-1]
    status, item = fetch(item_url)
    assert status == 200
    assert item["version"] == 1
    status, held = fetch(f"{base}/v1/holds", {"item_id": item["id"], "qty": 1, "user_id": "cli"})
    assert status == 201, held
    status, events = fetch(f"{base}/v1/events?limit=100")
    assert status == 200
    assert len(events["events"]) == 40  # type: ignore[arg-type]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=15) == 0


def test_config_errors_name_the_key_and_exit_2(tmp_path: Path) -> None:
    result = run("origin", "config", "--hold-ttl", "soon")
    assert result.returncode == 2
    assert "origin.hold_ttl" in result.stderr
    assert "--hold-ttl" in result.stderr
    config = tmp_path / "boxoffice.toml"
    config.write_text("[origin]\nprot = 9000\n")
    result = run("origin", "config", "--config", str(config))
    assert result.returncode == 2
    assert "origin.prot: unknown setting" in result.stderr
    assert "'port'" in result.stderr
    result = run("origin", "config", env={"BOXOFFICE_ORIGIN_PORT": "http"})
    assert result.returncode == 2
    assert "BOXOFFICE_ORIGIN_PORT" in result.stderr


def test_layers_reach_the_effective_settings(tmp_path: Path) -> None:
    config = tmp_path / "boxoffice.toml"
    config.write_text('[origin]\nport = 9001\nhold_ttl = "5m"\nmax_body = "1KiB"\n')
    result = run("origin", "config", "--config", str(config), "--max-body", "2KiB",
                 env={"BOXOFFICE_ORIGIN_HOLD_TTL": "90s"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" = ", 1) for line in result.stdout.splitlines()[1:])
    assert lines["port"] == "9001"
    assert lines["hold_ttl"] == "90.0"
    assert lines["max_body"] == "2048"


def test_help_everywhere_and_a_clear_error_without_models() -> None:
    for args in (["--help"], ["origin", "--help"], ["origin", "serve", "--help"], ["origin", "seed", "--help"]):
        result = run(*args)
        assert result.returncode == 0, (args, result.stderr)
        assert "usage:" in result.stdout
    serve_help = run("origin", "serve", "--help").stdout
    assert "--hold-ttl" in serve_help
    assert "--database" in serve_help
    module = subprocess.run([sys.executable, "-m", "origin", "--help"], capture_output=True, text=True, timeout=60)
    assert module.returncode == 0
    assert "python -m origin" in module.stdout
    for service in ("edge", "geodns", "predictor", "pop", "up", "status"):
        assert run(service, "--help").returncode == 0, service
    result = run("predictor", "serve", "--models", "/nonexistent/models")
    assert result.returncode == 1
    assert "no purchase model" in result.stderr


def test_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    port = free_port()
    result = run("origin", "seed", "--database", f"postgresql://nobody@127.0.0.1:{port}/none", "--db-timeout", "2s")
    assert result.returncode == 1
    assert "PostgreSQL" in result.stderr or "connect" in result.stderr.lower()
    assert "Traceback" not in result.stderr
