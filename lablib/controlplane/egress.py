"""Egress: ServiceEntry hosts, the outbound traffic policy and the Sidecar's egress scope
(Istio's ServiceEntry conversion, `buildSidecarOutboundHTTPRouteConfig`'s catch-all virtual
host and `cluster_builder`'s PassthroughCluster/BlackHoleCluster).

Outputs, for sidecars:
- a cluster `outbound|<port>|<subset>|<host>` per ServiceEntry host, port and
  DestinationRule subset, with the rule's policy and TLS origination;
- a virtual host `<host>:<port>` per ServiceEntry port in `outbound_http` (VirtualService
  routes, timeouts and retries apply; CONNECT follows `tls`/`tcp` routes);
- the catch-all virtual host: `allow_any` (to `PassthroughCluster`) under ALLOW_ANY, or
  `block_all` (HTTP 502, CONNECT tunnels reset by `BlackHoleCluster`) under REGISTRY_ONLY,
  from meshConfig.outboundTrafficPolicy.mode or the workload's Sidecar.
Gateways get the ServiceEntry clusters too (the egress gateway routes to them).

On the local mesh the outside world is `local/outside.py`: names resolve to it (DNS, NONE and
DNS_ROUND_ROBIN resolution), and PassthroughCluster is its port. Endpoints on 127.0.0.1 are
taken as they are; other addresses cannot be reached here (the analyzer says so, LAB0604).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import hosts
from ..config.model import Resource
from .clusters import apply_traffic_policy, merge_policy, static_cluster
from .context import Proxy, PushContext, Service, ServicePort
from .gateway import weighted
from .mtls import apply_upstream_tls
from .naming import host_aliases, outbound_cluster
from .routes import connect_route, default_route, http_routes, opaque_tcp_route
from .sidecar import sidecar_for

PASSTHROUGH = "PassthroughCluster"
BLACKHOLE = "BlackHoleCluster"
ALLOW_ANY, REGISTRY_ONLY = "ALLOW_ANY", "REGISTRY_ONLY"
LOOPBACK = frozenset({"127.0.0.1", "localhost"})


@dataclass(frozen=True)
class ExternalHost:
    """One host of a ServiceEntry, with the entry's ports."""

    host: str  # as Istio keys it: `httpbin.org`, `*.wikipedia.org`, short names qualified
    entry: Resource
    ports: tuple[ServicePort, ...]

    @property
    def service(self) -> Service:
        """The host as a Service, for the helpers shared with Services (TLS, policy)."""
        return Service(self.host, self.entry.namespace, self.ports, {})


def entry_port_protocol(port: dict[str, Any]) -> str:
    """"HTTP" or "TCP" as the proxies treat a ServiceEntry port (its `protocol`, else name)."""
    protocol = str(port.get("protocol") or hosts.port_protocol({"name": port.get("name")}))
    return "HTTP" if protocol.upper() in hosts.HTTP_PROTOCOLS else "TCP"


def external_hosts(ctx: PushContext, namespace: str) -> list[ExternalHost]:
    """ServiceEntry hosts visible from `namespace` (exportTo), oldest entry first; a host
    two entries declare is the older one's, as Istio resolves the conflict. A host that names
    a Service is left to the Service (the analyzer warns, LAB0609)."""
    seen: set[str] = set()
    out = []
    for entry in sorted(ctx.store.list("ServiceEntry"),
                        key=lambda r: (str(r.body.get("metadata", {}).get(
                            "creationTimestamp", "")), r.namespace, r.name)):
        if not hosts.exported_to(entry, namespace):
            continue
        ports = tuple(ServicePort(str(p.get("name", "")), int(p["number"]),
                                  int(p.get("targetPort") or p["number"]),
                                  entry_port_protocol(p))
                      for p in entry.spec.get("ports") or [])
        for host in entry.spec.get("hosts") or []:
            key = hosts.fqdn(str(host).lower(), entry.namespace)
            # A Service's own name stays the Service's: its endpoints are the pods.
            if key not in seen and key != "*" and key not in ctx.services:
                seen.add(key)
                out.append(ExternalHost(key, entry, ports))
    return out


def visible_hosts(proxy: Proxy, ctx: PushContext) -> list[ExternalHost]:
    """The ServiceEntry hosts this proxy's config holds: exported to its namespace and, for a
    sidecar, within its Sidecar's `egress[].hosts`."""
    return [h for h in external_hosts(ctx, proxy.namespace)
            if in_egress_scope(proxy, ctx, h.host, h.entry.namespace)]


def in_egress_scope(proxy: Proxy, ctx: PushContext, host: str, namespace: str) -> bool:
    """Whether the proxy's Sidecar (if it limits egress) lets it reach `host` of
    `namespace` (a Service's FQDN or a ServiceEntry host)."""
    scope = egress_scope(proxy, ctx)
    return scope is None or any(in_scope(pattern, host, namespace, proxy.namespace)
                                for pattern in scope)


