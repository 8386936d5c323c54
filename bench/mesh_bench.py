"""Measurements through the local mesh (meshd, real Envoy gateways and sidecars)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

import lablib
from lablib.backend import Backend

from .stats import wait_until

BOOKINFO_NS = "bookinfo-test"
HTTPBIN_NS = "httpbin-test"
SAMPLES = "samples"


@dataclass
class BringUp:
    """One bring-up: seconds to the first 200 and how many processes the mesh ran."""

    seconds: float
    envoys: int
    python_processes: int


@contextmanager
def isolated_mesh() -> Iterator[list[Backend]]:
    """A fresh LAB_STATE_DIR for one mesh; uninstalls whatever was started, then removes it.

    Yields a list the caller puts its backend into, so cleanup happens even when
    connect() itself is what is being timed.
    """
    root = tempfile.mkdtemp(prefix="lb-")  # short: meshd's Unix socket path has a length limit
    previous = os.environ.get("LAB_STATE_DIR")
    os.environ["LAB_STATE_DIR"] = root
    started: list[Backend] = []
    try:
        yield started
    finally:
        for mesh in started:
            mesh.uninstall()
        if previous is None:
            os.environ.pop("LAB_STATE_DIR", None)
        else:
            os.environ["LAB_STATE_DIR"] = previous
        shutil.rmtree(root, ignore_errors=True)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5, trust_env=False).status_code == 200
    except httpx.HTTPError:
        return False


def bring_up(started: list[Backend]) -> BringUp:
    """connect() to the first 200 from /productpage through the ingress gateway."""
    start = time.perf_counter()
    mesh = lablib.connect()
    started.append(mesh)
    mesh.install()
    mesh.create_namespace(BOOKINFO_NS, {"istio-injection": "enabled"})
    mesh.apply(f"{SAMPLES}/bookinfo/platform/kube/bookinfo.yaml", namespace=BOOKINFO_NS)
    mesh.apply(f"{SAMPLES}/bookinfo/networking/bookinfo-gateway.yaml", namespace=BOOKINFO_NS)
    host, port = mesh.ingress_address()
    url = f"http://{host}:{port}/productpage"
    wait_until(lambda: _ok(url), 60, "first 200 from /productpage", step=0.005)
    seconds = time.perf_counter() - start
    processes = mesh.processes()  # type: ignore[attr-defined]
    envoys = sum(1 for p in processes if p["name"].endswith(".istio-proxy"))
    return BringUp(seconds, envoys, len(processes) - envoys)


def reviews_split(v1: int) -> dict[str, Any]:
    """The reviews VirtualService sending `v1`% to v1 and the rest to v3."""
    return {"apiVersion": "networking.istio.io/v1alpha3", "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": BOOKINFO_NS},
            "spec": {"hosts": ["reviews"], "http": [{"route": [
                {"destination": {"host": "reviews", "subset": "v1"}, "weight": v1},
                {"destination": {"host": "reviews", "subset": "v3"}, "weight": 100 - v1}]}]}}


def apply_ms(mesh: Backend, changes: int) -> list[float]:
    """Milliseconds each weight change on reviews takes from apply() to every Envoy's ACK."""
    mesh.apply(f"{SAMPLES}/bookinfo/networking/destination-rule-all.yaml", namespace=BOOKINFO_NS)
    mesh.apply(reviews_split(50))
    result = []
    for i in range(changes):
        body = reviews_split(80 if i % 2 == 0 else 20)
        start = time.perf_counter()
        mesh.apply(body)
        result.append((time.perf_counter() - start) * 1000)
    return result


def authorization_policy(i: int, version: int = 0) -> dict[str, Any]:
    """The i-th of the bench's AuthorizationPolicies: ALLOW GET on a path, by principal."""
    apps = ("productpage", "details", "reviews", "ratings")
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": f"bench-{i}", "namespace": BOOKINFO_NS},
            "spec": {"selector": {"matchLabels": {"app": apps[i % len(apps)]}},
                     "rules": [{"from": [{"source": {"principals": [
                         f"cluster.local/ns/{BOOKINFO_NS}/sa/client-{i}"]}}],
                         "to": [{"operation": {"methods": ["GET"],
                                               "paths": [f"/bench/{i}/{version}/*"]}}]},
                               {}]}}


def authz_apply_ms(mesh: Backend, policies: int, changes: int) -> list[float]:
    """Milliseconds from apply() to every Envoy's ACK for a change to one
    AuthorizationPolicy while `policies` of them are in the mesh (each also allows all,
    so Bookinfo keeps working); the policies are deleted afterwards."""
    mesh.apply([authorization_policy(i) for i in range(policies)])
    result = []
    try:
        for i in range(changes):
            start = time.perf_counter()
            mesh.apply(authorization_policy(0, version=i + 1))
            result.append((time.perf_counter() - start) * 1000)
    finally:
        mesh.delete([authorization_policy(i) for i in range(policies)])
    return result


def httpbin_gateway() -> list[dict[str, Any]]:
    """A Gateway and VirtualService exposing httpbin on the ingress gateway's port 8080."""
    gateway = {"apiVersion": "networking.istio.io/v1alpha3", "kind": "Gateway",
               "metadata": {"name": "httpbin-gateway", "namespace": HTTPBIN_NS},
               "spec": {"selector": {"istio": "ingressgateway"}, "servers": [{
                   "port": {"number": 8080, "name": "http", "protocol": "HTTP"},
                   "hosts": ["*"]}]}}
    service = {"apiVersion": "networking.istio.io/v1alpha3", "kind": "VirtualService",
               "metadata": {"name": "httpbin", "namespace": HTTPBIN_NS},
               "spec": {"hosts": ["*"], "gateways": ["httpbin-gateway"], "http": [{
                   "route": [{"destination": {"host": "httpbin", "port": {"number": 8000}}}]}]}}
    return [gateway, service]


def deploy_httpbin(mesh: Backend) -> str:
    """httpbin in an injected namespace behind the ingress gateway (Bookinfo's gateway removed);
    returns the /status/200 URL at the gateway."""
    mesh.delete(f"{SAMPLES}/bookinfo/networking/bookinfo-gateway.yaml", namespace=BOOKINFO_NS)
    mesh.create_namespace(HTTPBIN_NS, {"istio-injection": "enabled"})
    mesh.apply(f"{SAMPLES}/httpbin/httpbin.yaml", namespace=HTTPBIN_NS)
    mesh.apply(httpbin_gateway())
    host, port = mesh.ingress_address()
    url = f"http://{host}:{port}/status/200"
    wait_until(lambda: _ok(url), 30, "first 200 from httpbin through the gateway", step=0.01)
    return url
