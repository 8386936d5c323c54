"""A load generator with fortio's knobs: connections, qps (0 = as fast as possible), n or duration.

Each connection is one worker thread holding one keep-alive connection, so `connections=3`
means three requests in flight at most, as with `fortio load -c 3`. With `qps > 0` the
requests follow one absolute schedule shared by all workers (request j is due at j / qps
seconds), so a slow request delays the next ones but never shifts the schedule. Every request
comes back as a row of `LoadResult.frame`; `summary()` and `report()` read that frame.
An interrupt (Kernel ▸ Interrupt) stops every worker and its connection before it propagates.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from .progress import Progress

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["COLUMNS", "PERCENTILES", "LoadResult", "latency_histogram", "load"]

COLUMNS = ["start", "latency_ms", "status", "error", "worker"]
PERCENTILES = (50.0, 75.0, 90.0, 99.0, 99.9)
# fortio's own default when neither a count nor a duration is given.
DEFAULT_DURATION_S = 5.0
USER_AGENT = "lablib-load"


def _bucket_edges_ms() -> list[float]:
    """Histogram edges in ms: 1 ms steps up to 10 ms, coarser steps above, up to 10 minutes."""
    edges = [float(ms) for ms in range(1, 11)]
    edges += [12.0, 14.0, 16.0, 18.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0]
    edges += [60.0, 70.0, 80.0, 90.0, 100.0]
    for decade in (100.0, 1000.0, 10000.0, 100000.0):
        edges += [decade * k for k in range(2, 11)]
    return edges[: edges.index(600000.0) + 1]


BUCKET_EDGES_MS = _bucket_edges_ms()


@dataclass(frozen=True)
class LoadResult:
    """What a load run did: one row per request, plus the run's settings and wall time."""

    frame: pd.DataFrame
    url: str
    connections: int
    qps: float
    elapsed_s: float
    sockets: int

    def codes(self) -> dict[int, int]:
        """How many requests got each HTTP status (0: no response), by status."""
        counts = Counter(int(s) for s in self.frame["status"])
        return dict(sorted(counts.items()))

    def percentile_ms(self, percentile: float) -> float:
        """The latency under which `percentile` % of the requests finished, in ms."""
        if self.frame.empty:
            return float("nan")
        return float(np.percentile(self.frame["latency_ms"].to_numpy(), percentile))

    def summary(self) -> dict[str, Any]:
        """Requests, wall time, achieved qps, latency percentiles, counts per code, sockets."""
        requests = len(self.frame)
        result: dict[str, Any] = {
            "requests": requests,
            "connections": self.connections,
            "requested_qps": self.qps,
            "duration_s": round(self.elapsed_s, 4),
            "actual_qps": round(requests / self.elapsed_s, 2) if self.elapsed_s > 0 else 0.0,
        }
        for p in PERCENTILES:
            result[f"p{p:g}_ms"] = round(self.percentile_ms(p), 3)
        result["codes"] = self.codes()
        result["sockets"] = self.sockets
        return result

    def histogram(self) -> list[tuple[float, float, int]]:
        """Non-empty latency buckets as (low ms, high ms, count): (low, high], first one closed."""
        latencies = np.sort(self.frame["latency_ms"].to_numpy(dtype=float))
        if latencies.size == 0:
            return []
        low, high = float(latencies[0]), float(latencies[-1])
        bounds = [low, *(e for e in BUCKET_EDGES_MS if low < e < high), high]
        # A latency v falls in the bucket whose upper bound is the first one >= v.
        index = np.searchsorted(bounds[1:], latencies, side="left")
        counts = np.bincount(index, minlength=len(bounds) - 1)
        return [(bounds[i], bounds[i + 1], int(c)) for i, c in enumerate(counts) if c]

    def report(self, percentiles: Sequence[float] = PERCENTILES) -> str:
        """The run as fortio prints it: timing, histogram, percentiles, sockets, codes."""
        frame, n = self.frame, len(self.frame)
        seconds = frame["latency_ms"].to_numpy(dtype=float) / 1000
        rate = "max" if self.qps <= 0 else f"{self.qps:g}"
        qps = n / self.elapsed_s if self.elapsed_s > 0 else 0.0
        lines = [
            f"Load of {self.url} at {rate} qps with {self.connections} connection(s)",
            f"Ended after {self.elapsed_s * 1000:.4g}ms : {n} calls. qps={qps:.5g}",
        ]
        if n:
            lines.append(
                f"Aggregated Function Time : count {n} avg {seconds.mean():.6g} "
                f"+/- {seconds.std():.4g} min {seconds.min():.6g} max {seconds.max():.6g} "
                f"sum {seconds.sum():.6g}")
            lines.append("# range, mid point, percentile, count")
            done = 0
            for i, (low, high, count) in enumerate(self.histogram()):
                done += count
                first = ">=" if i == 0 else ">"
                lines.append(f"{first} {low / 1000:.6g} <= {high / 1000:.6g} , "
                             f"{(low + high) / 2000:.6g} , {100 * done / n:.2f}, {count}")
            for p in percentiles:
                lines.append(f"# target {p:g}% {self.percentile_ms(p) / 1000:.6g}")
        lines.append(f"Sockets used: {self.sockets} (for perfect keepalive, would be "
                     f"{min(self.connections, n) if n else self.connections})")
        for code, count in self.codes().items():
            share = 100 * count / n
            label = f"Code {code}" if code else "Code -1 (connection error)"
            lines.append(f"{label} : {count} ({share:.1f} %)")
        if n:
            lines.append(f"All done {n} calls {seconds.mean() * 1000:.3f} ms avg, "
                         f"{qps:.1f} qps")
        return "\n".join(lines)


