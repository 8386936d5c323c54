"""The parts of an Istio HTTPRoute beyond picking a destination (Istio's route/route.go).

Each builder returns a piece of an `envoy.config.route.v3.Route` or `RouteAction`:
request mirroring (`request_mirror_policies`), CORS (the cors filter's per-route
`CorsPolicy`), consistent hashing (`hash_policy`, from the destination's DestinationRule),
redirects with scheme and port, regex rewrites and gRPC aborts. And which rules a proxy gets
at all: `sourceLabels`/`sourceNamespace` matches select client workloads, and `exportTo`
decides which namespaces see a VirtualService or DestinationRule.
"""

from __future__ import annotations

from typing import Any

from ..config.analyze_routing import GRPC_STATUS, REDIRECT_CODES
from ..config.model import Resource
from ..config.schema import parse_duration
from . import clusters, routes
from .context import Proxy, PushContext, selector_matches

CORS_FILTER = "envoy.filters.http.cors"
CORS_TYPE = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
CORS_POLICY_TYPE = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"

ENVOY_REDIRECT = dict(zip(REDIRECT_CODES, ("MOVED_PERMANENTLY", "FOUND", "SEE_OTHER",
                                            "TEMPORARY_REDIRECT", "PERMANENT_REDIRECT"),
                          strict=True))


# --- which config a proxy sees ----------------------------------------------------------


def exported_to(resource: Resource, namespace: str) -> bool:
    """Istio's `exportTo`: `*` (the default) everywhere, `.` the resource's own namespace,
    otherwise the namespaces listed (`~` lists none)."""
    targets = [str(t) for t in resource.spec.get("exportTo") or ["*"]]
    return any(t == "*" or t == namespace or (t == "." and resource.namespace == namespace)
               for t in targets)


def selects_source(match: dict[str, Any], proxy: Proxy) -> bool:
    """Whether a match's `sourceLabels` and `sourceNamespace` select this proxy's workload
    (a rule that does not is left out of the proxy's config, as Istio leaves it out)."""
    labels = dict(match.get("sourceLabels") or {})
    if labels and not selector_matches(labels, proxy.labels):
        return False
    namespace = match.get("sourceNamespace")
    return namespace is None or str(namespace) == proxy.namespace


def l4_matches(matches: list[dict[str, Any]] | None, proxy: Proxy,
               gateway: tuple[str, str]) -> list[dict[str, Any]]:
    """The matches of a `tcp` or `tls` rule that apply to this proxy seen through `gateway`
    (`mesh` or `ns/name`, and the VirtualService's namespace): `sourceLabels`,
    `sourceNamespace` and `gateways` select; a rule without matches applies to all."""
    name, namespace = gateway
    out = []
    for match in matches or [{}]:
        bound = [g if g == "mesh" or "/" in g else f"{namespace}/{g}"
                 for g in match.get("gateways") or []]
        if (not bound or name in bound) and selects_source(match, proxy):
            out.append(match)
    return out


def weighted(ctx: PushContext, vs: Resource, route: list[dict[str, Any]]
             ) -> list[tuple[str, int]]:
    """(cluster, weight) of an L4 route's destinations; a 0% destination is left out, as
    Istio does (Envoy refuses a weight of 0)."""
    out = [(routes.destination_cluster(ctx, d["destination"], vs.namespace),
            int(d.get("weight", 100 if len(route) == 1 else 0))) for d in route]
    kept = [(cluster, weight) for cluster, weight in out if weight > 0]
    return kept or out[:1]


def mesh_l4_clusters(ctx: PushContext, proxy: Proxy, vses: list[Resource], svc_fqdn: str,
                     port: int) -> list[tuple[str, int]]:
    """Where a sidecar sends a TCP connection to a Service port, by the mesh's `tls` rules
    (first `sniHosts` naming the Service) then `tcp` rules (first match on the port), as
    Istio's outbound TCP filter chains do. Without a pod network the sidecar sees only the
    tunnels it is asked to open (`CONNECT host:port`), so the SNI is taken to be the host
    the client asked for."""
    for vs in vses:
        for tls in vs.spec.get("tls") or []:
            for match in l4_matches(tls.get("match"), proxy, ("mesh", vs.namespace)):
                names = {ctx.host_fqdn(str(h), vs.namespace) for h in match.get("sniHosts") or []}
                if svc_fqdn in names and int(match.get("port", port)) == port:
                    return weighted(ctx, vs, tls.get("route") or [])
    for vs in vses:
        for tcp in vs.spec.get("tcp") or []:
            if any(int(m.get("port", port)) == port
                   for m in l4_matches(tcp.get("match"), proxy, ("mesh", vs.namespace))):
                return weighted(ctx, vs, tcp.get("route") or [])
    return []


# --- mirroring --------------------------------------------------------------------------


def _fraction(percent: float) -> dict[str, Any]:
    return {"default_value": {"numerator": round(percent * 10000), "denominator": "MILLION"}}


def mirror_policies(ctx: PushContext, http: dict[str, Any], namespace: str
                    ) -> list[dict[str, Any]]:
    """`mirror` with `mirrorPercentage` (or the older `mirrorPercent`, 100 % by default) and
    each of `mirrors[]` with its `percentage`. Envoy sends the copies fire-and-forget with
    `-shadow` appended to the Host, and discards their responses, as Istio's mirrors do."""
    out = []
    if isinstance(http.get("mirror"), dict):
        if "mirrorPercentage" in http:
            percent = float((http["mirrorPercentage"] or {}).get("value", 0))
        else:
            percent = float(http.get("mirrorPercent", 100))
        out.append({"cluster": routes.destination_cluster(ctx, http["mirror"], namespace),
                    "runtime_fraction": _fraction(percent)})
    for mirror in http.get("mirrors") or []:
        percent = float((mirror.get("percentage") or {}).get("value", 100))
        out.append({"cluster": routes.destination_cluster(ctx, mirror["destination"], namespace),
                    "runtime_fraction": _fraction(percent)})
    return out


