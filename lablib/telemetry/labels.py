"""Istio's standard metric labels, derived from one access-log entry of one proxy.

Istio's stats extension fills these labels from the proxy's own metadata and from its peer's
(metadata exchange). Here a proxy's access-log entry names its peer instead:
- a client sidecar or gateway (`reporter="source"`) sent the request to `upstream_host`, an
  endpoint port the topology maps to a workload, through `upstream_cluster`
  (`outbound|9080|v1|reviews.ns.svc.cluster.local`, which names the Service);
- a server sidecar (`reporter="destination"`) got it from the proxy named in
  `peer_metadata_id` (the `x-envoy-peer-metadata-id` header every client proxy adds, as
  Istio's do) or, without one, from the workload whose SPIFFE identity is `peer_uri_san`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..controlplane.naming import OPAQUE_TCP_ROUTE
from .topology import UNKNOWN, ProxyInfo, Topology, WorkloadInfo

__all__ = [
    "HTTP_LABELS", "TCP_LABELS", "Derived", "derive", "is_tcp", "reporter_of",
]

CLUSTER_NAME = "Kubernetes"  # what `global.multiCluster.clusterName` defaults to

# The label names Istio's Prometheus series carry, in Istio's order.
HTTP_LABELS = (
    "reporter",
    "source_workload", "source_canonical_service", "source_canonical_revision",
    "source_workload_namespace", "source_principal", "source_app", "source_version",
    "source_cluster",
    "destination_workload", "destination_workload_namespace", "destination_principal",
    "destination_app", "destination_version", "destination_service",
    "destination_canonical_service", "destination_canonical_revision",
    "destination_service_name", "destination_service_namespace", "destination_cluster",
    "request_protocol", "response_code", "grpc_response_status", "response_flags",
    "connection_security_policy",
)
# TCP series have no response or gRPC status.
TCP_LABELS = tuple(n for n in HTTP_LABELS if n not in ("response_code", "grpc_response_status"))


@dataclass(frozen=True)
class Derived:
    """What one access-log entry adds to the metrics."""

    labels: dict[str, str]
    tcp: bool
    duration_ms: float
    request_bytes: float
    response_bytes: float


def _port(address: Any) -> int | None:
    """The port of `127.0.0.1:1234`, else None."""
    if not isinstance(address, str) or ":" not in address:
        return None
    try:
        return int(address.rsplit(":", 1)[1])
    except ValueError:
        return None


def _text(value: Any) -> str:
    """A log value as text; Envoy writes null (or `-`) for what it does not know."""
    return "" if value is None or value == "-" else str(value)


def is_tcp(entry: Mapping[str, Any]) -> bool:
    """A TCP proxy's entry (no HTTP protocol), a CONNECT tunnel through the HTTP proxy, or a
    plain HTTP request the proxy passed to a TCP Service port."""
    return not _text(entry.get("protocol")) or _text(entry.get("method")) == "CONNECT" \
        or _text(entry.get("route_name")) == OPAQUE_TCP_ROUTE


def reporter_of(proxy: ProxyInfo, entry: Mapping[str, Any]) -> str:
    """`source` for a gateway and for a sidecar's outbound traffic, else `destination`."""
    if proxy.kind != "sidecar":
        return "source"
    if proxy.outbound_port and _port(entry.get("downstream_local_address")) == \
            proxy.outbound_port:
        return "source"
    return "source" if _text(entry.get("upstream_cluster")).startswith("outbound|") \
        else "destination"


def _workload_labels(side: str, w: WorkloadInfo | None) -> dict[str, str]:
    if w is None:
        return {f"{side}_workload": UNKNOWN, f"{side}_canonical_service": UNKNOWN,
                f"{side}_canonical_revision": "latest", f"{side}_workload_namespace": UNKNOWN,
                f"{side}_app": UNKNOWN, f"{side}_version": UNKNOWN,
                f"{side}_cluster": UNKNOWN}
    return {f"{side}_workload": w.name, f"{side}_canonical_service": w.canonical_service,
            f"{side}_canonical_revision": w.canonical_revision,
            f"{side}_workload_namespace": w.namespace, f"{side}_app": w.app,
            f"{side}_version": w.version, f"{side}_cluster": CLUSTER_NAME}


