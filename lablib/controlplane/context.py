"""The immutable input of every translation: services, workloads, proxies and Istio config.

Istio calls this the push context. The builders in clusters.py, listeners.py and routes.py are
pure functions of (proxy, PushContext).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from ..config import hosts, store
from ..config.meshconfig import MeshConfig
from ..config.model import Resource
from ..config.store import ConfigStore
from .naming import service_fqdn


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    target_port: int | str
    protocol: str  # "HTTP" or "TCP", from the port name or appProtocol as Istio infers it
    node_port: int | None = None


@dataclass(frozen=True)
class Service:
    name: str
    namespace: str
    ports: tuple[ServicePort, ...]
    selector: dict[str, str]
    cluster_ip: str = ""  # "" for a headless Service (clusterIP: None)

    @property
    def fqdn(self) -> str:
        return service_fqdn(self.name, self.namespace)

    def port(self, number: int) -> ServicePort | None:
        return next((p for p in self.ports if p.port == number), None)


@dataclass(frozen=True)
class Workload:
    """A pod. `ports` maps each containerPort to the loopback port where others reach it."""

    name: str
    namespace: str
    labels: dict[str, str]
    service_account: str
    injected: bool
    ports: dict[int, int]
    port_names: dict[str, int] = field(default_factory=dict)
    # A gateway port that several Service ports target (80 and 3000 -> 8080) is reached on
    # each of their node ports: the first is in `ports`, the others here.
    port_aliases: dict[int, tuple[int, ...]] = field(default_factory=dict)
    declared_ports: tuple[int, ...] = ()  # the containerPorts the pod spec declares
    annotations: dict[str, str] = field(default_factory=dict)

    def endpoint_port(self, target: int | str) -> int | None:
        container_port = self.port_names.get(target) if isinstance(target, str) else target
        if container_port is None:
            return None
        return self.ports.get(container_port)


@dataclass(frozen=True)
class Proxy:
    """One Envoy. `kind` is `sidecar`, `router` (a gateway) or `kube` (what kube-proxy and
    cluster DNS give workloads that have no sidecar)."""

    id: str
    kind: str
    namespace: str
    workload: Workload | None = None
    outbound_port: int = 0  # sidecar: the forward-proxy listener its app uses as http_proxy
    app_ports: dict[int, int] = field(default_factory=dict)  # sidecar: containerPort -> app
    kube_ports: dict[str, int] = field(default_factory=dict)  # kube: client namespace -> port

    @property
    def labels(self) -> dict[str, str]:
        return self.workload.labels if self.workload else {}


def port_protocol(name: str, app_protocol: str | None = None) -> str:
    """How the proxies treat a port: "HTTP" for Istio's HTTP family and for ports Istio would
    sniff, "TCP" for everything else (TCP, TLS, HTTPS, MONGO...)."""
    selected = hosts.port_protocol({"name": name, "appProtocol": app_protocol})
    return "HTTP" if not selected or selected in hosts.HTTP_PROTOCOLS else "TCP"


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Kubernetes selection, except that an empty selector selects nothing here: a Service
    or Gateway without one has no workloads."""
    return bool(selector) and store.selector_matches(selector, labels)


def service_from_resource(res: Resource) -> Service:
    spec = res.spec
    ports = tuple(
        ServicePort(
            name=str(p.get("name", "")),
            port=int(p["port"]),
            target_port=p.get("targetPort", p["port"]),
            protocol=port_protocol(str(p.get("name", "")), p.get("appProtocol")),
            node_port=p.get("nodePort"),
        )
        for p in spec.get("ports") or []
    )
    cluster_ip = str(spec.get("clusterIP") or "")
    return Service(res.name, res.namespace, ports, dict(spec.get("selector") or {}),
                   "" if cluster_ip == "None" else cluster_ip)


@dataclass(frozen=True)
class OutsideWorld:
    """The local stand-in for the internet (local/outside.py): where names outside the
    mesh resolve, the port that resets (BlackHoleCluster), and the trust store that holds
    its public CA (the proxies' system roots)."""

    port: int
    blackhole_port: int
    roots: str
    curl_home: str  # pods' CURL_HOME (see local/outside.py)


