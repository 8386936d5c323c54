"""Istio's standard metrics from access-log lines: labels, counts, histograms, tailing, and the
PromQL subset used without Prometheus. No mesh: synthetic lines as the proxies write them."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lablib.local.ports import PortAllocator
from lablib.local.state import StateDir
from lablib.local.supervisor import Supervisor
from lablib.telemetry import (
    HTTP_LABELS,
    TCP_LABELS,
    Collector,
    LocalMetrics,
    PrometheusClient,
    PromQLError,
    counts,
    wait_for_total,
)
from lablib.telemetry.accesslog import LogTail
from lablib.telemetry.localquery import evaluate, parse, parse_text
from lablib.telemetry.prometheus import find_prometheus, scrape_interval
from lablib.telemetry.server import TARGETS_PATH, MetricsServer, targets
from lablib.telemetry.service import MeshTelemetry
from lablib.telemetry.topology import ProxyInfo, ServiceInfo, Topology, WorkloadInfo

NS = "bookinfo-test"
# Istio's documented labels (istio.io/latest/docs/reference/config/metrics), as Prometheus
# names them on a cluster.
ISTIO_HTTP_LABELS = {
    "reporter", "source_workload", "source_workload_namespace", "source_principal",
    "source_app", "source_version", "source_canonical_service", "source_canonical_revision",
    "source_cluster", "destination_workload", "destination_workload_namespace",
    "destination_principal", "destination_app", "destination_version", "destination_service",
    "destination_service_name", "destination_service_namespace",
    "destination_canonical_service", "destination_canonical_revision", "destination_cluster",
    "request_protocol", "response_code", "grpc_response_status", "response_flags",
    "connection_security_policy",
}


def workload(name: str, app: str, version: str, sa: str, ns: str = NS) -> WorkloadInfo:
    return WorkloadInfo(name, ns, f"{name}-abc12-xyz{len(name)}",
                        {"app": app, "version": version}, sa)


GATEWAY = WorkloadInfo("istio-ingressgateway", "istio-system", "istio-ingressgateway-1-a",
                       {"app": "istio-ingressgateway", "istio": "ingressgateway"},
                       "istio-ingressgateway-service-account")
PRODUCTPAGE = workload("productpage-v1", "productpage", "v1", "bookinfo-productpage")
REVIEWS = {v: workload(f"reviews-{v}", "reviews", v, "bookinfo-reviews") for v in ("v1", "v2")}
RATINGS = workload("ratings-v1", "ratings", "v1", "bookinfo-ratings")
TCP_ECHO = workload("tcp-echo-v1", "tcp-echo", "v1", "default")
# Endpoint ports (what upstream_host names) and each sidecar's outbound port.
PORTS = {8080: GATEWAY, 9001: PRODUCTPAGE, 9002: REVIEWS["v1"], 9003: REVIEWS["v2"],
         9004: RATINGS, 9005: TCP_ECHO}
OUTBOUND = {PRODUCTPAGE.pod: 7001, REVIEWS["v1"].pod: 7002, REVIEWS["v2"].pod: 7003,
            RATINGS.pod: 7004, TCP_ECHO.pod: 7005}


def proxy_id(w: WorkloadInfo, kind: str = "sidecar") -> str:
    return f"{kind}~127.0.0.1~{w.pod}.{w.namespace}~{w.namespace}.svc.cluster.local"


def spiffe(w: WorkloadInfo) -> str:
    return f"spiffe://cluster.local/ns/{w.namespace}/sa/{w.service_account}"


class Mesh:
    """Log files and a topology for the workloads above."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.proxies = {GATEWAY.pod: ProxyInfo(proxy_id(GATEWAY, "router"), "router", GATEWAY,
                                               str(folder / f"{GATEWAY.pod}.log"))}
        for w in PORTS.values():
            if w is not GATEWAY:
                self.proxies[w.pod] = ProxyInfo(proxy_id(w), "sidecar", w,
                                                str(folder / f"{w.pod}.log"), OUTBOUND[w.pod])
        self.services = (
            ServiceInfo("productpage", NS, {"app": "productpage"}, {9080: 9080}),
            ServiceInfo("reviews", NS, {"app": "reviews"}, {9080: 9080}),
            ServiceInfo("ratings", NS, {"app": "ratings"}, {9080: 9080}),
            ServiceInfo("tcp-echo", NS, {"app": "tcp-echo"}, {9000: 9000}))

    def topology(self) -> Topology:
        return Topology(tuple(self.proxies.values()), dict(PORTS), self.services)

    def write(self, w: WorkloadInfo, *entries: dict[str, Any]) -> None:
        with open(self.proxies[w.pod].log_path, "a") as f:
            for e in entries:
                f.write(json.dumps(e) + "\n")


