"""`istioctl proxy-config` as DataFrames, read from the proxy's own admin API."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

from .backend import Backend

KINDS = ("listeners", "routes", "clusters", "endpoints", "secret")


def _dump(mesh: Backend, pod: str, namespace: str) -> list[dict[str, Any]]:
    return list(json.loads(mesh.proxy_admin(pod, namespace, "config_dump"))["configs"])


def _section(configs: list[dict[str, Any]], suffix: str) -> dict[str, Any]:
    return next((c for c in configs if c.get("@type", "").endswith("." + suffix)), {})


def _match_text(match: dict[str, Any]) -> str:
    parts = []
    for key in ("path", "prefix"):
        if key in match:
            parts.append(f"{key}={match[key]}")
    if "safe_regex" in match:
        parts.append(f"regex={match['safe_regex'].get('regex')}")
    if "connect_matcher" in match:
        parts.append("CONNECT")
    for h in match.get("headers", []):
        sm = h.get("string_match") or {}
        parts.append(f"{h['name']}:{next(iter(sm.values()), '*')}")
    return " ".join(parts)


def _action_text(route: dict[str, Any]) -> str:
    action = route.get("route") or {}
    if "cluster" in action:
        return str(action["cluster"])
    if "weighted_clusters" in action:
        return ", ".join(f"{c['name']} ({c.get('weight', 0)}%)"
                         for c in action["weighted_clusters"]["clusters"])
    if "direct_response" in route:
        return f"direct response {route['direct_response'].get('status')}"
    return "-"


def listeners(configs: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for item in _section(configs, "ListenersConfigDump").get("dynamic_listeners", []):
        listener = (item.get("active_state") or {}).get("listener") or {}
        address = listener.get("address", {}).get("socket_address", {})
        for chain in listener.get("filter_chains", []):
            for f in chain.get("filters", []):
                tc = f.get("typed_config", {})
                target = ((tc.get("rds") or {}).get("route_config_name")
                          or (tc.get("route_config") or {}).get("name") or tc.get("cluster")
                          or ", ".join(c["name"] for c in (tc.get("weighted_clusters") or {})
                                       .get("clusters", [])))
                rows.append({"name": listener.get("name"),
                             "address": address.get("address"),
                             "port": address.get("port_value"),
                             "filter": f.get("name", "").rsplit(".", 1)[-1],
                             "destination": f"Route: {target}" if "rds" in tc or
                             "route_config" in tc else f"Cluster: {target}"})
    return pd.DataFrame(rows, columns=["name", "address", "port", "filter", "destination"])


def routes(configs: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for item in _section(configs, "RoutesConfigDump").get("dynamic_route_configs", []):
        rc = item.get("route_config") or {}
        for vhost in rc.get("virtual_hosts", []):
            for route in vhost.get("routes", []):
                rows.append({"route_config": rc.get("name"), "virtual_host": vhost.get("name"),
                             "domains": ", ".join(vhost.get("domains", [])[:3]),
                             "match": _match_text(route.get("match", {})),
                             "destination": _action_text(route),
                             "fault": "yes" if route.get("typed_per_filter_config") else "",
                             "timeout": (route.get("route") or {}).get("timeout", "")})
    return pd.DataFrame(rows, columns=["route_config", "virtual_host", "domains", "match",
                                       "destination", "fault", "timeout"])


def clusters(configs: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for item in _section(configs, "ClustersConfigDump").get("dynamic_active_clusters", []):
        cluster = item.get("cluster") or {}
        name = str(cluster.get("name", ""))
        direction, port, subset, host = (name.split("|") + ["", "", "", ""])[:4]
        rows.append({"service_fqdn": host or name, "port": port, "subset": subset,
                     "direction": direction.upper(), "type": cluster.get("type", "EDS"),
                     "name": name})
    return pd.DataFrame(rows, columns=["service_fqdn", "port", "subset", "direction", "type",
                                       "name"])


def endpoint_text(address: dict[str, Any]) -> str:
    """An Envoy address as istioctl prints it: `IP:PORT`, or `unix://PATH` for a pipe (the
    local mesh's xDS and admin sockets)."""
    if "pipe" in address:
        return f"unix://{address['pipe'].get('path', '')}"
    socket = address.get("socket_address", {})
    return f"{socket.get('address')}:{socket.get('port_value')}"


def endpoints(mesh: Backend, pod: str, namespace: str) -> pd.DataFrame:
    data = json.loads(mesh.proxy_admin(pod, namespace, "clusters?format=json"))
    rows = []
    for status in data.get("cluster_statuses", []):
        for host in status.get("host_statuses", []):
            address = host.get("address", {})
            health = host.get("health_status", {})
            ok = health.get("eds_health_status", "HEALTHY") == "HEALTHY" and not any(
                v for k, v in health.items() if k.startswith("failed"))
            rows.append({"endpoint": endpoint_text(address),
                         "status": "HEALTHY" if ok else "UNHEALTHY",
                         "outlier_check": "EJECTED" if health.get("failed_outlier_check")
                         else "OK", "cluster": status.get("name")})
    return pd.DataFrame(rows, columns=["endpoint", "status", "outlier_check", "cluster"])


def secrets(configs: list[dict[str, Any]]) -> pd.DataFrame:
    """`istioctl proxy-config secret`: the SDS secrets a proxy holds (`default`, `ROOTCA`,
    gateway credentials), each certificate's identity, serial and validity; never a key."""
    import base64

    from . import certs

    rows = []
    for item in _section(configs, "SecretsConfigDump").get("dynamic_active_secrets", []):
        secret = item.get("secret") or {}
        tls = secret.get("tls_certificate") or {}
        trusted = (secret.get("validation_context") or {}).get("trusted_ca") or {}
        pem = (tls.get("certificate_chain") or trusted).get("inline_bytes")
        if not pem:
            continue
        info = certs.describe(base64.b64decode(pem))
        rows.append({"resource_name": item.get("name"),
                     "type": "Cert Chain" if tls else "CA",
                     "status": "ACTIVE", "valid_cert": True,
                     "serial_number": info["serial"], "identity": info["spiffe_id"] or
                     info["subject"], "not_after": info["not_after"],
                     "not_before": info["not_before"]})
    return pd.DataFrame(rows, columns=["resource_name", "type", "status", "valid_cert",
                                       "serial_number", "identity", "not_after", "not_before"])


def proxy_config(mesh: Backend, kind: str, pod: str, namespace: str = "default") -> pd.DataFrame:
    """`istioctl proxy-config KIND POD.NS`: what this proxy really holds, from its admin API."""
    if kind not in KINDS:
        raise ValueError(f'unknown proxy-config kind "{kind}"; use one of {", ".join(KINDS)}')
    if kind == "endpoints":
        return endpoints(mesh, pod, namespace)
    return {"listeners": listeners, "routes": routes, "clusters": clusters,
            "secret": secrets}[kind](_dump(mesh, pod, namespace))


def stats(mesh: Backend, pod: str, namespace: str, pattern: str = "") -> pd.DataFrame:
    """`pilot-agent request GET stats`, filtered by a substring, as name/value rows."""
    rows = []
    for line in mesh.proxy_admin(pod, namespace, "stats").splitlines():
        name, _, value = line.partition(": ")
        if pattern in name:
            rows.append({"stat": name, "value": value})
    return pd.DataFrame(rows, columns=["stat", "value"])


def filter_chains(mesh: Backend, pod: str, namespace: str,
                  direction: str | None = None) -> pd.DataFrame:
    """Each filter chain of a proxy's listeners: what it matches (SNI names and the rest of
    `filter_chain_match`), its first network filter, and what it does with TLS (the SDS
    certificate it presents, the CA it checks clients against, whether a client certificate
    is required). `direction="inbound"` keeps the inbound listeners only."""
    dump = json.loads(mesh.proxy_admin(pod, namespace, "config_dump?resource=dynamic_listeners"))
    rows = []
    for item in dump["configs"]:
        listener = item.get("active_state", {}).get("listener", {})
        if direction and not listener.get("name", "").startswith(direction):
            continue
        for chain in listener.get("filter_chains", []):
            tls = chain.get("transport_socket", {}).get("typed_config", {})
            common = tls.get("common_tls_context", {})
            match = chain.get("filter_chain_match", {})
            rows.append({
                "listener": listener["name"],
                "sni": ", ".join(match.get("server_names", [])),
                "match": json.dumps(match),
                "filter": chain["filters"][0]["name"].rsplit(".", 1)[-1],
                "certificate": ", ".join(
                    s["name"] for s in common.get("tls_certificate_sds_secret_configs", [])),
                "client_ca": common.get("validation_context_sds_secret_config", {}).get("name", ""),
                "client_cert_required": bool(tls.get("require_client_certificate", False)),
            })
    return pd.DataFrame(rows, columns=["listener", "sni", "match", "filter", "certificate",
                                       "client_ca", "client_cert_required"])


def certificate_chains(mesh: Backend, pod: str, namespace: str) -> pd.DataFrame:
    """Every certificate in every SDS secret a proxy holds, one row each (`certs.table`'s
    columns plus `pod` and `secret`): what `istioctl proxy-config secret -o json | jq | base64
    -d | openssl x509` shows, for the whole chain."""
    import base64

    from . import certs

    dump = json.loads(mesh.proxy_admin(pod, namespace,
                                       "config_dump?resource=dynamic_active_secrets"))
    frames = []
    for item in dump["configs"]:
        secret = item["secret"]
        held = (secret.get("tls_certificate", {}).get("certificate_chain")
                or secret["validation_context"]["trusted_ca"])
        pem = base64.b64decode(held["inline_bytes"])
        frames.append(certs.table(pem).assign(pod=pod, secret=item["name"]))
    return pd.concat(frames, ignore_index=True)


def cluster_health(mesh: Backend, pod: str, namespace: str, cluster: str = "") -> pd.DataFrame:
    """Envoy's `/clusters`: per endpoint of each cluster (whose name contains `cluster`), its
    health flags and its counters (active connections, requests, errors)."""
    data = json.loads(mesh.proxy_admin(pod, namespace, "clusters?format=json"))
    rows = []
    for status in data.get("cluster_statuses", []):
        if cluster not in status.get("name", ""):
            continue
        for host in status.get("host_statuses", []):
            address = host.get("address", {})
            counters = {s["name"]: int(s.get("value", 0)) for s in host.get("stats", [])}
            health = host.get("health_status", {})
            flags = [k.removeprefix("failed_") for k, v in health.items()
                     if k.startswith("failed") and v] + [
                     k for k in ("pending_dynamic_removal", "excluded_via_immediate_hc_fail")
                     if health.get(k)]
            rows.append({"cluster": status.get("name"),
                         "endpoint": endpoint_text(address),
                         "health": health.get("eds_health_status", "HEALTHY"),
                         "flags": ",".join(flags) or "-",
                         "cx_active": counters.get("cx_active", 0),
                         "rq_total": counters.get("rq_total", 0),
                         "rq_error": counters.get("rq_error", 0),
                         "rq_timeout": counters.get("rq_timeout", 0)})
    return pd.DataFrame(rows, columns=["cluster", "endpoint", "health", "flags", "cx_active",
                                       "rq_total", "rq_error", "rq_timeout"])


def eds(mesh: Backend, pod: str, namespace: str) -> pd.DataFrame:
    """`/config_dump?include_eds`: the endpoints the control plane sent, per cluster, with
    their health status and weight (what EDS says, before outlier detection acts)."""
    configs = json.loads(mesh.proxy_admin(pod, namespace, "config_dump?include_eds"))["configs"]
    rows = []
    for item in _section(configs, "EndpointsConfigDump").get("dynamic_endpoint_configs", []):
        assignment = item.get("endpoint_config") or {}
        for group in assignment.get("endpoints") or []:
            for lb in group.get("lb_endpoints") or []:
                address = ((lb.get("endpoint") or {}).get("address") or {}).get(
                    "socket_address") or {}
                rows.append({"cluster": assignment.get("cluster_name"),
                             "endpoint": f"{address.get('address')}:{address.get('port_value')}",
                             "health_status": lb.get("health_status", "UNKNOWN"),
                             "weight": lb.get("load_balancing_weight", 1),
                             "version": item.get("version_info", "")})
    return pd.DataFrame(rows, columns=["cluster", "endpoint", "health_status", "weight",
                                       "version"])
