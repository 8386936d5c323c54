"""Who may call what: requests sent from inside pods, for the authorization labs.

    access.request(mesh, "bookinfo-test/sleep", "http://productpage:9080/productpage")  # -> 200
    access.matrix(mesh, callers, targets)         # a DataFrame of status codes
    access.settle(lambda: access.request(...), 403)  # wait until a new policy is in force

Requests run `curl` in the caller pod's `sleep` (or first) container through the backend's
`exec`, so they leave through that pod's sidecar exactly as `kubectl exec ... curl` does.
A code of 0 means no HTTP answer at all (the connection was refused or reset).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import pandas as pd

from .backend import Backend

__all__ = ["request", "matrix", "settle", "style_matrix"]

T = TypeVar("T")
SETTLE_SECONDS = 30.0
# Longer than the local proxies' drain time (1 s): connections opened under the old config
# are gone by then. A policy reaches new connections at once.
HOLD_SECONDS = 1.5


def _caller(caller: str) -> tuple[str, str]:
    """`namespace/app` -> (namespace, app)."""
    namespace, _, app = caller.partition("/")
    return namespace, app or "sleep"


def request(mesh: Backend, caller: str, url: str, *, method: str = "GET",
         headers: Mapping[str, str] | None = None, body: bool = False) -> Any:
    """The status code of one request from the pod `caller` (`namespace/app`) to `url`;
    with `body=True`, (code, body text)."""
    namespace, app = _caller(caller)
    pod = mesh.pod_name({"app": app}, namespace)
    argv = ["curl", "-s", "--max-time", "5", "-X", method, "-w", "\n%{http_code}"]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    result = mesh.exec(pod, [*argv, url], namespace=namespace, container=app)
    text, _, code = result.stdout.rpartition("\n")
    status = int(code) if code.strip().isdigit() else 0
    return (status, text) if body else status


def matrix(mesh: Backend, callers: Sequence[str], targets: Mapping[str, str], *,
           method: str = "GET") -> pd.DataFrame:
    """Status codes of every caller (rows) to every target (columns, name -> URL)."""
    rows = {caller: {name: request(mesh, caller, url, method=method)
                     for name, url in targets.items()} for caller in callers}
    return pd.DataFrame.from_dict(rows, orient="index")


def style_matrix(frame: pd.DataFrame) -> Any:
    """The matrix green where the call got through (2xx), red where it was refused."""
    def color(code: int) -> str:
        return "background-color: #b7e4c7" if 200 <= code < 300 else \
            "background-color: #f4a3a3"
    return frame.style.map(color)


def settle(check: Callable[[], T], expected: T, timeout: float = SETTLE_SECONDS,
           hold: float = HOLD_SECONDS) -> T:
    """Repeat `check()` until it has returned `expected` for `hold` seconds in a row (or the
    timeout passes) and return the last result: Istio promises that a policy takes effect,
    not at which millisecond, and connections opened before it drain for a moment."""
    deadline = time.monotonic() + timeout
    since: float | None = None
    while True:
        result = check()
        now = time.monotonic()
        if result == expected:
            since = now if since is None else since
            if now - since >= hold:
                return result
        else:
            since = None
        if now > deadline:
            return result
        time.sleep(0.2)
