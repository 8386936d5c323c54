"""Traffic sent from threads while a cell does something else (draws a live graph, say).

    with background_load(mesh, qps=8, duration=20) as load:
        live.run(seconds=20)
    load.frame          # one row per request: start, status, version, latency_ms, error

The load always ends by itself: after `duration` seconds (at most `MAX_DURATION`), when the
`with` block ends, or on `stop()`.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pandas as pd

from ..backend import Backend
from ..traffic import BOOKINFO_PATH, classify, login

__all__ = ["MAX_DURATION", "BackgroundLoad", "background_load"]

MAX_DURATION = 300.0
COLUMNS = ["start", "status", "version", "latency_ms", "error"]


class BackgroundLoad:
    """`qps` GET requests a second over `connections` threads, for `duration` seconds.

    Through the ingress gateway by default; `from_pod=` sends from inside that pod (through
    its sidecar), `path` then being a full URL such as `http://httpbin:8000/get`. With
    `user`, each connection signs in to Bookinfo first, as `traffic.send(user=...)` does.
    """

    def __init__(self, mesh: Backend, path: str = BOOKINFO_PATH, *, qps: float = 10.0,
                 duration: float = 20.0, connections: int = 2, user: str | None = None,
                 headers: dict[str, str] | None = None, from_pod: str | None = None,
                 namespace: str | None = None, timeout: float = 10.0):
        if not 0 < duration <= MAX_DURATION:
            raise ValueError(f"duration must be between 0 and {MAX_DURATION:g} s, got "
                             f"{duration}: a background load always ends by itself")
        if qps <= 0:
            raise ValueError(f"qps must be positive, got {qps}")
        if connections < 1:
            raise ValueError(f"connections must be at least 1, got {connections}")
        self.qps, self.duration, self.connections = float(qps), float(duration), connections
        self.user, self.headers, self.timeout = user, headers, timeout
        if from_pod:
            proxy = mesh.proxy_url(from_pod, namespace or "default")
            if proxy is None:
                raise NotImplementedError(f"backend {mesh.name} cannot send from inside a pod")
            self.proxy: str | None = proxy
            self.base = ""
        else:
            host, port = mesh.ingress_address()
            self.proxy, self.base = None, f"http://{host}:{port}"
        self.url = self.base + path
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._next = 0
        self._rows: list[dict[str, Any]] = []
        self._threads: list[threading.Thread] = []
        self.begin = 0.0

    def __enter__(self) -> BackgroundLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> BackgroundLoad:
        """Start sending (once)."""
        if self._threads:
            return self
        self.begin = time.monotonic()
        self._threads = [threading.Thread(target=self._worker, name=f"background-load-{i}",
                                          daemon=True) for i in range(self.connections)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float | None = None) -> pd.DataFrame:
        """Stop sending, wait for requests in flight; what was sent."""
        self._stop.set()
        return self.join(timeout)

    def join(self, timeout: float | None = None) -> pd.DataFrame:
        """Wait until the load ends by itself (or `timeout`); what was sent."""
        wait = self.duration + self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return self.frame

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    @property
    def frame(self) -> pd.DataFrame:
        """One row per request so far: start (s after the first), status, version, latency."""
        with self._lock:
            rows = list(self._rows)
        return pd.DataFrame(rows, columns=COLUMNS).sort_values("start").reset_index(drop=True)

    def _due(self) -> float | None:
        """When this thread's next request is due, or None when the load is over."""
        with self._lock:
            j = self._next
            self._next += 1
        offset = j / self.qps
        return None if offset >= self.duration else self.begin + offset

    def _worker(self) -> None:
        with httpx.Client(proxy=self.proxy, timeout=self.timeout, trust_env=False) as client:
            if self.user:
                login(client, self.base, self.user)
            while not self._stop.is_set() and (due := self._due()) is not None:
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    return
                start = time.monotonic()
                response, error = None, ""
                try:
                    response = client.get(self.url, headers=self.headers)
                except httpx.HTTPError as exc:
                    error = type(exc).__name__
                row = {"start": start - self.begin,
                       "status": response.status_code if response is not None else 0,
                       "version": classify(response),
                       "latency_ms": round((time.monotonic() - start) * 1000, 2),
                       "error": error}
                with self._lock:
                    self._rows.append(row)


def background_load(mesh: Backend, path: str = BOOKINFO_PATH, *, qps: float = 10.0,
                    duration: float = 20.0, connections: int = 2, user: str | None = None,
                    headers: dict[str, str] | None = None, from_pod: str | None = None,
                    namespace: str | None = None) -> BackgroundLoad:
    """Start sending `qps` requests a second for `duration` seconds in the background."""
    return BackgroundLoad(mesh, path, qps=qps, duration=duration, connections=connections,
                          user=user, headers=headers, from_pod=from_pod,
                          namespace=namespace).start()
