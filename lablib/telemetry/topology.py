"""Who is who in the mesh, as the telemetry collector needs it.

Istio's proxies know their own workload from their node metadata and learn their peer's from
metadata exchange; the local collector reads every proxy's access log in one place, so it asks
one `Topology` instead: each proxy's workload and log file, each endpoint port's workload, and
the Services in front of the workloads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from ..certs import spiffe_id

if TYPE_CHECKING:
    from ..local.mesh import LocalMesh

__all__ = ["ProxyInfo", "ServiceInfo", "Topology", "WorkloadInfo", "topology_from_mesh"]

UNKNOWN = "unknown"


@dataclass(frozen=True)
class WorkloadInfo:
    """A pod as Istio's labels describe it; `name` is the workload (the Deployment's name)."""

    name: str
    namespace: str
    pod: str
    labels: Mapping[str, str] = field(default_factory=dict)
    service_account: str = "default"

    @property
    def app(self) -> str:
        return self.labels.get("app", UNKNOWN)

    @property
    def version(self) -> str:
        return self.labels.get("version", UNKNOWN)

    @property
    def principal(self) -> str:
        return spiffe_id(self.namespace, self.service_account)

    @property
    def canonical_service(self) -> str:
        """Istio's canonical service: its label, else `app.kubernetes.io/name`, `app`, name."""
        for key in ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app"):
            if self.labels.get(key):
                return self.labels[key]
        return self.name

    @property
    def canonical_revision(self) -> str:
        for key in ("service.istio.io/canonical-revision", "app.kubernetes.io/version",
                    "version"):
            if self.labels.get(key):
                return self.labels[key]
        return "latest"


@dataclass(frozen=True)
class ProxyInfo:
    """One Envoy that reports: a sidecar (`outbound_port` is its app's forward proxy) or a
    gateway (`router`)."""

    id: str
    kind: str
    workload: WorkloadInfo
    log_path: str
    outbound_port: int = 0


@dataclass(frozen=True)
class ServiceInfo:
    """A Service and, per workload port it targets, the Service port."""

    name: str
    namespace: str
    selector: Mapping[str, str]
    target_ports: Mapping[int | str, int] = field(default_factory=dict)  # target -> port

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{self.namespace}.svc.cluster.local"


@dataclass(frozen=True)
class Topology:
    proxies: tuple[ProxyInfo, ...] = ()
    endpoints: Mapping[int, WorkloadInfo] = field(default_factory=dict)  # loopback port
    services: tuple[ServiceInfo, ...] = ()
    # A workload's container ports by name, to resolve named targetPorts: pod -> name -> port.
    port_names: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    @cached_property
    def _principals(self) -> dict[str, WorkloadInfo | None]:
        out: dict[str, WorkloadInfo | None] = {}
        for w in self.endpoints.values():
            seen = out.get(w.principal, w)
            same = seen is not None and (seen.name, seen.namespace) == (w.name, w.namespace)
            out[w.principal] = w if same else None
        return out

    def workload_of(self, principal: str) -> WorkloadInfo | None:
        """The one workload with this SPIFFE identity (None when several share it)."""
        return self._principals.get(principal)

    def services_of(self, workload: WorkloadInfo, container_port: int) -> list[ServiceInfo]:
        """Services that select `workload` and target `container_port`."""
        names = self.port_names.get(workload.pod, {})
        found = []
        for svc in self.services:
            if svc.namespace != workload.namespace or not svc.selector or not all(
                    workload.labels.get(k) == v for k, v in svc.selector.items()):
                continue
            targets = {names.get(t) if isinstance(t, str) else t for t in svc.target_ports}
            if container_port in targets:
                found.append(svc)
        return found


def topology_from_mesh(mesh: LocalMesh) -> Topology:
    """The topology of a running LocalMesh (called from meshd, at each scrape)."""
    pods = list(mesh.pods.values())  # LocalMesh replaces, never mutates, its pods dict
    proxies, endpoints, port_names = [], {}, {}
    for pod in pods:
        w = pod.workload
        info = WorkloadInfo(pod.deployment, pod.namespace, pod.name, dict(w.labels),
                            w.service_account)
        for port in w.ports.values():
            endpoints[port] = info
        port_names[pod.name] = dict(w.port_names)
        if pod.proxy is not None and pod.proxy.kind in ("sidecar", "router"):
            proxies.append(ProxyInfo(pod.proxy.id, pod.proxy.kind, info,
                                     str(mesh.access_log_path(pod.proxy.id)),
                                     pod.proxy.outbound_port))
    services = []
    for res in mesh.store.list("Service"):
        targets: dict[int | str, int] = {}
        for p in res.spec.get("ports") or []:
            target = p.get("targetPort", p["port"])
            targets[target if isinstance(target, str) else int(target)] = int(p["port"])
        services.append(ServiceInfo(res.name, res.namespace,
                                    dict(res.spec.get("selector") or {}), targets))
    return Topology(tuple(proxies), endpoints, tuple(services), port_names)