def workload_sidecar(proxy: Proxy, ctx: PushContext) -> Resource | None:
    """The Sidecar in force for a sidecar proxy (none for gateways)."""
    if proxy.kind != "sidecar" or proxy.workload is None:
        return None
    return sidecar_for(ctx, proxy.workload)


def egress_scope(proxy: Proxy, ctx: PushContext) -> list[str] | None:
    """The Sidecar's `egress[].hosts` (`ns/host`), or None when no Sidecar limits egress."""
    sidecar = workload_sidecar(proxy, ctx)
    egress = (sidecar.spec.get("egress") if sidecar else None) or []
    if not egress:
        return None
    return [str(h) for listener in egress for h in listener.get("hosts") or []]


def in_scope(pattern: str, host: str, host_namespace: str, proxy_namespace: str) -> bool:
    """Does a Sidecar egress host (`ns/host`; `.` is the proxy's namespace, `*` any, `~`
    none) cover `host` declared in `host_namespace`?"""
    ns, _, name = pattern.partition("/")
    if ns == "~":
        return False
    if ns == ".":
        ns = proxy_namespace
    if ns not in ("*", host_namespace):
        return False
    return hosts.host_matches(name, host) or (
        name.startswith("*.") and host.startswith("*.") and host.endswith(name[1:]))


def outbound_mode(proxy: Proxy, ctx: PushContext) -> str:
    """ALLOW_ANY or REGISTRY_ONLY: the Sidecar's outboundTrafficPolicy, else meshConfig's."""
    sidecar = workload_sidecar(proxy, ctx)
    mode = ((sidecar.spec.get("outboundTrafficPolicy") or {}).get("mode")
            if sidecar else None)
    return str(mode or ctx.mesh_config.get("outboundTrafficPolicy.mode") or ALLOW_ANY)


# --- CDS -----------------------------------------------------------------------------------


def endpoint_ports(ctx: PushContext, external: ExternalHost, port: ServicePort,
                   subset_labels: dict[str, str]) -> list[int]:
    """Loopback ports behind a ServiceEntry port (and a subset's labels): its 127.0.0.1
    endpoints as given, names through the outside world stand-in, which also stands for the
    host itself when the entry lists no endpoints."""
    entry_endpoints = external.entry.spec.get("endpoints") or []
    outside = ctx.outside_world
    if not entry_endpoints:
        return [outside.port] if outside else []
    found = []
    for endpoint in entry_endpoints:
        labels = endpoint.get("labels") or {}
        if any(labels.get(k) != v for k, v in subset_labels.items()):
            continue
        address = str(endpoint.get("address", ""))
        target = int((endpoint.get("ports") or {}).get(port.name) or port.target_port)
        if address in LOOPBACK:
            found.append(target)
        elif outside and not hosts.is_ip(address) and "://" not in address:
            found.append(outside.port)  # a name: the outside world answers for it
    return sorted(set(found))


def external_clusters(proxy: Proxy, ctx: PushContext) -> list[dict[str, Any]]:
    """A cluster per ServiceEntry host and port and per DestinationRule subset of it."""
    clusters = []
    for external in visible_hosts(proxy, ctx):
        dr = ctx.destination_rule(proxy, external.host)
        host_policy = (dr.spec.get("trafficPolicy") if dr else None) or {}
        subsets = [("", {}, None)] + [
            (str(s["name"]), dict(s.get("labels") or {}), s.get("trafficPolicy"))
            for s in ctx.subsets(proxy, external.host)]
        for port in external.ports:
            for subset, labels, subset_policy in subsets:
                cluster = static_cluster(outbound_cluster(port.port, subset, external.host),
                                         endpoint_ports(ctx, external, port, labels))
                policy = merge_policy(host_policy, subset_policy, port.port)
                apply_traffic_policy(cluster, policy)
                if (policy.get("tls") or {}).get("mode"):
                    apply_upstream_tls(cluster, proxy, ctx, external.service, subset,
                                       port.port, port.target_port, [], policy.get("tls"),
                                       dr_selects=bool(dr and dr.spec.get("workloadSelector")))
                clusters.append(cluster)
    return clusters


def passthrough_cluster(ctx: PushContext) -> dict[str, Any]:
    """PassthroughCluster: wherever the name leads, here the outside world stand-in."""
    outside = ctx.outside_world
    return static_cluster(PASSTHROUGH, [outside.port] if outside else [])


def blackhole_cluster(ctx: PushContext) -> dict[str, Any]:
    """BlackHoleCluster: every connection reset."""
    outside = ctx.outside_world
    return static_cluster(BLACKHOLE, [outside.blackhole_port] if outside else [])


# --- RDS -----------------------------------------------------------------------------------


def host_domains(host: str, port: int) -> list[str]:
    """Authorities that name a ServiceEntry host and port; port 80 also without the port."""
    return [f"{host}:{port}"] + ([host] if port == 80 else [])


