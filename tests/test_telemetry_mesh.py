"""Istio's metrics from a real local mesh: what was sent is what was counted, by code and version
and by both reporters; fault-injected aborts and breaker overflows count with their flags;
Prometheus scrapes every proxy and answers PromQL (or says what is wrong with it); the service
graph and the dashboards show the traffic."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pandas as pd
import pytest

import lablib
from lablib import labs, load, traffic
from lablib.backend import Backend
from lablib.telemetry import (
    LocalMetrics,
    PrometheusClient,
    PromQLError,
    background_load,
    dashboards,
    graph_data,
    mark,
)
from lablib.telemetry import connect as connect_metrics
from lablib.telemetry.graph import LiveGraph
from lablib.telemetry.metrics import MetricsSource
from lablib.telemetry.prometheus import find_prometheus

pytestmark = pytest.mark.envoy
NS = "bookinfo-test"
BREAKER_NS = "telemetry-breaker"
ALL_V1 = "samples/bookinfo/networking/virtual-service-all-v1.yaml"
REVIEWS_V3 = "samples/bookinfo/networking/virtual-service-reviews-v3.yaml"
JASON_V2 = "samples/bookinfo/networking/virtual-service-reviews-test-v2.yaml"
RATINGS_ABORT = "samples/bookinfo/networking/virtual-service-ratings-test-abort.yaml"
DESTINATION_RULES = "samples/bookinfo/networking/destination-rule-all.yaml"
# istio.io/latest/docs/reference/config/metrics: the labels of istio_requests_total.
ISTIO_LABELS = {
    "reporter", "source_workload", "source_workload_namespace", "source_principal",
    "source_app", "source_version", "source_canonical_service", "source_canonical_revision",
    "source_cluster", "destination_workload", "destination_workload_namespace",
    "destination_principal", "destination_app", "destination_version", "destination_service",
    "destination_service_name", "destination_service_namespace",
    "destination_canonical_service", "destination_canonical_revision", "destination_cluster",
    "request_protocol", "response_code", "grpc_response_status", "response_flags",
    "connection_security_policy",
}
BREAKER = """
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata:
  name: httpbin
