"""Plain TCP traffic, as `nc` sends it: one connection per request, one line each way."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import TYPE_CHECKING, Any

import pandas as pd

from .backend import Backend
from .traffic import check_shares

if TYPE_CHECKING:
    from .widgets import WeightsPanel

__all__ = ["check_tcp_shares", "nc_command", "send_tcp", "tcp_echo_route", "tcp_proxy_clusters",
           "weights_slider"]

# The first word of tcp-echo's answers, by the subset (version label) that answers with it.
TCP_ECHO_SUBSETS = {"one": "v1", "two": "v2"}


def _exchange(host: str, port: int, line: bytes, timeout: float) -> str:
    """Connect, send one line, return the first line that comes back ('' if none)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(line)
        with sock.makefile("rb") as stream:
            return stream.readline().decode(errors="replace").rstrip("\r\n")


def send_tcp(host: str, port: int, n: int = 20, message: str = "hello", timeout: float = 5.0,
             concurrency: int = 1) -> pd.DataFrame:
    """Open `n` TCP connections, each sending `message` and reading one answer line.

    One row per connection: answer, version (the answer's first word, `one` or `two` for
    tcp-echo), latency_ms and error (`closed` when the connection ended without an answer).
    """
    line = message.rstrip("\n").encode() + b"\n"

    def one(i: int) -> dict[str, Any]:
        start = time.perf_counter()
        answer, error = "", ""
        try:
            answer = _exchange(host, port, line, timeout)
            if not answer:
                error = "closed"
        except OSError as exc:
            error = type(exc).__name__
        elapsed = (time.perf_counter() - start) * 1000
        version = answer.split(maxsplit=1)[0] if answer else "error"
        return {"request": i, "start": start, "answer": answer, "version": version,
                "latency_ms": round(elapsed, 2), "error": error}

    if concurrency <= 1:
        rows = [one(i) for i in range(n)]
    else:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            rows = list(pool.map(one, range(n)))
    frame = pd.DataFrame(rows, columns=["request", "start", "answer", "version", "latency_ms",
                                        "error"])
    if not frame.empty:
        frame["start"] = frame["start"] - frame["start"].min()
    return frame


def check_tcp_shares(frame: pd.DataFrame, expected: dict[str, float],
                     z: float = 4.0) -> pd.DataFrame:
    """Assert the answers' first words (`one`, `two`) split as `expected`, within the bound."""
    return check_shares(frame, expected, column="version", z=z)


@cache
def _nc_waits_after_input() -> bool:
    """Whether this machine's `nc` is OpenBSD netcat, which keeps the connection open after
    its input ends unless given -N."""
    if shutil.which("nc") is None:
        return False
    result = subprocess.run(["nc", "-h"], capture_output=True, text=True, check=False)
    return "OpenBSD netcat" in result.stdout + result.stderr


def nc_command(mesh: Backend, host: str, port: int) -> list[str]:
    """The argv of Istio's `sh -c "(date; sleep 1) | nc HOST PORT"`, for `mesh.exec`.

    The sample's busybox `nc` hangs up once `date; sleep 1` ends. The local backend runs the
    command on this machine, whose OpenBSD `nc` would wait for the server forever: `-N` makes
    it hang up the same way.
    """
    flag = "-N " if mesh.name == "local" and _nc_waits_after_input() else ""
    return ["sh", "-c", f"(date; sleep 1) | nc {flag}{host} {port}"]


def tcp_proxy_clusters(mesh: Backend, pod: str, namespace: str, listener: str) -> pd.DataFrame:
    """The clusters a listener's `tcp_proxy` sends connections to, with their weights, as
    `istioctl proxy-config listeners POD.NS -o json` shows them."""
    dump = json.loads(mesh.proxy_admin(pod, namespace, "config_dump"))
    rows = []
    for config in dump["configs"]:
        for item in config.get("dynamic_listeners", []):
            found = (item.get("active_state") or {}).get("listener") or {}
            if found.get("name") != listener:
                continue
            for chain in found.get("filter_chains", []):
                for f in chain.get("filters", []):
                    proxy = f.get("typed_config", {})
                    if "cluster" in proxy:
                        rows.append({"cluster": proxy["cluster"], "weight": 100})
                    for c in (proxy.get("weighted_clusters") or {}).get("clusters", []):
                        rows.append({"cluster": c["name"], "weight": int(c.get("weight", 0))})
    return pd.DataFrame(rows, columns=["cluster", "weight"])


def tcp_echo_route(weights: dict[str, int]) -> dict[str, Any]:
    """The VirtualService of `tcp-echo-20-v2.yaml` with other weights, e.g. `{"v1": 50, "v2": 50}`:
    the gateway's port 31400 split over tcp-echo's subsets."""
    # Subsets at 0% are left out: they get no connections either way, and Envoy's tcp_proxy
    # refuses a weighted cluster of weight 0 (Istio drops them when it translates).
    route = [{"destination": {"host": "tcp-echo", "port": {"number": 9000}, "subset": subset},
              "weight": int(weight)} for subset, weight in weights.items() if weight]
    return {"apiVersion": "networking.istio.io/v1alpha3", "kind": "VirtualService",
            "metadata": {"name": "tcp-echo"},
            "spec": {"hosts": ["*"], "gateways": ["tcp-echo-gateway"],
                     "tcp": [{"match": [{"port": 31400}], "route": route}]}}


def _route_weights(virtual_service: dict[str, Any]) -> dict[str, int]:
    """The weight per subset of a VirtualService's first tcp rule (absent subsets are 0)."""
    route = ((virtual_service.get("spec") or {}).get("tcp") or [{}])[0].get("route") or []
    weights = {s: 0 for s in TCP_ECHO_SUBSETS.values()}
    for d in route:
        weights[str(d["destination"].get("subset"))] = int(d.get("weight", 100))
    return weights


def weights_slider(mesh: Backend, namespace: str, burst: int = 100) -> WeightsPanel:
    """Sliders for tcp-echo's v1/v2 weights at the gateway's TCP port: each move applies the
    VirtualService and opens `burst` connections; the chart shows which subset answered."""
    from .widgets import WeightsPanel

    host, port = mesh.ingress_address("tcp")

    def send(n: int) -> pd.DataFrame:
        frame = send_tcp(host, port, n)
        frame["subset"] = frame["version"].map(TCP_ECHO_SUBSETS).fillna(frame["version"])
        return frame

    current = [vs for vs in mesh.get("virtualservice", namespace=namespace)
               if vs["metadata"]["name"] == "tcp-echo"]
    return WeightsPanel(mesh, host="tcp-echo", namespace=namespace,
                        subsets=tuple(TCP_ECHO_SUBSETS.values()), burst=burst, send=send,
                        vs_builder=tcp_echo_route, column="subset",
                        initial=_route_weights(current[0]) if current else None)
