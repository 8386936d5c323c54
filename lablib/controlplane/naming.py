"""Istio's names for things: FQDNs, cluster names, node ids."""

from __future__ import annotations

DOMAIN_SUFFIX = "svc.cluster.local"
# The route a plain HTTP request to a TCP Service port takes (see routes.opaque_tcp_route).
OPAQUE_TCP_ROUTE = "opaque_tcp"


def service_fqdn(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.{DOMAIN_SUFFIX}"


def outbound_cluster(port: int, subset: str, host_fqdn: str) -> str:
    """Istio's outbound cluster name: `outbound|9080|v1|reviews.ns.svc.cluster.local`."""
    return f"outbound|{port}|{subset}|{host_fqdn}"


def inbound_cluster(port: int) -> str:
    return f"inbound|{port}||"


def kube_cluster(port: int, host_fqdn: str) -> str:
    """What kube-proxy gives a workload without a sidecar: every endpoint, no Istio rules."""
    return f"kube|{port}||{host_fqdn}"


def host_aliases(name: str, namespace: str, port: int, client_namespace: str | None,
                 cluster_ip: str = "") -> list[str]:
    """Authorities that reach a Service port: short name (same namespace only), ns, svc, FQDN,
    and its cluster IP (as Istio's outbound virtual hosts list it).

    The forward-proxy listener sees the port only in the authority, so each name carries it;
    port 80 is also reachable without one.
    """
    names = [service_fqdn(name, namespace), f"{name}.{namespace}.svc", f"{name}.{namespace}"]
    if client_namespace in (None, namespace):
        names.append(name)
    if cluster_ip:
        names.append(cluster_ip)
    domains = [f"{n}:{port}" for n in names]
    if port == 80:
        domains += names
    return domains


def node_id(kind: str, pod: str, namespace: str) -> str:
    """Istio's node id: `sidecar~127.0.0.1~POD.NS~NS.svc.cluster.local`."""
    return f"{kind}~127.0.0.1~{pod}.{namespace}~{namespace}.{DOMAIN_SUFFIX}"
