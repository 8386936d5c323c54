"""Counting since a mark, the service graph, the dashboard panels, live redraws and the
background load, on hand-made scrapes answered by the local PromQL evaluator. No mesh."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pandas as pd
import pytest

from lablib.telemetry import BackgroundLoad, background_load, dashboards, graph_data, mark
from lablib.telemetry.counts import increase, snapshot
from lablib.telemetry.graph import COLOURS, LiveGraph, edges_from_increase, figure
from lablib.telemetry.live import MAX_SECONDS, refresh_for
from lablib.telemetry.localquery import Snapshot, evaluate
from lablib.telemetry.localquery import _as_data as as_data
from lablib.telemetry.prometheus import frame

NS = "bookinfo-test"
GATEWAY = ("istio-ingressgateway", "istio-system", "istio-ingressgateway", "unknown")
PRODUCTPAGE = ("productpage-v1", NS, "productpage", "v1")
REVIEWS_V2 = ("reviews-v2", NS, "reviews", "v2")
RATINGS = ("ratings-v1", NS, "ratings", "v1")
SLEEP = ("sleep", "breaker", "sleep", "unknown")
HTTPBIN = ("httpbin", "breaker", "httpbin", "v1")
NOBODY = ("unknown", "unknown", "unknown", "unknown")


def labels(name: str, reporter: str, source: tuple[str, ...], destination: tuple[str, ...],
           service: str, service_ns: str = NS, code: str = "200", flags: str = "-",
           mtls: bool = True) -> frozenset[tuple[str, str]]:
    """One series' labels, as the collector names them (the ones the graph reads)."""
    found = {"__name__": name, "reporter": reporter, "source_workload": source[0],
             "source_workload_namespace": source[1], "source_app": source[2],
             "source_version": source[3], "destination_workload": destination[0],
             "destination_workload_namespace": destination[1], "destination_app": destination[2],
             "destination_version": destination[3], "destination_service_name": service,
             "destination_service_namespace": service_ns, "response_flags": flags,
             "connection_security_policy": "unknown" if reporter == "source" else (
                 "mutual_tls" if mtls else "none")}
    if name.startswith("istio_request"):
        found["response_code"] = code
    return frozenset(found.items())


def requests(reporter: str, source: tuple[str, ...], destination: tuple[str, ...],
             service: str, **kw: Any) -> frozenset[tuple[str, str]]:
    return labels("istio_requests_total", reporter, source, destination, service, **kw)


class Scrapes:
    """A MetricsSource over hand-made scrapes, answered by lablib's local PromQL evaluator."""

    def __init__(self) -> None:
        self.history: list[Snapshot] = []

    def add(self, series: dict[frozenset[tuple[str, str]], float], ago: float = 0.0) -> None:
        self.history.append((time.time() - ago, dict(series)))
        self.history.sort(key=lambda s: s[0])

    def query(self, promql: str, at: Any = None) -> pd.DataFrame:
        when = time.time() if at is None else float(at)
        return frame(as_data(evaluate(promql, self.history, when), when))

    def query_range(self, promql: str, start: Any, end: Any,
                    step: float | str = 1.0) -> pd.DataFrame:
        frames, t = [], float(start)
        while t <= float(end):
            frames.append(frame(as_data(evaluate(promql, self.history, t), t)))
            t += float(step)
        found = [f for f in frames if not f.empty]
        return pd.concat(found, ignore_index=True) if found else frame({"resultType": "matrix",
                                                                         "result": []})


BOOKINFO = {
    requests("source", GATEWAY, PRODUCTPAGE, "productpage"): 10,
    requests("destination", GATEWAY, PRODUCTPAGE, "productpage"): 10,
    requests("source", PRODUCTPAGE, REVIEWS_V2, "reviews"): 10,
    requests("destination", PRODUCTPAGE, REVIEWS_V2, "reviews"): 9,
    requests("destination", PRODUCTPAGE, REVIEWS_V2, "reviews", code="503"): 1,
    requests("source", REVIEWS_V2, NOBODY, "ratings", code="500", flags="FI"): 4,
    requests("source", REVIEWS_V2, RATINGS, "ratings"): 6,
    requests("destination", REVIEWS_V2, RATINGS, "ratings"): 6,
}


