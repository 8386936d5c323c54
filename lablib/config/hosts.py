"""How Istio names services: FQDNs, which Service or ServiceEntry a host means, port protocols."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from .model import Resource
from .store import ConfigStore

__all__ = [
    "DOMAIN_SUFFIX",
    "HTTP_PROTOCOLS",
    "canonical_host",
    "exported_to",
    "fqdn",
    "host_matches",
    "is_ip",
    "port_protocol",
    "resolve_host",
    "service_fqdn",
]

DOMAIN_SUFFIX = "svc.cluster.local"
HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC", "GRPC-WEB"})

# Port name prefixes and appProtocol values Istio recognises (protocol selection docs).
_PROTOCOLS = {
    "http": "HTTP", "http2": "HTTP2", "https": "HTTPS", "grpc": "GRPC", "grpc-web": "GRPC-WEB",
    "tcp": "TCP", "tls": "TLS", "mongo": "MONGO", "redis": "REDIS", "mysql": "MYSQL",
    "udp": "UDP", "kubernetes.io/h2c": "HTTP2", "kubernetes.io/ws": "HTTP",
    "kubernetes.io/wss": "HTTPS",
}


def fqdn(host: str, namespace: str) -> str:
    """A dot-free short name seen from `namespace` made fully qualified, as Istio does.

    `reviews` in `bookinfo-test` is `reviews.bookinfo-test.svc.cluster.local`; names with a
    dot, `*` and IP addresses are left alone (use `canonical_host` to also resolve
    `reviews.bookinfo-test` against the Services in a store).
    """
    if not host or host == "*" or "." in host or is_ip(host):
        return host
    return f"{host}.{namespace}.{DOMAIN_SUFFIX}"


def service_fqdn(service: Resource) -> str:
    """`reviews.bookinfo-test.svc.cluster.local` for Service bookinfo-test/reviews."""
    return f"{service.name}.{service.namespace}.{DOMAIN_SUFFIX}"


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_matches(pattern: str, host: str) -> bool:
    """Istio host matching: `*` matches all, `*.example.com` matches `a.example.com`."""
    if pattern == "*" or pattern == host:
        return True
    return pattern.startswith("*.") and host.endswith(pattern[1:])


def _service(store: ConfigStore, host: str, from_namespace: str) -> Resource | None:
    parts = host.split(".")
    if len(parts) == 1:  # short names only reach Services of the caller's own namespace
        return store.get("Service", from_namespace, host)
    suffix = ".".join(parts[2:])
    if suffix in ("", "svc", DOMAIN_SUFFIX):
        return store.get("Service", parts[1], parts[0])
    return None


def exported_to(resource: Resource, namespace: str) -> bool:
    """Whether a resource's `exportTo` (`*`, `.`, namespaces; all when unset) covers
    `namespace`."""
    export = resource.spec.get("exportTo")
    if not isinstance(export, list) or not export or "*" in export:
        return True
    return namespace in export or ("." in export and resource.namespace == namespace)


def resolve_host(store: ConfigStore, host: str, from_namespace: str) -> Resource | None:
    """The Service or ServiceEntry that `host` means to a workload in `from_namespace`.

    A Service `reviews` in `bookinfo-test` answers to `reviews` (from its own namespace),
    `reviews.bookinfo-test`, `reviews.bookinfo-test.svc` and the full FQDN; a ServiceEntry
    answers to its hosts (short ones qualified with its namespace, `*.x` wildcards too).
    """
    if not host or "*" in host:
        return None
    service = _service(store, host, from_namespace)
    if service is not None:
        return service
    wanted = fqdn(host, from_namespace)
    for entry in store.list("ServiceEntry"):
        if not exported_to(entry, from_namespace):
            continue
        for pattern in entry.spec.get("hosts") or []:
            if isinstance(pattern, str) and host_matches(fqdn(pattern, entry.namespace), wanted):
                return entry
    return None


def canonical_host(store: ConfigStore, host: str, from_namespace: str) -> str:
    """The name Istio keys a host by: a Service's FQDN if `host` is one, else `fqdn(host)`."""
    target = resolve_host(store, host, from_namespace)
    if target is not None and target.kind == "Service":
        return service_fqdn(target)
    return fqdn(host, from_namespace)


def port_protocol(port: Mapping[str, Any]) -> str:
    """Istio's protocol for a Service port: appProtocol, else the name prefix (`http-web`
    is HTTP); "" when Istio would have to sniff it."""
    if port.get("protocol") == "UDP":
        return "UDP"
    app = port.get("appProtocol")
    if isinstance(app, str) and app:
        return _PROTOCOLS.get(app.lower(), "")
    name = str(port.get("name") or "").lower()
    if name.startswith("grpc-web"):
        return "GRPC-WEB"
    return _PROTOCOLS.get(name.split("-")[0], "")
