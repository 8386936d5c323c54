"""CDS: clusters for Service ports and DestinationRule subsets (Istio's cluster_builder.go).

Outputs `envoy.config.cluster.v3.Cluster` dicts named as Istio names them:
`outbound|9080|v1|reviews.ns.svc.cluster.local`, `inbound|9080||`, and for workloads without a
sidecar `kube|9080||reviews.ns.svc.cluster.local`. Endpoints are inline (STATIC clusters):
every endpoint is a loopback port the local runtime assigned.
"""

from __future__ import annotations

from typing import Any

from ..config.schema import parse_duration
from .context import Proxy, PushContext, Service, ServicePort
from .mtls import apply_upstream_tls
from .naming import inbound_cluster, kube_cluster, outbound_cluster
from .routes import duration

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
HTTP_OPTIONS_TYPE = "type.googleapis.com/" + HTTP_OPTIONS
# Istio leaves pooled upstream connections to Envoy's default idle timeout of 1 h (5 min on its
# passthrough clusters). On the local mesh every pod shares one machine (a classroom's users
# too), so a burst of 200 connections would hold ~800 descriptors in a sidecar and 200
# threads in the app for that hour: idle pooled connections close after a minute instead.
# A DestinationRule's connectionPool.http.idleTimeout still sets it, as in Istio.
LOCAL_IDLE_TIMEOUT = "60s"
LB_POLICIES = {
    "ROUND_ROBIN": "ROUND_ROBIN",
    "LEAST_CONN": "LEAST_REQUEST",
    "LEAST_REQUEST": "LEAST_REQUEST",
    "RANDOM": "RANDOM",
}
# Istio's getDefaultCircuitBreakerThresholds: no limit unless a DestinationRule sets one, and
# `track_remaining`, so `pilot-agent request GET stats` shows the `remaining_*` gauges.
UNLIMITED = 4294967295
DEFAULT_THRESHOLDS = {"max_connections": UNLIMITED, "max_pending_requests": UNLIMITED,
                      "max_requests": UNLIMITED, "max_retries": UNLIMITED,
                      "track_remaining": True}


def static_cluster(name: str, ports: list[int], connect_timeout: str = "10s") -> dict[str, Any]:
    return {
        "@type": CLUSTER_TYPE,
        "name": name,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "lb_policy": "LEAST_REQUEST",
        "typed_extension_protocol_options": {HTTP_OPTIONS: {
            "@type": HTTP_OPTIONS_TYPE,
            "common_http_protocol_options": {"idle_timeout": LOCAL_IDLE_TIMEOUT},
            "explicit_http_config": {"http_protocol_options": {}},
        }},
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": p}}}}
                for p in ports
            ]}],
        },
    }


def merge_policy(base: dict[str, Any] | None, override: dict[str, Any] | None,
                 port: int) -> dict[str, Any]:
    """The traffic policy in force, merged as Istio's MergeTrafficPolicy does: the host level
    with its port-level settings, then the subset's, then the subset's port-level settings
    (so a subset's `tls` beats the host's port-level one)."""
    merged: dict[str, Any] = {}
    for source in (base or {}, override or {}):
        merged.update({k: v for k, v in source.items() if k != "portLevelSettings"})
        for pls in source.get("portLevelSettings") or []:
            if int((pls.get("port") or {}).get("number", -1)) == port:
                merged.update({k: v for k, v in pls.items() if k != "port"})
    return merged