@pytest.fixture()
def scrapes() -> Scrapes:
    return Scrapes()


def gained(series: dict[frozenset[tuple[str, str]], float]) -> pd.DataFrame:
    """A counts.increase()-shaped frame: every series with what it gained."""
    return pd.DataFrame([{**dict(k), "value": v} for k, v in series.items()])


# --- counting since a mark ---------------------------------------------------------------------
def test_increase_counts_new_series_from_zero_and_survives_resets() -> None:
    before = pd.DataFrame([{"__name__": "x", "a": "1", "value": 5.0},
                           {"__name__": "x", "a": "2", "value": 9.0}])
    after = pd.DataFrame([{"__name__": "x", "a": "1", "value": 8.0},
                          {"__name__": "x", "a": "2", "value": 3.0},  # reset: pod restarted
                          {"__name__": "x", "a": "3", "b": "new", "value": 4.0}])
    got = increase(before, after)
    assert dict(zip(got["a"], got["value"], strict=True)) == {"1": 3.0, "2": 3.0, "3": 4.0}
    assert increase(before, after.iloc[0:0]).empty


def test_mark_counts_what_came_after_it_by_label(scrapes: Scrapes) -> None:
    first = requests("destination", PRODUCTPAGE, REVIEWS_V2, "reviews")
    scrapes.add({first: 5})
    since = mark(scrapes, wait=False)
    scrapes.add({first: 12, requests("destination", PRODUCTPAGE, REVIEWS_V2, "reviews",
                                     code="503"): 2})
    found = since.requests(reporter="destination", destination_app="reviews")
    assert found.to_dict("records") == [
        {"destination_version": "v2", "response_code": "200", "requests": 7},
        {"destination_version": "v2", "response_code": "503", "requests": 2}]
    assert since.requests(by=(), reporter="destination")["requests"].tolist() == [9]
    assert since.requests(reporter="source").empty
    assert since.count(by=("no_such_label",), reporter="destination")["value"].tolist() == [9.0]


def test_mark_waits_for_late_metrics_but_not_forever(scrapes: Scrapes) -> None:
    key = requests("destination", PRODUCTPAGE, REVIEWS_V2, "reviews")
    scrapes.add({key: 1})
    since = mark(scrapes, wait=False)
    threading.Timer(0.6, scrapes.add, args=({key: 4},)).start()
    started = time.monotonic()
    assert since.requests(by=(), at_least=3, timeout=10)["requests"].tolist() == [3]
    assert 0.5 < time.monotonic() - started < 5
    started = time.monotonic()
    assert since.requests(by=(), at_least=100, timeout=1)["requests"].tolist() == [3]
    assert time.monotonic() - started < 3


def test_snapshot_reads_the_last_value_of_each_counter(scrapes: Scrapes) -> None:
    key = requests("destination", PRODUCTPAGE, REVIEWS_V2, "reviews")
    scrapes.add({key: 3}, ago=5)
    scrapes.add({}, ago=2)  # a scrape that failed: no series at all
    found = snapshot(scrapes)
    assert found["value"].tolist() == [3.0] and found["__name__"].tolist() == [
        "istio_requests_total"]


# --- the graph ---------------------------------------------------------------------------------
def test_edges_come_from_the_server_side_and_unseen_client_requests() -> None:
    graph = edges_from_increase(gained(BOOKINFO), 10.0)
    edges = graph.edges.set_index(["source", "destination"])
    assert len(edges) == 4
    gateway = edges.loc[("istio-system/istio-ingressgateway", f"{NS}/productpage-v1")]
    assert (gateway["requests"], gateway["rate"], gateway["mtls"]) == (10, 1.0, 1.0)
    reviews = edges.loc[(f"{NS}/productpage-v1", f"{NS}/reviews-v2")]
    # The server's 9 + 1, not the client's 10 on top.
    assert (reviews["requests"], reviews["errors"], reviews["codes"]) == (10, 1, "200×9 503×1")
    fault = edges.loc[(f"{NS}/reviews-v2", f"{NS}/ratings (service)")]
    assert (fault["requests"], fault["error_rate"], fault["flags"]) == (4, 1.0, "FI×4")
    assert math.isnan(fault["mtls"])  # no server saw those requests
    assert edges.loc[(f"{NS}/reviews-v2", f"{NS}/ratings-v1"), "requests"] == 6
    kinds = dict(zip(graph.nodes["id"], graph.nodes["kind"], strict=True))
    assert kinds == {"istio-system/istio-ingressgateway": "gateway",
                     f"{NS}/productpage-v1": "workload", f"{NS}/reviews-v2": "workload",
                     f"{NS}/ratings-v1": "workload", f"{NS}/ratings (service)": "service"}
    labels = dict(zip(graph.nodes["id"], graph.nodes["label"], strict=True))
    assert labels[f"{NS}/reviews-v2"] == "reviews v2"


