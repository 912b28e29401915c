"""`boxoffice origin serve --role shard …`: flags, their checks, and a real shard process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ops.settings import SettingsError, load
from origin.cli import build_parser
from origin.settings import OriginSettings


def settings_from(*flags: str) -> OriginSettings:
    args = build_parser().parse_args(["serve", *flags])
    return load(OriginSettings, "origin", args=args, environ={})


def test_shard_flags_layer_like_every_setting() -> None:
    settings = settings_from(
        "--role", "shard", "--shard-id", "s1", "--region", "eu-west", "--upstream", "http://127.0.0.1:8100",
        "--events", "evt-1,evt-2", "--max-lag", "3s", "--database", "sqlite:var/shard-s1.db",
    )  # fmt: skip
    assert (settings.role, settings.shard_id, settings.region) == ("shard", "s1", "eu-west")
    assert settings.events == ("evt-1", "evt-2") and settings.max_lag == 3.0
    assert settings_from().role == "primary"


@pytest.mark.parametrize(
    ("flags", "key"),
    [
        (["--role", "replica"], "origin.role"),
        (["--role", "shard", "--region", "eu-west", "--database", "sqlite:s.db"], "origin.upstream"),
        (["--role", "shard", "--upstream", "http://u", "--database", "sqlite:s.db"], "origin.region"),
        (["--role", "shard", "--upstream", "http://u", "--region", "r"], "origin.database"),
        (["--role", "shard", "--upstream", "http://u", "--shardmap-url", "http://m", "--data-dir", "d"], "shard_id"),
        (["--listen", "nope"], "origin.listen"),
    ],
)
def test_bad_shard_settings_name_the_key(flags: list[str], key: str) -> None:
    with pytest.raises(SettingsError, match=key):
        settings_from(*flags)


def test_listen_and_data_dir() -> None:
    settings = settings_from("--listen", "0.0.0.0:8111", "--data-dir", "/var/lib/shard")
    assert settings.bind_address() == ("0.0.0.0", 8111)
    assert settings.database_url() == "sqlite:/var/lib/shard/origin.db"


def _get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, None


def test_a_shard_process_follows_a_primary_process(tmp_path: Path, unused_tcp_port_factory: Any) -> None:
    primary_port, shard_port = unused_tcp_port_factory(), unused_tcp_port_factory()
    common = [sys.executable, "-m", "origin", "serve", "--no-access-log", "--log-level", "warning"]
    primary = subprocess.Popen(
        [*common, "--port", str(primary_port), "--database", f"sqlite:{tmp_path}/p.db", "--seed-demo",
         "--demo-venues", "12", "--demo-events", "30"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    shard = subprocess.Popen(
        [*common, "--role", "shard", "--shard-id", "s1", "--region", "eu-west", "--listen", f"127.0.0.1:{shard_port}",
         "--upstream", f"http://127.0.0.1:{primary_port}", "--data-dir", str(tmp_path / "shard"), "--max-lag", "5s"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        health: Any = None
        for _ in range(300):
            status, health = _get(f"http://127.0.0.1:{shard_port}/v1/health")
            if status == 200:
                break
            time.sleep(0.1)
        assert health is not None and health["role"] == "shard" and health["serving"] is True
        status, events = _get(f"http://127.0.0.1:{shard_port}/v1/events")
        assert status == 200 and events["events"]
        assert {event["region"] for event in events["events"]} == {"eu-west"}
        assert sorted(event["id"] for event in events["events"]) == health["events"]
    finally:
        for process in (shard, primary):
            process.terminate()
        for process in (shard, primary):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert shard.returncode == 0 and primary.returncode == 0