def http(authority: str, cluster: str | None, host: int | None, local: int, code: int = 200,
         flags: str = "-", duration: int = 3, sent: int = 100, received: int = 0,
         peer_san: str | None = None, upstream_san: str | None = None,
         peer_id: str | None = None) -> dict[str, Any]:
    """One HCM access-log entry in the mesh's JSON format."""
    return {"authority": authority, "bytes_received": received, "bytes_sent": sent,
            "downstream_local_address": f"127.0.0.1:{local}", "duration": duration,
            "method": "GET", "path": "/", "peer_uri_san": peer_san, "protocol": "HTTP/1.1",
            "response_code": code, "response_flags": flags, "upstream_cluster": cluster,
            "upstream_host": f"127.0.0.1:{host}" if host else None,
            "upstream_peer_uri_san": upstream_san, "peer_metadata_id": peer_id}


def outbound(client: WorkloadInfo, service: str, subset: str, to: WorkloadInfo | None,
             **kw: Any) -> dict[str, Any]:
    """A client sidecar's line for a request to `service` that reached `to`."""
    port = next((p for p, w in PORTS.items() if w is to), None)
    cluster = f"outbound|9080|{subset}|{service}.{NS}.svc.cluster.local"
    local = OUTBOUND.get(client.pod, 8080)
    return http(f"{service}:9080", cluster, port, local, **kw)


def inbound(server: WorkloadInfo, client: WorkloadInfo | None, mtls: bool = True,
            **kw: Any) -> dict[str, Any]:
    """A server sidecar's line for a request from `client`."""
    port = next(p for p, w in PORTS.items() if w is server)
    kind = "router" if client is GATEWAY else "sidecar"
    return http(f"{server.app}:9080", "inbound|9080||", 30000, port,
                peer_san=spiffe(client) if client and mtls else None,
                peer_id=proxy_id(client, kind) if client else None, **kw)


def series(text: bytes, name: str) -> list[tuple[dict[str, str], float]]:
    """Samples `name` in Prometheus text."""
    return [(s.labels, s.value) for f in text_string_to_metric_families(text.decode())
            for s in f.samples if s.name == name]


def total(text: bytes, name: str, **labels: str) -> float:
    """The sum of `name`'s samples with these labels (read by the fast local parser)."""
    return sum(v for ls, v in parse_text(text.decode()).items()
               if dict(ls)["__name__"] == name
               and all(dict(ls).get(k) == want for k, want in labels.items()))


@pytest.fixture()
def mesh(tmp_path: Path) -> Mesh:
    return Mesh(tmp_path)


@pytest.fixture()
def collector(mesh: Mesh) -> Collector:
    return Collector(mesh.topology)


# --- labels --------------------------------------------------------------------------------------
def test_label_sets_are_istios(mesh: Mesh, collector: Collector) -> None:
    mesh.write(PRODUCTPAGE, outbound(PRODUCTPAGE, "reviews", "", REVIEWS["v1"]))
    mesh.write(TCP_ECHO, {**http("", "inbound|9000||", 30000, 9005, code=0), "protocol": None,
                          "method": None, "authority": None})
    text = collector.render(PRODUCTPAGE.pod, NS)
    assert set(HTTP_LABELS) == ISTIO_HTTP_LABELS
    assert set(series(text, "istio_requests_total")[0][0]) == ISTIO_HTTP_LABELS
    tcp = series(collector.render(TCP_ECHO.pod, NS), "istio_tcp_connections_opened_total")
    assert set(TCP_LABELS) == ISTIO_HTTP_LABELS - {"response_code", "grpc_response_status"}
    assert set(tcp[0][0]) == set(TCP_LABELS)