def test_unknown_callers_external_hosts_plain_pods_and_tcp() -> None:
    series = {
        requests("destination", NOBODY, PRODUCTPAGE, "productpage", mtls=False): 3,
        requests("source", GATEWAY, NOBODY, "127.0.0.1", service_ns="unknown", code="404",
                 flags="NR"): 2,
        # httpbin has no sidecar here: only its client reports, naming it from the endpoint.
        requests("source", SLEEP, HTTPBIN, "httpbin", service_ns="breaker"): 5,
        requests("source", SLEEP, NOBODY, "httpbin", service_ns="breaker", code="503",
                 flags="UO"): 7,
        labels("istio_tcp_connections_opened_total", "destination", GATEWAY, HTTPBIN,
               "httpbin", service_ns="breaker"): 2,
        labels("istio_tcp_sent_bytes_total", "destination", GATEWAY, HTTPBIN, "httpbin",
               service_ns="breaker"): 300,
        labels("istio_tcp_received_bytes_total", "destination", GATEWAY, HTTPBIN, "httpbin",
               service_ns="breaker"): 50,
    }
    graph = edges_from_increase(gained(series), 5.0)
    edges = graph.edges.set_index(["source", "destination", "protocol"])
    assert edges.loc[("unknown", f"{NS}/productpage-v1", "http"), "mtls"] == 0.0
    assert edges.loc[("istio-system/istio-ingressgateway", "external/127.0.0.1", "http"),
                     "flags"] == "NR×2"
    assert edges.loc[("breaker/sleep", "breaker/httpbin", "http"), "requests"] == 5
    assert edges.loc[("breaker/sleep", "breaker/httpbin (service)", "http"), "errors"] == 7
    tcp = edges.loc[("istio-system/istio-ingressgateway", "breaker/httpbin", "tcp")]
    assert (tcp["requests"], tcp["bytes"], tcp["errors"]) == (2, 350.0, 0)
    kinds = dict(zip(graph.nodes["id"], graph.nodes["kind"], strict=True))
    assert kinds["unknown"] == "unknown" and kinds["external/127.0.0.1"] == "external"
    only = edges_from_increase(gained(series), 5.0, namespace="breaker")
    assert set(only.edges["destination"]) == {"breaker/httpbin", "breaker/httpbin (service)"}


def test_figure_draws_an_arrow_per_edge_coloured_by_errors() -> None:
    graph = edges_from_increase(gained(BOOKINFO), 10.0, NS)
    fig = figure(graph)
    n = len(graph.edges)
    assert n == 4 and len(fig.layout.annotations) == 2 * n + len(graph.nodes)
    arrows, labels = fig.layout.annotations[:n], fig.layout.annotations[n:2 * n]
    nodes = fig.layout.annotations[2 * n:]
    colours = {(e.source, e.destination): a.arrowcolor
               for e, a in zip(graph.edges.itertuples(), arrows, strict=True)}
    assert colours[(f"{NS}/reviews-v2", f"{NS}/ratings (service)")] == COLOURS["failure"]
    assert colours[(f"{NS}/productpage-v1", f"{NS}/reviews-v2")] == COLOURS["degraded"]
    assert colours[(f"{NS}/reviews-v2", f"{NS}/ratings-v1")] == COLOURS["ok"]
    texts = [a.text for a in labels]
    assert "1 rps · mTLS" in texts and "0.4 rps · 100% err" in texts
    # Left to right: the gateway, productpage, reviews, then ratings and its Service.
    x = {a.text: a.x for a in nodes}
    assert x["istio-ingressgateway"] < x["productpage v1"] < x["reviews v2"] < x["ratings v1"]
    assert x["ratings v1"] == x["ratings (service)"]
    edge_hover, node_hover = fig.data
    assert "FI×4" in " ".join(edge_hover.hovertext)
    assert len(node_hover.x) == len(graph.nodes)
    assert "in the last 10 s" in fig.layout.title.text
    empty = figure(edges_from_increase(pd.DataFrame(), 30.0, NS, since_mark=True))
    assert empty.layout.title.text.endswith("no traffic since the mark (30 s)")
    assert not empty.layout.annotations


