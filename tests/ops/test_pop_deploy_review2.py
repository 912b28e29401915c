"""Review of `boxoffice pop deploy`'s rollback and of stopping a POP, on real processes and loopback servers.

What an operator relies on: whatever way a deploy fails (a Ctrl-C while the
POP starts, a registration whose answer is lost, a state file that cannot be
written), it leaves no POP process and no GeoDNS registration behind; and
stopping a POP stops its workers too, even one that ignores SIGTERM. The POP
processes are real (`edge serve`, or a small program with the same command
line for the worker cases); GeoDNS's admin API and the POP's health endpoint
are played by one stdlib HTTP server where a real one cannot be made to lose
an answer. Every wait is a bounded poll; no test asserts on elapsed time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ops.pop import main as pop_main
from ops.pop.process import spawn_edge, stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
POLL = 0.05
DEADLINE = 30.0  # a fresh interpreter importing aiohttp on a busy two-core host
COMMAND_TIMEOUT = 120.0


def poll(condition: Callable[[], bool], within: float = DEADLINE) -> bool:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)
    return True


def gone(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is ours
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def pids_serving(name: str) -> list[int]:
    """Every process whose command line is `… --pop NAME …` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
            if b"--pop" in arguments and name.encode() in arguments:
                found.append(int(entry.name))
    return found


def free_address_and_port(last_octet: int) -> tuple[str, int]:
    address = f"127.0.0.{last_octet}"
    with socket.socket() as probe:
        probe.bind((address, 0))
        port: int = probe.getsockname()[1]
    return address, port


def clean_environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("BOXOFFICE_")}


needs_proc = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads processes from /proc (Linux)")


# Stopping a POP stops its workers ------------------------------------------------------------------

# The command line of `edge serve --pop NAME` (stop_process checks it against pid reuse), running a
# main process and one forked worker that ignores SIGTERM: a worker stuck in a request, or one the
# main process cannot stop because it was SIGKILLed. argv: -c edge serve NAME PIDFILE MODE.
FAKE_EDGE = """\
import os, pathlib, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
worker = os.fork()
if worker == 0:
    time.sleep(3600)
    os._exit(0)
if sys.argv[5] == "main-exits-on-sigterm":
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
pathlib.Path(sys.argv[4]).write_text(str(worker))
time.sleep(3600)
"""


@needs_proc
@pytest.mark.parametrize("mode", ["main-exits-on-sigterm", "main-ignores-sigterm"])
def test_stopping_a_pop_leaves_none_of_its_workers_behind(tmp_path: Path, mode: str) -> None:
    pid_file = tmp_path / "worker.pid"
    command = [sys.executable, "-c", FAKE_EDGE, "edge", "serve", "review-pop", str(pid_file), mode]
    main = spawn_edge(command, clean_environment(), tmp_path / "edge.log")
    worker = 0
    try:
        assert poll(lambda: pid_file.exists() and pid_file.read_text() != ""), (tmp_path / "edge.log").read_text()
        worker = int(pid_file.read_text())
        result = stop_process(main, "review-pop", grace=0.5)
        assert gone(main), result
        assert poll(lambda: gone(worker)), f"worker {worker} outlived its POP ({result})"
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(main, signal.SIGKILL)
        kill(main)
        if worker:
            kill(worker)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(main, 0)


# Ctrl-C while the POP starts -----------------------------------------------------------------------