def test_source_reporter_names_both_ends(mesh: Mesh, collector: Collector) -> None:
    mesh.write(PRODUCTPAGE, outbound(PRODUCTPAGE, "reviews", "v2", REVIEWS["v2"],
                                     upstream_san=spiffe(REVIEWS["v2"])))
    (labels, value), = series(collector.render(), "istio_requests_total")
    assert value == 1
    assert labels == {
        "reporter": "source", "namespace": NS, "pod": PRODUCTPAGE.pod,
        "source_workload": "productpage-v1", "source_workload_namespace": NS,
        "source_app": "productpage", "source_version": "v1",
        "source_canonical_service": "productpage", "source_canonical_revision": "v1",
        "source_principal": spiffe(PRODUCTPAGE), "source_cluster": "Kubernetes",
        "destination_workload": "reviews-v2", "destination_workload_namespace": NS,
        "destination_app": "reviews", "destination_version": "v2",
        "destination_canonical_service": "reviews", "destination_canonical_revision": "v2",
        "destination_principal": spiffe(REVIEWS["v2"]), "destination_cluster": "Kubernetes",
        "destination_service": f"reviews.{NS}.svc.cluster.local",
        "destination_service_name": "reviews", "destination_service_namespace": NS,
        "request_protocol": "http", "response_code": "200", "response_flags": "-",
        "grpc_response_status": "", "connection_security_policy": "unknown"}


def test_destination_reporter_knows_its_peer(mesh: Mesh, collector: Collector) -> None:
    mesh.write(REVIEWS["v1"], inbound(REVIEWS["v1"], PRODUCTPAGE))
    mesh.write(RATINGS, inbound(RATINGS, REVIEWS["v2"], mtls=False))
    text = collector.render()
    (reviews, _), = [s for s in series(text, "istio_requests_total")
                     if s[0]["pod"] == REVIEWS["v1"].pod]
    assert reviews["reporter"] == "destination"
    assert (reviews["source_workload"], reviews["destination_workload"]) == (
        "productpage-v1", "reviews-v1")
    assert reviews["connection_security_policy"] == "mutual_tls"
    assert reviews["source_principal"] == spiffe(PRODUCTPAGE)
    assert reviews["destination_principal"] == spiffe(REVIEWS["v1"])
    assert reviews["destination_service"] == f"reviews.{NS}.svc.cluster.local"
    (ratings, _), = [s for s in series(text, "istio_requests_total")
                     if s[0]["pod"] == RATINGS.pod]
    assert ratings["source_workload"] == "reviews-v2"  # from x-envoy-peer-metadata-id
    assert ratings["connection_security_policy"] == "none"
    assert ratings["source_principal"] == "unknown"


def test_peer_from_identity_or_unknown(mesh: Mesh, collector: Collector) -> None:
    mesh.write(RATINGS, {**inbound(RATINGS, REVIEWS["v1"]), "peer_metadata_id": None},
               {**inbound(RATINGS, None), "peer_uri_san": None})
    rows = series(collector.render(), "istio_requests_total")
    sources = {ls["source_workload"] for ls, _ in rows}
    # Both reviews versions share one identity: the principal names no single workload.
    assert sources == {"unknown"}
    mesh.write(REVIEWS["v1"], {**inbound(REVIEWS["v1"], PRODUCTPAGE), "peer_metadata_id": None})
    rows = series(collector.render(REVIEWS["v1"].pod, NS), "istio_requests_total")
    assert rows[0][0]["source_workload"] == "productpage-v1"
    assert rows[0][0]["source_principal"] == spiffe(PRODUCTPAGE)


def test_gateway_reports_as_source(mesh: Mesh, collector: Collector) -> None:
    mesh.write(GATEWAY, outbound(GATEWAY, "productpage", "", PRODUCTPAGE),
               http("127.0.0.1:8080", None, None, 8080, code=404, flags="NR"))
    rows = series(collector.render(GATEWAY.pod, "istio-system"), "istio_requests_total")
    assert {ls["reporter"] for ls, _ in rows} == {"source"}
    assert {ls["source_workload"] for ls, _ in rows} == {"istio-ingressgateway"}
    by_code = {ls["response_code"]: ls for ls, _ in rows}
    assert by_code["200"]["destination_workload"] == "productpage-v1"
    assert by_code["404"]["response_flags"] == "NR"
    assert by_code["404"]["destination_workload"] == "unknown"


