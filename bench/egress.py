"""Per-hop latency of the egress path next to the in-mesh one, measured in one run.

A client with the sleep pod's `http_proxy` (its sidecar's outbound listener) sends sequential
keep-alive GETs `/status/200` along four paths, taken in alternating rounds:

- outside world direct: the local stand-in for httpbin.org, no proxy (the baseline);
- egress through the sidecar: a ServiceEntry for httpbin.org, sidecar → outside world;
- egress through the egress gateway: sidecar → egress gateway → outside world;
- in-mesh: sidecar → httpbin's sidecar → httpbin, and httpbin's app port direct.

The per-hop figures are differences of medians: the sidecar hop of egress (sidecar − direct),
the gateway hop (gateway path − sidecar path), and an in-mesh hop (in-mesh − app direct, over
its two proxies).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

import lablib
from lablib.backend import Backend

from .mesh_bench import SAMPLES, isolated_mesh
from .stats import percentile

NS = "egress-bench"
REQUESTS = 1000
ROUNDS = 4
SERVICE_ENTRY = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin-ext}
spec:
  hosts: [httpbin.org]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
"""
VIA_GATEWAY = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin-ext}
spec:
  hosts: [httpbin.org]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: egress}
spec:
  selector: {istio: egressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [httpbin.org]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: via-egress}
spec:
  hosts: [httpbin.org]
  gateways: [egress, mesh]
  http:
  - match: [{gateways: [mesh], port: 80}]
    route: [{destination: {host: istio-egressgateway.istio-system.svc.cluster.local,
                           port: {number: 80}}}]
  - match: [{gateways: [egress], port: 80}]
    route: [{destination: {host: httpbin.org, port: {number: 80}}}]
"""


def _endpoint(snapshot: dict[str, Any], cluster: str) -> int:
    found = snapshot["type.googleapis.com/envoy.config.cluster.v3.Cluster"][cluster]
    endpoint = found["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    return int(endpoint["address"]["socket_address"]["port_value"])


def _latencies(url: str, n: int, proxy: str | None = None,
               host: str | None = None) -> list[float]:
    """Milliseconds of `n` sequential keep-alive GETs (after 50 unmeasured)."""
    headers = {"Host": host} if host else {}
    out = []
    with httpx.Client(proxy=proxy, trust_env=False, timeout=10) as client:
        for i in range(50 + n):
            start = time.perf_counter()
            response = client.get(url, headers=headers)
            elapsed = (time.perf_counter() - start) * 1000
            if response.status_code != 200:
                raise RuntimeError(f"GET {url} answered {response.status_code}")
            if i >= 50:
                out.append(elapsed)
    return out


def _measure(mesh: Backend) -> dict[str, list[float]]:
    mesh.install()
    mesh.create_namespace(NS, {"istio-injection": "enabled"})
    mesh.apply(f"{SAMPLES}/sleep/sleep.yaml", NS)
    mesh.apply(f"{SAMPLES}/httpbin/httpbin.yaml", NS)
    mesh.wait_ready(NS)
    sleep = mesh.pod_name({"app": "sleep"}, NS)
    httpbin = mesh.pod_name({"app": "httpbin"}, NS)
    proxy = mesh.proxy_url(sleep, NS)
    outside = _endpoint(mesh.snapshot(sleep, NS), "PassthroughCluster")  # type: ignore[attr-defined]
    app = _endpoint(mesh.snapshot(httpbin, NS), "inbound|80||")  # type: ignore[attr-defined]
    paths: dict[str, list[float]] = {k: [] for k in ("direct", "sidecar", "gateway", "mesh",
                                                      "app")}
    for _ in range(ROUNDS):
        n = REQUESTS // ROUNDS
        paths["direct"] += _latencies(f"http://127.0.0.1:{outside}/status/200", n,
                                      host="httpbin.org")
        mesh.apply(SERVICE_ENTRY, NS)
        paths["sidecar"] += _latencies("http://httpbin.org/status/200", n, proxy)
        mesh.apply(VIA_GATEWAY, NS)
        paths["gateway"] += _latencies("http://httpbin.org/status/200", n, proxy)
        mesh.delete(VIA_GATEWAY, NS)
        paths["mesh"] += _latencies(f"http://httpbin.{NS}:8000/status/200", n, proxy)
        paths["app"] += _latencies(f"http://127.0.0.1:{app}/status/200", n)
    return paths


def run(folder: Path) -> str:
    """The section's Markdown."""
    with isolated_mesh() as started:
        mesh = lablib.connect()
        started.append(mesh)
        paths = _measure(mesh)
    p50 = {k: percentile(v, 50) for k, v in paths.items()}
    p99 = {k: percentile(v, 99) for k, v in paths.items()}

    def row(name: str, key: str) -> str:
        return f"| {name} | {p50[key]:.2f} / {p99[key]:.2f} |"

    return "\n".join([
        "## Egress: per-hop latency next to the in-mesh path",
        "",
        f"{REQUESTS} sequential keep-alive GET `/status/200` per path (httpx, the sleep pod's "
        f"`http_proxy`), in {ROUNDS} alternating rounds. httpbin.org is the local outside "
        "world (the httpbin app behind the stand-in's own HTTP server); the in-mesh httpbin "
        "runs under waitress, so compare hops, not absolute figures.",
        "",
        "| path | p50 / p99 ms |",
        "|---|---|",
        row("outside world direct (baseline)", "direct"),
        row("egress: sidecar → outside world (ServiceEntry)", "sidecar"),
        row("egress: sidecar → egress gateway → outside world", "gateway"),
        row("in-mesh httpbin app direct (baseline)", "app"),
        row("in-mesh: sidecar → httpbin sidecar → httpbin", "mesh"),
        "",
        "| hop (difference of p50s) | ms |",
        "|---|---|",
        f"| egress sidecar hop (sidecar − direct) | {p50['sidecar'] - p50['direct']:.2f} |",
        f"| egress gateway hop (gateway − sidecar) | {p50['gateway'] - p50['sidecar']:.2f} |",
        f"| in-mesh hop ((in-mesh − app) / 2 proxies) | {(p50['mesh'] - p50['app']) / 2:.2f} |",
        "",
    ])
