"""Istio's standard metrics, counted from what every proxy writes to its access log.

A sidecar on a cluster counts `istio_requests_total` and friends inside Envoy and exposes them
on `:15090/stats/prometheus`. The local proxies write one JSON access-log line per request or
TCP connection instead, and `Collector` turns those lines into the same series: every request a
proxy handled is counted, fault-injected aborts (`FI`), breaker overflows (`UO`) and timeouts
(`UT`) included, which Envoy's cluster counters partly miss.

    collector = Collector(lambda: topology_from_mesh(mesh))
    collector.render()                                  # every proxy, with namespace/pod labels
    collector.render("reviews-v1-6c5b8f-abcde", "bookinfo-test")   # one proxy, as its 15090

Log files are read when metrics are rendered (Prometheus scrapes pull them), so nothing runs
between scrapes. TCP connections are counted when they close: that is when Envoy logs them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from .accesslog import LogTail, parse_line
from .labels import HTTP_LABELS, TCP_LABELS, derive
from .topology import ProxyInfo, Topology

__all__ = ["BUCKETS", "METRICS", "Collector"]

log = logging.getLogger(__name__)

# Envoy's default histogram buckets, which Istio's distributions use.
BUCKETS = (0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
           300000, 600000, 1800000, 3600000)

# name -> (kind, help): Istio's wording (istio.io/latest/docs/reference/config/metrics).
METRICS = {
    "istio_requests_total": ("counter", "Incremented for every request handled by an Istio "
                                        "proxy."),
    "istio_request_duration_milliseconds": ("histogram", "Duration of requests."),
    "istio_request_bytes": ("histogram", "HTTP request body sizes."),
    "istio_response_bytes": ("histogram", "HTTP response body sizes."),
    "istio_tcp_sent_bytes_total": ("counter", "Bytes sent during response in case of a TCP "
                                              "connection."),
    "istio_tcp_received_bytes_total": ("counter", "Bytes received during request in case of a "
                                                  "TCP connection."),
    "istio_tcp_connections_opened_total": ("counter", "Incremented for every opened "
                                                      "connection."),
    "istio_tcp_connections_closed_total": ("counter", "Incremented for every closed "
                                                      "connection."),
}
HTTP_METRICS = ("istio_requests_total", "istio_request_duration_milliseconds",
                "istio_request_bytes", "istio_response_bytes")

LabelValues = tuple[str, ...]


def _le(bound: float) -> str:
    """A bucket bound as Envoy prints it: `0.5`, `1`, `3600000`."""
    return str(int(bound)) if float(bound).is_integer() else str(bound)


@dataclass
class Histogram:
    buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(BUCKETS):
            if value <= bound:
                self.buckets[i] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        return [(_le(b), float(n)) for b, n in zip(BUCKETS, self.buckets, strict=True)] + [
            ("+Inf", float(self.count))]


@dataclass
class ProxyMetrics:
    """Every series one proxy reports."""

    proxy: ProxyInfo
    counters: dict[str, dict[LabelValues, float]] = field(default_factory=dict)
    histograms: dict[str, dict[LabelValues, Histogram]] = field(default_factory=dict)

    def add(self, name: str, key: LabelValues, value: float) -> None:
        series = self.counters.setdefault(name, {})
        series[key] = series.get(key, 0.0) + value

    def observe(self, name: str, key: LabelValues, value: float) -> None:
        self.histograms.setdefault(name, {}).setdefault(key, Histogram()).observe(value)


class _View:
    """What one render shows: one proxy's series, or all of them with `namespace`/`pod`."""

    def __init__(self, stores: list[ProxyMetrics], with_pod: bool):
        self.stores = stores
        self.with_pod = with_pod

    def collect(self) -> Iterator[Metric]:
        for name, (kind, doc) in METRICS.items():
            names = list(HTTP_LABELS if name in HTTP_METRICS else TCP_LABELS)
            if self.with_pod:
                names += ["namespace", "pod"]
            yield self._counter(name, doc, names) if kind == "counter" else \
                self._histogram(name, doc, names)

    def _pod_labels(self, store: ProxyMetrics) -> tuple[str, ...]:
        w = store.proxy.workload
        return (w.namespace, w.pod) if self.with_pod else ()

    def _counter(self, name: str, doc: str, names: list[str]) -> Metric:
        family = CounterMetricFamily(name, doc, labels=names)
        for store in self.stores:
            for key, value in store.counters.get(name, {}).items():
                family.add_metric([*key, *self._pod_labels(store)], value)
        return family

    def _histogram(self, name: str, doc: str, names: list[str]) -> Metric:
        family = HistogramMetricFamily(name, doc, labels=names)
        for store in self.stores:
            for key, h in store.histograms.get(name, {}).items():
                family.add_metric([*key, *self._pod_labels(store)], h.cumulative(), h.total)
        return family


