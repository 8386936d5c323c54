"""Where a lab gets its metrics: the mesh's Prometheus, else the proxies themselves.

    metrics = connect(mesh)            # PrometheusClient, or LocalMetrics without the binary
    metrics.query('sum(istio_requests_total{reporter="destination"})')
    dashboard(mesh, "prometheus")      # istioctl dashboard prometheus: the UI's address
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import httpx
import pandas as pd

from ..backend import Backend
from ..errors import BackendError
from .localquery import LocalMetrics
from .prometheus import PrometheusClient
from .server import ALL_PATH, TARGETS_PATH

__all__ = ["MetricsSource", "connect", "dashboard", "describe", "endpoints", "total",
           "wait_for_total"]


class MetricsSource(Protocol):
    """What both PrometheusClient and LocalMetrics answer."""

    def query(self, promql: str, at: Any = None) -> pd.DataFrame: ...

    def query_range(self, promql: str, start: Any, end: Any,
                    step: float | str = 1.0) -> pd.DataFrame: ...


def endpoints(mesh: Backend) -> dict[str, str]:
    """The proxies' metrics URL and the Prometheus URL ("" for either that does not exist),
    and a `note` saying why not: the local mesh's own, or Istio's addon on a cluster."""
    return mesh.telemetry_endpoints()


def connect(mesh: Backend, timeout: float = 20.0) -> PrometheusClient | LocalMetrics:
    """Prometheus when the mesh runs one (it starts on first ask), else the proxies' metrics.

    Returns once Prometheus has scraped every proxy (or after `timeout` seconds): a fresh
    Prometheus finds its targets only after its first service-discovery round (~5 s), and
    counts read before that would start from nothing.
    """
    found = endpoints(mesh)
    if not found["prometheus"]:
        if not found["metrics"]:
            raise BackendError(f"no metrics to read: {found.get('note', '')}")
        return LocalMetrics(found["metrics"], note=found.get("note", ""))
    # The local mesh lists the proxies Prometheus should scrape; a cluster's addon finds pods.
    targets = (found["metrics"].removesuffix(ALL_PATH) + TARGETS_PATH if found["metrics"]
               else None)
    client = PrometheusClient(found["prometheus"], mesh_targets=targets)
    client.wait_for_targets(timeout)
    return client


def describe(metrics: PrometheusClient | LocalMetrics) -> str:
    """One sentence: which server answers PromQL here, or why none does."""
    if isinstance(metrics, LocalMetrics):
        return (f"No Prometheus here ({metrics.note}). Reading Istio's metrics straight from "
                f"the proxies at {metrics.url}, every second; PromQL is limited to what the "
                "labs use.")
    try:
        info = httpx.get(metrics.url + "/api/v1/status/buildinfo", timeout=5,
                         trust_env=False).json()["data"]
        version = f" {info['version']}"
    except (httpx.HTTPError, ValueError, KeyError):
        version = ""
    targets = metrics.targets()
    return (f"Prometheus{version} at {metrics.url}, scraping {len(targets)} proxies "
            f"(job kubernetes-pods) every {_every(metrics.scrape_seconds)}.")


def _every(seconds: float) -> str:
    return "second" if seconds == 1 else f"{seconds:g} seconds"


def dashboard(mesh: Backend, name: str = "prometheus") -> str:
    """`istioctl dashboard NAME`: the address of that UI, printed and returned."""
    url = mesh.dashboard_url(name)
    print(url)
    return url


def total(metrics: MetricsSource, promql: str) -> float:
    """The sum of an instant query's values (0 when it matches nothing)."""
    result = metrics.query(promql)
    return float(result["value"].sum()) if not result.empty else 0.0


def wait_for_total(metrics: MetricsSource, promql: str, at_least: float,
                   timeout: float = 30.0) -> float:
    """`total(promql)` once it reaches `at_least`, or whatever it is after `timeout` seconds.

    Metrics arrive a scrape (and for Prometheus a service-discovery round) after the traffic.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = total(metrics, promql)
        if value >= at_least or time.monotonic() > deadline:
            return value
        time.sleep(0.5)
