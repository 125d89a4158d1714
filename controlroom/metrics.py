"""A small Prometheus text-format registry (counters, gauges, histograms).

Hand-written rather than a dependency: the service needs a dozen series, rendered on
scrape; gauges that mirror live state are read by callbacks at scrape time so the hot
paths never touch them.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


@dataclass
class Counter:
    name: str
    help: str
    values: dict[Labels, float] = field(default_factory=dict)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for k, v in sorted(self.values.items()):
            yield f"{self.name}{_labels(k)} {_fmt(v)}"


@dataclass
class Gauge:
    """A gauge whose samples come from a callback at scrape time."""

    name: str
    help: str
    read: Callable[[], Iterable[tuple[dict[str, str], float]]]

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        for labels, v in self.read():
            yield f"{self.name}{_labels(tuple(sorted(labels.items())))} {_fmt(v)}"


@dataclass
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...]
    series: dict[Labels, list[float]] = field(default_factory=dict)
    sums: dict[Labels, float] = field(default_factory=dict)
    counts: dict[Labels, int] = field(default_factory=dict)

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        counts = self.series.setdefault(key, [0.0] * len(self.buckets))
        i = bisect.bisect_left(self.buckets, value)
        for j in range(i, len(self.buckets)):
            counts[j] += 1
        self.sums[key] = self.sums.get(key, 0.0) + value
        self.counts[key] = self.counts.get(key, 0) + 1

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for key, counts in sorted(self.series.items()):
            for le, c in zip(self.buckets, counts, strict=True):
                yield f"{self.name}_bucket{_labels(key + (('le', _fmt(le)),))} {_fmt(c)}"
            yield f"{self.name}_bucket{_labels(key + (('le', '+Inf'),))} {self.counts[key]}"
            yield f"{self.name}_sum{_labels(key)} {_fmt(self.sums[key])}"
            yield f"{self.name}_count{_labels(key)} {self.counts[key]}"


class Registry:
    def __init__(self) -> None:
        self._metrics: list[Counter | Gauge | Histogram] = []

    def counter(self, name: str, help: str) -> Counter:
        c = Counter(name, help)
        self._metrics.append(c)
        return c

    def gauge(self, name: str, help: str,
              read: Callable[[], Iterable[tuple[dict[str, str], float]]]) -> Gauge:
        g = Gauge(name, help, read)
        self._metrics.append(g)
        return g

    def histogram(self, name: str, help: str, buckets: tuple[float, ...]) -> Histogram:
        h = Histogram(name, help, tuple(sorted(buckets)))
        self._metrics.append(h)
        return h

    def render(self) -> str:
        lines: list[str] = []
        for m in self._metrics:
            lines.extend(m.render())
        return "\n".join(lines) + "\n"