# --- counting ------------------------------------------------------------------------------------
def test_counts_by_code_and_version(mesh: Mesh, collector: Collector) -> None:
    sent = {("v1", 200): 7, ("v2", 200): 5, ("v2", 503): 2}
    for (version, code), n in sent.items():
        mesh.write(PRODUCTPAGE, *[outbound(PRODUCTPAGE, "reviews", "", REVIEWS[version],
                                           code=code)] * n)
        mesh.write(REVIEWS[version], *[inbound(REVIEWS[version], PRODUCTPAGE, code=code)] * n)
    text = collector.render()
    for reporter in ("source", "destination"):
        for (version, code), n in sent.items():
            assert total(text, "istio_requests_total", reporter=reporter,
                         destination_version=version, response_code=str(code)) == n
    assert total(text, "istio_requests_total") == 2 * sum(sent.values())


def test_fault_breaker_and_timeout_flags_count(mesh: Mesh, collector: Collector) -> None:
    mesh.write(REVIEWS["v2"], *[outbound(REVIEWS["v2"], "ratings", "v1", None, code=500,
                                         flags="FI", duration=0)] * 4)
    mesh.write(PRODUCTPAGE, *[outbound(PRODUCTPAGE, "reviews", "", None, code=503,
                                       flags="UO")] * 3,
               *[outbound(PRODUCTPAGE, "reviews", "v2", REVIEWS["v2"], code=504,
                          flags="UT", duration=500)] * 2)
    text = collector.render()
    assert total(text, "istio_requests_total", response_flags="FI", response_code="500",
                 destination_service_name="ratings", destination_workload="unknown") == 4
    assert total(text, "istio_requests_total", response_flags="UO", response_code="503") == 3
    assert total(text, "istio_requests_total", response_flags="UT", response_code="504",
                 destination_version="v2") == 2
    assert total(text, "istio_request_duration_milliseconds_count", response_flags="UT") == 2
    assert total(text, "istio_request_duration_milliseconds_sum", response_flags="UT") == 1000


def test_duration_histogram_uses_istios_buckets(mesh: Mesh, collector: Collector) -> None:
    for ms in (0, 3, 7, 7, 600, 4_000_000):
        mesh.write(PRODUCTPAGE, outbound(PRODUCTPAGE, "reviews", "", REVIEWS["v1"],
                                         duration=ms, sent=1500))
    text = collector.render(PRODUCTPAGE.pod, NS)
    buckets = {ls["le"]: v for ls, v in
               series(text, "istio_request_duration_milliseconds_bucket")}
    assert list(buckets) == ["0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000",
                             "2500", "5000", "10000", "30000", "60000", "300000", "600000",
                             "1800000", "3600000", "+Inf"]
    assert (buckets["0.5"], buckets["5"], buckets["10"], buckets["500"], buckets["1000"]) == (
        1, 2, 4, 4, 5)
    assert (buckets["3600000"], buckets["+Inf"]) == (5, 6)
    assert total(text, "istio_request_duration_milliseconds_sum") == 4_000_617
    assert total(text, "istio_response_bytes_sum") == 6 * 1500
    assert total(text, "istio_response_bytes_bucket", le="1000") == 0
    assert total(text, "istio_response_bytes_bucket", le="2500") == 6


def test_tcp_connections_and_bytes(mesh: Mesh, collector: Collector) -> None:
    tcp = {"protocol": None, "method": None, "authority": None, "response_code": 0}
    gateway_line = {**http("", f"outbound|9000|v1|tcp-echo.{NS}.svc.cluster.local", 9005, 31400,
                           received=6, sent=10), **tcp}
    server_line = {**http("", "inbound|9000||", 30000, 9005, received=6, sent=10,
                          peer_san=spiffe(GATEWAY)), **tcp}
    mesh.write(GATEWAY, *[gateway_line] * 3)
    mesh.write(TCP_ECHO, *[server_line] * 3)
    text = collector.render()
    for reporter in ("source", "destination"):
        assert total(text, "istio_tcp_connections_opened_total", reporter=reporter,
                     destination_workload="tcp-echo-v1", request_protocol="tcp") == 3
        assert total(text, "istio_tcp_connections_closed_total", reporter=reporter) == 3
        assert total(text, "istio_tcp_received_bytes_total", reporter=reporter) == 18
        assert total(text, "istio_tcp_sent_bytes_total", reporter=reporter) == 30
    assert total(text, "istio_tcp_sent_bytes_total", reporter="destination",
                 source_workload="istio-ingressgateway",
                 destination_service=f"tcp-echo.{NS}.svc.cluster.local",
                 connection_security_policy="mutual_tls") == 30
    assert total(text, "istio_requests_total") == 0


