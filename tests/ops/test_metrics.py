"""The Prometheus registry: text exposition format 0.0.4 as a scraper reads it."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ops.metrics import Registry

FUZZ = settings(max_examples=200, deadline=None)


def unescape_label_value(text: str) -> str:
    """What a Prometheus parser makes of an escaped label value."""
    return re.sub(r"\\(.)", lambda match: {"n": "\n"}.get(match.group(1), match.group(1)), text)


def test_counter_renders_help_type_and_sorted_samples() -> None:
    registry = Registry()
    requests = registry.counter("edge_requests_total", "Requests served.", ["pop", "status"])
    requests.inc("lis", "200")
    requests.inc("lis", "200", amount=2)
    requests.inc("ams", "503", amount=0.5)
    registry.counter("edge_restarts_total", "Restarts.")
    assert registry.render() == (
        "# HELP edge_requests_total Requests served.\n"
        "# TYPE edge_requests_total counter\n"
        'edge_requests_total{pop="ams",status="503"} 0.5\n'
        'edge_requests_total{pop="lis",status="200"} 3\n'
        "# HELP edge_restarts_total Restarts.\n"
        "# TYPE edge_restarts_total counter\n"
    )
    assert requests.value("lis", "200") == 3
    assert requests.value("nowhere", "404") == 0


def test_gauge_set_and_callback() -> None:
    registry = Registry()
    depth = registry.gauge("queue_depth", "Items waiting.", label_names=["queue"])
    depth.set(4, "holds")
    depth.set(2.5, "holds")
    registry.gauge("cache_bytes", "Bytes cached.", read=lambda: 1024.0)
    registry.gauge("clock_offset_seconds", "Offset.", read=lambda: math.inf)
    assert registry.render().splitlines() == [
        "# HELP queue_depth Items waiting.",
        "# TYPE queue_depth gauge",
        'queue_depth{queue="holds"} 2.5',
        "# HELP cache_bytes Bytes cached.",
        "# TYPE cache_bytes gauge",
        "cache_bytes 1024",
        "# HELP clock_offset_seconds Offset.",
        "# TYPE clock_offset_seconds gauge",
        "clock_offset_seconds +Inf",
    ]


def test_histogram_buckets_are_cumulative_with_inf_sum_and_count() -> None:
    registry = Registry()
    latency = registry.histogram("request_seconds", "Latency.", ["route"], buckets=(1.0, 0.25))
    for value in (0.125, 0.25, 0.5, 4.0):  # 0.25 lands in le="0.25": buckets are upper-inclusive
        latency.observe(value, "/items")
    assert registry.render().splitlines() == [
        "# HELP request_seconds Latency.",
        "# TYPE request_seconds histogram",
        'request_seconds_bucket{route="/items",le="0.25"} 2',
        'request_seconds_bucket{route="/items",le="1"} 3',
        'request_seconds_bucket{route="/items",le="+Inf"} 4',
        'request_seconds_sum{route="/items"} 4.875',
        'request_seconds_count{route="/items"} 4',
    ]


def test_histogram_without_labels() -> None:
    registry = Registry()
    registry.histogram("batch_size", "Batch size.", buckets=(10,)).observe(3)
    assert registry.render().splitlines()[2:] == [
        'batch_size_bucket{le="10"} 1',
        'batch_size_bucket{le="+Inf"} 1',
        "batch_size_sum 3",
        "batch_size_count 1",
    ]


@FUZZ
@given(
    st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), min_size=1, max_size=6, unique=True),
    st.lists(st.floats(min_value=0, max_value=200, allow_nan=False), min_size=1, max_size=30),
)
def test_histogram_counts_match_the_observations(bounds: list[float], values: list[float]) -> None:
    registry = Registry()
    histogram = registry.histogram("h", "H.", buckets=bounds)
    for value in values:
        histogram.observe(value)
    samples = {}
    for line in registry.render().splitlines()[2:]:
        name, _, number = line.rpartition(" ")
        samples[name] = float(number)
    for bound in bounds:
        le = "+Inf" if bound == math.inf else repr(bound) if not bound.is_integer() else str(int(bound))
        assert samples[f'h_bucket{{le="{le}"}}'] == sum(1 for value in values if value <= bound)
    assert samples['h_bucket{le="+Inf"}'] == samples["h_count"] == len(values)
    assert samples["h_sum"] == pytest.approx(sum(values))
    bucket_counts = [count for name, count in samples.items() if name.startswith("h_bucket")]
    assert bucket_counts == sorted(bucket_counts)


def test_label_values_are_escaped() -> None:
    registry = Registry()
    registry.counter("c", "C.", ["path"]).inc('a"b\\c\nd')
    assert registry.render().splitlines()[2] == 'c{path="a\\"b\\\\c\\nd"} 1'


@FUZZ
@given(st.text())
def test_any_label_value_survives_escaping(value: str) -> None:
    registry = Registry()
    registry.counter("c", "C.", ["v"]).inc(value)
    line = registry.render().split("\n")[2]
    match = re.fullmatch(r'c\{v="((?:[^"\\\n]|\\.)*)"\} 1', line)
    assert match is not None, line
    assert unescape_label_value(match.group(1)) == value


@pytest.mark.parametrize("kind", ["counter", "gauge", "histogram"])
def test_a_name_is_registered_once(kind: str) -> None:
    registry = Registry()
    registry.counter("dup", "First.")
    with pytest.raises(ValueError, match="dup registered twice"):
        getattr(registry, kind)("dup", "Second.")


def test_wrong_label_count_is_refused() -> None:
    registry = Registry()
    counter = registry.counter("c", "C.", ["a", "b"])
    gauge = registry.gauge("g", "G.", label_names=["a"])
    histogram = registry.histogram("h", "H.", ["a"])
    with pytest.raises(ValueError, match="takes labels"):
        counter.inc("only-one")
    with pytest.raises(ValueError, match="takes labels"):
        counter.value("x", "y", "z")
    with pytest.raises(ValueError, match="takes labels"):
        gauge.set(1.0)
    with pytest.raises(ValueError, match="takes labels"):
        histogram.observe(0.1, "a", "b")
    assert registry.render().count("\n") == 6  # only HELP and TYPE: nothing was recorded
