"""The service's Prometheus metrics, exposed with ``prometheus_client``.

The rest of the code keeps a small API (``Registry.counter/gauge/histogram``,
``.inc(**labels)``, ``.observe(value, **labels)``, ``.render()``): call sites name their
labels when they count, and gauges that mirror live state are read by callbacks at
scrape time so the hot paths never touch them. Each metric is a ``prometheus_client``
custom collector in a registry of its own (one per service, so tests may run several
services in one process); exposition is ``prometheus_client.generate_latest`` (text
format 0.0.4), plus the standard ``process_*`` and ``python_*`` series.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

try:  # prometheus_client >= 0.22 names the versions; generate_latest writes 0.0.4
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4 as _CONTENT_TYPE
except ImportError:  # pragma: no cover - older prometheus_client: LATEST is 0.0.4
    from prometheus_client.exposition import CONTENT_TYPE_LATEST as _CONTENT_TYPE
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

Labels = tuple[tuple[str, str], ...]

CONTENT_TYPE = _CONTENT_TYPE
"""The ``Content-Type`` of :meth:`Registry.render`'s text (format 0.0.4, which every
Prometheus reads)."""


def _key(labels: dict[str, str]) -> Labels:
    return tuple(sorted((k, str(v)) for k, v in labels.items()))


def _names(keys: Iterable[Labels]) -> list[str]:
    """Every label name used by any sample: one family per metric name (a sample
    without one of them has it empty), so the exposition has one TYPE line per name."""
    return sorted({n for k in keys for n, _ in k})


def _values(names: list[str], key: Labels) -> list[str]:
    d = dict(key)
    return [d.get(n, "") for n in names]


@dataclass(eq=False)
class Counter:
    """A counter whose label names are given at each ``inc``."""

    name: str
    help: str
    values: dict[Labels, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = _key(labels)
        with self._lock:
            self.values[key] = self.values.get(key, 0.0) + amount

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            values = dict(self.values)
        names = _names(values)
        fam = CounterMetricFamily(self.name, self.help, labels=names)
        for k in sorted(values):
            fam.add_metric(_values(names, k), values[k])
        yield fam


@dataclass(eq=False)
class Gauge:
    """A gauge whose samples come from a callback at scrape time."""

    name: str
    help: str
    read: Callable[[], Iterable[tuple[dict[str, str], float]]]

    def collect(self) -> Iterator[Metric]:
        samples = {_key(labels): float(v) for labels, v in self.read()}
        names = _names(samples)
        fam = GaugeMetricFamily(self.name, self.help, labels=names)
        for k in sorted(samples):
            fam.add_metric(_values(names, k), samples[k])
        yield fam


@dataclass(eq=False)
class Histogram:
    """A histogram whose label names are given at each ``observe``."""

    name: str
    help: str
    buckets: tuple[float, ...]
    series: dict[Labels, list[float]] = field(default_factory=dict)
    sums: dict[Labels, float] = field(default_factory=dict)
    counts: dict[Labels, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def observe(self, value: float, **labels: str) -> None:
        key = _key(labels)
        i = bisect.bisect_left(self.buckets, value)
        with self._lock:
            counts = self.series.setdefault(key, [0.0] * len(self.buckets))
            if i < len(counts):
                counts[i] += 1  # per-bucket; made cumulative at scrape
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + 1

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            series = {k: list(v) for k, v in self.series.items()}
            sums, counts = dict(self.sums), dict(self.counts)
        names = _names(series)
        fam = HistogramMetricFamily(self.name, self.help, labels=names)
        for k in sorted(series):
            cum, running = [], 0.0
            for le, c in zip(self.buckets, series[k], strict=True):
                running += c
                cum.append((_le(le), running))
            cum.append(("+Inf", float(counts[k])))
            fam.add_metric(_values(names, k), cum, sums[k])
        yield fam


def _le(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(float(v))


class Registry:
    """The service's metrics (a ``prometheus_client.CollectorRegistry`` of its own)."""

    def __init__(self, *, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        if process:  # process_cpu_seconds_total, resident memory, open fds; python_gc_*
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    def _add(self, metric: Counter | Gauge | Histogram) -> None:
        self.registry.register(metric)  # type: ignore[arg-type]  # any object with collect()

    def counter(self, name: str, help: str) -> Counter:  # noqa: A002 - Prometheus's word
        c = Counter(name, help)
        self._add(c)
        return c

    def gauge(self, name: str, help: str,  # noqa: A002
              read: Callable[[], Iterable[tuple[dict[str, str], float]]]) -> Gauge:
        g = Gauge(name, help, read)
        self._add(g)
        return g

    def histogram(self, name: str, help: str,  # noqa: A002
                  buckets: tuple[float, ...]) -> Histogram:
        h = Histogram(name, help, tuple(sorted(buckets)))
        self._add(h)
        return h

    def render(self) -> str:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry).decode("utf-8")
