"""Istio's telemetry on the local mesh: standard metrics, Prometheus, a service graph, dashboards.

    from lablib import telemetry
    metrics = telemetry.connect(mesh)    # the mesh's Prometheus, else the proxies' own metrics
    metrics.query('sum by (destination_version) (istio_requests_total{reporter="destination"})')

Every proxy's access log becomes Istio's standard metrics (`collector`), served per pod as a
sidecar serves them on :15090 (`server`) and scraped by a real Prometheus (`prometheus`).
On top: counts since a moment (`counts.mark`), a Kiali-like service graph (`graph`), panels
like Istio's Grafana dashboards (`dashboards`), and traffic sent while a cell runs
(`background_load`).
"""

from __future__ import annotations

from . import dashboards, graph
from .background import BackgroundLoad, background_load
from .collector import BUCKETS, METRICS, Collector
from .counts import Mark, mark
from .graph import LiveGraph, graph_data, service_graph
from .labels import HTTP_LABELS, TCP_LABELS
from .localquery import LocalMetrics
from .metrics import (
    MetricsSource,
    connect,
    dashboard,
    describe,
    endpoints,
    total,
    wait_for_total,
)
from .prometheus import PrometheusClient, PromQLError

__all__ = [
    "BUCKETS", "HTTP_LABELS", "METRICS", "TCP_LABELS", "BackgroundLoad", "Collector",
    "LiveGraph", "LocalMetrics", "Mark", "MetricsSource", "PromQLError", "PrometheusClient",
    "background_load", "connect", "dashboard", "dashboards", "describe", "endpoints", "graph",
    "graph_data", "mark", "service_graph", "total", "wait_for_total",
]