def apply_traffic_policy(cluster: dict[str, Any], policy: dict[str, Any]) -> None:
    """DestinationRule trafficPolicy: loadBalancer, connectionPool, outlierDetection."""
    balancer = policy.get("loadBalancer") or {}
    simple = balancer.get("simple")
    if simple in LB_POLICIES:
        cluster["lb_policy"] = LB_POLICIES[simple]
    if isinstance(balancer.get("consistentHash"), dict):
        apply_consistent_hash(cluster, balancer["consistentHash"])
    apply_warmup(cluster, balancer)
    pool = policy.get("connectionPool") or {}
    tcp, http = pool.get("tcp") or {}, pool.get("http") or {}
    thresholds: dict[str, Any] = dict(DEFAULT_THRESHOLDS)
    if "maxConnections" in tcp:
        thresholds["max_connections"] = int(tcp["maxConnections"])
    if "connectTimeout" in tcp:
        cluster["connect_timeout"] = duration(tcp["connectTimeout"])
    keepalive = tcp.get("tcpKeepalive")
    if isinstance(keepalive, dict):
        cluster["upstream_connection_options"] = {"tcp_keepalive": {
            name: int(parse_duration(keepalive[key])) if key != "probes" else int(keepalive[key])
            for key, name in (("probes", "keepalive_probes"), ("time", "keepalive_time"),
                              ("interval", "keepalive_interval")) if key in keepalive}}
    if "http1MaxPendingRequests" in http:
        thresholds["max_pending_requests"] = int(http["http1MaxPendingRequests"])
    if "http2MaxRequests" in http:
        thresholds["max_requests"] = int(http["http2MaxRequests"])
    if "maxRetries" in http:
        thresholds["max_retries"] = int(http["maxRetries"])
    budget = policy.get("retryBudget")
    if isinstance(budget, dict):
        # Istio's defaults: 20 % of active requests, at least 3 concurrent retries.
        thresholds["retry_budget"] = {
            "budget_percent": {"value": float(budget.get("percent", 20.0))},
            "min_retry_concurrency": int(budget.get("minRetryConcurrency", 3))}
    cluster["circuit_breakers"] = {"thresholds": [thresholds]}
    common: dict[str, Any] = {}
    if "maxRequestsPerConnection" in http:
        common["max_requests_per_connection"] = int(http["maxRequestsPerConnection"])
    if "idleTimeout" in http:
        common["idle_timeout"] = duration(http["idleTimeout"])
    if "maxConnectionDuration" in tcp:
        common["max_connection_duration"] = duration(tcp["maxConnectionDuration"])
    if common:
        holder = cluster.setdefault("typed_extension_protocol_options", {}).setdefault(
            HTTP_OPTIONS, {"@type": HTTP_OPTIONS_TYPE,
                           "explicit_http_config": {"http_protocol_options": {}}})
        holder.setdefault("common_http_protocol_options", {}).update(common)
    outlier = policy.get("outlierDetection")
    if outlier is not None:
        errors = outlier.get("consecutive5xxErrors", outlier.get("consecutiveErrors", 5))
        od: dict[str, Any] = {
            "consecutive_5xx": int(errors),
            "interval": duration(outlier.get("interval", "10s")),
            "base_ejection_time": duration(outlier.get("baseEjectionTime", "30s")),
            "max_ejection_percent": int(outlier.get("maxEjectionPercent", 10)),
            "enforcing_consecutive_5xx": 100 if int(errors) > 0 else 0,
            "enforcing_success_rate": 0,
        }
        if "consecutiveGatewayErrors" in outlier:
            od["consecutive_gateway_failure"] = int(outlier["consecutiveGatewayErrors"])
            od["enforcing_consecutive_gateway_failure"] = 100
        if outlier.get("splitExternalLocalOriginErrors"):
            # Connection failures and timeouts count apart from the upstream's 5xx answers.
            od["split_external_local_origin_errors"] = True
            od["consecutive_local_origin_failure"] = int(
                outlier.get("consecutiveLocalOriginFailures", 5))
            od["enforcing_consecutive_local_origin_failure"] = 100
        cluster["outlier_detection"] = od
        # Istio: below minHealthPercent healthy hosts, ignore ejections (Envoy's panic mode);
        # its default of 0 means never panic.
        cluster["common_lb_config"] = {
            "healthy_panic_threshold": {"value": float(outlier.get("minHealthPercent", 0))}}


def apply_warmup(cluster: dict[str, Any], balancer: dict[str, Any]) -> None:
    """`warmup` (or the older `warmupDurationSecs`): a new endpoint's share grows over that
    window (Envoy's slow start), for the round-robin and least-request balancers it exists for."""
    warmup = balancer.get("warmup") or {}
    window = warmup.get("duration", balancer.get("warmupDurationSecs"))
    config_key = {"ROUND_ROBIN": "round_robin_lb_config",
                  "LEAST_REQUEST": "least_request_lb_config"}.get(cluster["lb_policy"])
    if window is None or config_key is None:
        return
    slow_start: dict[str, Any] = {"slow_start_window": duration(window)}
    if "aggression" in warmup:
        slow_start["aggression"] = {"default_value": float(warmup["aggression"]),
                                    "runtime_key": "istio.warmup.aggression"}
    if "minimumPercent" in warmup:
        slow_start["min_weight_percent"] = {"value": float(warmup["minimumPercent"])}
    cluster[config_key] = {"slow_start_config": slow_start}