# --- CORS -------------------------------------------------------------------------------


def cors_policy(cors: dict[str, Any]) -> dict[str, Any]:
    """The cors filter's per-route policy: the proxy answers a matching preflight itself and
    adds the `access-control-*` headers to the response of a matching request."""
    origins = [routes.string_match(o) for o in cors.get("allowOrigins") or []]
    origins += [{"exact": str(o)} for o in cors.get("allowOrigin") or []]
    policy: dict[str, Any] = {"@type": CORS_POLICY_TYPE, "allow_origin_string_match": origins}
    for key, field in (("allowMethods", "allow_methods"), ("allowHeaders", "allow_headers"),
                       ("exposeHeaders", "expose_headers")):
        if cors.get(key):
            policy[field] = ",".join(str(v) for v in cors[key])
    if "maxAge" in cors:
        policy["max_age"] = str(int(parse_duration(cors["maxAge"])))
    if "allowCredentials" in cors:
        policy["allow_credentials"] = bool(cors["allowCredentials"])
    if cors.get("unmatchedPreflights") == "IGNORE":
        policy["forward_not_matching_preflights"] = False
    return policy


def cors_filter() -> dict[str, Any]:
    return {"name": CORS_FILTER, "typed_config": {"@type": CORS_TYPE}}


# --- consistent hashing -----------------------------------------------------------------


def hash_policy(consistent_hash: dict[str, Any]) -> list[dict[str, Any]]:
    """A DestinationRule's `loadBalancer.consistentHash` key as a route's `hash_policy`."""
    if "httpHeaderName" in consistent_hash:
        return [{"header": {"header_name": str(consistent_hash["httpHeaderName"])}}]
    if "httpCookie" in consistent_hash:
        spec = consistent_hash["httpCookie"]
        cookie: dict[str, Any] = {"name": str(spec["name"])}
        if "ttl" in spec:
            cookie["ttl"] = f"{parse_duration(spec['ttl']):g}s"
        if "path" in spec:
            cookie["path"] = str(spec["path"])
        if spec.get("attributes"):
            cookie["attributes"] = [{"name": str(a["name"]), "value": str(a.get("value", ""))}
                                    for a in spec["attributes"]]
        return [{"cookie": cookie}]
    if consistent_hash.get("useSourceIp"):
        return [{"connection_properties": {"source_ip": True}}]
    if "httpQueryParameterName" in consistent_hash:
        return [{"query_parameter": {"name": str(consistent_hash["httpQueryParameterName"])}}]
    return []


def consistent_hash_for(ctx: PushContext, proxy: Proxy | None, host_fqdn: str, subset: str,
                        port: int) -> dict[str, Any] | None:
    """The `consistentHash` in force for a destination, merged as its cluster's policy is."""
    dr = ctx.destination_rule(proxy, host_fqdn)
    if dr is None:
        return None
    subset_policy = next((s.get("trafficPolicy") for s in dr.spec.get("subsets") or []
                          if s.get("name") == subset), None)
    policy = clusters.merge_policy(dr.spec.get("trafficPolicy"), subset_policy, port)
    found = (policy.get("loadBalancer") or {}).get("consistentHash")
    return found if isinstance(found, dict) else None


def route_hash_policy(ctx: PushContext, proxy: Proxy | None,
                      destinations: list[tuple[int, str, str]]) -> list[dict[str, Any]]:
    """The hash policy of the first (port, subset, host) destination whose DestinationRule
    hashes."""
    for port, subset, host in destinations:
        found = consistent_hash_for(ctx, proxy, host, subset, port)
        if found:
            return hash_policy(found)
    return []


# --- redirects, rewrites, aborts --------------------------------------------------------


def redirect_action(redirect: dict[str, Any], port: int | None) -> dict[str, Any]:
    """Istio's HTTPRedirect as Envoy's RedirectAction. `derivePort: FROM_REQUEST_PORT` is the
    port the route is built for (Envoy cannot read it from the request, Istio does the same);
    `FROM_PROTOCOL_DEFAULT` is Envoy's default: no port in the Location."""
    out: dict[str, Any] = {
        "response_code": ENVOY_REDIRECT[int(redirect.get("redirectCode", 301))]}
    if "uri" in redirect:
        out["path_redirect"] = redirect["uri"]
    if "authority" in redirect:
        out["host_redirect"] = redirect["authority"]
    if "scheme" in redirect:
        out["scheme_redirect"] = str(redirect["scheme"])
    if "port" in redirect:
        out["port_redirect"] = int(redirect["port"])
    elif redirect.get("derivePort") == "FROM_REQUEST_PORT" and port is not None:
        out["port_redirect"] = port
    return out


def regex_rewrite(spec: dict[str, Any]) -> dict[str, Any]:
    """`rewrite.uriRegexRewrite` (RE2 match, `\\1` references) as Envoy's regex_rewrite."""
    return {"pattern": {"regex": str(spec.get("match", ""))},
            "substitution": str(spec.get("rewrite", ""))}


def abort_status(abort: dict[str, Any]) -> dict[str, Any]:
    """`httpStatus`, or `grpcStatus` by its name (`UNAVAILABLE`), as Istio takes it."""
    if "grpcStatus" in abort:
        return {"grpc_status": GRPC_STATUS.index(str(abort["grpcStatus"]))}
    return {"http_status": int(abort.get("httpStatus", 500))}
