"""The collector over HTTP on one loopback port, as Prometheus scrapes it.

    /stats/prometheus               every proxy's series, labelled with `namespace` and `pod`
    /stats/prometheus/<ns>/<pod>    one proxy's series: what its sidecar serves on :15090
    /targets                        Prometheus HTTP service discovery: one target per proxy,
                                    labelled as Istio's `kubernetes-pods` job labels them
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from prometheus_client import CONTENT_TYPE_LATEST

from .collector import Collector

__all__ = ["ALL_PATH", "MetricsServer", "targets"]

ALL_PATH = "/stats/prometheus"
TARGETS_PATH = "/targets"
JOB = "kubernetes-pods"
# Prometheus scrapes every pod within the same second: one read of the logs serves them all,
# which keeps each scrape well inside its 1 s timeout on a busy machine.
SCRAPE_MAX_AGE_S = 0.25


def _label_name(key: str) -> str:
    """A pod label as Prometheus' `labelmap` writes it: `security.istio.io/tlsMode` ->
    `security_istio_io_tlsMode`."""
    return re.sub(r"[^A-Za-z0-9_]", "_", key)


def targets(collector: Collector, address: str) -> list[dict[str, Any]]:
    """One scrape target per reporting proxy, with its pod's labels, namespace and name."""
    out = []
    for proxy in collector.proxies():
        w = proxy.workload
        labels = {_label_name(k): v for k, v in w.labels.items() if not k.startswith("__")}
        labels.update({"__metrics_path__": f"{ALL_PATH}/{w.namespace}/{w.pod}",
                       "namespace": w.namespace, "pod": w.pod})
        out.append({"targets": [address], "labels": labels})
    return out


class MetricsServer:
    """A threaded HTTP server in front of a Collector."""

    def __init__(self, collector: Collector, port: int = 0, host: str = "127.0.0.1"):
        self.collector = collector
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server._answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: Prometheus asks every second."""

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.address = f"{host}:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={
            "poll_interval": 0.2}, name="metrics-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _answer(self, request: BaseHTTPRequestHandler) -> None:
        path = unquote(request.path.split("?", 1)[0]).rstrip("/")
        parts = path[len(ALL_PATH):].strip("/").split("/") if path.startswith(ALL_PATH) else []
        if path == TARGETS_PATH:
            body = json.dumps(targets(self.collector, self.address)).encode()
            kind = "application/json"
        elif path == ALL_PATH:
            body, kind = self.collector.render(), CONTENT_TYPE_LATEST
        elif len(parts) == 2:
            body = self.collector.render(pod=parts[1], namespace=parts[0],
                                         max_age=SCRAPE_MAX_AGE_S)
            kind = CONTENT_TYPE_LATEST
        else:
            request.send_error(404, f"no such path; try {ALL_PATH}")
            return
        request.send_response(200)
        request.send_header("Content-Type", kind)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)