def _validate(connections: int, qps: float, n: int | None, duration: float | None) -> None:
    """Refuse settings fortio would refuse, naming the argument."""
    if connections < 1:
        raise ValueError(f"connections must be at least 1, got {connections}")
    if qps < 0:
        raise ValueError(f"qps must be 0 (as fast as possible) or positive, got {qps}")
    if n is not None and duration is not None:
        raise ValueError("give n (a number of requests) or duration (seconds), not both")
    if n is not None and n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if duration is not None and duration <= 0:
        raise ValueError(f"duration must be positive, got {duration}")


class _Connection(http.client.HTTPConnection):
    """A keep-alive HTTP connection that counts the TCP connections it opens ("sockets used")."""

    connects = 0

    def connect(self) -> None:
        super().connect()
        self.connects += 1


@dataclass(frozen=True)
class _Target:
    """Where a worker connects and what it asks for: the URL's host, or the proxy's."""

    url: str
    proxy: str | None
    timeout: float

    def connection(self) -> _Connection:
        """A fresh (not yet connected) keep-alive connection."""
        server = urlsplit(self.proxy or self.url)
        return _Connection(str(server.hostname), server.port or 80, timeout=self.timeout)

    def path(self) -> str:
        """The request target: the absolute URL for a forward proxy, else path and query."""
        if self.proxy is not None:
            return self.url
        target = urlsplit(self.url)
        return (target.path or "/") + (f"?{target.query}" if target.query else "")


class _Run:
    """Shared state of one load run: settings, the common start instant and the rows."""

    def __init__(self, target: _Target, connections: int, qps: float, n: int | None,
                 duration: float, headers: dict[str, str]) -> None:
        self.target, self.connections, self.qps, self.n, self.duration = (
            target, connections, qps, n, duration)
        self.headers = headers
        self.begin = 0.0
        self.rows: list[list[tuple[float, float, int, str, int]]] = [
            [] for _ in range(connections)]
        self.sockets = [0] * connections
        self.connections_open: list[_Connection | None] = [None] * connections
        self.failures: list[BaseException] = []
        self.stopped = threading.Event()
        # Every worker waits here so they start together; the last to arrive sets `begin`.
        self.barrier = threading.Barrier(connections, action=self._start_clock)

    def _start_clock(self) -> None:
        self.begin = time.perf_counter()

    def _due(self, j: int) -> float | None:
        """When request j (counted over all workers) is due, or None when the run is over."""
        if self.stopped.is_set() or (self.n is not None and j >= self.n):
            return None
        if self.qps > 0:
            offset = j / self.qps
            if self.n is None and offset >= self.duration:
                return None
            return self.begin + offset
        now = time.perf_counter()
        if self.n is None and now - self.begin >= self.duration:
            return None
        return now

    def worker(self, i: int) -> None:
        """Send requests i, i + c, i + 2c, ... over one keep-alive connection."""
        # http.client rather than httpx: a third of the CPU per request, which is what lets
        # one Python process keep up with the labs' rates (see bench/load_vs_hey.py).
        conn = self.target.connection()
        self.connections_open[i] = conn
        path, rows = self.target.path(), self.rows[i]
        try:
            self.barrier.wait()
            j = i
            while (due := self._due(j)) is not None:
                wait = due - time.perf_counter()
                if wait > 0 and self.stopped.wait(wait):
                    break
                start = time.perf_counter()
                status, error = 0, ""
                try:
                    conn.request("GET", path, headers=self.headers)
                    response = conn.getresponse()
                    response.read()
                    status = response.status
                except (OSError, http.client.HTTPException) as exc:
                    # The connection is in an unknown state: the next request opens a new one.
                    conn.close()
                    error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                end = time.perf_counter()
                rows.append((start - self.begin, (end - start) * 1000, status, error, i))
                j += self.connections
        except Exception as exc:  # a bug, not a request outcome: load() raises it
            if not self.stopped.is_set():  # after stop(), errors are the interrupt's doing
                self.failures.append(exc)
                self.barrier.abort()
        finally:
            conn.close()
            self.sockets[i] = conn.connects

    def requests_done(self) -> int:
        return sum(len(rows) for rows in self.rows)

    def stop(self) -> None:
        """End the run now: no new request, and requests in flight are cut off."""
        self.stopped.set()
        self.barrier.abort()
        for conn in self.connections_open:
            sock = conn.sock if conn is not None else None
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a worker blocked reading
                except OSError:
                    pass


