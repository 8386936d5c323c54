"""lablib.load against a local stub server: counts, pacing, concurrency, errors, reports.

The last test runs the circuit breaker of lab 07 on a real mesh (marked `envoy`).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from lablib.load import LoadResult, latency_histogram, load


class Stub(ThreadingHTTPServer):
    """A keep-alive HTTP server recording what it saw: paths, headers, requests in flight."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), StubHandler)
        self.lock = threading.Lock()
        self.paths: list[str] = []
        self.headers_seen: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.slow_once_done = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class StubHandler(BaseHTTPRequestHandler):
    """`/ok`: 200; `/status/N`: N; `/sleep/MS`: 200 after MS ms; `/slow-once/MS`: only the
    first call sleeps. Any absolute-form path (a proxied request) is answered like its path."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: Stub

    def do_GET(self) -> None:
        stub = self.server
        with stub.lock:
            stub.paths.append(self.path)
            stub.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
            stub.in_flight += 1
            stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
        try:
            path = re.sub(r"^http://[^/]+", "", self.path)
            status = 200
            if m := re.fullmatch(r"/status/(\d+)", path):
                status = int(m.group(1))
            elif m := re.fullmatch(r"/sleep/(\d+)", path):
                time.sleep(int(m.group(1)) / 1000)
            elif m := re.fullmatch(r"/slow-once/(\d+)", path):
                with stub.lock:
                    first, stub.slow_once_done = not stub.slow_once_done, True
                if first:
                    time.sleep(int(m.group(1)) / 1000)
        finally:
            with stub.lock:
                stub.in_flight -= 1
        body = b"ok"
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def stub() -> Iterator[Stub]:
    server = Stub()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- counts and keep-alive --------------------------------------------------------------------


def test_n_requests_split_evenly_over_keep_alive_connections(stub: Stub) -> None:
    result = load(f"{stub.url}/ok", connections=3, n=30)
    frame = result.frame
    assert list(frame.columns) == ["start", "latency_ms", "status", "error", "worker"]
    assert len(frame) == 30 == len(stub.paths)
    assert frame.groupby("worker").size().to_dict() == {0: 10, 1: 10, 2: 10}
    assert (frame["status"] == 200).all() and (frame["error"] == "").all()
    assert (frame["latency_ms"] > 0).all()
    assert frame["start"].is_monotonic_increasing and frame["start"].min() >= 0
    # One TCP connection per worker, reused for all of its requests.
    assert result.sockets == 3
    assert result.summary()["codes"] == {200: 30}


def test_n_smaller_than_connections_sends_exactly_n(stub: Stub) -> None:
    result = load(f"{stub.url}/ok", connections=4, n=2)
    assert len(result.frame) == 2 and result.sockets == 2


def test_codes_are_counted_per_status(stub: Stub) -> None:
    ok = load(f"{stub.url}/ok", n=7)
    busy = load(f"{stub.url}/status/503", n=5)
    both = LoadResult(pd.concat([ok.frame, busy.frame], ignore_index=True), "u", 1, 0, 1.0, 1)
    assert both.codes() == {200: 7, 503: 5}


# --- pacing -----------------------------------------------------------------------------------


def test_qps_follows_an_absolute_schedule_spread_over_workers(stub: Stub) -> None:
    result = load(f"{stub.url}/ok", connections=2, qps=50, n=50)
    frame = result.frame.sort_values(["worker", "start"]).reset_index(drop=True)
    # The workers take turns: worker w sends requests w, w + 2, w + 4, ..., each due at j / 50 s.
    assert frame.groupby("worker").size().to_dict() == {0: 25, 1: 25}
    k = frame.groupby("worker").cumcount()
    due = (k * 2 + frame["worker"]) / 50
    lateness = frame["start"] - due
    # Never early; late by scheduling noise, not by accumulated drift: after any stall the
    # run catches up (sleeping 1/qps after each answer would leave the last ones ~100 ms late).
    assert lateness.min() >= 0
    assert lateness.median() < 0.01
    last = frame["start"] >= frame["start"].quantile(0.8)
    assert lateness[last].median() < 0.01
    assert 0.97 < result.elapsed_s < 1.2
    assert result.summary()["actual_qps"] == pytest.approx(50, rel=0.1)


def test_duration_with_qps_sends_what_the_schedule_holds(stub: Stub) -> None:
    result = load(f"{stub.url}/ok", connections=3, qps=40, duration=1.0)
    # Requests are due at 0, 1/40, ..., 39/40 s: exactly 40 fall inside one second.
    assert len(result.frame) == 40
    assert 0.97 < result.elapsed_s < 1.2


def test_a_slow_request_delays_the_next_ones_but_not_the_schedule(stub: Stub) -> None:
    result = load(f"{stub.url}/slow-once/130", connections=1, qps=20, n=10)
    starts = result.frame["start"].to_numpy()
    ends = starts + result.frame["latency_ms"].to_numpy() / 1000
    # Requests 1 and 2 were due at 50 and 100 ms, but the first answer took 130 ms: they go
    # out back to back right after it, without sleeping...
    assert starts[1] >= 0.13
    assert starts[1] - ends[0] < 0.01 and starts[2] - ends[1] < 0.01
    # ...and from request 3 (due at 150 ms) on, the original grid holds: no drift.
    # (A schedule relative to each answer would stay 80 ms behind from then on.)
    back_on_grid = [starts[j] - j / 20 for j in range(4, 10)]
    assert min(back_on_grid) >= 0 and sorted(back_on_grid)[3] < 0.02


def test_duration_without_qps_runs_for_that_long(stub: Stub) -> None:
    result = load(f"{stub.url}/sleep/20", connections=2, duration=0.5)
    assert 0.45 < result.elapsed_s < 1.0
    # Each worker sends back to back: at most 0.5 s / 20 ms = 25 requests, fewer with overhead.
    assert 20 <= len(result.frame) <= 52


# --- concurrency ------------------------------------------------------------------------------


def test_connections_are_really_concurrent(stub: Stub) -> None:
    result = load(f"{stub.url}/sleep/200", connections=4, n=8)
    frame = result.frame
    # Four requests in flight at once at the server; serially 8 x 200 ms would take 1.6 s.
    assert stub.max_in_flight == 4
    assert result.elapsed_s < 1.0
    first_round = frame.nsmallest(4, "start")
    assert first_round["start"].max() - first_round["start"].min() < 0.1
    assert sorted(first_round["worker"]) == [0, 1, 2, 3]
    assert (frame["latency_ms"] >= 195).all()


# --- errors -----------------------------------------------------------------------------------


def test_a_refused_connection_is_a_row_with_status_0() -> None:
    result = load(f"http://127.0.0.1:{closed_port()}/ok", connections=2, n=4)
    frame = result.frame
    assert len(frame) == 4
    assert (frame["status"] == 0).all()
    assert frame["error"].str.startswith("ConnectionRefusedError").all()
    assert result.sockets == 0
    assert result.codes() == {0: 4}
    assert "Code -1 (connection error) : 4 (100.0 %)" in result.report()


def test_a_timeout_is_a_row_with_status_0_and_the_next_request_reconnects(stub: Stub) -> None:
    result = load(f"{stub.url}/sleep/400", n=2, timeout=0.1)
    assert (result.frame["status"] == 0).all()
    assert result.frame["error"].str.startswith("TimeoutError").all()
    assert (result.frame["latency_ms"] < 300).all()
    # The timed-out connection cannot be reused.
    assert result.sockets == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"connections": 0}, "connections must be at least 1"),
        ({"qps": -1}, "qps must be 0"),
        ({"n": 5, "duration": 1.0}, "not both"),
        ({"n": 0}, "n must be at least 1"),
        ({"duration": 0}, "duration must be positive"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load("http://127.0.0.1:1/", **kwargs)  # type: ignore[arg-type]


def test_only_plain_http_urls_are_taken() -> None:
    with pytest.raises(ValueError, match=re.escape("url must look like http://host[:port]/path")):
        load("httpbin:8000/get", n=1)
    with pytest.raises(ValueError, match="must look like http://"):
        load("https://httpbin:8000/get", n=1)
    with pytest.raises(ValueError, match="invalid proxy"):
        load("http://httpbin:8000/get", n=1, proxy="http://127.0.0.1:port")


# --- proxy and headers ------------------------------------------------------------------------


def test_requests_go_through_the_given_proxy_and_ignore_the_environment(
    stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{closed_port()}")
    # Through the stub as a forward proxy: it sees absolute-form requests for httpbin:8000.
    result = load("http://httpbin:8000/ok", n=3, proxy=stub.url, headers={"x-lab": "07"})
    assert result.codes() == {200: 3}
    assert stub.paths == ["http://httpbin:8000/ok"] * 3
    assert all(h["host"] == "httpbin:8000" and h["x-lab"] == "07" for h in stub.headers_seen)
    # Without proxy=, the environment's (dead) proxy is not used.
    direct = load(f"{stub.url}/ok", n=2)
    assert direct.codes() == {200: 2}


# --- summary, report, histogram ---------------------------------------------------------------


def synthetic(ok: int = 17, busy: int = 13) -> LoadResult:
    """30 requests with latencies 1..30 ms, the first `ok` answered 200, the rest 503."""
    n = ok + busy
    frame = pd.DataFrame({
        "start": [i / 100 for i in range(n)],
        "latency_ms": [float(i + 1) for i in range(n)],
        "status": [200] * ok + [503] * busy,
        "error": [""] * n,
        "worker": [i % 3 for i in range(n)],
    })
    return LoadResult(frame, "http://httpbin:8000/get", 3, 0, 0.5, 5)


def test_summary_holds_percentiles_codes_and_rates() -> None:
    summary = synthetic().summary()
    assert summary["requests"] == 30
    assert summary["duration_s"] == 0.5
    assert summary["actual_qps"] == 60.0
    # Linear interpolation between order statistics of 1..30 ms.
    assert summary["p50_ms"] == pytest.approx(15.5)
    assert summary["p75_ms"] == pytest.approx(22.75)
    assert summary["p90_ms"] == pytest.approx(27.1)
    assert summary["p99_ms"] == pytest.approx(29.71)
    assert summary["p99.9_ms"] == pytest.approx(29.971)
    assert summary["codes"] == {200: 17, 503: 13}
    assert summary["sockets"] == 5


def test_report_reads_like_fortio() -> None:
    report = synthetic().report()
    lines = report.splitlines()
    assert "Code 200 : 17 (56.7 %)" in lines
    assert "Code 503 : 13 (43.3 %)" in lines
    assert "Sockets used: 5 (for perfect keepalive, would be 3)" in lines
    assert "# target 50% 0.0155" in lines
    assert "# target 99.9% 0.029971" in lines
    assert any(line.startswith("Aggregated Function Time : count 30 avg 0.0155") for line in lines)
    # Histogram rows: the counts add up to every request and the last row reaches 100 %.
    rows = [line for line in lines if line.startswith((">=", ">"))]
    assert rows[0].startswith(">= 0.001 <= 0.002")
    assert sum(int(r.rsplit(",", 1)[1]) for r in rows) == 30
    assert rows[-1].split(",")[2].strip() == "100.00"


def test_histogram_buckets_are_half_open_above() -> None:
    buckets = synthetic().histogram()
    # 1 ms is the minimum, in the first bucket; 2 ms closes (1, 2]; 11 and 12 share (10, 12].
    assert buckets[0] == (1.0, 2.0, 2)
    assert (10.0, 12.0, 2) in buckets
    assert buckets[-1][1] == 30.0
    assert sum(count for _, _, count in buckets) == 30


def test_latency_histogram_has_one_trace_per_status_code() -> None:
    fig = latency_histogram(synthetic().frame)
    assert [trace.name for trace in fig.data] == ["200", "503"]
    assert sum(len(trace.x) for trace in fig.data) == 30


# --- the circuit breaker on a real mesh -------------------------------------------------------

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
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 3m
      maxEjectionPercent: 100
"""
BREAKER_NS = "circuit-breaking-test"


