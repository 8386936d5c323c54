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

import importlib
from typing import Any

# Each public name and the submodule that defines it. They are imported on first use, so
# meshd (which imports only the collector, server and Prometheus parts) never loads the
# notebook side: plotting, widgets and pandas.
_EXPORTS = {
    "BackgroundLoad": "background", "background_load": "background",
    "BUCKETS": "collector", "METRICS": "collector", "Collector": "collector",
    "Mark": "counts", "mark": "counts",
    "LiveGraph": "graph", "graph_data": "graph", "service_graph": "graph",
    "HTTP_LABELS": "labels", "TCP_LABELS": "labels",
    "LocalMetrics": "localquery",
    "MetricsSource": "metrics", "connect": "metrics", "dashboard": "metrics",
    "describe": "metrics", "endpoints": "metrics", "total": "metrics",
    "wait_for_total": "metrics",
    "PrometheusClient": "prometheus", "PromQLError": "prometheus",
}
_SUBMODULES = ("dashboards", "graph")

__all__ = sorted([*_EXPORTS, *_SUBMODULES])


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