@needs_proc
def test_ctrl_c_while_the_pop_starts_stops_the_pop_it_started(tmp_path: Path) -> None:
    name = "review-interrupted"
    address, port = free_address_and_port(231)
    run_dir = tmp_path / "pops"
    state_file = run_dir / name / "pop.json"
    command = [sys.executable, "-m", "ops.pop", "deploy", "--name", name, "--region", "eu-west",
               "--address", address, "--port", str(port), "--lat", "51.5", "--lon", "-0.1",
               "--upstream", "http://127.0.0.1:9", "--geodns-admin", "http://127.0.0.1:9",
               "--run-dir", str(run_dir)]  # fmt: skip
    deploy = subprocess.Popen(command, cwd=REPO_ROOT, env=clean_environment(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    pid = 0
    try:

        def started() -> bool:
            with contextlib.suppress(OSError, ValueError):
                return isinstance(json.loads(state_file.read_text()).get("pid"), int)
            return deploy.poll() is not None

        assert poll(started), deploy.communicate()[0].decode()
        pid = json.loads(state_file.read_text())["pid"]
        deploy.send_signal(signal.SIGINT)  # while the fresh POP is still importing: the start step is not done
        output = deploy.communicate(timeout=COMMAND_TIMEOUT)[0].decode()
        assert deploy.returncode == 130, output
        assert poll(lambda: gone(pid)), f"the POP (pid {pid}) outlived the interrupted deploy:\n{output}"
        assert not state_file.exists()
    finally:
        if deploy.poll() is None:
            deploy.kill()
            deploy.communicate()
        for leftover in [pid, *pids_serving(name)]:
            if leftover:
                kill(leftover)


@needs_proc
def test_a_state_file_that_cannot_be_written_stops_the_pop_and_says_why(tmp_path: Path) -> None:
    name = "review-unwritable"
    address, port = free_address_and_port(232)
    run_dir = tmp_path / "pops"
    (run_dir / name / "pop.tmp").mkdir(parents=True)  # where write_record puts its temporary file
    command = [sys.executable, "-m", "ops.pop", "deploy", "--name", name, "--region", "eu-west",
               "--address", address, "--port", str(port), "--lat", "51.5", "--lon", "-0.1",
               "--upstream", "http://127.0.0.1:9", "--geodns-admin", "http://127.0.0.1:9",
               "--run-dir", str(run_dir)]  # fmt: skip
    try:
        result = subprocess.run(command, cwd=REPO_ROOT, env=clean_environment(), capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT, check=False)  # fmt: skip
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        assert "cannot write" in result.stdout, result.stdout
        assert poll(lambda: not pids_serving(name)), f"POP processes left: {pids_serving(name)}"
    finally:
        for leftover in pids_serving(name):
            kill(leftover)


# A registration whose answer is lost ---------------------------------------------------------------


class AdminAndPop:
    """One loopback server playing an attached POP's health endpoint and GeoDNS's admin API.

    It applies a PUT of a POP and then never answers it (until closed): the deploy's request times out
    with the registration in place, as with a GeoDNS that stalls after committing.
    """

    def __init__(self, name: str) -> None:
        self.registered: dict[str, Any] = {}
        self.forgiving = False  # True: a DELETE of an unknown POP answers 204 too
        self.methods: list[str] = []
        self.release = threading.Event()
        self.health: dict[str, Any] = {"pop": name, "status": "ok", "capacity": 1.0, "upstreams": ["http://x"]}
        shared = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                shared.methods.append(f"GET {self.path}")
                if self.path == "/_edge/health":
                    self._send(200, shared.health)
                elif self.path.startswith("/v1/pops/") and self.path.rsplit("/", 1)[1] in shared.registered:
                    self._send(200, shared.registered[self.path.rsplit("/", 1)[1]])
                else:
                    self._send(404, {"error": {"message": "no such POP"}})

            def do_PUT(self) -> None:
                shared.methods.append(f"PUT {self.path}")
                length = int(self.headers.get("Content-Length", "0"))
                shared.registered[self.path.rsplit("/", 1)[1]] = json.loads(self.rfile.read(length))
                shared.release.wait(COMMAND_TIMEOUT)  # the answer is lost

            def do_DELETE(self) -> None:
                shared.methods.append(f"DELETE {self.path}")
                if shared.registered.pop(self.path.rsplit("/", 1)[1], None) is None and not shared.forgiving:
                    self._send(404, {"error": {"message": "no such POP"}})
                else:
                    self.send_response(204)
                    self.end_headers()

            def _send(self, status: int, document: Any) -> None:
                body = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(DEADLINE)


@pytest.fixture
def admin_and_pop() -> Iterator[AdminAndPop]:
    server = AdminAndPop("review-lost")
    try:
        yield server
    finally:
        server.close()


def test_a_registration_whose_answer_is_lost_is_removed_by_the_rollback(
    tmp_path: Path, admin_and_pop: AdminAndPop, capsys: pytest.CaptureFixture[str]
) -> None:
    code = pop_main([
        "deploy", "--name", "review-lost", "--region", "eu-west", "--address", "127.0.0.1",
        "--port", str(admin_and_pop.port), "--lat", "51.5", "--lon", "-0.1", "--attach",
        "--geodns-admin", f"http://127.0.0.1:{admin_and_pop.port}", "--token", "t", "--run-dir", str(tmp_path),
    ])  # fmt: skip
    output = capsys.readouterr().out
    assert code == 1, output
    assert "PUT /v1/pops/review-lost" in admin_and_pop.methods  # the registration did reach GeoDNS
    assert admin_and_pop.registered == {}, f"still registered after the rollback:\n{output}"


# Retire and a state file or a POP that say nonsense ------------------------------------------------


@pytest.mark.parametrize("pid", ["4242", True, -1, 1.5])
def test_retire_of_a_pop_whose_state_file_has_a_bad_pid_is_a_clear_error(
    tmp_path: Path, pid: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "pop.json").write_text(json.dumps({
        "name": "bad", "region": "eu-west", "address": "127.0.0.1", "port": 9, "pid": pid,
        "geodns_admin": "http://127.0.0.1:9", "purge_token": "t", "log": "-", "started_at": 0.0,
    }))  # fmt: skip
    code = pop_main(["retire", "--name", "bad", "--run-dir", str(tmp_path), "--dns-ttl", "0s"])
    assert code == 2
    assert "pid is" in capsys.readouterr().err


@pytest.mark.parametrize("requests", ["many", None, [1], -5])
def test_retire_of_a_pop_whose_request_counter_is_not_a_count_still_finishes(
    tmp_path: Path, admin_and_pop: AdminAndPop, requests: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "review-lost").mkdir()
    (tmp_path / "review-lost" / "pop.json").write_text(json.dumps({
        "name": "review-lost", "region": "eu-west", "address": "127.0.0.1", "port": admin_and_pop.port,
        "pid": None, "geodns_admin": f"http://127.0.0.1:{admin_and_pop.port}", "purge_token": "t", "log": "-",
        "started_at": 0.0,
    }))  # fmt: skip
    admin_and_pop.forgiving = True
    admin_and_pop.health["requests"] = requests
    code = pop_main(["retire", "--name", "review-lost", "--run-dir", str(tmp_path), "--dns-ttl", "0s",
                     "--token", "t"])  # fmt: skip
    output = capsys.readouterr().out
    assert code == 0, output
    assert "not a count" in output