def apply_consistent_hash(cluster: dict[str, Any], consistent_hash: dict[str, Any]) -> None:
    """`consistentHash`: a Maglev table or a hash ring (Istio's default, 1024 entries at
    least); the key itself is the route's hash_policy (route_policies.hash_policy)."""
    if "maglev" in consistent_hash:
        cluster["lb_policy"] = "MAGLEV"
        size = (consistent_hash["maglev"] or {}).get("tableSize")
        if size:
            cluster["maglev_lb_config"] = {"table_size": str(int(size))}
        return
    cluster["lb_policy"] = "RING_HASH"
    ring = consistent_hash.get("ringHash") or {}
    size = ring.get("minimumRingSize", consistent_hash.get("minimumRingSize", 1024))
    cluster["ring_hash_lb_config"] = {"minimum_ring_size": str(int(size))}


def service_port_clusters(proxy: Proxy, svc: Service, port: ServicePort,
                          ctx: PushContext) -> list[dict]:
    """The Service port's cluster and one per DestinationRule subset, with their policy and
    their transport: the rule's `tls` (SIMPLE, MUTUAL, ISTIO_MUTUAL, DISABLE) where it sets
    one, else auto mTLS toward the endpoints that take it."""
    dr = ctx.destination_rule(proxy, svc.fqdn)
    host_policy = (dr.spec.get("trafficPolicy") if dr else None) or {}
    subsets = [("", {}, None)] + [(str(s["name"]), dict(s.get("labels") or {}),
                                   s.get("trafficPolicy")) for s in ctx.subsets(proxy, svc.fqdn)]
    clusters = []
    for subset, labels, subset_policy in subsets:
        endpoints = ctx.endpoint_workloads(svc, port, labels)
        cluster = static_cluster(outbound_cluster(port.port, subset, svc.fqdn),
                                 [p for p, _ in endpoints])
        policy = merge_policy(host_policy, subset_policy, port.port)
        apply_traffic_policy(cluster, policy)
        if port.protocol != "HTTP":
            # Istio passes a TCP port's bytes through, one upstream connection per client's.
            # A plain HTTP request the sidecar parses on its way (routes.opaque_tcp_route)
            # gets its own, closed with it, so its ends log it as the TCP connection it is.
            apply_traffic_policy(cluster, {"connectionPool": {"http": {
                "maxRequestsPerConnection": 1}}})
        apply_upstream_tls(cluster, proxy, ctx, svc, subset, port.port, port.target_port,
                           endpoints, policy.get("tls"),
                           dr_selects=bool(dr and dr.spec.get("workloadSelector")))
        clusters.append(cluster)
    return clusters


def outbound_clusters(proxy: Proxy, ctx: PushContext) -> list[dict[str, Any]]:
    return [c for svc in sorted(ctx.services.values(), key=lambda s: s.fqdn)
            for port in svc.ports for c in service_port_clusters(proxy, svc, port, ctx)]


def kube_clusters(ctx: PushContext) -> list[dict[str, Any]]:
    """kube-proxy forwards connections, it does not pool them: one upstream connection per
    request, so a policy change (STRICT mTLS) applies to the very next request, as on a
    cluster where each client connection is its own."""
    clusters = []
    for svc in sorted(ctx.services.values(), key=lambda s: s.fqdn):
        for port in svc.ports:
            cluster = static_cluster(kube_cluster(port.port, svc.fqdn),
                                     ctx.endpoints(svc, port, {}))
            apply_traffic_policy(cluster, {"connectionPool": {"http": {
                "maxRequestsPerConnection": 1}}})
            clusters.append(cluster)
    return clusters


def inbound_clusters(proxy: Proxy) -> list[dict[str, Any]]:
    return [static_cluster(inbound_cluster(cport), [app_port])
            for cport, app_port in sorted(proxy.app_ports.items())]


def build_clusters(proxy: Proxy, ctx: PushContext) -> list[dict[str, Any]]:
    """Every cluster `proxy` needs."""
    from .egress import blackhole_cluster, external_clusters, passthrough_cluster

    if proxy.kind == "kube":
        return [*kube_clusters(ctx), passthrough_cluster(ctx)]
    clusters = outbound_clusters(proxy, ctx) + external_clusters(proxy, ctx)
    if proxy.kind == "sidecar":
        clusters += [*inbound_clusters(proxy), passthrough_cluster(ctx), blackhole_cluster(ctx)]
    return clusters

