"""Requests a grader sends to see what the mesh does, through the Backend interface only:
the ingress gateway's address, and `kubectl exec POD -- curl` from a client pod. They work
the same on the local mesh and on a cluster."""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from ..backend import Backend
from ..errors import BackendError

__all__ = ["Reply", "from_ingress", "from_pod", "from_pod_concurrently"]

# `curl -w` appends the status and the time on a line of their own after the body.
STATUS_MARK = "\n@@lab-status "


@dataclass(frozen=True)
class Reply:
    """One request's outcome: status 0 when no HTTP response came (reset, refused, timeout)."""

    status: int
    body: str
    seconds: float


def from_ingress(mesh: Backend, path: str, host: str | None = None, user: str | None = None,
                 timeout: float = 15.0) -> Reply:
    """GET `path` at the ingress gateway, with a Host header and signed in as `user` if given."""
    address, port = mesh.ingress_address()
    base = f"http://{address}:{port}"
    headers = {"Host": host} if host else {}
    start = time.perf_counter()
    with httpx.Client(timeout=timeout, trust_env=False) as client:
        try:
            if user:
                client.post(f"{base}/login", data={"username": user, "passwd": "password"},
                            headers=headers, follow_redirects=False)
            response = client.get(base + path, headers=headers)
        except httpx.HTTPError as exc:
            return Reply(0, type(exc).__name__, time.perf_counter() - start)
    return Reply(response.status_code, response.text, time.perf_counter() - start)


def from_pod(mesh: Backend, app: str, namespace: str, url: str, timeout: float = 15.0) -> Reply:
    """`kubectl exec deploy/APP -n NS -- curl URL`: the request leaves through that pod's
    sidecar, if it has one, exactly as the application's own calls do."""
    pod = mesh.pod_name({"app": app}, namespace)
    command = ["curl", "-s", "--max-time", f"{timeout:g}", "-w",
               STATUS_MARK + "%{http_code} %{time_total}", url]
    try:
        done = mesh.exec(pod, command, namespace=namespace, container=app,
                         timeout=timeout + 10)
    except BackendError as exc:
        return Reply(0, str(exc), 0.0)
    body, _, tail = done.stdout.rpartition(STATUS_MARK)
    code, _, seconds = tail.strip().partition(" ")
    try:
        return Reply(int(code), body, float(seconds))
    except ValueError:
        return Reply(0, done.stdout + done.stderr, 0.0)


def from_pod_concurrently(mesh: Backend, app: str, namespace: str, urls: Sequence[str],
                          timeout: float = 15.0) -> list[Reply]:
    """Several `from_pod` requests at once, one client process each."""
    with ThreadPoolExecutor(max_workers=len(urls)) as pool:
        return list(pool.map(lambda url: from_pod(mesh, app, namespace, url, timeout), urls))