def _show(bar: Progress, run: _Run, finished: bool = False) -> None:
    """Requests done of n, or seconds gone of the duration (with the requests so far)."""
    if run.n is not None:
        bar.update(run.requests_done())
    elif run.begin:
        gone = run.duration if finished else min(time.perf_counter() - run.begin, run.duration)
        bar.update(round(gone, 1), step=f"{run.requests_done()} requests")


def _check_url(url: str, what: str = "url") -> None:
    """Refuse a URL that is not http://host..., before any thread starts."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"invalid {what} {url!r}: {exc}") from None
    # Plain HTTP only: what the labs load (mesh traffic through a sidecar, the gateway's port 80).
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{what} must look like http://host[:port]/path, got {url!r}")


def load(url: str, *, connections: int = 1, qps: float = 0, n: int | None = None,
         duration: float | None = None, headers: dict[str, str] | None = None,
         proxy: str | None = None, timeout: float = 30) -> LoadResult:
    """`fortio load -c connections -qps qps -n n (or -t duration) url`: one row per request.

    `qps=0` sends as fast as each connection allows. Without `n` or `duration` the run lasts
    5 s, as fortio's does. `proxy` sends every request through that HTTP proxy, e.g. a pod's
    sidecar from `mesh.proxy_url(pod, namespace)`; the environment's proxy settings are
    ignored. A request that got no response has status 0 and the reason in `error`.
    """
    _validate(connections, qps, n, duration)
    _check_url(url)
    if proxy is not None:
        _check_url(proxy, "proxy")
    seconds = DEFAULT_DURATION_S if duration is None else float(duration)
    run = _Run(_Target(url, proxy, timeout), connections, qps, n, seconds,
               {"User-Agent": USER_AGENT, **(headers or {})})
    threads = [threading.Thread(target=run.worker, args=(i,), name=f"load-{i}", daemon=True)
               for i in range(connections)]
    with Progress("load", n if n is not None else seconds,
                  "requests" if n is not None else "s") as bar:
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.1)  # wakes up to redraw the bar (and to be interrupted)
                    _show(bar, run)
            _show(bar, run, finished=True)
        except BaseException:  # an interrupt: no worker may keep sending after it
            run.stop()
            for thread in threads:
                thread.join(timeout=5)
            raise
    elapsed = time.perf_counter() - run.begin
    if run.failures:
        raise run.failures[0]
    rows = sorted((row for worker in run.rows for row in worker), key=lambda r: r[0])
    frame = pd.DataFrame(rows, columns=COLUMNS).astype(
        {"start": float, "latency_ms": float, "status": int, "worker": int})
    return LoadResult(frame, url, connections, qps, elapsed, sum(run.sockets))


def latency_histogram(frame: pd.DataFrame, title: str = "Latency by status code") -> go.Figure:
    """A plotly histogram of `latency_ms`, one colour per status code."""
    import plotly.express as px

    data = frame.assign(code=frame["status"].astype(str))
    order = sorted(data["code"].unique(), key=int)
    fig = px.histogram(data, x="latency_ms", color="code", barmode="overlay", nbins=40,
                       category_orders={"code": order}, title=title,
                       labels={"latency_ms": "latency (ms)", "code": "status"})
    fig.update_layout(yaxis_title="requests")
    return fig
