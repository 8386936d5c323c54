"""A real Prometheus server for the local mesh, and PromQL through its HTTP API.

The server is Debian's `prometheus` package (`apt install prometheus`; `.ci/run` installs
it), started by the mesh's supervisor on a loopback port with its data in the mesh's state
folder. It finds one scrape target per proxy by HTTP service discovery against the metrics
server and scrapes each every second, as Istio's Prometheus addon scrapes every pod's
`:15020/stats/prometheus` (every 15 s there).

    prom = PrometheusClient("http://127.0.0.1:9090")
    prom.query('sum by (destination_version) (istio_requests_total{reporter="destination"})')
"""

from __future__ import annotations

import re
import shutil
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml

from ..errors import BackendError, LabError

if TYPE_CHECKING:  # pandas only for query results: meshd starts Prometheus without it
    import pandas as pd

__all__ = [
    "SCRAPE_INTERVAL", "PrometheusClient", "PromQLError", "find_prometheus", "frame",
    "prometheus_argv", "prometheus_ready", "scrape_interval", "write_config",
]

SCRAPE_INTERVAL = "1s"
INSTALL_HINT = "install Debian's prometheus package (apt-get install prometheus)"


class PromQLError(LabError):
    """Prometheus refused a query; the message is Prometheus' own."""


def find_prometheus() -> str | None:
    """The `prometheus` binary on PATH (Debian's package puts it in /usr/bin), else None."""
    return shutil.which("prometheus")


def write_config(folder: Path, targets_url: str, interval: str = SCRAPE_INTERVAL) -> Path:
    """prometheus.yml: one job, `kubernetes-pods`, whose targets come from `targets_url`."""
    folder.mkdir(parents=True, exist_ok=True)
    text = f"""# Written by lablib: Istio's `kubernetes-pods` job, one target per proxy.
global:
  scrape_interval: {interval}
  scrape_timeout: {interval}
  evaluation_interval: {interval}
scrape_configs:
  - job_name: kubernetes-pods
    http_sd_configs:
      - url: {targets_url}
        refresh_interval: {interval}
"""
    path = folder / "prometheus.yml"
    path.write_text(text)
    return path


def prometheus_argv(binary: str, config: Path, data: Path, port: int) -> list[str]:
    """The command line: config, data folder, a loopback address, a day of retention."""
    return [binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1d",
            "--log.level=warn"]


def prometheus_ready(port: int) -> Callable[[], bool]:
    """A readiness check: Prometheus answers `/-/ready` with 200."""
    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=0.5) as r:
                return bool(r.status == 200)
        except OSError:
            return False
    return ready


