"""RDS: route configurations built from VirtualServices (Istio's httproute.go).

Outputs `envoy.config.route.v3.RouteConfiguration` dicts:
- `outbound_http` for a sidecar's forward-proxy listener, one virtual host per Service port;
- `http.<port>` for each HTTP port of a gateway (e.g. `http.8080`);
- `kube_<namespace>` for workloads without a sidecar (plain kube-proxy behaviour).
"""

from __future__ import annotations

from typing import Any

from ..config.model import Resource
from ..config.schema import parse_duration
from . import route_policies
from .context import Proxy, PushContext, Service
from .naming import OPAQUE_TCP_ROUTE, host_aliases, kube_cluster, outbound_cluster

ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
FAULT_FILTER = "envoy.filters.http.fault"
FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"

# Istio's default retry policy for HTTP routes (pilot/pkg/networking/core/route/retry).
DEFAULT_RETRY_POLICY: dict[str, Any] = {
    "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
    "num_retries": 2,
    "retriable_status_codes": [503],
    "retry_host_predicate": [
        {
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": "type.googleapis.com/"
                "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
            },
        }
    ],
    "host_selection_retry_max_attempts": "5",
}


def duration(text: str) -> str:
    """Istio duration (`7s`, `500ms`) to protobuf JSON duration (`7s`, `0.5s`)."""
    seconds = parse_duration(text)
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


def string_match(spec: dict[str, Any]) -> dict[str, Any]:
    if "exact" in spec:
        return {"exact": spec["exact"]}
    if "prefix" in spec:
        return {"prefix": spec["prefix"]}
    if "regex" in spec:
        return {"safe_regex": {"regex": spec["regex"]}}
    return {"prefix": ""}


def route_match(match: dict[str, Any]) -> dict[str, Any]:
    """An Istio HTTPMatchRequest as an Envoy RouteMatch."""
    uri = match.get("uri") or {}
    out: dict[str, Any]
    if "exact" in uri:
        out = {"path": uri["exact"]}
    elif "regex" in uri:
        out = {"safe_regex": {"regex": uri["regex"]}}
    else:
        out = {"prefix": uri.get("prefix", "/")}
    if match.get("ignoreUriCase"):
        out["case_sensitive"] = False
    headers = []
    for name, spec in (match.get("headers") or {}).items():
        if spec:
            headers.append({"name": name, "string_match": string_match(spec)})
        else:
            headers.append({"name": name, "present_match": True})
    for name, spec in (match.get("withoutHeaders") or {}).items():
        headers.append({"name": name, "string_match": string_match(spec), "invert_match": True})
    for key, name in (("method", ":method"), ("authority", ":authority"), ("scheme", ":scheme")):
        if key in match:
            headers.append({"name": name, "string_match": string_match(match[key])})
    if headers:
        out["headers"] = headers
    params = [
        {"name": name, "string_match": string_match(spec)}
        for name, spec in (match.get("queryParams") or {}).items()
    ]
    if params:
        out["query_parameters"] = params
    return out


def destination_key(ctx: PushContext, dest: dict[str, Any], namespace: str
                    ) -> tuple[int, str, str]:
    """(port, subset, host FQDN) of an Istio Destination."""
    host = ctx.host_fqdn(str(dest["host"]), namespace)
    svc = ctx.services.get(host)
    port = (dest.get("port") or {}).get("number")
    if port is None and svc and len(svc.ports) == 1:
        port = svc.ports[0].port
    return int(port or 80), str(dest.get("subset", "")), host


def destination_cluster(ctx: PushContext, dest: dict[str, Any], namespace: str) -> str:
    return outbound_cluster(*destination_key(ctx, dest, namespace))


def percentage(spec: dict[str, Any]) -> dict[str, Any]:
    """Istio's fault percentage: `percentage.value` (float) or the older integer `percent`."""
    if "percentage" in spec:
        value = float(spec["percentage"].get("value", 0))
        return {"numerator": round(value * 10000), "denominator": "MILLION"}
    if "percent" in spec:
        return {"numerator": int(spec["percent"]), "denominator": "HUNDRED"}
    return {"numerator": 100, "denominator": "HUNDRED"}


