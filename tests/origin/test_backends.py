"""Shard backends: real `origin serve` children on loopback, and the Kubernetes manifests and kubectl calls.

There is no cluster here: the Kubernetes backend is checked by validating its
manifests against the API schemas (kubernetes-validate) and by running it
against a stand-in `kubectl` script that records its arguments and input.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from origin.backends import (
    BackendError,
    KubernetesBackend,
    LocalProcessBackend,
    ShardSpec,
    local_shard_command,
    serve_flags,
)

LOOPBACK = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]
DEADLINE = 30.0  # seconds; bounds every wait below (a loaded CI box is slow, never this slow)


def free_port_block(size: int) -> int:
    """A base port with `size` free ports after it (probed, so very likely still free when used)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((LOOPBACK, 0))
            base: int = probe.getsockname()[1]
        if base + size >= 65536:
            continue
        sockets = []
        try:
            for port in range(base, base + size):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind((LOOPBACK, port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return base
    raise RuntimeError("no block of free loopback ports")


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped has stopped running)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return "Z" not in state.split()[1]


async def wait_until_dead(pid: int) -> bool:
    for _ in range(int(DEADLINE / 0.1)):
        if not alive(pid):
            return True
        await asyncio.sleep(0.1)
    return False


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def local(session: aiohttp.ClientSession, tmp_path: Path) -> AsyncIterator[LocalProcessBackend]:
    backend = LocalProcessBackend(
        session=session,
        data_dir=tmp_path / "shards",
        upstream="http://127.0.0.1:1",  # nothing listens: a shard answers 503 (not serving) but runs
        shardmap_url="http://127.0.0.1:1/v1/shardmap",
        base_port=free_port_block(4),
        start_timeout=DEADLINE,
        stop_grace=5.0,
    )
    try:
        yield backend
    finally:
        await backend.close()


async def health(session: aiohttp.ClientSession, url: str) -> str:
    """The role the process at `url` reports: it answers 200 (a primary) or 503 (a shard with no upstream)."""
    async with session.get(url + "/v1/health", timeout=aiohttp.ClientTimeout(total=5)) as response:
        assert response.status in (200, 503)
        role: str = (await response.json())["role"]
        return role


async def test_local_shards_start_answer_and_stop(local: LocalProcessBackend, session: aiohttp.ClientSession) -> None:
    first = await local.start(ShardSpec("eu-west-1", "eu-west"))
    second = await local.start(ShardSpec("na-east-1", "na-east"))
    assert first == f"http://127.0.0.1:{local.base_port}" and second == f"http://127.0.0.1:{local.base_port + 1}"
    role = "shard" if "--role" in await serve_flags() else "primary"
    assert await health(session, first) == role and await health(session, second) == role
    assert await local.running() == {"eu-west-1": first, "na-east-1": second}
    assert await local.start(ShardSpec("eu-west-1", "eu-west")) == first  # idempotent: no second process
    assert (local.data_dir / "eu-west-1" / "shard.log").exists()

    pid = local.pid("eu-west-1")
    assert pid is not None and alive(pid)
    await local.stop("eu-west-1")
    assert not alive(pid)
    assert await local.running() == {"na-east-1": second}
    with pytest.raises(aiohttp.ClientConnectionError):
        await health(session, first)
    await local.stop("eu-west-1")  # stopping a stopped shard is a no-op

    other = local.pid("na-east-1")
    assert other is not None
    await local.close()
    assert not alive(other) and await local.running() == {}


async def test_a_crashed_shard_is_restarted_on_its_port(
    local: LocalProcessBackend, session: aiohttp.ClientSession
) -> None:
    url = await local.start(ShardSpec("eu-west-1", "eu-west"))
    pid = local.pid("eu-west-1")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    for _ in range(int(DEADLINE / 0.05)):
        if "eu-west-1" not in await local.running():
            break
        await asyncio.sleep(0.05)
    assert await local.running() == {}
    assert await local.start(ShardSpec("eu-west-1", "eu-west")) == url
    assert local.pid("eu-west-1") not in (None, pid)
    assert await health(session, url) in ("shard", "primary")


async def test_a_taken_port_is_skipped(local: LocalProcessBackend) -> None:
    with socket.socket() as squatter:
        squatter.bind((LOOPBACK, local.base_port))
        squatter.listen()
        url = await local.start(ShardSpec("eu-west-1", "eu-west"))
    assert url == f"http://127.0.0.1:{local.base_port + 1}"


async def test_a_shard_that_cannot_start_is_a_clear_error(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    broken = tmp_path / "broken-python"
    broken.write_text("#!/bin/sh\necho 'boom: no such module' >&2\nexit 3\n")
    broken.chmod(0o755)
    backend = LocalProcessBackend(
        session=session, data_dir=tmp_path / "shards", upstream="http://127.0.0.1:1",
        shardmap_url="http://127.0.0.1:1/x", base_port=free_port_block(2), start_timeout=DEADLINE,
        python=str(broken), flags=frozenset({"--port"}),
    )  # fmt: skip
    try:
        with pytest.raises(BackendError, match=r"exited with status 3 while starting.*boom: no such module"):
            await backend.start(ShardSpec("eu-west-1", "eu-west"))
        assert await backend.running() == {}
        assert backend.url("eu-west-1") is None
    finally:
        await backend.close()


async def test_the_command_line_follows_what_origin_serve_accepts() -> None:
    flags = await serve_flags()
    assert "--port" in flags and "--database" in flags
    spec = ShardSpec("eu-west-1", "eu-west")
    kwargs = {"host": LOOPBACK, "port": 8110, "upstream": "http://u", "shardmap_url": "http://u/v1/shardmap",
              "data_dir": Path("/d/eu-west-1")}  # fmt: skip
    shard = local_shard_command("py", frozenset({"--role", "--listen", "--data-dir"}), spec, **kwargs)  # type: ignore[arg-type]
    assert shard == ["py", "-m", "ops.cli", "origin", "serve", "--role", "shard", "--shard-id", "eu-west-1",
                     "--region", "eu-west", "--upstream", "http://u", "--shardmap-url", "http://u/v1/shardmap",
                     "--listen", "127.0.0.1:8110", "--data-dir", "/d/eu-west-1", "--node-id", "eu_west_1"]  # fmt: skip
    primary = local_shard_command("py", frozenset({"--host", "--port"}), spec, **kwargs)  # type: ignore[arg-type]
    assert "--role" not in primary and primary[-2:] == ["--node-id", "eu_west_1"]
    # Whatever this checkout's `origin serve` accepts, the command built for it parses and validates:
    # `origin config` takes the same flags and exits non-zero on a bad one.
    command = local_shard_command(sys.executable, flags, spec, **kwargs)  # type: ignore[arg-type]
    assert ("--role" in command) == ("--role" in flags)
    config = [arg if arg != "serve" else "config" for arg in command]
    checked = await asyncio.create_subprocess_exec(*config, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO)
    output, _ = await asyncio.wait_for(checked.communicate(), DEADLINE)
    assert checked.returncode == 0, output.decode()
    assert 'node_id = "eu_west_1"' in output.decode()


MANAGER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    import aiohttp
    from origin.backends import LocalProcessBackend, ShardSpec

    async def main():
        async with aiohttp.ClientSession() as session:
            backend = LocalProcessBackend(session=session, data_dir=Path(sys.argv[1]), upstream="http://127.0.0.1:1",
                                          shardmap_url="http://127.0.0.1:1/v1/shardmap", base_port=int(sys.argv[2]),
                                          start_timeout=60)
            await backend.start(ShardSpec("eu-west-1", "eu-west"))
            print(backend.pid("eu-west-1"), flush=True)
            await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
async def test_a_killed_manager_leaves_no_orphan(tmp_path: Path) -> None:
    script = tmp_path / "manager.py"
    script.write_text(MANAGER_SCRIPT)
    manager = await asyncio.create_subprocess_exec(
        sys.executable, str(script), str(tmp_path / "shards"), str(free_port_block(2)),
        stdout=subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    try:
        assert manager.stdout is not None
        line = await asyncio.wait_for(manager.stdout.readline(), 2 * DEADLINE)
        shard_pid = int(line)
        assert alive(shard_pid)
        manager.kill()  # no chance to stop its children
        await manager.wait()
        assert await wait_until_dead(shard_pid)
    finally:
        if manager.returncode is None:
            manager.kill()
            await manager.wait()


# Kubernetes --------------------------------------------------------------------------------


def kube(tmp_path: Path, storage: str = "") -> KubernetesBackend:
    return KubernetesBackend(
        namespace="boxoffice",
        image="registry.example/boxoffice:0.1.0",
        upstream="http://origin.boxoffice.svc.cluster.local:8100",
        shardmap_url="http://origin.boxoffice.svc.cluster.local:8100/v1/shardmap",
        storage=storage,
        kubectl=str(tmp_path / "kubectl"),
        start_timeout=120,
    )


@pytest.mark.parametrize("storage", ["", "10Gi"])
def test_manifests_pass_the_kubernetes_schemas(tmp_path: Path, storage: str) -> None:
    objects = kube(tmp_path, storage).manifests(ShardSpec("eu-west-1", "eu-west"))
    kinds = [obj["kind"] for obj in objects]
    assert kinds == (["PersistentVolumeClaim"] if storage else []) + ["Deployment", "Service"]
    for obj in objects:
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
    deployment = next(obj for obj in objects if obj["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example/boxoffice:0.1.0"
    assert container["command"][:5] == ["boxoffice", "origin", "serve", "--role", "shard"]
    assert container["command"][container["command"].index("--shard-id") + 1] == "eu-west-1"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels[key] == value for key, value in deployment["spec"]["selector"]["matchLabels"].items())
    volume = deployment["spec"]["template"]["spec"]["volumes"][0]
    assert ("persistentVolumeClaim" in volume) == bool(storage)


def test_a_broken_manifest_is_caught_by_the_validator(tmp_path: Path) -> None:
    deployment = kube(tmp_path).manifests(ShardSpec("eu-west-1", "eu-west"))[0]
    deployment["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, kubernetes_validate.latest_version(), strict=True)


def test_shard_ids_that_cannot_name_objects_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="cannot name Kubernetes objects"):
        kube(tmp_path).manifests(ShardSpec("EU_west/1", "eu-west"))


FAKE_KUBECTL = textwrap.dedent(
    """\
    #!/bin/sh
    # Records each call (arguments, then standard input) the way a test can read back.
    log="$(dirname "$0")/calls.jsonl"
    input=""
    if [ "$2" = "apply" ] || [ "$1" = "apply" ]; then input="$(cat)"; fi
    PYTHON -c 'import json,sys; print(json.dumps({"argv": sys.argv[2:], "stdin": sys.argv[1]}))' \\
        "$input" "$@" >> "$log"
    case "$1" in
      get) printf '%s' '{"items": [{"metadata": {"labels": {"app.kubernetes.io/instance": "eu-west-1"}}}]}' ;;
      delete) [ -f "$(dirname "$0")/fail-delete" ] && { echo "error: the server is unreachable" >&2; exit 1; } ;;
    esac
    exit 0
    """
)


async def test_kubectl_calls(tmp_path: Path) -> None:
    fake = tmp_path / "kubectl"
    fake.write_text(FAKE_KUBECTL.replace("PYTHON", sys.executable))
    fake.chmod(0o755)
    backend = kube(tmp_path, "10Gi")
    url = await backend.start(ShardSpec("eu-west-1", "eu-west"))
    assert url == "http://shard-eu-west-1.boxoffice.svc.cluster.local:8110"
    assert await backend.running() == {"eu-west-1": url}
    await backend.stop("eu-west-1")
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert [call["argv"][0] for call in calls] == ["apply", "rollout", "get", "delete"]
    applied = json.loads(calls[0]["stdin"])
    assert applied["kind"] == "List" and [item["kind"] for item in applied["items"]] == [
        "PersistentVolumeClaim", "Deployment", "Service"]  # fmt: skip
    assert calls[0]["argv"] == ["apply", "--namespace", "boxoffice", "--filename", "-"]
    assert calls[1]["argv"] == [
        "rollout",
        "status",
        "deployment/shard-eu-west-1",
        "--namespace",
        "boxoffice",
        "--timeout=120s",
    ]
    assert calls[3]["argv"][1] == "deployment,service,persistentvolumeclaim"
    assert "--selector" in calls[3]["argv"] and "--ignore-not-found" in calls[3]["argv"]
    assert calls[3]["argv"][calls[3]["argv"].index("--selector") + 1].startswith(
        "app.kubernetes.io/instance=eu-west-1,"
    )

    (tmp_path / "fail-delete").touch()
    with pytest.raises(BackendError, match="the server is unreachable"):
        await backend.stop("eu-west-1")


async def test_a_missing_kubectl_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="cannot run"):
        await kube(tmp_path).running()
