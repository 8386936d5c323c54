"""One proxy's whole configuration, built at once and checked before it is pushed.

Like go-control-plane's snapshot: listeners, routes and clusters travel together, each type
carries a content version, and `check` refuses a snapshot whose listeners name a route
configuration it lacks or whose routes name a cluster it lacks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from .clusters import CLUSTER_TYPE, build_clusters
from .context import Proxy, PushContext
from .gateway import SECRET_TYPE, gateway_listeners, gateway_route_configs, gateway_secrets
from .listeners import LISTENER_TYPE, build_listeners
from .mtls import identity_secrets
from .routes import ROUTE_TYPE, kube_route_config, outbound_route_config
from .sidecar import file_secrets

# The order Istio pushes in: clusters and secrets before the listeners and routes using them.
TYPE_ORDER = (CLUSTER_TYPE, SECRET_TYPE, LISTENER_TYPE, ROUTE_TYPE)
SHORT_TYPE = {CLUSTER_TYPE: "CDS", SECRET_TYPE: "SDS", LISTENER_TYPE: "LDS", ROUTE_TYPE: "RDS"}
# Types a proxy asks for by name once a listener references them (not "everything").
NAMED_TYPES = (SECRET_TYPE, ROUTE_TYPE)


class InconsistentSnapshot(Exception):
    """A listener names a missing route configuration, or a route a missing cluster."""


@dataclass(frozen=True)
class Snapshot:
    proxy_id: str
    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    _versions: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def version(self, type_url: str) -> str:
        """A content hash: equal config, equal version, so unchanged types are not re-sent.

        Computed once per type: a snapshot is never changed after it is built."""
        if type_url not in self._versions:
            blob = json.dumps(self.resources.get(type_url, {}), sort_keys=True).encode()
            self._versions[type_url] = hashlib.sha256(blob).hexdigest()[:12]
        return self._versions[type_url]

    def of(self, type_url: str) -> dict[str, dict[str, Any]]:
        return self.resources.get(type_url, {})

    @property
    def listeners(self) -> dict[str, dict[str, Any]]:
        return self.of(LISTENER_TYPE)

    @property
    def routes(self) -> dict[str, dict[str, Any]]:
        return self.of(ROUTE_TYPE)

    @property
    def clusters(self) -> dict[str, dict[str, Any]]:
        return self.of(CLUSTER_TYPE)

    @property
    def secrets(self) -> dict[str, dict[str, Any]]:
        return self.of(SECRET_TYPE)

    def with_clusters_of(self, other: Snapshot) -> Snapshot:
        """This snapshot plus the clusters of `other` (make-before-break's first step)."""
        merged = dict(other.clusters)
        merged.update(self.clusters)
        resources = dict(self.resources)
        resources[CLUSTER_TYPE] = merged
        return Snapshot(self.proxy_id, resources)


def build_route_configs(proxy: Proxy, ctx: PushContext) -> list[dict[str, Any]]:
    if proxy.kind == "sidecar":
        return [outbound_route_config(proxy, ctx)]
    if proxy.kind == "kube":
        return [kube_route_config(ns, ctx) for ns in sorted(proxy.kube_ports)]
    return gateway_route_configs(proxy, ctx)


def build_snapshot(proxy: Proxy, ctx: PushContext) -> Snapshot:
    """Build and check everything `proxy` needs from the push context."""
    router = proxy.kind == "router"
    listeners = gateway_listeners(proxy, ctx) if router else build_listeners(proxy, ctx)
    secrets = identity_secrets(proxy, ctx) + (gateway_secrets(proxy, ctx) if router else [])
    if proxy.kind == "sidecar" and proxy.workload is not None:
        secrets += file_secrets(ctx, proxy.workload)
    resources = {
        CLUSTER_TYPE: {c["name"]: c for c in build_clusters(proxy, ctx)},
        SECRET_TYPE: {s["name"]: s for s in secrets},
        LISTENER_TYPE: {listener["name"]: listener for listener in listeners},
        ROUTE_TYPE: {r["name"]: r for r in build_route_configs(proxy, ctx)},
    }
    snapshot = Snapshot(proxy.id, resources)
    check(snapshot)
    return snapshot


def referenced_route_names(listener: dict[str, Any]) -> list[str]:
    names = []
    for chain in listener.get("filter_chains", []):
        for f in chain.get("filters", []):
            rds = f.get("typed_config", {}).get("rds")
            if rds:
                names.append(rds["route_config_name"])
    return names


def hidden_subset(snapshot: Snapshot, cluster: str) -> bool:
    """A subset cluster of a host this proxy knows, whose DestinationRule does not apply to
    it (`workloadSelector`, `exportTo`): as in Istio the route names it anyway and Envoy
    answers 503 (no cluster, flag NC)."""
    kind, port, subset, host = (cluster.split("|") + ["", "", ""])[:4]
    return kind == "outbound" and bool(subset) and f"outbound|{port}||{host}" in snapshot.clusters


def route_clusters(route_config: dict[str, Any]) -> list[str]:
    names = []
    for vhost in route_config.get("virtual_hosts", []):
        for route in vhost.get("routes", []):
            action = route.get("route") or {}
            if "cluster" in action:
                names.append(action["cluster"])
            for wc in (action.get("weighted_clusters") or {}).get("clusters", []):
                names.append(wc["name"])
    return names


def listener_clusters(listener: dict[str, Any]) -> list[str]:
    names = []
    for chain in listener.get("filter_chains", []):
        for f in chain.get("filters", []):
            config = f.get("typed_config", {})
            if "cluster" in config:
                names.append(config["cluster"])
            weighted = (config.get("weighted_clusters") or {}).get("clusters", [])
            names += [c["name"] for c in weighted]
            if "route_config" in config:
                names += route_clusters(config["route_config"])
    return names


def transport_secrets(socket: dict[str, Any] | None) -> list[str]:
    """SDS secret names a TLS transport socket (downstream or upstream) refers to."""
    common = ((socket or {}).get("typed_config") or {}).get("common_tls_context") or {}
    names = [c["name"] for c in common.get("tls_certificate_sds_secret_configs", [])]
    combined = common.get("combined_validation_context") or {}
    for holder in (common, combined):
        if "validation_context_sds_secret_config" in holder:
            names.append(holder["validation_context_sds_secret_config"]["name"])
    return names


def referenced_secrets(listener: dict[str, Any]) -> list[str]:
    return [n for chain in listener.get("filter_chains", [])
            for n in transport_secrets(chain.get("transport_socket"))]


def cluster_secrets(cluster: dict[str, Any]) -> list[str]:
    sockets = [cluster.get("transport_socket")] + [
        m["transport_socket"] for m in cluster.get("transport_socket_matches", [])]
    return [n for socket in sockets for n in transport_secrets(socket)]


def check(snapshot: Snapshot) -> None:
    """Refuse a snapshot that references what it does not contain."""
    problems = []
    for listener in snapshot.listeners.values():
        for name in referenced_secrets(listener):
            if name not in snapshot.secrets:
                problems.append(f"listener {listener['name']} uses missing secret {name}")
        for name in referenced_route_names(listener):
            if name not in snapshot.routes:
                problems.append(f"listener {listener['name']} uses missing routes {name}")
        for cluster in listener_clusters(listener):
            if cluster not in snapshot.clusters:
                problems.append(f"listener {listener['name']} uses missing cluster {cluster}")
    for cluster_config in snapshot.clusters.values():
        for name in cluster_secrets(cluster_config):
            if name not in snapshot.secrets:
                problems.append(f"cluster {cluster_config['name']} uses missing secret {name}")
    for route_config in snapshot.routes.values():
        for cluster in route_clusters(route_config):
            if cluster not in snapshot.clusters and not hidden_subset(snapshot, cluster):
                problems.append(f"routes {route_config['name']} use missing cluster {cluster}")
    if problems:
        raise InconsistentSnapshot(f"snapshot for {snapshot.proxy_id}: " + "; ".join(problems))