class Collector:
    """Istio's standard metrics for every proxy `topology_source()` names."""

    def __init__(self, topology_source: Callable[[], Topology]):
        self._topology_source = topology_source
        self._lock = threading.Lock()
        self._topology = Topology()
        self._tails: dict[str, LogTail] = {}  # proxy id -> its log
        self._seen: dict[str, ProxyInfo] = {}  # every proxy ever named, by id
        self._stores: dict[str, ProxyMetrics] = {}
        self._collected = 0.0  # time.monotonic() of the last collect

    # --- reading -------------------------------------------------------------------------------
    def collect(self, max_age: float = 0.0) -> None:
        """Read what every proxy logged since the last call, unless that was under `max_age`
        seconds ago."""
        with self._lock:
            if max_age and time.monotonic() - self._collected < max_age:
                return
            self._refresh_topology()
            current = {p.id for p in self._topology.proxies}
            for proxy_id, tail in list(self._tails.items()):
                proxy = self._seen[proxy_id]
                for line in tail.read():
                    self._count(proxy, line)
                if proxy_id not in current:  # the pod is gone: its series go with it
                    del self._tails[proxy_id]
                    self._stores.pop(proxy_id, None)
            self._collected = time.monotonic()

    def _refresh_topology(self) -> None:
        try:
            topology = self._topology_source()
        except Exception:  # a mesh in the middle of a change: keep the last good view
            log.exception("topology unavailable; keeping the previous one")
            return
        # Keep endpoints of pods already gone, so their last requests still name them.
        endpoints = {**self._topology.endpoints, **topology.endpoints}
        self._topology = Topology(topology.proxies, endpoints, topology.services,
                                  {**self._topology.port_names, **topology.port_names})
        for proxy in topology.proxies:
            self._seen[proxy.id] = proxy
            tail = self._tails.get(proxy.id)
            if tail is None or tail.path != proxy.log_path:
                self._tails[proxy.id] = LogTail(proxy.log_path)
            self._stores.setdefault(proxy.id, ProxyMetrics(proxy)).proxy = proxy

    def _count(self, proxy: ProxyInfo, line: str) -> None:
        entry = parse_line(line)
        if entry is None:
            return
        d = derive(entry, proxy, self._topology, self._seen)
        store = self._stores.setdefault(proxy.id, ProxyMetrics(proxy))
        if d.tcp:
            key = tuple(d.labels[n] for n in TCP_LABELS)
            store.add("istio_tcp_connections_opened_total", key, 1)
            store.add("istio_tcp_connections_closed_total", key, 1)
            store.add("istio_tcp_received_bytes_total", key, d.request_bytes)
            store.add("istio_tcp_sent_bytes_total", key, d.response_bytes)
        else:
            key = tuple(d.labels[n] for n in HTTP_LABELS)
            store.add("istio_requests_total", key, 1)
            store.observe("istio_request_duration_milliseconds", key, d.duration_ms)
            store.observe("istio_request_bytes", key, d.request_bytes)
            store.observe("istio_response_bytes", key, d.response_bytes)

    # --- exposing ------------------------------------------------------------------------------
    def proxies(self) -> list[ProxyInfo]:
        """The proxies reporting now."""
        with self._lock:
            self._refresh_topology()
            return list(self._topology.proxies)

    def registry(self, pod: str | None = None, namespace: str | None = None) -> CollectorRegistry:
        """A registry of one pod's series (as its sidecar exposes them), or of every pod's."""
        with self._lock:
            stores = [s for s in self._stores.values() if pod is None or (
                s.proxy.workload.pod == pod and s.proxy.workload.namespace == namespace)]
            view = _View([_copy(s) for s in stores], with_pod=pod is None)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(view)  # type: ignore[arg-type]
        return registry

    def render(self, pod: str | None = None, namespace: str | None = None,
               max_age: float = 0.0) -> bytes:
        """Prometheus text format, after reading what the proxies logged since last time (or
        since `max_age` seconds before, when that is more recent)."""
        self.collect(max_age)
        return generate_latest(self.registry(pod, namespace))


def _copy(store: ProxyMetrics) -> ProxyMetrics:
    """A snapshot, so rendering needs no lock while new lines are counted."""
    return ProxyMetrics(
        store.proxy,
        {n: dict(series) for n, series in store.counters.items()},
        {n: {k: Histogram(list(h.buckets), h.total, h.count) for k, h in series.items()}
         for n, series in store.histograms.items()})