@pytest.fixture(scope="module")
def breaker_mesh(tmp_path_factory):
    import lablib

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAB_STATE_DIR", str(tmp_path_factory.mktemp("load-state")))
        patch.setenv("LAB_MESH", "test-load-breaker")
        mesh = lablib.connect("local")
        try:
            mesh.install()
            mesh.create_namespace(BREAKER_NS, {"istio-injection": "enabled"})
            mesh.apply("samples/httpbin/httpbin.yaml", BREAKER_NS)
            mesh.apply(BREAKER, BREAKER_NS)
            mesh.apply("samples/httpbin/sample-client/fortio-deploy.yaml", BREAKER_NS)
            yield mesh
        finally:
            mesh.uninstall()


def overflow(mesh, pod: str) -> int:
    """The fortio sidecar's upstream_rq_pending_overflow for httpbin's cluster."""
    from lablib.proxyconfig import stats

    table = stats(mesh, pod, BREAKER_NS, "outbound|8000||httpbin.")
    row = table[table["stat"].str.endswith(".upstream_rq_pending_overflow")]
    return int(row["value"].iloc[0])


@pytest.mark.envoy
def test_the_breaker_answers_503_exactly_for_the_overflow(breaker_mesh) -> None:
    mesh = breaker_mesh
    pod = mesh.pod_name({"app": "fortio"}, BREAKER_NS)
    proxy = mesh.proxy_url(pod, BREAKER_NS)
    single = load("http://httpbin:8000/get", connections=1, n=20, proxy=proxy)
    # One request at a time fits maxConnections 1: nothing overflows.
    assert single.codes() == {200: 20}
    before = overflow(mesh, pod)
    result = load("http://httpbin:8000/get", connections=3, n=30, proxy=proxy)
    codes = result.codes()
    assert set(codes) == {200, 503}, result.report()
    # Each 503 is a request the sidecar refused because its pending queue was full.
    assert overflow(mesh, pod) - before == codes[503]
    # The 503s come from the client's own sidecar, so they never reach httpbin: no ejection.
    again = load("http://httpbin:8000/get", connections=1, n=5, proxy=proxy)
    assert again.codes() == {200: 5}