def fault_config(fault: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"@type": FAULT_TYPE}
    if "delay" in fault:
        delay = fault["delay"]
        out["delay"] = {
            "fixed_delay": duration(delay.get("fixedDelay", "0s")),
            "percentage": percentage(delay),
        }
    if "abort" in fault:
        abort = fault["abort"]
        out["abort"] = {**route_policies.abort_status(abort), "percentage": percentage(abort)}
    return out


def retry_policy(retries: dict[str, Any] | None) -> dict[str, Any] | None:
    if retries is None:
        return DEFAULT_RETRY_POLICY
    attempts = int(retries.get("attempts", 0))
    if attempts == 0:
        return None
    policy = dict(DEFAULT_RETRY_POLICY, num_retries=attempts)
    if retries.get("retryIgnorePreviousHosts") is False:
        policy.pop("retry_host_predicate")
        policy.pop("host_selection_retry_max_attempts")
    if "backoff" in retries:
        policy["retry_back_off"] = {"base_interval": duration(retries["backoff"])}
    if "retryOn" in retries:
        codes = [int(c) for c in str(retries["retryOn"]).split(",") if c.strip().isdigit()]
        named = [c for c in str(retries["retryOn"]).split(",") if c and not c.strip().isdigit()]
        policy["retry_on"] = ",".join(named + (["retriable-status-codes"] if codes else []))
        policy["retriable_status_codes"] = codes
        if not codes:
            policy.pop("retriable_status_codes")
    if "perTryTimeout" in retries:
        policy["per_try_timeout"] = duration(retries["perTryTimeout"])
    return policy