def mesh_rules(ctx: PushContext, host: str) -> list[Resource]:
    """VirtualServices bound to the mesh whose hosts name this ServiceEntry host."""
    return [vs for vs in ctx.virtual_services if "mesh" in ctx.vs_gateways(vs)
            and any(ctx.host_fqdn(str(h), vs.namespace) == host
                    for h in vs.spec.get("hosts") or [])]


def stream_destination(ctx: PushContext, vses: list[Resource], host: str,
                       port: int) -> list[tuple[str, int]] | None:
    """Where a CONNECT tunnel to host:port goes: the mesh-bound `tls` route matching the
    port and SNI (the host), else the `tcp` route matching the port, else None."""
    for kind in ("tls", "tcp"):
        for vs in vses:
            for rule in vs.spec.get(kind) or []:
                for match in rule.get("match") or [{}]:
                    if "port" in match and int(match["port"]) != port:
                        continue
                    if match.get("gateways") and "mesh" not in match["gateways"]:
                        continue
                    sni = [ctx.host_fqdn(str(h), vs.namespace) for h in match.get("sniHosts")
                           or [host]]
                    if kind == "tls" and not any(hosts.host_matches(s, host) for s in sni):
                        continue
                    return weighted(ctx, vs, rule.get("route") or [])
    return None


def external_virtual_hosts(proxy: Proxy, ctx: PushContext) -> list[dict[str, Any]]:
    """A virtual host per ServiceEntry host and port, with the mesh's VirtualService rules."""
    vhosts = []
    for external in visible_hosts(proxy, ctx):
        vses = mesh_rules(ctx, external.host)
        for port in external.ports:
            default_cluster = outbound_cluster(port.port, "", external.host)
            tunnel = stream_destination(ctx, vses, external.host, port.port)
            routes: list[dict[str, Any]] = [connect_route(default_cluster, tunnel)]
            if port.protocol == "HTTP":
                found = [r for vs in vses[:1] for r in http_routes(ctx, vs, gateway="mesh",
                                                                   port=port.port)]
                routes += found or [default_route(default_cluster)]
            else:
                routes.append(opaque_tcp_route(default_cluster, tunnel))
            vhosts.append({"name": f"{external.host}:{port.port}",
                           "domains": host_domains(external.host, port.port),
                           "routes": routes})
    return vhosts


def undeclared_port_virtual_hosts(proxy: Proxy, ctx: PushContext) -> list[dict[str, Any]]:
    """Virtual hosts for ports that a mesh-bound VirtualService's HTTP matches name but its
    host does not declare, as Istio builds them from the VirtualService: the egress gateway
    tasks call `http://my-nginx.mesh-external.svc.cluster.local` (port 80) of a Service that
    listens on 443 only, and the rule sends it to the egress gateway."""
    declared = {h.host: (h, {p.port for p in h.ports}) for h in visible_hosts(proxy, ctx)}
    vhosts: dict[str, dict[str, Any]] = {}
    for vs in ctx.virtual_services:
        if "mesh" not in ctx.vs_gateways(vs):
            continue
        ports = {int(m["port"]) for rule in vs.spec.get("http") or []
                 for m in rule.get("match") or [] if "port" in m
                 and (not m.get("gateways") or "mesh" in m["gateways"])}
        for host in vs.spec.get("hosts") or []:
            fqdn = ctx.host_fqdn(str(host), vs.namespace)
            svc = ctx.services.get(fqdn)
            if svc is not None and in_egress_scope(proxy, ctx, fqdn, svc.namespace):
                known = {p.port for p in svc.ports}
            elif fqdn in declared:
                known = declared[fqdn][1]
            else:
                continue
            for port in sorted(ports - known):
                domains = (host_aliases(svc.name, svc.namespace, port, proxy.namespace)
                           if svc is not None else host_domains(fqdn, port))
                vhosts.setdefault(f"{fqdn}:{port}", {
                    "name": f"{fqdn}:{port}", "domains": domains,
                    "routes": http_routes(ctx, vs, gateway="mesh", port=port)})
    return [v for v in vhosts.values() if v["routes"]]


def catch_all_virtual_host(proxy: Proxy, ctx: PushContext) -> dict[str, Any]:
    """Istio's `allow_any` (to the PassthroughCluster) or `block_all` (a 502, and for
    tunnelled TLS a reset from the BlackHoleCluster) for every other authority."""
    if outbound_mode(proxy, ctx) == REGISTRY_ONLY:
        return {"name": "block_all", "domains": ["*"], "routes": [
            connect_route(BLACKHOLE),
            {"name": "block_all", "match": {"prefix": "/"},
             "direct_response": {"status": 502}}]}
    return {"name": "allow_any", "domains": ["*"], "routes": [
        connect_route(PASSTHROUGH),
        {"name": "allow_any", "match": {"prefix": "/"},
         "route": {"cluster": PASSTHROUGH, "timeout": "0s"}}]}
