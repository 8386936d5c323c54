"""What a curl typed into a pod reaches when no sidecar captures it: in a pod without a
sidecar, or in the istio-proxy container (whose traffic Istio's iptables rules leave alone).

On a cluster such a curl resolves the Service name with cluster DNS and connects straight to
an endpoint (kube-proxy's DNAT), and `127.0.0.1` is the pod itself. Locally every pod shares
127.0.0.1, so the command gets curl's own `--connect-to` to the same places: the endpoint's
pod port (a STRICT sidecar there resets plaintext, as on a cluster: curl exits 56) and, for
`127.0.0.1:PORT` or `--resolve HOST:PORT:127.0.0.1`, the pod's app on that container port.

    direct_curl(["curl", "http://httpbin.foo:8000/ip"], endpoint, {"80": 40123})
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import urlsplit

__all__ = ["LOCALHOST", "PROXY_VARIABLES", "direct_curl", "is_curl", "service_of",
           "without_proxies"]

LOCALHOST = ("127.0.0.1", "localhost")
PROXY_VARIABLES = frozenset({"http_proxy", "https_proxy", "all_proxy", "no_proxy"})
DEFAULT_PORTS = {"http": 80, "https": 443}
# (host, port) -> the loopback port of one endpoint, None when the host is no Service.
Endpoint = Callable[[str, int], "int | None"]


def service_of(host: str, namespace: str) -> tuple[str, str] | None:
    """(name, namespace) of the Service a pod in `namespace` reaches as `host` through
    cluster DNS (`reviews`, `reviews.ns`, `reviews.ns.svc`, `reviews.ns.svc.cluster.local`)."""
    parts = host.rstrip(".").split(".")
    if len(parts) == 1:
        return parts[0], namespace
    if len(parts) == 2 or parts[2:] in (["svc"], ["svc", "cluster", "local"]):
        return parts[0], parts[1]
    return None


def _target(url: str) -> tuple[str, int] | None:
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.hostname, parts.port or DEFAULT_PORTS[parts.scheme]


def direct_curl(argv: Sequence[str], endpoint: Endpoint,
                app_ports: Mapping[str, int]) -> list[str]:
    """`argv` (a curl command) with each Service URL and each pod-local address turned into
    a `--connect-to` to where it leads locally, and no proxy."""
    out = [argv[0]]
    reroutes: list[str] = []
    args = list(argv[1:])
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--resolve" and i + 1 < len(args):
            name, _, rest = args[i + 1].partition(":")
            number, _, address = rest.partition(":")
            local = app_ports.get(number) if address in LOCALHOST else None
            if local is not None:  # 127.0.0.1 inside the pod: its own app
                reroutes += ["--connect-to", f"{name}:{number}:127.0.0.1:{local}"]
                i += 2
                continue
            out += [arg, args[i + 1]]
            i += 2
            continue
        target = _target(arg) if "://" in arg else None
        if target is not None:
            host, port = target
            local = (app_ports.get(str(port)) if host in LOCALHOST else endpoint(host, port))
            if local is not None:
                reroutes += ["--connect-to", f"{host}:{port}:127.0.0.1:{local}"]
        out.append(arg)
        i += 1
    return [out[0], "--noproxy", "*", *reroutes, *out[1:]]


def without_proxies(env: Mapping[str, str]) -> dict[str, str]:
    """`env` without proxy settings: the istio-proxy container has none of the app's."""
    return {k: v for k, v in env.items() if k.lower() not in PROXY_VARIABLES}


def is_curl(argv: Sequence[str]) -> bool:
    return bool(argv) and os.path.basename(argv[0]) == "curl"
