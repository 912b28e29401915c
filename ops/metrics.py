"""A small Prometheus registry: counters, gauges and histograms rendered as text.

Each service owns one :class:`Registry` (no module-level state) and serves
``render()`` at ``GET /metrics`` in the Prometheus text exposition format
(version 0.0.4). Label values are escaped as the format requires.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Final, TypeVar

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

# Latency buckets in seconds: 250 µs … 10 s covers a cache hit to a timed-out upstream.
LATENCY_BUCKETS: Final = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

Labels = tuple[str, ...]
M = TypeVar("M", bound="_Metric")


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, label_names: Sequence[str]) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(label_names)

    def _key(self, labels: Sequence[str]) -> Labels:
        if len(labels) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {tuple(labels)}")
        return tuple(labels)

    def _label_text(self, labels: Labels, extra: str = "") -> str:
        parts = [f'{name}="{_escape(value)}"' for name, value in zip(self.label_names, labels, strict=True)]
        if extra:
            parts.append(extra)
        return "{" + ",".join(parts) + "}" if parts else ""

    def samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, label_names)
        self._values: dict[Labels, float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def samples(self) -> list[str]:
        return [f"{self.name}{self._label_text(k)} {_number(v)}" for k, v in sorted(self._values.items())]


class Gauge(_Metric):
    """A value read when scraped, from a callback, or set directly."""

    kind = "gauge"

    def __init__(
        self, name: str, help_text: str, read: Callable[[], float] | None = None, label_names: Sequence[str] = ()
    ) -> None:
        super().__init__(name, help_text, label_names)
        self._read = read
        self._values: dict[Labels, float] = {}

    def set(self, value: float, *labels: str) -> None:
        self._values[self._key(labels)] = value

    def samples(self) -> list[str]:
        if self._read is not None:
            return [f"{self.name} {_number(self._read())}"]
        return [f"{self.name}{self._label_text(k)} {_number(v)}" for k, v in sorted(self._values.items())]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        label_names: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        super().__init__(name, help_text, label_names)
        self._bounds = tuple(sorted(buckets))
        self._counts: dict[Labels, list[int]] = {}
        self._sums: dict[Labels, float] = {}

    def observe(self, value: float, *labels: str) -> None:
        key = self._key(labels)
        counts = self._counts.setdefault(key, [0] * (len(self._bounds) + 1))
        counts[bisect.bisect_left(self._bounds, value)] += 1
        self._sums[key] = self._sums.get(key, 0.0) + value

    def samples(self) -> list[str]:
        lines = []
        for key, counts in sorted(self._counts.items()):
            running = 0
            for bound, count in zip((*self._bounds, math.inf), counts, strict=True):
                running += count
                le_label = 'le="' + ("+Inf" if bound == math.inf else _number(bound)) + '"'
                lines.append(f"{self.name}_bucket{self._label_text(key, le_label)} {running}")
            lines.append(f"{self.name}_sum{self._label_text(key)} {_number(self._sums[key])}")
            lines.append(f"{self.name}_count{self._label_text(key)} {running}")
        return lines


class Family(_Metric):
    """Counters or gauges kept elsewhere (a hot path's plain dict), read when scraped."""

    def __init__(
        self,
        name: str,
        help_text: str,
        kind: str,
        label_names: Sequence[str],
        read: Callable[[], Mapping[Labels, float]],
    ) -> None:
        super().__init__(name, help_text, label_names)
        self.kind = kind
        self._read = read

    def samples(self) -> list[str]:
        return [f"{self.name}{self._label_text(self._key(k))} {_number(v)}" for k, v in sorted(self._read().items())]


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def counter(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, help_text, label_names))

    def gauge(
        self, name: str, help_text: str, read: Callable[[], float] | None = None, label_names: Sequence[str] = ()
    ) -> Gauge:
        return self._add(Gauge(name, help_text, read, label_names))

    def histogram(
        self, name: str, help_text: str, label_names: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> Histogram:
        return self._add(Histogram(name, help_text, label_names, buckets))

    def family(
        self,
        name: str,
        help_text: str,
        kind: str,
        label_names: Sequence[str],
        read: Callable[[], Mapping[Labels, float]],
    ) -> Family:
        """Expose a dict of label tuples to values kept by someone else (kind: counter or gauge)."""
        return self._add(Family(name, help_text, kind, label_names, read))

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics.values():
            lines.append(f"# HELP {metric.name} {metric.help}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            lines.extend(metric.samples())
        return "\n".join(lines) + "\n"

    def _add(self, metric: M) -> M:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} registered twice")
        self._metrics[metric.name] = metric
        return metric


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))
