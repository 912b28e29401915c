"""Where shards run: the shard manager's backends (local child processes, Kubernetes).

The manager keeps the placement (which shards exist) and asks a backend to
converge on it each round: ``start`` every placed shard that is not running
(a new one, or one that crashed), ``stop`` every running shard that is no
longer placed. Both calls are idempotent, so a manager that died half-way
through a round repeats it safely. A shard's events are not the backend's
business: shards read them from the published shard map.

* :class:`LocalProcessBackend` runs ``python -m ops.cli origin serve`` children
  on loopback ports from ``base_port`` upward, each with its own data
  directory and log file. ``start`` returns once the child answers
  ``/v1/health`` at all (a bootstrapping shard answers 503; whether it serves
  is the manager's health check); ``stop`` sends SIGTERM to the child's process group and
  SIGKILL after a grace period. Children are in their own session (a Ctrl-C
  meant for the manager does not race the manager's orderly stop) and, on
  Linux, get SIGTERM if the manager dies without stopping them, so none is
  orphaned.
* :class:`KubernetesBackend` renders a Deployment, a Service and, with
  ``storage``, a PersistentVolumeClaim per shard, and runs ``kubectl apply``,
  ``kubectl rollout status``, ``kubectl get`` and ``kubectl delete``.

Which flags the shard command line uses depends on what ``origin serve``
accepts (read once from its ``--help``): with ``--role`` it is a shard
(``--role shard --shard-id … --region … --upstream … --shardmap-url …``),
otherwise a primary on its own SQLite file, enough to exercise the process
handling before the shard role exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import aiohttp

from ops.runtime import bindable

log = logging.getLogger("boxoffice.origin.backends")

HEALTH_PATH: Final = "/v1/health"
# While a shard starts, /v1/health is polled this often, each probe bounded by
# the probe timeout; a shard bootstraps in seconds, so both are small.
HEALTH_POLL_INTERVAL: Final = 0.1
HEALTH_PROBE_TIMEOUT: Final = 2.0
# `origin serve --help` imports the service modules: a second or two.
HELP_TIMEOUT: Final = 60.0
# kubectl talks to the API server: apply and get take well under this.
KUBECTL_TIMEOUT: Final = 60.0
# Ports probed from base_port before giving up; one per shard of the local stack.
MAX_LOCAL_PORTS: Final = 200
LOG_TAIL_BYTES: Final = 2_000  # of a failed child's log, in the error message
SHARD_PORT: Final = 8110  # the port a shard listens on inside its pod
DATA_MOUNT: Final = "/var/lib/boxoffice"
MANAGED_BY: Final = "boxoffice-shard-manager"
INSTANCE_LABEL: Final = "app.kubernetes.io/instance"
REGION_LABEL: Final = "boxoffice.dev/region"
# A Service name is an RFC 1035 label (63 characters, a letter first); "shard-" takes 6.
_K8S_SHARD_ID: Final = re.compile(r"^[a-z]([a-z0-9-]{0,55}[a-z0-9])?$")
_FLAG: Final = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
_PR_SET_PDEATHSIG: Final = 1


class BackendError(Exception):
    """A shard could not be started, stopped or listed; the message says which and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class ShardSpec:
    shard_id: str
    region: str


class Backend(Protocol):
    """What the shard manager needs from wherever shards run."""

    name: str

    async def start(self, shard: ShardSpec) -> str:
        """Run `shard` unless it runs; return its URL once it answers HTTP. Raises BackendError."""
        ...

    async def stop(self, shard_id: str) -> None:
        """Stop `shard_id` and release what it held; nothing if it does not run. Raises BackendError."""
        ...

    async def running(self) -> Mapping[str, str]:
        """Shard id → URL of every shard this backend runs now. Raises BackendError."""
        ...

    def url(self, shard_id: str) -> str | None:
        """Where `shard_id` answers, if known."""
        ...

    async def close(self) -> None:
        """Release the backend; the local backend stops its children (they live only with the manager)."""
        ...


# Shard command lines -----------------------------------------------------------------------