def test_graph_over_a_window_and_since_a_mark(scrapes: Scrapes) -> None:
    for ago in (100, 70, 62, 1):  # Prometheus has one a second; the window needs some
        scrapes.add(BOOKINFO, ago=ago)
    since = mark(scrapes, wait=False)
    scrapes.add({k: 2 * v for k, v in BOOKINFO.items()}, ago=0)
    recent = graph_data(scrapes, NS, window=60)
    assert recent.edges["requests"].sum() == 10 + 10 + 4 + 6
    assert graph_data(scrapes, NS, since=since).edges["requests"].sum() == 30
    everything = graph_data(scrapes, NS, window=200)
    assert everything.edges["requests"].sum() == 60


def test_live_graph_slides_its_window(scrapes: Scrapes) -> None:
    key = requests("destination", GATEWAY, PRODUCTPAGE, "productpage")
    scrapes.add({key: 100}, ago=50)
    scrapes.add({key: 100}, ago=1)
    live = LiveGraph(scrapes, NS, window=0.5)
    assert live.data.edges.empty  # nothing changed between 0.5 s ago and now
    scrapes.add({key: 104})
    live.refresh()
    assert live.data.edges["requests"].tolist() == [4]
    assert len(live.figure.layout.annotations) == 2 + 2  # an arrow, its label, two nodes
    time.sleep(0.6)
    live.refresh()  # the 4 are older than the window now
    scrapes.add({key: 105})
    live.refresh()
    assert live.data.edges["requests"].tolist() == [1]


# --- panels --------------------------------------------------------------------------------------
def histogram(source: tuple[str, ...], destination: tuple[str, ...], service: str,
              counts: dict[str, float]) -> dict[frozenset[tuple[str, str]], float]:
    base = dict(requests("destination", source, destination, service))
    base["__name__"] = "istio_request_duration_milliseconds_bucket"
    return {frozenset({**base, "le": le}.items()): n for le, n in counts.items()}


def test_panels_draw_a_series_per_service_and_version(scrapes: Scrapes) -> None:
    ok = requests("destination", PRODUCTPAGE, REVIEWS_V2, "reviews")
    bad = requests("destination", PRODUCTPAGE, REVIEWS_V2, "reviews", code="503")
    for i in range(12):
        scrapes.add({ok: 10 * i, bad: 2 * i, **histogram(PRODUCTPAGE, REVIEWS_V2, "reviews", {
            "10": 6 * i, "100": 11 * i, "+Inf": 12 * i})}, ago=11 - i)
    volume = dashboards.request_volume(scrapes, NS, minutes=0.25, step=1, window="5s")
    (line,) = volume.data
    assert line.name == "reviews v2" and line.y[-1] == pytest.approx(12.0, rel=1e-3)
    success = dashboards.success_rate(scrapes, NS, minutes=0.25, step=1, window="5s")
    assert success.data[0].y[-1] == pytest.approx(10 / 12, rel=1e-3)
    duration = dashboards.request_duration(scrapes, NS, "reviews", minutes=0.25, step=1,
                                           window="5s")
    assert [t.line.dash for t in duration.data] == ["solid", "dash", "dot"]
    assert [t.showlegend for t in duration.data] == [True, False, False]
    assert duration.data[0].y[-1] == pytest.approx(10.0, rel=1e-3)  # p50: the top of "10"
    quiet = dashboards.tcp_bytes(scrapes, NS, minutes=0.25, step=1)
    assert not quiet.data and "no TCP traffic" in quiet.layout.annotations[0].text


