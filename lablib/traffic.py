"""Sending requests and reading what the traffic did, as pandas DataFrames."""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import httpx
import pandas as pd

from .backend import Backend
from .errors import BackendError
from .progress import Progress

BOOKINFO_PATH = "/productpage"


def classify(response: httpx.Response | None) -> str:
    """Which reviews version answered a Bookinfo page (or `-` for other apps)."""
    if response is None:
        return "error"
    if "text/html" not in response.headers.get("content-type", ""):
        return "-"
    from .apps.bookinfo import classify as classify_html

    return str(classify_html(response.text))


def _client(mesh: Backend, from_pod: str | None, namespace: str | None,
            timeout: float) -> tuple[httpx.Client, str]:
    """A client at the ingress gateway, or inside `from_pod` (through its sidecar)."""
    if from_pod:
        proxy = mesh.proxy_url(from_pod, namespace or "default")
        if proxy is None:
            raise NotImplementedError(f"backend {mesh.name} cannot send from inside a pod; "
                                      "use mesh.exec(pod, ['curl', ...])")
        return httpx.Client(proxy=proxy, timeout=timeout, trust_env=False), ""
    host, port = mesh.ingress_address()
    return httpx.Client(timeout=timeout, trust_env=False), f"http://{host}:{port}"


def login(client: httpx.Client, base: str, user: str) -> None:
    """Sign in to Bookinfo as `user` (any password), as the lab does in the browser."""
    client.post(f"{base}/login", data={"username": user, "passwd": "password"},
                follow_redirects=False)


def send(mesh: Backend, path: str = BOOKINFO_PATH, n: int = 20, *, concurrency: int = 1,
         user: str | None = None, headers: dict[str, str] | None = None,
         from_pod: str | None = None, namespace: str | None = None,
         timeout: float = 30.0) -> pd.DataFrame:
    """Send `n` GET requests; one row each: status, latency_ms, version (for Bookinfo), error.

    Through the ingress gateway by default; `from_pod=` sends from inside that pod, `path`
    then being a full URL such as `http://productpage:9080/productpage`. An interrupt stops
    the sending at once: no request is started after it.
    """
    client, base = _client(mesh, from_pod, namespace, timeout)

    def one(i: int) -> dict[str, Any]:
        start = time.perf_counter()
        response, error = None, ""
        try:
            response = client.get(base + path, headers=headers)
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        elapsed = (time.perf_counter() - start) * 1000
        return {"request": i, "start": start, "status": response.status_code if response else 0,
                "latency_ms": round(elapsed, 2), "version": classify(response), "error": error}

    with client, Progress("send", n, "requests") as bar:
        if user:
            login(client, base, user)
        if concurrency <= 1:
            rows = []
            for i in range(n):
                rows.append(one(i))
                bar.update(i + 1)
        else:
            pool = ThreadPoolExecutor(max_workers=concurrency)
            try:
                futures = [pool.submit(one, i) for i in range(n)]
                for done, _ in enumerate(as_completed(futures), start=1):
                    bar.update(done)
                rows = [f.result() for f in futures]
            finally:
                # On an interrupt: drop the queued requests; closing the client (leaving the
                # `with`) then ends those in flight.
                pool.shutdown(wait=False, cancel_futures=True)
    frame = pd.DataFrame(rows)
    frame["start"] = frame["start"] - frame["start"].min()
    return frame


def shares(frame: pd.DataFrame, column: str = "version") -> pd.Series:
    """The fraction of requests per value of `column` (e.g. reviews version)."""
    return frame[column].value_counts(normalize=True).sort_index()


def binomial_bound(p: float, n: int, z: float = 4.0) -> float:
    """Half-width of a z-sigma binomial interval, never below one request's worth."""
    return z * math.sqrt(max(p * (1 - p), 0.0) / n) + 1.0 / n


def check_shares(frame: pd.DataFrame, expected: dict[str, float], column: str = "version",
                 z: float = 4.0) -> pd.DataFrame:
    """Assert observed shares match `expected` within a binomial bound; returns the table."""
    n = len(frame)
    observed = shares(frame, column)
    rows = []
    for key in sorted(set(expected) | set(observed.index)):
        want = float(expected.get(key, 0.0))
        got = float(observed.get(key, 0.0))
        bound = binomial_bound(want, n, z)
        rows.append({column: key, "expected": want, "observed": round(got, 3),
                     "tolerance": round(bound, 3), "ok": abs(got - want) <= bound})
    table = pd.DataFrame(rows)
    bad = table[~table["ok"]]
    assert bad.empty, f"observed shares outside the binomial bound over {n} requests:\n{bad}"
    return table


def curl(mesh: Backend, pod: str, url: str, n: int = 1, *, namespace: str = "default",
         method: str = "GET", headers: dict[str, str] | None = None,
         show: tuple[str, ...] = ()) -> pd.DataFrame:
    """`kubectl exec POD -- curl URL`, `n` requests in one curl run, on either backend: one
    row per request with its `status`, `latency_ms` and each response header in `show`."""
    columns = ["%{http_code}", "%{time_total}", *(f"%header{{{h}}}" for h in show)]
    argv = ["curl", "-s", "-X", method, "-w", "\t".join(columns) + "\n"]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    for _ in range(n):
        argv += ["-o", "/dev/null", url]
    done = mesh.exec(pod, argv, namespace, timeout=30.0 + 5.0 * n)
    rows = []
    for line in done.stdout.splitlines():
        status, seconds, *values = line.split("\t")
        rows.append({"status": int(status), "latency_ms": round(float(seconds) * 1000, 2),
                     **dict(zip(show, values, strict=True))})
    if len(rows) != n:
        raise BackendError(f"curl in {pod} answered {len(rows)} of {n} requests: "
                           f"{done.stderr.strip() or done.stdout.strip()}")
    return pd.DataFrame(rows, columns=["status", "latency_ms", *show])