def test_connect_tunnel_counts_as_tcp(mesh: Mesh, collector: Collector) -> None:
    line = {**outbound(PRODUCTPAGE, "tcp-echo", "", TCP_ECHO, received=6, sent=10),
            "method": "CONNECT", "protocol": "HTTP/1.1"}
    mesh.write(PRODUCTPAGE, line)
    text = collector.render()
    assert total(text, "istio_tcp_connections_opened_total", reporter="source",
                 destination_workload="tcp-echo-v1") == 1
    assert total(text, "istio_requests_total") == 0


def test_plain_http_to_a_tcp_port_counts_as_tcp(mesh: Mesh, collector: Collector) -> None:
    line = {**outbound(PRODUCTPAGE, "tcp-echo", "", TCP_ECHO, received=6, sent=10),
            "route_name": "opaque_tcp"}
    mesh.write(PRODUCTPAGE, line)
    text = collector.render()
    assert total(text, "istio_tcp_connections_opened_total", reporter="source",
                 destination_workload="tcp-echo-v1") == 1
    assert total(text, "istio_requests_total") == 0


def test_counts_only_new_lines(mesh: Mesh, collector: Collector) -> None:
    line = outbound(PRODUCTPAGE, "reviews", "", REVIEWS["v1"])
    mesh.write(PRODUCTPAGE, line, line)
    assert total(collector.render(), "istio_requests_total") == 2
    assert total(collector.render(), "istio_requests_total") == 2
    mesh.write(PRODUCTPAGE, line)
    assert total(collector.render(), "istio_requests_total") == 3


def test_pod_endpoint_shows_only_that_pod(mesh: Mesh, collector: Collector) -> None:
    mesh.write(PRODUCTPAGE, outbound(PRODUCTPAGE, "reviews", "", REVIEWS["v1"]))
    mesh.write(REVIEWS["v1"], inbound(REVIEWS["v1"], PRODUCTPAGE))
    collector.collect()
    one = collector.render(REVIEWS["v1"].pod, NS)
    assert [ls["reporter"] for ls, _ in series(one, "istio_requests_total")] == ["destination"]
    assert "pod" not in series(one, "istio_requests_total")[0][0]
    assert total(collector.render("no-such-pod", NS), "istio_requests_total") == 0


def test_gone_pod_is_read_to_the_end_then_dropped(mesh: Mesh, collector: Collector) -> None:
    mesh.write(RATINGS, inbound(RATINGS, REVIEWS["v1"]))
    collector.collect()
    mesh.write(RATINGS, inbound(RATINGS, REVIEWS["v1"]))
    mesh.write(REVIEWS["v1"], outbound(REVIEWS["v1"], "ratings", "", RATINGS))
    del mesh.proxies[RATINGS.pod]
    text = collector.render()
    assert total(text, "istio_requests_total", pod=RATINGS.pod) == 0
    # The client's line read after the pod left still names it, from the ports seen before.
    assert total(text, "istio_requests_total", destination_workload="ratings-v1") == 1


def test_broken_lines_and_a_broken_topology_are_survived(mesh: Mesh, tmp_path: Path) -> None:
    calls = []

    def flaky() -> Topology:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("mesh in transition")
        return mesh.topology()

    collector = Collector(flaky)
    with open(mesh.proxies[PRODUCTPAGE.pod].log_path, "w") as f:
        f.write("not json\n[1, 2]\n")
    mesh.write(PRODUCTPAGE, outbound(PRODUCTPAGE, "reviews", "", REVIEWS["v1"]))
    assert total(collector.render(), "istio_requests_total") == 1
    mesh.write(PRODUCTPAGE, outbound(PRODUCTPAGE, "reviews", "", REVIEWS["v1"]))
    assert total(collector.render(), "istio_requests_total") == 2