def _duration_seconds(text: str) -> float:
    """A Prometheus duration such as `15s`, `1m`, `1m30s` or `500ms`, in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return float(sum(int(n) * units[u] for n, u in parts))


def scrape_interval(config_yaml: str, job: str = "kubernetes-pods") -> float:
    """Seconds between scrapes of `job` in a Prometheus configuration (its own interval,
    else the global one, else Prometheus' default of one minute)."""
    config = yaml.safe_load(config_yaml) or {}
    interval = str((config.get("global") or {}).get("scrape_interval") or "1m")
    for scrape in config.get("scrape_configs") or []:
        if scrape.get("job_name") == job and scrape.get("scrape_interval"):
            interval = str(scrape["scrape_interval"])
    return _duration_seconds(interval)


def _seconds(at: float | datetime | str | None) -> str | None:
    if at is None:
        return None
    if isinstance(at, datetime):
        return f"{at.timestamp():.3f}"
    return str(at)


def frame(data: dict[str, Any]) -> pd.DataFrame:
    """A Prometheus `data` object as a DataFrame: one column per label, then `timestamp`
    (UTC) and `value`; a matrix gives one row per sample."""
    import pandas as pd

    kind, result = data.get("resultType"), data.get("result")
    rows: list[dict[str, Any]] = []
    if kind in ("scalar", "string"):
        rows.append({"timestamp": float(result[0]), "value": result[1]})  # type: ignore[index]
    else:
        for series in result or []:
            metric = dict(series.get("metric") or {})
            samples = series.get("values") or ([series["value"]] if "value" in series else [])
            rows += [{**metric, "timestamp": float(t), "value": v} for t, v in samples]
    out = pd.DataFrame(rows)
    if out.empty:
        return pd.DataFrame(columns=["timestamp", "value"])
    labels = sorted(c for c in out.columns if c not in ("timestamp", "value"))
    out = out[[*labels, "timestamp", "value"]]
    out["timestamp"] = pd.to_datetime(out["timestamp"], unit="s", utc=True)
    if kind != "string":
        out["value"] = out["value"].astype(float)
    for c in labels:
        out[c] = out[c].fillna("")
    return out.sort_values([*labels, "timestamp"]).reset_index(drop=True)


class PrometheusClient:
    """PromQL against a Prometheus server's HTTP API; answers come back as DataFrames."""

    def __init__(self, url: str, timeout: float = 10.0, mesh_targets: str | None = None):
        self.url = url.rstrip("/")
        self.timeout = timeout
        # The mesh's service-discovery URL: what Prometheus should be scraping.
        self.mesh_targets = mesh_targets
        # One client for every query: a new one builds an SSL context each time (~30 ms).
        self._http = httpx.Client(timeout=timeout, trust_env=False)
        self._scrape_seconds: float | None = None

    def __repr__(self) -> str:
        return f"PrometheusClient({self.url!r})"

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        params = {k: v for k, v in params.items() if v is not None}
        try:
            r = self._http.get(self.url + path, params=params)
        except httpx.HTTPError as exc:
            raise BackendError(f"Prometheus at {self.url} did not answer ({exc})") from None
        try:
            body = r.json()
        except ValueError:
            raise BackendError(f"Prometheus at {self.url} answered {r.status_code} with no "
                               f"JSON: {r.text[:200]}") from None
        if body.get("status") != "success":
            query = params.get("query", "")
            raise PromQLError(f"Prometheus refused the query {query!r}: "
                              f"{body.get('errorType', 'error')}: {body.get('error', '')}")
        return body["data"]

    def ready(self) -> bool:
        """Whether the server answers and is ready to serve queries."""
        try:
            return self._http.get(self.url + "/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def query(self, promql: str, at: float | datetime | None = None) -> pd.DataFrame:
        """An instant query (`/api/v1/query`), evaluated now or at `at`."""
        return frame(self._get("/api/v1/query", {"query": promql, "time": _seconds(at)}))

    def query_range(self, promql: str, start: float | datetime, end: float | datetime,
                    step: float | str = 1.0) -> pd.DataFrame:
        """A range query (`/api/v1/query_range`): one row per series and step."""
        return frame(self._get("/api/v1/query_range", {
            "query": promql, "start": _seconds(start), "end": _seconds(end),
            "step": str(step)}))

    def targets(self, job: str | None = "kubernetes-pods") -> pd.DataFrame:
        """The scrape targets of `job` (None: every job) and their health, as Prometheus'
        Status > Targets page. Istio's proxies are the `kubernetes-pods` job; the addon on a
        cluster also scrapes the API server, nodes and Services."""
        import pandas as pd

        data = self._get("/api/v1/targets", {"state": "active"})
        return pd.DataFrame([{**t.get("labels", {}), "health": t.get("health"),
                              "last_error": t.get("lastError", ""),
                              "scrape_url": t.get("scrapeUrl")}
                             for t in data.get("activeTargets", [])
                             if job is None or t.get("labels", {}).get("job") == job]).fillna("")

    def wait_for_targets(self, timeout: float = 20.0) -> bool:
        """Wait until every proxy the mesh lists has been scraped, healthy; False on timeout.

        Prometheus learns of new pods at most every 5 s; until then their series are missing.
        """
        if not self.mesh_targets:
            return True
        deadline = time.monotonic() + timeout
        while True:
            try:
                listed = httpx.get(self.mesh_targets, timeout=5, trust_env=False).json()
                wanted = {t["labels"]["pod"] for t in listed}
            except (httpx.HTTPError, ValueError, KeyError):
                wanted = set()
            up = self.targets()
            scraped = set(up.loc[up["health"] == "up", "pod"]) if not up.empty else set()
            if wanted and wanted <= scraped:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)

    @property
    def scrape_seconds(self) -> float:
        """The scrape interval of Istio's `kubernetes-pods` job (else the global one), in
        seconds, from the server's own configuration: 1 s locally, 15 s for Istio's addon."""
        if self._scrape_seconds is None:
            self._scrape_seconds = scrape_interval(
                str(self._get("/api/v1/status/config", {}).get("yaml", "")))
        return self._scrape_seconds

    def series_labels(self, metric: str) -> set[str]:
        """Every label name the series of `metric` carry (`/api/v1/series`)."""
        return {k for s in self._get("/api/v1/series", {"match[]": metric}) for k in s}