spec:
  host: httpbin
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """A mesh of its own with Bookinfo behind the ingress gateway and its subsets."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LAB_MESH", "telemetry-e2e")
        env.setenv("LAB_STATE_DIR", str(tmp_path_factory.mktemp("telemetry-e2e")))
        found = lablib.connect("local")
        try:
            labs.ensure_bookinfo(found, NS, destination_rules=True)
            yield found
        finally:
            found.uninstall()


@pytest.fixture(scope="module")
def metrics(mesh: Backend) -> Iterator[MetricsSource]:
    found = connect_metrics(mesh)
    yield found
    if isinstance(found, LocalMetrics):
        found.close()


@pytest.fixture()
def prometheus(metrics: MetricsSource) -> PrometheusClient:
    if find_prometheus() is None:
        pytest.skip("no prometheus binary on PATH: apt-get install prometheus "
                    "(.ci/run installs it)")
    assert isinstance(metrics, PrometheusClient), metrics
    return metrics


@pytest.fixture()
def routing(mesh: Backend) -> Iterator[Backend]:
    """Bookinfo with only its subsets; whatever routing the test applies is removed after."""
    yield mesh
    labs.reset_routing(mesh, NS)
    mesh.apply(DESTINATION_RULES, NS)


def sent_by(frame: pd.DataFrame) -> dict[tuple[str, str], int]:
    """(reviews version, status code) -> requests, as the client saw them."""
    counts = frame.groupby(["version", "status"]).size()
    return {(str(v), str(c)): int(n) for (v, c), n in counts.items()}


def counted_by(found: pd.DataFrame) -> dict[tuple[str, str], int]:
    return {(r.destination_version, r.response_code): int(r.requests)
            for r in found.itertuples()}


# --- counting ------------------------------------------------------------------------------------
def test_requests_counted_by_code_and_version_by_both_reporters(
        mesh: Backend, metrics: MetricsSource) -> None:
    since = mark(metrics)
    frame = traffic.send(mesh, n=45, concurrency=3)
    assert (frame["status"] == 200).all(), frame
    sent = sent_by(frame)
    for reporter in ("source", "destination"):
        found = since.requests(reporter=reporter, destination_app="reviews", at_least=45)
        assert counted_by(found) == sent, (reporter, found, sent)
    # The gateway reports the requests it sent; productpage's sidecar the ones it received.
    into = since.requests(by=("reporter", "source_workload"), destination_app="productpage",
                          at_least=90)
    assert {(r.reporter, r.source_workload): r.requests for r in into.itertuples()} == {
        ("destination", "istio-ingressgateway"): 45, ("source", "istio-ingressgateway"): 45}


def test_ratings_names_each_reviews_version_that_called_it(
        mesh: Backend, metrics: MetricsSource) -> None:
    since = mark(metrics)
    frame = traffic.send(mesh, n=45, concurrency=3)
    calls = frame["version"].value_counts().to_dict()
    expected = {f"reviews-{v}": calls[v] for v in ("v2", "v3") if calls.get(v)}
    found = since.requests(by=("source_workload", "source_version", "connection_security_policy",
                               "source_principal"),
                           reporter="destination", destination_app="ratings",
                           at_least=sum(expected.values()))
    assert {r.source_workload: r.requests for r in found.itertuples()} == expected, found
    assert set(found["source_version"]) == {w.split("-")[1] for w in expected}
    assert set(found["connection_security_policy"]) == {"mutual_tls"}
    assert set(found["source_principal"]) == {
        f"spiffe://cluster.local/ns/{NS}/sa/bookinfo-reviews"}


def test_fault_injected_aborts_count_as_fi_on_the_client_side(
        routing: Backend, metrics: MetricsSource) -> None:
    for manifest in (ALL_V1, JASON_V2, RATINGS_ABORT):
        routing.apply(manifest, NS)
    since = mark(metrics)
    frame = traffic.send(routing, n=12, user="jason")
    assert (frame["status"] == 200).all(), frame  # reviews shows its "ratings unavailable"
    found = since.requests(by=("reporter", "source_workload", "destination_workload",
                               "response_code", "response_flags"),
                           destination_service_name="ratings", at_least=12)
    assert found.to_dict("records") == [{
        "reporter": "source", "source_workload": "reviews-v2", "destination_workload": "unknown",
        "response_code": "500", "response_flags": "FI", "requests": 12}]
    flags = dashboards.flag_counts(metrics, NS, since=since)
    assert flags[["response_flags", "response_code", "requests"]].to_dict("records") == [
        {"response_flags": "FI", "response_code": "500", "requests": 12}]


def test_breaker_overflows_count_as_uo(mesh: Backend, metrics: MetricsSource) -> None:
    mesh.create_namespace(BREAKER_NS, {"istio-injection": "enabled"})
    try:
        mesh.apply("samples/httpbin/httpbin.yaml", BREAKER_NS)
        mesh.apply("samples/sleep/sleep.yaml", BREAKER_NS)
        mesh.apply(BREAKER, BREAKER_NS)
        mesh.wait_ready(BREAKER_NS)
        sleep = mesh.pod_name({"app": "sleep"}, BREAKER_NS)
        since = mark(metrics)
        result = load.load("http://httpbin:8000/get", connections=3, n=30,
                           proxy=mesh.proxy_url(sleep, BREAKER_NS))
        codes = result.codes()
        assert 200 in codes and 503 in codes, result.report()
        found = since.requests(by=("reporter", "response_code", "response_flags"),
                               destination_service_name="httpbin", at_least=30 + codes[200])
        assert {(r.reporter, r.response_code, r.response_flags): r.requests
                for r in found.itertuples()} == {
            ("source", "200", "-"): codes[200], ("source", "503", "UO"): codes[503],
            ("destination", "200", "-"): codes[200]}
    finally:
        mesh.delete_namespace(BREAKER_NS)


# --- Prometheus ----------------------------------------------------------------------------------
def test_prometheus_scrapes_every_proxy_with_istios_labels(
        mesh: Backend, prometheus: PrometheusClient) -> None:
    traffic.send(mesh, n=5)
    pods = {p["metadata"]["name"] for ns in (NS, "istio-system")
            for p in mesh.get("pods", namespace=ns)
            if any(c["name"] == "istio-proxy" for c in p["spec"]["containers"])
            or p["metadata"]["labels"].get("istio", "").endswith("gateway")}
    # Service discovery sends Prometheus changes at most every 5 s: pods of a namespace
    # deleted just before may still be listed for that long.
    deadline = time.monotonic() + 20
    while True:
        up = prometheus.targets()
        if set(up["pod"]) == pods and set(up["health"]) == {"up"} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(up["pod"]) == pods, up
    assert set(up["health"]) == {"up"}, up
    labels = prometheus.series_labels("istio_requests_total")
    # Prometheus drops empty labels (grpc_response_status: no gRPC here) and adds the
    # target's own, as Istio's addon does with its kubernetes-pods job.
    assert ISTIO_LABELS - {"grpc_response_status"} <= labels
    assert labels - ISTIO_LABELS >= {"__name__", "job", "instance", "namespace", "pod"}
    rates = prometheus.query('sum by (destination_version) (rate(istio_requests_total'
                             '{reporter="destination", destination_app="reviews"}[1m]))')
    assert set(rates["destination_version"]) <= {"v1", "v2", "v3"} and len(rates), rates


def test_malformed_promql_gets_prometheus_own_message(prometheus: PrometheusClient) -> None:
    with pytest.raises(PromQLError, match=r"parse error") as caught:
        prometheus.query('sum by (destination_version (istio_requests_total)')
    assert "Prometheus refused the query" in str(caught.value)
    with pytest.raises(PromQLError, match="bad_data"):
        prometheus.query_range("istio_requests_total", 0, 10, step="-1")


# --- the graph and the dashboards ----------------------------------------------------------------
def test_graph_shows_the_new_edge_after_a_routing_change(
        routing: Backend, metrics: MetricsSource) -> None:
    routing.apply(ALL_V1, NS)
    since = mark(metrics)
    traffic.send(routing, n=20)
    since.requests(at_least=20, reporter="destination", destination_app="reviews")
    before = graph_data(metrics, NS, since=since)
    productpage = f"{NS}/productpage-v1"
    assert before.edge(productpage, f"{NS}/reviews-v1")["requests"] == 20
    assert not before.edges["destination"].isin([f"{NS}/reviews-v3", f"{NS}/ratings-v1"]).any()

    routing.apply(REVIEWS_V3, NS)
    since = mark(metrics)
    traffic.send(routing, n=20)
    since.requests(at_least=20, reporter="destination", destination_app="ratings")
    after = graph_data(metrics, NS, since=since)
    to_v3 = after.edge(productpage, f"{NS}/reviews-v3")
    assert to_v3 is not None and to_v3["requests"] == 20 and to_v3["mtls"] == 1.0, after.edges
    assert after.edge(f"{NS}/reviews-v3", f"{NS}/ratings-v1")["requests"] == 20
    assert after.edge(productpage, f"{NS}/reviews-v1") is None
    gateway = after.edge("istio-system/istio-ingressgateway", productpage)
    assert gateway is not None and gateway["error_rate"] == 0.0
    assert set(after.nodes["kind"]) == {"gateway", "workload"}


def test_live_graph_and_dashboards_follow_a_background_load(
        mesh: Backend, metrics: MetricsSource) -> None:
    live = LiveGraph(metrics, NS, window=10)
    with background_load(mesh, qps=10, duration=6) as running:
        draws = live.run(seconds=6, every=1.5)
    sent = running.frame
    assert 40 <= len(sent) <= 61 and (sent["status"] == 200).all(), sent
    assert draws >= 3
    assert live.data.edge("istio-system/istio-ingressgateway", f"{NS}/productpage-v1") is not None
    assert len(live.figure.data) == 2 and len(live.figure.layout.annotations) == 2 * len(
        live.data.edges) + len(live.data.nodes)
    volume = dashboards.request_volume(metrics, NS, "reviews", minutes=1)
    assert {t.name for t in volume.data} <= {"reviews v1", "reviews v2", "reviews v3"}
    assert volume.data and max(max(t.y) for t in volume.data) > 0
    success = dashboards.success_rate(metrics, NS, "productpage", minutes=1)
    assert success.data and all(y == 1.0 for t in success.data for y in t.y)
    duration = dashboards.request_duration(metrics, NS, "productpage", minutes=1)
    assert {t.hovertemplate.split(":")[0].rsplit(" ", 1)[1] for t in duration.data} == {
        "p50", "p90", "p99"}
    board = dashboards.live_dashboard(metrics, NS, minutes=1)
    assert set(board.figures) == set(dashboards.PANELS)
    assert board.run(seconds=0) == 1


def test_background_load_stops_by_itself(mesh: Backend) -> None:
    running = background_load(mesh, qps=20, duration=1.0)
    frame = running.join(timeout=15)
    assert not running.running
    assert 10 <= len(frame) <= 21, frame


def test_dashboard_without_prometheus_says_so(mesh: Backend) -> None:
    with pytest.raises(lablib.BackendError, match="kiali is not part of the local mesh"):
        from lablib.telemetry import dashboard
        dashboard(mesh, "kiali")


def test_local_reader_counts_like_prometheus(mesh: Backend) -> None:
    from lablib.telemetry import endpoints

    local = LocalMetrics(endpoints(mesh)["metrics"])
    try:
        since = mark(local)
        traffic.send(mesh, n=10)
        found = since.requests(by=("reporter",), destination_app="productpage", at_least=20)
        assert dict(zip(found["reporter"], found["requests"], strict=True)) == {
            "destination": 10, "source": 10}
        with pytest.raises(PromQLError, match="parse error"):
            local.query("sum(rate(istio_requests_total[1m])")
    finally:
        local.close()