# --- tailing -------------------------------------------------------------------------------------
def test_tail_waits_for_whole_lines_and_follows_truncation_and_rotation(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    tail = LogTail(str(path))
    assert tail.read() == []  # no file yet
    path.write_text('{"a": 1}\n{"b"')
    assert tail.read() == ['{"a": 1}']
    with open(path, "a") as f:
        f.write(': 2}\n')
    assert tail.read() == ['{"b": 2}']
    path.write_text("x\n")  # truncated: start again
    assert tail.read() == ["x"]
    os.rename(path, tmp_path / "a.log.1")  # rotated: a new file at the same path
    path.write_text("y\nz\n")
    assert tail.read() == ["y", "z"]


# --- serving -------------------------------------------------------------------------------------
def test_server_serves_pods_and_targets(mesh: Mesh, collector: Collector) -> None:
    import httpx

    mesh.write(PRODUCTPAGE, outbound(PRODUCTPAGE, "reviews", "", REVIEWS["v1"]))
    server = MetricsServer(collector).start()
    try:
        found = httpx.get(server.url + "/targets", trust_env=False).json()
        paths = {t["labels"]["__metrics_path__"] for t in found}
        assert f"/stats/prometheus/{NS}/{PRODUCTPAGE.pod}" in paths
        assert all(t["targets"] == [server.address] for t in found)
        pp = next(t for t in found if t["labels"]["pod"] == PRODUCTPAGE.pod)["labels"]
        assert (pp["namespace"], pp["app"], pp["version"]) == (NS, "productpage", "v1")
        one = httpx.get(f"{server.url}/stats/prometheus/{NS}/{PRODUCTPAGE.pod}",
                        trust_env=False)
        assert total(one.content, "istio_requests_total", reporter="source") == 1
        assert httpx.get(server.url + "/nothing", trust_env=False).status_code == 404
    finally:
        server.close()
    assert targets(collector, "h:1")[0]["targets"] == ["h:1"]


# --- PromQL without Prometheus -------------------------------------------------------------------
def snapshot(t: float, text: str) -> tuple[float, dict]:
    return t, parse_text(text)


REQUESTS = """# TYPE istio_requests_total counter
istio_requests_total{reporter="destination",destination_version="v1",response_code="200"} %d
istio_requests_total{reporter="destination",destination_version="v2",response_code="200"} %d
istio_requests_total{reporter="destination",destination_version="v2",response_code="503"} %d
"""


def test_local_query_sums_rates_and_ratios() -> None:
    history = [snapshot(100, REQUESTS % (10, 10, 0)), snapshot(110, REQUESTS % (30, 15, 5))]
    by_version = evaluate('sum by (destination_version) (istio_requests_total)', history, 110)
    assert {dict(k)["destination_version"]: v for k, v in by_version.items()} == {
        "v1": 30, "v2": 20}
    rates = evaluate('sum by (destination_version) '
                     '(rate(istio_requests_total{reporter="destination"}[1m]))', history, 110)
    assert {dict(k)["destination_version"]: v for k, v in rates.items()} == {"v1": 2.0, "v2": 1.0}
    success = evaluate('sum(rate(istio_requests_total{response_code!~"5.."}[1m])) / '
                       'sum(rate(istio_requests_total[1m])) * 100', history, 110)
    assert list(success.values()) == [pytest.approx(100 * 25 / 30)]
    # A series that first appears between scrapes was at 0 before: its increase counts.
    assert list(evaluate('sum(increase(istio_requests_total{response_code="503"}[1m]))',
                         history, 110).values()) == [5.0]
    assert evaluate("sum(rate(istio_requests_total[1m]))", history[:1], 100) == {}


def test_local_histogram_quantile_interpolates_like_prometheus() -> None:
    text = "\n".join(f'd_bucket{{le="{le}"}} {n}' for le, n in
                     [("1", 0), ("5", 50), ("10", 90), ("+Inf", 100)]) + "\n"
    history = [snapshot(0, text.replace(" 50", " 0").replace(" 90", " 0").replace(" 100", " 0")),
               snapshot(10, text)]
    q = evaluate("histogram_quantile(0.5, sum by (le) (rate(d_bucket[1m])))", history, 10)
    assert list(q.values()) == [pytest.approx(1 + 4 * 50 / 50)]
    q99 = evaluate("histogram_quantile(0.99, sum by (le) (rate(d_bucket[1m])))", history, 10)
    assert list(q99.values()) == [10.0]  # in the +Inf bucket: the highest finite bound
    idle = [history[0], (10, history[0][1])]
    empty = evaluate("histogram_quantile(0.5, sum by (le) (rate(d_bucket[1m])))", idle, 10)
    assert len(empty) == 1 and math.isnan(next(iter(empty.values())))


@pytest.mark.parametrize("query, message", [
    ("sum(rate(istio_requests_total[1m])", "expected ')'"),
    ("istio_requests_total{reporter=}", "expected 'string'"),
    ("topk(3, istio_requests_total)", "function topk()"),
    ("sum without (pod) (istio_requests_total)", "`without`"),
    ("istio_requests_total[1m]", "range vector"),
    ("rate(istio_requests_total)", "needs one range vector"),
    ("istio_requests_total @", "unexpected '@'"),
])
def test_local_query_refuses_what_it_cannot_do(query: str, message: str) -> None:
    with pytest.raises(PromQLError, match=message.replace("(", r"\(").replace(")", r"\)")):
        evaluate(query, [], 0)


def test_parse_keeps_matchers_and_windows() -> None:
    node = parse('rate(x{a="1", b!~"v.*"}[30s])')
    matchers, window = node.args[0].value
    assert matchers == (("__name__", "=", "x"), ("a", "=", "1"), ("b", "!~", "v.*"))
    assert window == 30.0


# --- a real Prometheus -----------------------------------------------------------------------
@pytest.fixture()
def telemetry(tmp_path: Path, mesh: Mesh) -> Iterator[MeshTelemetry]:
    """What meshd runs: the metrics server and, on first ask, Prometheus (under a supervisor)."""
    state = StateDir("telemetry-test", root=tmp_path / "state")
    supervisor = Supervisor(state)
    service = MeshTelemetry(state.path / "telemetry", supervisor, PortAllocator(), mesh.topology)
    try:
        yield service
    finally:
        service.close()
        supervisor.close()


@pytest.fixture()
def prometheus(telemetry: MeshTelemetry) -> PrometheusClient:
    if find_prometheus() is None:
        pytest.skip("no prometheus binary on PATH: apt-get install prometheus "
                    "(.ci/run installs it)")
    found = telemetry.endpoints()
    assert found["prometheus"], found
    client = PrometheusClient(found["prometheus"],
                              mesh_targets=telemetry.server.url + TARGETS_PATH)
    # Scraped at least once each, so that every target's health is known.
    assert client.wait_for_targets()
    return client


def send_bookinfo_lines(mesh: Mesh, sent: dict[tuple[str, int], int]) -> None:
    """What productpage's and the reviews sidecars log for `sent[(version, code)]` requests."""
    for (version, code), n in sent.items():
        mesh.write(PRODUCTPAGE, *[outbound(PRODUCTPAGE, "reviews", "", REVIEWS[version],
                                           code=code, duration=3 * n)] * n)
        mesh.write(REVIEWS[version], *[inbound(REVIEWS[version], PRODUCTPAGE, code=code,
                                               duration=2 * n)] * n)


# Istio 1.20's samples/addons/prometheus.yaml, the parts that set how often pods are scraped.
ADDON_CONFIG = """
global:
  evaluation_interval: 1m
  scrape_interval: 15s
  scrape_timeout: 10s
scrape_configs:
- job_name: prometheus
  static_configs:
  - targets: [localhost:9090]
- job_name: kubernetes-pods
  honor_labels: true
  kubernetes_sd_configs:
  - role: pod
"""


@pytest.mark.parametrize(("config", "seconds"), [
    (ADDON_CONFIG, 15.0),
    ("global: {scrape_interval: 1s}\nscrape_configs: [{job_name: kubernetes-pods}]", 1.0),
    ("global: {scrape_interval: 15s}\n"
     "scrape_configs: [{job_name: kubernetes-pods, scrape_interval: 1m30s}]", 90.0),
    ("scrape_configs: []", 60.0),  # Prometheus' own default
    ("global: {scrape_interval: 500ms}", 0.5),
])
def test_scrape_interval_is_read_from_prometheus_config(config: str, seconds: float) -> None:
    assert scrape_interval(config) == seconds


class Every:
    """A metrics source that is scraped every `scrape_seconds`."""

    def __init__(self, scrape_seconds: float) -> None:
        self.scrape_seconds = scrape_seconds


def test_windows_follow_the_scrape_interval() -> None:
    local, addon = Every(1.0), Every(15.0)
    # Locally: rates over 10 s, last values over 15 s, quiet after 1.5 s, counts wait 30 s.
    assert (counts.rate_window(local), counts.last_value_window(local)) == ("10s", "15s")
    assert (counts.quiet_seconds(local), counts.count_timeout(local)) == (1.5, 30.0)
    # Istio's addon scrapes every 15 s: Grafana's $__rate_interval is 1m, and a total must
    # stay put over more than one scrape to have seen everything.
    assert (counts.rate_window(addon), counts.last_value_window(addon)) == ("60s", "60s")
    assert (counts.quiet_seconds(addon), counts.count_timeout(addon)) == (22.5, 60.0)
    assert counts.scrape_seconds(object()) == 1.0  # LocalMetrics reads the proxies directly


def test_prometheus_scrapes_every_proxy(mesh: Mesh, prometheus: PrometheusClient) -> None:
    sent = {("v1", 200): 12, ("v2", 200): 7, ("v2", 503): 3}
    send_bookinfo_lines(mesh, sent)
    query = 'sum(istio_requests_total{reporter="destination"})'
    assert wait_for_total(prometheus, query, sum(sent.values()), timeout=30) == sum(
        sent.values())
    by = prometheus.query('sum by (destination_version, response_code) '
                          '(istio_requests_total{reporter="destination"})')
    assert {(r.destination_version, int(r.response_code)): r.value
            for r in by.itertuples()} == sent
    assert prometheus.scrape_seconds == 1.0  # read from the server's own configuration
    up = prometheus.targets()
    assert set(up["pod"]) == {p.workload.pod for p in mesh.proxies.values()}
    assert set(up["health"]) == {"up"}
    labels = prometheus.series_labels("istio_requests_total")
    # Prometheus drops empty labels (grpc_response_status); it adds the target's own.
    assert labels == ISTIO_HTTP_LABELS - {"grpc_response_status"} | {
        "__name__", "job", "instance", "namespace", "pod", "app", "version"}


def test_malformed_promql_gets_prometheus_own_message(prometheus: PrometheusClient) -> None:
    with pytest.raises(PromQLError, match="parse error") as caught:
        prometheus.query("sum(rate(istio_requests_total[1m])")
    assert "sum(rate(istio_requests_total[1m])" in str(caught.value)


def test_local_reader_agrees_with_prometheus(mesh: Mesh, telemetry: MeshTelemetry,
                                             prometheus: PrometheusClient) -> None:
    send_bookinfo_lines(mesh, {("v1", 200): 5, ("v2", 200): 9})
    wait_for_total(prometheus, "sum(istio_requests_total)", 28, timeout=30)
    local = LocalMetrics(telemetry.endpoints()["metrics"])
    try:
        for query in [
            'sum by (reporter, destination_version) (istio_requests_total)',
            'histogram_quantile(0.5, sum by (le, destination_version) '
            '(istio_request_duration_milliseconds_bucket{reporter="source"}))',
            'sum(istio_request_bytes_count) / sum(istio_requests_total) * 100',
        ]:
            ours, theirs = local.query(query), prometheus.query(query)
            assert ours.drop(columns="timestamp").equals(theirs.drop(columns="timestamp")), (
                query, ours, theirs)
    finally:
        local.close()


def test_without_the_binary_the_mesh_says_why(monkeypatch: pytest.MonkeyPatch,
                                              telemetry: MeshTelemetry) -> None:
    monkeypatch.setattr("lablib.telemetry.service.find_prometheus", lambda: None)
    found = telemetry.endpoints()
    assert found["prometheus"] == ""
    assert "apt-get install prometheus" in found["note"]
    assert found["metrics"].endswith("/stats/prometheus")