@dataclass(frozen=True)
class PushContext:
    store: ConfigStore
    workloads: tuple[Workload, ...]
    proxies: tuple[Proxy, ...]
    access_log_paths: dict[str, str] = field(default_factory=dict)  # proxy id -> file
    # Mesh identity from istiod's CA: proxy id -> (certificate chain PEM, key PEM), and the
    # root every proxy trusts. Without them the mesh runs without mTLS.
    certificates: dict[str, tuple[str, str]] = field(default_factory=dict)
    root_cert: str = ""
    features: dict[str, str] = field(default_factory=dict)  # istiod's env (install values)
    mesh_config: MeshConfig = field(default_factory=MeshConfig)
    outside_world: OutsideWorld | None = None

    @cached_property
    def services(self) -> dict[str, Service]:
        """Services by FQDN."""
        tls_ports = self._tls_routed_ports()
        out = {}
        for res in self.store.list("Service"):
            svc = service_from_resource(res)
            # Istio sniffs the protocol of a port whose name says none; TLS is what a `tls`
            # route sends there, so such a port is carried as TCP end to end.
            ports = tuple(
                replace(p, protocol="TCP") if (svc.fqdn, p.port) in tls_ports
                and not hosts.port_protocol({"name": p.name}) else p for p in svc.ports)
            out[svc.fqdn] = replace(svc, ports=ports)
        return out

    def _tls_routed_ports(self) -> set[tuple[str, int]]:
        """(host FQDN, port) of every VirtualService `tls` route destination."""
        found = set()
        for vs in self.store.list("VirtualService"):
            for tls in vs.spec.get("tls") or []:
                for route in tls.get("route") or []:
                    dest = route.get("destination") or {}
                    number = (dest.get("port") or {}).get("number")
                    if number is not None:
                        found.add((hosts.canonical_host(self.store, str(dest.get("host", "")),
                                                        vs.namespace), int(number)))
        return found

    def host_fqdn(self, host: str, from_namespace: str) -> str:
        """The name Istio keys `host` by, resolved exactly as the analyzer resolves it."""
        key = (host, from_namespace)
        if key not in self._host_names:
            self._host_names[key] = hosts.canonical_host(self.store, host, from_namespace)
        return self._host_names[key]

    @cached_property
    def _host_names(self) -> dict[tuple[str, str], str]:
        return {}

    def service(self, host: str, from_namespace: str) -> Service | None:
        return self.services.get(self.host_fqdn(host, from_namespace))

    def endpoint_workloads(self, svc: Service, port: ServicePort,
                           subset_labels: dict[str, str]) -> list[tuple[int, Workload]]:
        """(loopback port, workload) behind a Service port and a subset's labels."""
        found = []
        for w in self.workloads:
            if w.namespace != svc.namespace or not selector_matches(svc.selector, w.labels):
                continue
            if subset_labels and not all(w.labels.get(k) == v for k, v in subset_labels.items()):
                continue
            p = w.endpoint_port(port.target_port)
            if p:
                found.append((p, w))
        return sorted(found, key=lambda pw: pw[0])

    def endpoints(self, svc: Service, port: ServicePort,
                  subset_labels: dict[str, str]) -> list[int]:
        """Loopback ports of the workloads behind a Service port (and a subset's labels)."""
        return [p for p, _ in self.endpoint_workloads(svc, port, subset_labels)]

    @cached_property
    def destination_rules(self) -> dict[str, Resource]:
        """DestinationRules by host FQDN; the oldest wins a conflict, as in Istio."""
        out: dict[str, Resource] = {}
        for res in self.store.list("DestinationRule"):
            out.setdefault(self.host_fqdn(str(res.spec.get("host", "")), res.namespace), res)
        return out

    @cached_property
    def _rules_by_host(self) -> dict[str, list[Resource]]:
        """Every DestinationRule of each host FQDN, oldest first."""
        out: dict[str, list[Resource]] = {}
        for res in self.store.list("DestinationRule"):
            out.setdefault(self.host_fqdn(str(res.spec.get("host", "")), res.namespace),
                           []).append(res)
        return out

    def destination_rule(self, proxy: Proxy | None, host_fqdn: str) -> Resource | None:
        """The DestinationRule a client proxy uses for a host, chosen as Istio chooses: in the
        client's namespace one whose `workloadSelector` selects it, else one without a
        selector (whatever its `exportTo`, as in Istio); then one in the host's namespace,
        then in istio-system, exported (`exportTo`) to the client's namespace. A rule with a
        selector never applies to workloads it does not select."""
        from .route_policies import exported_to

        rules = self._rules_by_host.get(host_fqdn, [])
        if proxy is None:
            return next((r for r in rules if not r.spec.get("workloadSelector")), None)
        client_ns = proxy.namespace
        local = [r for r in rules if r.namespace == client_ns]
        for rule in local:
            labels = dict((rule.spec.get("workloadSelector") or {}).get("matchLabels") or {})
            if labels and proxy.kind == "sidecar" and selector_matches(labels, proxy.labels):
                return rule
        for namespaces in ([client_ns], self.host_namespaces(host_fqdn), ["istio-system"]):
            for rule in rules:
                if rule.namespace in namespaces and not rule.spec.get("workloadSelector") \
                        and (rule.namespace == client_ns or exported_to(rule, client_ns)):
                    return rule
        return None

    def host_namespaces(self, host_fqdn: str) -> list[str]:
        """The namespaces that declare a host: its Service's, or those of the ServiceEntries
        that list it (`edition.cnn.com` lives where its ServiceEntry does)."""
        svc = self.services.get(host_fqdn)
        if svc is not None:
            return [svc.namespace]
        return sorted({entry.namespace for entry in self.store.list("ServiceEntry")
                       if host_fqdn in (str(h).lower() for h in entry.spec.get("hosts") or [])})

    def subsets(self, proxy: Proxy | None, host_fqdn: str) -> list[dict[str, Any]]:
        """The subsets a client sees for a host. Rules without a `workloadSelector` in the
        namespace of the one it uses are merged as Istio merges rules for one host (the
        oldest rule's subset wins a name two define), so a route to the subset of a second
        rule (egressgateway-for-cnn, then -for-nginx) has its cluster."""
        chosen = self.destination_rule(proxy, host_fqdn)
        if chosen is None:
            return []
        if chosen.spec.get("workloadSelector"):
            return list(chosen.spec.get("subsets") or [])
        merged: dict[str, dict[str, Any]] = {}
        for rule in self._rules_by_host.get(host_fqdn, []):
            if rule.namespace == chosen.namespace and not rule.spec.get("workloadSelector"):
                for subset in rule.spec.get("subsets") or []:
                    merged.setdefault(str(subset.get("name")), subset)
        return list(merged.values())

    @cached_property
    def virtual_services(self) -> tuple[Resource, ...]:
        return tuple(self.store.list("VirtualService"))

    @cached_property
    def gateways(self) -> tuple[Resource, ...]:
        return tuple(self.store.list("Gateway"))

    def vs_gateways(self, vs: Resource) -> list[str]:
        """The gateways a VirtualService binds to, as `ns/name` or `mesh`."""
        names = vs.spec.get("gateways") or ["mesh"]
        return [g if g == "mesh" or "/" in g else f"{vs.namespace}/{g}" for g in names]

    def gateway_target_port(self, proxy: Proxy, number: int) -> int:
        """The workload port a Gateway server port means: a Service port of the gateway
        (80) becomes its targetPort (8080); any other number is taken as the workload port."""
        for svc in self.services.values():
            if svc.namespace != proxy.namespace or not selector_matches(svc.selector,
                                                                        proxy.labels):
                continue
            port = svc.port(number)
            if port is None:
                continue
            target = port.target_port
            if isinstance(target, str):
                named = proxy.workload.port_names.get(target) if proxy.workload else None
                return named if named is not None else number
            return int(target)
        return number