def header_operations(headers: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for direction in ("request", "response"):
        ops = (headers or {}).get(direction) or {}
        add = [
            {"header": {"key": k, "value": str(v)}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
            for k, v in (ops.get("set") or {}).items()
        ] + [
            {"header": {"key": k, "value": str(v)}, "append_action": "APPEND_IF_EXISTS_OR_ADD"}
            for k, v in (ops.get("add") or {}).items()
        ]
        if add:
            out[f"{direction}_headers_to_add"] = add
        if ops.get("remove"):
            out[f"{direction}_headers_to_remove"] = list(ops["remove"])
    return out


def http_route_action(ctx: PushContext, http: dict[str, Any], namespace: str,
                      proxy: Proxy | None = None, port: int | None = None) -> dict[str, Any]:
    """One Istio HTTPRoute's action part (shared by all its matches), as `proxy` sees it on
    `port`."""
    if "directResponse" in http:
        body = (http["directResponse"].get("body") or {}).get("string")
        resp: dict[str, Any] = {"status": int(http["directResponse"]["status"])}
        if body is not None:
            resp["body"] = {"inline_string": body}
        return {"direct_response": resp}
    if "redirect" in http:
        return {"redirect": route_policies.redirect_action(http["redirect"], port)}

    destinations = [d for d in http.get("route") or [] if d.get("weight", 1) != 0 or
                    len(http.get("route") or []) == 1]
    action: dict[str, Any] = {"timeout": duration(http["timeout"]) if "timeout" in http else "0s"}
    keys = [destination_key(ctx, d["destination"], namespace) for d in destinations]
    if len(destinations) == 1:
        action["cluster"] = outbound_cluster(*keys[0])
    else:
        action["weighted_clusters"] = {
            "clusters": [
                {"name": outbound_cluster(*key), "weight": int(d.get("weight", 0)),
                 **header_operations(d.get("headers"))}
                for key, d in zip(keys, destinations, strict=True)
            ]
        }
    policy = retry_policy(http.get("retries"))
    if policy:
        action["retry_policy"] = policy
    rewrite = http.get("rewrite") or {}
    if "uri" in rewrite:
        action["prefix_rewrite"] = rewrite["uri"]
    if "uriRegexRewrite" in rewrite:
        action["regex_rewrite"] = route_policies.regex_rewrite(rewrite["uriRegexRewrite"])
    if "authority" in rewrite:
        action["host_rewrite_literal"] = rewrite["authority"]
    mirrors = route_policies.mirror_policies(ctx, http, namespace)
    if mirrors:
        action["request_mirror_policies"] = mirrors
    hashing = route_policies.route_hash_policy(ctx, proxy, keys)
    if hashing:
        action["hash_policy"] = hashing
    route: dict[str, Any] = {"route": action}
    route.update(header_operations(http.get("headers")))
    if len(destinations) == 1:
        # Istio adds a single destination's own header operations to the route's.
        for key, ops in header_operations(destinations[0].get("headers")).items():
            route[key] = route.get(key, []) + ops
    return route


def http_routes(
    ctx: PushContext, vs: Resource, *, gateway: str, port: int | None, proxy: Proxy | None = None
) -> list[dict[str, Any]]:
    """Envoy routes for one VirtualService as `proxy` sees it through `gateway` (`mesh` or
    `ns/name`) on `port`; matches whose `sourceLabels`/`sourceNamespace` do not select the
    proxy are left out."""
    routes = []
    for i, http in enumerate(vs.spec.get("http") or []):
        matches = http.get("match") or [{}]
        action = http_route_action(ctx, http, vs.namespace, proxy, port)
        for j, match in enumerate(matches):
            if proxy is not None and not route_policies.selects_source(match, proxy):
                continue
            if "port" in match and port is not None and int(match["port"]) != port:
                continue
            bound = match.get("gateways")
            if bound and gateway not in [
                g if g == "mesh" or "/" in g else f"{vs.namespace}/{g}" for g in bound
            ]:
                continue
            route = {
                "name": http.get("name") or f"{vs.namespace}.{vs.name}.{i}.{j}",
                "match": route_match(match),
                "metadata": {"filter_metadata": {"istio": {"config": vs_path(vs)}}},
                **action,
            }
            per_filter: dict[str, Any] = {}
            if "fault" in http:
                per_filter[FAULT_FILTER] = fault_config(http["fault"])
            if "corsPolicy" in http:
                per_filter[route_policies.CORS_FILTER] = route_policies.cors_policy(
                    http["corsPolicy"])
            if per_filter:
                route["typed_per_filter_config"] = per_filter
            routes.append(route)
    return routes


def vs_path(vs: Resource) -> str:
    return f"/apis/networking.istio.io/v1/namespaces/{vs.namespace}/virtual-service/{vs.name}"


def default_route(cluster: str, hash_policy: list[dict[str, Any]] | None = None
                  ) -> dict[str, Any]:
    action: dict[str, Any] = {"cluster": cluster, "timeout": "0s",
                              "retry_policy": DEFAULT_RETRY_POLICY}
    if hash_policy:
        action["hash_policy"] = hash_policy
    return {"name": "default", "match": {"prefix": "/"}, "route": action}


def _l4_destination(cluster: str, weighted: list[tuple[str, int]] | None) -> dict[str, Any]:
    if weighted and len(weighted) > 1:
        return {"weighted_clusters": {"clusters": [{"name": name, "weight": weight}
                                                   for name, weight in weighted]}}
    return {"cluster": weighted[0][0] if weighted else cluster}


def connect_route(cluster: str, weighted: list[tuple[str, int]] | None = None
                  ) -> dict[str, Any]:
    """Tunnel `CONNECT host:port` (curl's HTTPS through a proxy) as raw TCP to the cluster,
    or split over `weighted` (cluster, weight) pairs."""
    return {"match": {"connect_matcher": {}}, "route": {
        "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}],
        **_l4_destination(cluster, weighted)}}


def opaque_tcp_route(cluster: str, weighted: list[tuple[str, int]] | None = None
                     ) -> dict[str, Any]:
    """A plain HTTP request to a port Istio treats as TCP: Istio passes its bytes through
    (no HTTP rules, no retries), so it goes where a tunnel to the port would. Named so the
    telemetry counts it as a TCP connection, as Istio's TCP proxy would report it."""
    return {"name": OPAQUE_TCP_ROUTE, "match": {"prefix": "/"},
            "route": {**_l4_destination(cluster, weighted), "timeout": "0s"}}


def mesh_virtual_services(ctx: PushContext, svc: Service, proxy: Proxy) -> list[Resource]:
    """VirtualServices bound to the mesh, exported to the proxy's namespace, whose hosts name
    this Service."""
    return [
        vs for vs in ctx.virtual_services
        if "mesh" in ctx.vs_gateways(vs) and route_policies.exported_to(vs, proxy.namespace)
        and any(ctx.host_fqdn(str(h), vs.namespace) == svc.fqdn
                for h in vs.spec.get("hosts") or [])
    ]


def outbound_route_config(proxy: Proxy, ctx: PushContext) -> dict[str, Any]:
    """The sidecar's forward-proxy routes: a virtual host per Service port, Istio rules applied."""
    from .egress import (
        catch_all_virtual_host,
        external_virtual_hosts,
        in_egress_scope,
        undeclared_port_virtual_hosts,
    )

    vhosts = []
    for svc in sorted(ctx.services.values(), key=lambda s: s.fqdn):
        if not in_egress_scope(proxy, ctx, svc.fqdn, svc.namespace):
            continue  # the Sidecar's egress hosts leave it out
        vses = mesh_virtual_services(ctx, svc, proxy)
        for port in svc.ports:
            default_cluster = outbound_cluster(port.port, "", svc.fqdn)
            l4_clusters = route_policies.mesh_l4_clusters(ctx, proxy, vses, svc.fqdn,
                                                          port.port)
            routes: list[dict[str, Any]] = [connect_route(default_cluster, l4_clusters)]
            if port.protocol == "HTTP":
                found = [r for vs in vses[:1] for r in http_routes(ctx, vs, gateway="mesh",
                                                                   port=port.port, proxy=proxy)]
                hashing = route_policies.route_hash_policy(ctx, proxy,
                                                           [(port.port, "", svc.fqdn)])
                routes += found or [default_route(default_cluster, hashing)]
            else:
                routes.append(opaque_tcp_route(default_cluster, l4_clusters))
            vhosts.append({
                "name": f"{svc.fqdn}:{port.port}",
                "domains": host_aliases(svc.name, svc.namespace, port.port, proxy.namespace,
                                        svc.cluster_ip),
                "routes": routes,
            })
    vhosts += [*external_virtual_hosts(proxy, ctx), *undeclared_port_virtual_hosts(proxy, ctx),
               catch_all_virtual_host(proxy, ctx)]
    return {"@type": ROUTE_TYPE, "name": "outbound_http", "virtual_hosts": vhosts,
            "validate_clusters": False}


def kube_route_config(namespace: str, ctx: PushContext) -> dict[str, Any]:
    """Routes for workloads without a sidecar in `namespace`: every Service by name, no Istio
    rules, CONNECT tunnels for TLS (what cluster DNS and kube-proxy give a plain pod)."""
    vhosts = []
    for svc in sorted(ctx.services.values(), key=lambda s: s.fqdn):
        for port in svc.ports:
            cluster = kube_cluster(port.port, svc.fqdn)
            routes = [connect_route(cluster)]
            if port.protocol == "HTTP":
                routes.append({"match": {"prefix": "/"},
                               "route": {"cluster": cluster, "timeout": "0s"}})
            else:
                routes.append(opaque_tcp_route(cluster))
            vhosts.append({
                "name": f"{svc.fqdn}:{port.port}",
                "domains": host_aliases(svc.name, svc.namespace, port.port, namespace,
                                        svc.cluster_ip),
                "routes": routes,
            })
    # Any other name is the internet's, reached directly: no mesh policy applies.
    from .egress import PASSTHROUGH

    vhosts.append({"name": "internet", "domains": ["*"], "routes": [
        connect_route(PASSTHROUGH),
        {"match": {"prefix": "/"}, "route": {"cluster": PASSTHROUGH, "timeout": "0s"}}]})
    return {"@type": ROUTE_TYPE, "name": f"kube_{namespace}", "virtual_hosts": vhosts,
            "validate_clusters": False}
