"""Which feed a POP follows, and under which Redis consumer group name."""

from __future__ import annotations

import dataclasses
import socket

from edge.service import feed_reader_id, feed_upstream
from edge.settings import EdgeSettings


def test_each_process_reads_under_its_own_name() -> None:
    one = feed_reader_id("pop-eu-west", 1, 0)
    assert one.startswith("pop-eu-west.")
    assert feed_reader_id("pop-eu-west", 2, 0) != feed_reader_id("pop-eu-west", 2, 1)
    assert all(ch.isalnum() or ch in "_.-" for ch in one)


def test_replicas_on_other_hosts_get_other_groups(monkeypatch: object) -> None:
    import pytest

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    monkeypatch.setattr(socket, "gethostname", lambda: "pod-a")
    first = feed_reader_id("pop-1", 1, 0)
    monkeypatch.setattr(socket, "gethostname", lambda: "pod b/β")
    second = feed_reader_id("pop-1", 1, 0)
    assert first == "pop-1.pod-a"
    assert second != first
    assert all(ch.isalnum() or ch in "_.-" for ch in second)


def test_with_a_shard_map_the_http_feed_is_the_origins() -> None:
    base = EdgeSettings(upstreams=("http://127.0.0.1:8110", "http://127.0.0.1:8100"))
    assert feed_upstream(base) == "http://127.0.0.1:8110"
    mapped = dataclasses.replace(base, shardmap_url="http://127.0.0.1:8100/v1/shardmap", region="eu-west")
    assert feed_upstream(mapped) == "http://127.0.0.1:8100"