def _service_labels(fqdn: str, name: str, namespace: str) -> dict[str, str]:
    return {"destination_service": fqdn or UNKNOWN, "destination_service_name": name or UNKNOWN,
            "destination_service_namespace": namespace or UNKNOWN}


def _authority_host(entry: Mapping[str, Any]) -> str:
    return _text(entry.get("authority")).rsplit(":", 1)[0]


def _outbound_service(entry: Mapping[str, Any]) -> dict[str, str]:
    """The Service from `outbound|9080|v1|reviews.ns.svc.cluster.local`, an external host
    from `outbound|443||edition.cnn.com` (its own name), Istio's PassthroughCluster and
    BlackHoleCluster (the `block_all` route's 502 too) by name, else the authority."""
    cluster = _text(entry.get("upstream_cluster"))
    if _text(entry.get("route_name")) == "block_all":
        cluster = "BlackHoleCluster"
    if cluster in ("PassthroughCluster", "BlackHoleCluster"):
        return _service_labels(_authority_host(entry) or cluster, cluster, "")
    parts = cluster.split("|")
    if len(parts) == 4 and parts[0] == "outbound":
        fqdn = parts[3]
        if not fqdn.endswith(".svc.cluster.local"):
            return _service_labels(fqdn, fqdn, "")
        labels = fqdn.split(".")
        return _service_labels(fqdn, labels[0], labels[1] if len(labels) > 1 else "")
    host = _authority_host(entry)
    return _service_labels(host, host, "")


def _inbound_service(entry: Mapping[str, Any], proxy: ProxyInfo,
                     topology: Topology) -> dict[str, str]:
    """The Service of the server's port (`inbound|9080||`) that the client asked for."""
    parts = _text(entry.get("upstream_cluster")).split("|")
    try:
        port = int(parts[1]) if parts[0] == "inbound" else None
    except (IndexError, ValueError):
        port = None
    services = topology.services_of(proxy.workload, port) if port is not None else []
    if not services:
        host = _authority_host(entry)
        return _service_labels(host, host, "")
    asked = _authority_host(entry).split(".")[0]
    svc = next((s for s in services if s.name == asked), services[0])
    return _service_labels(svc.fqdn, svc.name, svc.namespace)


def derive(entry: Mapping[str, Any], proxy: ProxyInfo, topology: Topology,
           proxies: Mapping[str, ProxyInfo]) -> Derived:
    """Istio's labels and values for one access-log `entry` written by `proxy`.

    `proxies` are every proxy ever seen, by id, so that a request from a pod deleted since
    still names its source.
    """
    tcp = is_tcp(entry)
    reporter = reporter_of(proxy, entry)
    labels = {"reporter": reporter}
    if reporter == "source":
        peer_san = _text(entry.get("upstream_peer_uri_san"))
        port = _port(entry.get("upstream_host"))
        destination = topology.endpoints.get(port) if port is not None else None
        labels.update(_workload_labels("source", proxy.workload))
        labels.update(_workload_labels("destination", destination))
        labels.update(_outbound_service(entry))
        labels["source_principal"] = proxy.workload.principal if peer_san else UNKNOWN
        labels["destination_principal"] = peer_san or UNKNOWN
        # A client cannot tell which policy the server applied: Istio reports "unknown".
        labels["connection_security_policy"] = UNKNOWN
    else:
        peer_san = _text(entry.get("peer_uri_san"))
        peer = proxies.get(_text(entry.get("peer_metadata_id")))
        # Without the header, the identity names the workload when only one has it: what
        # metadata exchange over mTLS would have told the server.
        source = peer.workload if peer else topology.workload_of(peer_san) if peer_san else None
        labels.update(_workload_labels("source", source))
        labels.update(_workload_labels("destination", proxy.workload))
        labels.update(_inbound_service(entry, proxy, topology))
        labels["source_principal"] = peer_san or UNKNOWN
        labels["destination_principal"] = proxy.workload.principal if peer_san else UNKNOWN
        labels["connection_security_policy"] = "mutual_tls" if peer_san else "none"
    labels["request_protocol"] = "tcp" if tcp else "http"
    labels["response_flags"] = _text(entry.get("response_flags")) or "-"
    if not tcp:
        labels["response_code"] = str(entry.get("response_code") or 0)
        labels["grpc_response_status"] = ""
    return Derived(labels, tcp, float(entry.get("duration") or 0),
                   float(entry.get("bytes_received") or 0), float(entry.get("bytes_sent") or 0))