def test_failures_by_flags_counts_client_side_flags_since_a_mark(scrapes: Scrapes) -> None:
    fault = requests("source", REVIEWS_V2, NOBODY, "ratings", code="500", flags="FI")
    overflow = requests("source", SLEEP, NOBODY, "httpbin", service_ns="breaker", code="503",
                        flags="UO")
    scrapes.add({fault: 3})
    since = mark(scrapes, wait=False)
    scrapes.add({fault: 8, overflow: 4, requests("source", PRODUCTPAGE, REVIEWS_V2,
                                                 "reviews", code="504", flags="UT"): 1})
    found = dashboards.flag_counts(scrapes, since=since)
    assert found[["response_flags", "response_code", "requests"]].values.tolist() == [
        ["FI", "500", 5], ["UO", "503", 4], ["UT", "504", 1]]
    assert found["meaning"].tolist()[1] == "upstream overflow (circuit breaker)"
    assert dashboards.flag_counts(scrapes, "breaker", since=since)["requests"].tolist() == [4]
    fig = dashboards.failures_by_flags(scrapes, since=since)
    assert {t.name for t in fig.data} == {"ratings", "httpbin", "reviews"}


def test_live_dashboard_refreshes_every_panel(scrapes: Scrapes) -> None:
    board = dashboards.live_dashboard(scrapes, NS, panels=("volume", "flags"), minutes=0.1)
    assert set(board.figures) == {"volume", "flags"}
    assert board.run(seconds=0.3, every=0.1) >= 2
    with pytest.raises(ValueError, match="no panel"):
        dashboards.live_dashboard(scrapes, panels=("grafana",))


# --- live redraws and background load ------------------------------------------------------------
def test_refresh_is_bounded() -> None:
    calls: list[float] = []
    started = time.monotonic()
    assert refresh_for(lambda: calls.append(time.monotonic()), 0.5, 0.2) >= 3
    assert time.monotonic() - started < 1.5
    with pytest.raises(ValueError, match="between 0 and"):
        refresh_for(lambda: None, MAX_SECONDS + 1, 1)
    with pytest.raises(ValueError, match="positive"):
        refresh_for(lambda: None, 1, 0)


class Answer(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class FakeMesh:
    """Just enough Backend for a background load: an 'ingress' that answers 200."""

    name = "fake"

    def __init__(self, port: int):
        self.port = port

    def ingress_address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port


@pytest.fixture()
def ingress() -> Iterator[FakeMesh]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield FakeMesh(int(server.server_address[1]))
    finally:
        server.shutdown()
        server.server_close()


def test_background_load_keeps_its_rate_and_ends_by_itself(ingress: FakeMesh) -> None:
    running = background_load(ingress, "/", qps=20, duration=1.0)  # type: ignore[arg-type]
    assert running.running
    sent = running.join(timeout=10)
    assert not running.running
    assert 18 <= len(sent) <= 21 and (sent["status"] == 200).all(), sent
    assert sent["start"].max() < 1.0


def test_background_load_stops_with_its_block(ingress: FakeMesh) -> None:
    started = time.monotonic()
    with BackgroundLoad(ingress, "/", qps=5, duration=60) as running:  # type: ignore[arg-type]
        time.sleep(0.5)
    assert not running.running and time.monotonic() - started < 5
    assert 2 <= len(running.frame) <= 4


@pytest.mark.parametrize(("kw", "message"), [
    ({"duration": 0}, "always ends by itself"), ({"duration": 10_000}, "always ends"),
    ({"qps": 0}, "qps must be positive"), ({"connections": 0}, "at least 1")])
def test_background_load_refuses_unbounded_settings(ingress: FakeMesh, kw: dict[str, float],
                                                    message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BackgroundLoad(ingress, "/", **kw)  # type: ignore[arg-type]


def test_local_reader_knows_last_over_time() -> None:
    key = frozenset({"__name__": "istio_requests_total", "pod": "a"}.items())
    history: list[Snapshot] = [(100.0, {key: 3.0}), (101.0, {}), (102.0, {key: 5.0})]
    assert evaluate("last_over_time(istio_requests_total[10s])", history, 101.5) == {
        frozenset({("pod", "a")}): 3.0}
    assert evaluate("last_over_time(istio_requests_total[10s])", history, 103) == {
        frozenset({("pod", "a")}): 5.0}