async def serve_flags(python: str = sys.executable) -> frozenset[str]:
    """The flags `python -m ops.cli origin serve` accepts, read from its --help."""
    try:
        process = await asyncio.create_subprocess_exec(
            python, "-m", "ops.cli", "origin", "serve", "--help",
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
    except OSError as exc:
        raise BackendError(f"cannot run {python}: {exc}") from exc
    try:
        output, _ = await asyncio.wait_for(process.communicate(), HELP_TIMEOUT)
    except TimeoutError:
        await _kill(process)
        raise BackendError(f"`origin serve --help` did not finish in {HELP_TIMEOUT:.0f} s") from None
    except asyncio.CancelledError:
        await _kill(process)  # the manager is stopping: no child outlives the call
        raise
    if process.returncode != 0:
        raise BackendError(f"`origin serve --help` failed: {output.decode(errors='replace')[-LOG_TAIL_BYTES:]}")
    return frozenset(_FLAG.findall(output.decode(errors="replace")))


def local_shard_command(
    python: str,
    flags: frozenset[str],
    shard: ShardSpec,
    *,
    host: str,
    port: int,
    upstream: str,
    shardmap_url: str,
    data_dir: Path,
) -> list[str]:
    """The command line of one local shard, using the shard role's flags when `origin serve` has them."""
    command = [python, "-m", "ops.cli", "origin", "serve"]
    if "--role" in flags:
        command += ["--role", "shard", "--shard-id", shard.shard_id, "--region", shard.region,
                    "--upstream", upstream, "--shardmap-url", shardmap_url]  # fmt: skip
        command += ["--listen", f"{host}:{port}"] if "--listen" in flags else ["--host", host, "--port", str(port)]
        command += (
            ["--data-dir", str(data_dir)] if "--data-dir" in flags else ["--database", f"sqlite:{data_dir}/shard.db"]
        )
    else:
        # No shard role yet: a primary with its own database still exercises start, health and stop.
        command += ["--host", host, "--port", str(port), "--database", f"sqlite:{data_dir}/origin.db"]
    # Its own HLC node id, so last-write-wins ties never compare two nodes called "origin".
    return [*command, "--node-id", node_id(shard.shard_id)]


def node_id(shard_id: str) -> str:
    """A shard's HLC node id: its id with what node ids refuse (anything but letters, digits, _) as _."""
    return re.sub(r"[^A-Za-z0-9_]", "_", shard_id)


# Local processes ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Child:
    shard: ShardSpec
    process: asyncio.subprocess.Process
    port: int
    log_path: Path


class LocalProcessBackend:
    """Shards as child processes on loopback ports (the one-command local stack).

    Args:
        session: the HTTP client for health probes.
        data_dir: each shard gets ``data_dir/<shard id>`` for its database and ``shard.log``.
        upstream: the URL shards follow. shardmap_url: where they read their events.
        host, base_port: shards listen on host:base_port, base_port+1, … (the first free ones).
        start_timeout: how long a shard may take to answer /v1/health.
        stop_grace: SIGTERM, then SIGKILL after this many seconds.
        python: the interpreter that runs ``-m ops.cli`` (this one by default).
        flags: what ``origin serve`` accepts; read from its --help when None.
        extra_args: appended to every shard's command line (``--shardmap-interval 1s``, …).
    """

    name = "local"

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        data_dir: Path,
        upstream: str,
        shardmap_url: str,
        host: str = "127.0.0.1",
        base_port: int = SHARD_PORT,
        start_timeout: float = 60.0,
        stop_grace: float = 10.0,
        python: str = sys.executable,
        flags: frozenset[str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self._session = session
        self.extra_args = tuple(extra_args)
        self.data_dir = data_dir
        self.upstream = upstream
        self.shardmap_url = shardmap_url
        self.host = host
        self.base_port = base_port
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self.python = python
        self._flags = flags
        self._children: dict[str, _Child] = {}
        self._ports: dict[str, int] = {}  # kept across a crash so a restarted shard keeps its URL
        self._prctl = _linux_prctl()

    def url(self, shard_id: str) -> str | None:
        port = self._ports.get(shard_id)
        return None if port is None else f"http://{_url_host(self.host)}:{port}"

    def pid(self, shard_id: str) -> int | None:
        child = self._children.get(shard_id)
        return None if child is None else child.process.pid

    async def running(self) -> Mapping[str, str]:
        return {
            shard_id: f"http://{_url_host(self.host)}:{child.port}"
            for shard_id, child in sorted(self._children.items())
            if child.process.returncode is None
        }

    async def start(self, shard: ShardSpec) -> str:
        child = self._children.get(shard.shard_id)
        if child is not None and child.process.returncode is None:
            return f"http://{_url_host(self.host)}:{child.port}"
        if child is not None:
            log.warning("shard %s exited with status %s; restarting it", shard.shard_id, child.process.returncode)
            del self._children[shard.shard_id]
        if self._flags is None:
            self._flags = await serve_flags(self.python)
        port = self._ports.get(shard.shard_id) or self._free_port()
        self._ports[shard.shard_id] = port
        shard_dir = self.data_dir / shard.shard_id
        log_path = shard_dir / "shard.log"
        command = local_shard_command(
            self.python, self._flags, shard, host=self.host, port=port,
            upstream=self.upstream, shardmap_url=self.shardmap_url, data_dir=shard_dir,
        ) + list(self.extra_args)  # fmt: skip
        parent = os.getpid()
        prctl = self._prctl

        def die_with_parent() -> None:  # runs in the child between fork and exec
            if prctl is not None:
                prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:  # the manager died before prctl took effect
                os._exit(1)

        try:
            shard_dir.mkdir(parents=True, exist_ok=True)
            with log_path.open("ab") as log_file:
                process = await asyncio.create_subprocess_exec(
                    *command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                    start_new_session=True, preexec_fn=die_with_parent, cwd=shard_dir,
                )  # fmt: skip
        except OSError as exc:  # the data directory, its log file or the interpreter
            raise BackendError(f"cannot start shard {shard.shard_id}: {exc}") from exc
        child = _Child(shard, process, port, log_path)
        self._children[shard.shard_id] = child
        url = f"http://{_url_host(self.host)}:{port}"
        try:
            await self._wait_answering(child, url)
        except BackendError:
            await self._terminate(child)
            del self._children[shard.shard_id]
            self._ports.pop(shard.shard_id, None)  # the port may be taken: pick afresh next time
            raise
        log.info("shard %s (pid %d) answers at %s", shard.shard_id, process.pid, url)
        return url

    async def stop(self, shard_id: str) -> None:
        child = self._children.pop(shard_id, None)
        self._ports.pop(shard_id, None)
        if child is not None:
            await self._terminate(child)

    async def close(self) -> None:
        await asyncio.gather(*(self.stop(shard_id) for shard_id in list(self._children)))

    async def _wait_answering(self, child: _Child, url: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        last_error = "no answer yet"
        while loop.time() < deadline:
            if child.process.returncode is not None:
                raise BackendError(
                    f"shard {child.shard.shard_id} exited with status {child.process.returncode} while starting; "
                    f"its log ({child.log_path}) ends: {_tail(child.log_path)}"
                )
            try:
                timeout = aiohttp.ClientTimeout(total=min(HEALTH_PROBE_TIMEOUT, max(deadline - loop.time(), 0.01)))
                async with self._session.get(url + HEALTH_PATH, timeout=timeout):
                    # Any answer will do: a shard says 503 until it has bootstrapped, and
                    # whether it serves is the manager's health check, not the backend's.
                    return
            except (aiohttp.ClientError, TimeoutError) as exc:
                last_error = str(exc) or type(exc).__name__
            await asyncio.sleep(HEALTH_POLL_INTERVAL)
        raise BackendError(
            f"shard {child.shard.shard_id} did not answer {HEALTH_PATH} within {self.start_timeout:.0f} s "
            f"({last_error}); its log ({child.log_path}) ends: {_tail(child.log_path)}"
        )

    async def _terminate(self, child: _Child) -> None:
        process = child.process
        if process.returncode is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), self.stop_grace)
            except TimeoutError:
                log.warning("shard %s ignored SIGTERM for %.0f s; killing it", child.shard.shard_id, self.stop_grace)
        # SIGKILL the group whatever happened: anything the shard itself started goes too.
        _signal_group(process.pid, signal.SIGKILL)
        await process.wait()

    def _free_port(self) -> int:
        taken = set(self._ports.values())
        for port in range(self.base_port, min(self.base_port + MAX_LOCAL_PORTS, 65536)):
            if port not in taken and bindable(self.host, port):
                return port
        raise BackendError(f"no free port from {self.base_port} to {self.base_port + MAX_LOCAL_PORTS - 1}")


async def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    await process.wait()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _linux_prctl() -> Callable[[int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[[int, int], int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(file.tell() - LOG_TAIL_BYTES, 0))
            return file.read().decode(errors="replace").strip() or "(empty)"
    except OSError as exc:
        return f"(unreadable: {exc.strerror})"


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


# Kubernetes --------------------------------------------------------------------------------


class KubernetesBackend:
    """Shards as one Deployment + Service (+ PersistentVolumeClaim) each, through kubectl.

    Every shard runs the one boxoffice image; the command picks the role
    (``boxoffice origin serve --role shard …``). Objects carry
    ``app.kubernetes.io/managed-by: boxoffice-shard-manager`` and the shard id in
    ``app.kubernetes.io/instance``, which is how ``running`` and ``stop`` find them.
    """

    name = "kubernetes"

    def __init__(
        self,
        *,
        namespace: str,
        image: str,
        upstream: str,
        shardmap_url: str,
        storage: str = "",
        kubectl: str = "kubectl",
        start_timeout: float = 300.0,
    ) -> None:
        self.namespace = namespace
        self.image = image
        self.upstream = upstream
        self.shardmap_url = shardmap_url
        self.storage = storage
        self.kubectl = kubectl
        self.start_timeout = start_timeout
        self._reported_foreign: set[str] = set()

    @staticmethod
    def object_name(shard_id: str) -> str:
        if not _K8S_SHARD_ID.match(shard_id):
            raise BackendError(f"shard id {shard_id!r} cannot name Kubernetes objects (lowercase, digits, '-')")
        return f"shard-{shard_id}"

    def url(self, shard_id: str) -> str | None:
        return f"http://{self.object_name(shard_id)}.{self.namespace}.svc.cluster.local:{SHARD_PORT}"

    def manifests(self, shard: ShardSpec) -> list[dict[str, Any]]:
        """The objects of one shard, as kubectl accepts them (JSON is YAML)."""
        name = self.object_name(shard.shard_id)
        labels = {
            "app.kubernetes.io/name": "boxoffice-shard",
            "app.kubernetes.io/component": "shard",
            "app.kubernetes.io/part-of": "boxoffice",
            "app.kubernetes.io/managed-by": MANAGED_BY,
            INSTANCE_LABEL: shard.shard_id,
            REGION_LABEL: shard.region,
        }
        selector = {"app.kubernetes.io/name": "boxoffice-shard", INSTANCE_LABEL: shard.shard_id}
        metadata = {"name": name, "namespace": self.namespace, "labels": labels}
        command = [
            "boxoffice", "origin", "serve", "--role", "shard",
            "--shard-id", shard.shard_id, "--region", shard.region,
            "--upstream", self.upstream, "--shardmap-url", self.shardmap_url,
            "--listen", f"0.0.0.0:{SHARD_PORT}", "--data-dir", DATA_MOUNT, "--node-id", node_id(shard.shard_id),
        ]  # fmt: skip
        probe = {"httpGet": {"path": HEALTH_PATH, "port": "http"}, "periodSeconds": 5, "timeoutSeconds": 2}
        container = {
            "name": "shard",
            "image": self.image,
            "command": command,
            "ports": [{"name": "http", "containerPort": SHARD_PORT, "protocol": "TCP"}],
            # Not ready until bootstrapped and within its lag bound; restarted only when it stops answering.
            "readinessProbe": {**probe, "failureThreshold": 1},
            "livenessProbe": {**probe, "initialDelaySeconds": 30, "failureThreshold": 6},
            "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 10001,
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": [{"name": "data", "mountPath": DATA_MOUNT}],
        }
        volume: dict[str, Any] = {"name": "data", "emptyDir": {}}
        objects: list[dict[str, Any]] = []
        if self.storage:
            claim = f"{name}-data"
            volume = {"name": "data", "persistentVolumeClaim": {"claimName": claim}}
            objects.append(
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {**metadata, "name": claim},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": self.storage}}},
                }
            )
        objects.append(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": metadata,
                "spec": {
                    "replicas": 1,
                    # One writer of the volume and of the shard's feed checkpoint: never two pods at once.
                    "strategy": {"type": "Recreate"},
                    "selector": {"matchLabels": selector},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"terminationGracePeriodSeconds": 30, "containers": [container], "volumes": [volume]},
                    },
                },
            }
        )
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": metadata,
                "spec": {
                    "selector": selector,
                    "ports": [{"name": "http", "port": SHARD_PORT, "targetPort": "http", "protocol": "TCP"}],
                },
            }
        )
        return objects

    def apply_command(self) -> list[str]:
        return [self.kubectl, "apply", "--namespace", self.namespace, "--filename", "-"]

    def rollout_command(self, shard_id: str) -> list[str]:
        return [self.kubectl, "rollout", "status", f"deployment/{self.object_name(shard_id)}",
                "--namespace", self.namespace, f"--timeout={max(int(self.start_timeout), 1)}s"]  # fmt: skip

    def delete_command(self, shard_id: str) -> list[str]:
        self.object_name(shard_id)  # refuse ids that cannot be labels
        return [self.kubectl, "delete", "deployment,service,persistentvolumeclaim", "--namespace", self.namespace,
                "--selector", f"{INSTANCE_LABEL}={shard_id},app.kubernetes.io/managed-by={MANAGED_BY}",
                "--ignore-not-found", "--wait=false"]  # fmt: skip

    def list_command(self) -> list[str]:
        return [self.kubectl, "get", "deployments", "--namespace", self.namespace,
                "--selector", f"app.kubernetes.io/managed-by={MANAGED_BY}", "--output", "json"]  # fmt: skip

    async def start(self, shard: ShardSpec) -> str:
        document = {"apiVersion": "v1", "kind": "List", "items": self.manifests(shard)}
        await self._kubectl(self.apply_command(), json.dumps(document).encode())
        await self._kubectl(self.rollout_command(shard.shard_id), None, time_limit=self.start_timeout + KUBECTL_TIMEOUT)
        url = self.url(shard.shard_id)
        assert url is not None
        return url

    async def stop(self, shard_id: str) -> None:
        await self._kubectl(self.delete_command(shard_id), None)

    async def running(self) -> Mapping[str, str]:
        output = await self._kubectl(self.list_command(), None)
        try:
            items = json.loads(output)["items"]
            shard_ids = sorted(str(item["metadata"]["labels"][INSTANCE_LABEL]) for item in items)
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(f"`{' '.join(self.list_command())}` printed no deployment list: {exc}") from exc
        # A deployment someone labelled by hand must not hide the shards that do run (and make the
        # manager restart every one of them each round): skip it, saying so once.
        foreign = {shard_id for shard_id in shard_ids if not _K8S_SHARD_ID.match(shard_id)}
        for shard_id in sorted(foreign - self._reported_foreign):
            log.warning("ignoring deployment labelled %s=%r: not a shard id this manager makes", INSTANCE_LABEL,
                        shard_id)  # fmt: skip
        self._reported_foreign = foreign
        return {
            shard_id: url for shard_id in sorted(set(shard_ids) - foreign) if (url := self.url(shard_id)) is not None
        }

    async def close(self) -> None:
        """Nothing to release: the shards outlive the manager, which finds them again with `running`."""

    async def _kubectl(self, argv: Sequence[str], stdin: bytes | None, *, time_limit: float = KUBECTL_TIMEOUT) -> bytes:
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
        except OSError as exc:
            raise BackendError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
        try:
            output, errors = await asyncio.wait_for(process.communicate(stdin), time_limit)
        except TimeoutError:
            await _kill(process)
            raise BackendError(f"`{' '.join(argv[:3])} …` did not finish in {time_limit:.0f} s") from None
        except asyncio.CancelledError:
            await _kill(process)  # the manager is stopping: no kubectl outlives the call
            raise
        if process.returncode != 0:
            message = errors.decode(errors="replace").strip()[-LOG_TAIL_BYTES:]
            raise BackendError(f"`{' '.join(argv[:3])} …` failed (status {process.returncode}): {message}")
        return output
