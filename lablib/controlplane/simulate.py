"""Simulate a call through a proxy's generated config without starting Envoy.

Like Istio's pilot/pkg/simulation: listener (by port) -> filter chain (matched as Envoy
matches it) -> HTTP connection
manager -> route configuration -> virtual host (by authority) -> route (by match) -> cluster.
A call that would fail says why with a named error instead of a result.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .snapshot import Snapshot


class SimulationError(Exception):
    """Base of the named ways a simulated call fails."""


class ErrNoListener(SimulationError):
    pass


class ErrNoRoute(SimulationError):
    pass


class ErrNoCluster(SimulationError):
    pass


class ErrNoFilterChain(SimulationError):
    """Envoy closes the connection: no filter chain of the listener matches it."""


class ErrTLSHandshake(SimulationError):
    """The chain's TLS handshake fails: plaintext to a TLS chain, or no client certificate
    where one is required."""


@dataclass
class Call:
    port: int  # the loopback port the client connects to
    authority: str = ""
    path: str = "/"
    method: str = "GET"
    headers: dict[str, str] = field(default_factory=dict)
    # The connection as the listener's filters see it. `tls`: the client starts a TLS
    # handshake offering `sni` and `alpn`, with a client certificate when `client_cert`.
    tls: bool = False
    sni: str = ""
    alpn: tuple[str, ...] = ()
    client_cert: bool = False
    source_ip: str = "127.0.0.1"
    destination_port: int | None = None  # the port the client dialled, if not `port`


@dataclass
class Result:
    listener: str
    clusters: dict[str, int]  # cluster -> weight (one cluster: weight 100)
    route_config: str = ""
    virtual_host: str = ""
    route: str = ""
    fault: dict[str, Any] | None = None
    timeout: str = ""
    direct_status: int | None = None
    redirect: dict[str, Any] | None = None
    envoy_route: dict[str, Any] = field(default_factory=dict)  # the route that matched
    filter_chain: dict[str, Any] = field(default_factory=dict)  # the chain that matched
    mirrors: dict[str, float] = field(default_factory=dict)  # cluster -> percent of requests
    hash_policy: list[dict[str, Any]] = field(default_factory=list)
    cors: dict[str, Any] | None = None  # the route's CorsPolicy

    @property
    def cluster(self) -> str:
        """The single destination cluster (fails for a weighted split)."""
        assert len(self.clusters) == 1, f"weighted split: {self.clusters}"
        return next(iter(self.clusters))


def string_matches(spec: dict[str, Any], value: str | None) -> bool:
    if value is None:
        return False
    if "exact" in spec:
        return value == spec["exact"]
    if "prefix" in spec:
        return value.startswith(spec["prefix"])
    if "safe_regex" in spec:
        return re.fullmatch(spec["safe_regex"]["regex"], value) is not None
    return True


def route_matches(match: dict[str, Any], call: Call) -> bool:
    path, _, query = call.path.partition("?")
    if "connect_matcher" in match:
        return call.method == "CONNECT"
    if call.method == "CONNECT":
        return False
    flags = 0 if match.get("case_sensitive", True) else re.IGNORECASE
    if "path" in match and not re.fullmatch(re.escape(match["path"]), path, flags):
        return False
    if "prefix" in match and not re.match(re.escape(match["prefix"]), path, flags):
        return False
    if "safe_regex" in match and not re.fullmatch(match["safe_regex"]["regex"], path, flags):
        return False
    params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    for param in match.get("query_parameters", []):
        if not string_matches(param.get("string_match", {}), params.get(param["name"])):
            return False
    headers = {k.lower(): v for k, v in call.headers.items()}
    headers[":method"] = call.method
    headers[":authority"] = call.authority
    for h in match.get("headers", []):
        value = headers.get(h["name"].lower())
        if h.get("present_match"):
            ok = value is not None
        else:
            ok = string_matches(h.get("string_match", {}), value)
        if ok == bool(h.get("invert_match")):
            return False
    return True


def domain_matches(domain: str, authority: str) -> bool:
    return domain == "*" or fnmatch.fnmatchcase(authority, domain)


def pick_virtual_host(route_config: dict[str, Any], authority: str) -> dict[str, Any]:
    """Envoy's order: exact domain, then suffix wildcards, then prefix wildcards, then `*`."""
    vhosts = route_config.get("virtual_hosts", [])
    for vh in vhosts:
        if authority in vh.get("domains", []):
            return dict(vh)
    for vh in vhosts:
        if any(d.startswith("*") and d != "*" and domain_matches(d, authority)
               for d in vh.get("domains", [])):
            return dict(vh)
    for vh in vhosts:
        if any(d.endswith("*") and d != "*" and domain_matches(d, authority)
               for d in vh.get("domains", [])):
            return dict(vh)
    for vh in vhosts:
        if "*" in vh.get("domains", []):
            return dict(vh)
    raise ErrNoRoute(f"no virtual host in {route_config.get('name')} for {authority!r}")


def _server_name_rank(names: list[str], sni: str) -> int:
    """How specifically `names` match `sni`: exact beats the longest wildcard suffix; 0 none."""
    best = 0
    for name in names:
        if name == sni:
            return 1 << 16
        if name.startswith("*.") and sni.endswith(name[1:]):
            best = max(best, len(name))
    return best


def _narrow(chains: list[dict[str, Any]], criterion: str,
            rank: Any) -> list[dict[str, Any]]:
    """Envoy's rule at one step: of the chains that set `criterion`, keep those matching best
    (rank > 0); if none does, keep the chains that leave it unset."""
    scored = [(rank(c["filter_chain_match"][criterion]), c) for c in chains
              if c.get("filter_chain_match", {}).get(criterion)]
    best = max((score for score, _ in scored), default=0)
    if best > 0:
        return [c for score, c in scored if score == best]
    return [c for c in chains if not c.get("filter_chain_match", {}).get(criterion)]


def _in_ranges(ranges: list[dict[str, Any]], address: str) -> int:
    network = ipaddress.ip_address(address)
    lengths = [int(r.get("prefix_len", 32)) for r in ranges
               if network in ipaddress.ip_network(
                   f"{r['address_prefix']}/{r.get('prefix_len', 32)}", strict=False)]
    return max(lengths, default=-1) + 1


def select_filter_chain(listener: dict[str, Any], call: Call) -> dict[str, Any]:
    """The filter chain Envoy picks for `call`'s connection, in Envoy's order: destination
    port, server names, transport protocol, application protocols, source addresses. SNI,
    ALPN and the transport protocol are seen only through a TLS inspector; without one a
    connection is `raw_buffer`."""
    inspects = any(f.get("name") == "envoy.filters.listener.tls_inspector"
                   for f in listener.get("listener_filters", []))
    tls_seen = call.tls and inspects
    transport = "tls" if tls_seen else "raw_buffer"
    port = call.destination_port or call.port
    chains = list(listener.get("filter_chains", []))
    steps: list[tuple[str, Any]] = [
        ("destination_port", lambda p: int(p == port)),
        ("server_names", lambda names: _server_name_rank(names, call.sni) if tls_seen else 0),
        ("transport_protocol", lambda t: int(t == transport)),
        ("application_protocols",
         lambda protocols: int(tls_seen and any(a in protocols for a in call.alpn))),
        ("source_prefix_ranges", lambda ranges: _in_ranges(ranges, call.source_ip)),
    ]
    for criterion, rank in steps:
        chains = _narrow(chains, criterion, rank)
    if chains:
        return chains[0]
    if "default_filter_chain" in listener:
        return dict(listener["default_filter_chain"])
    raise ErrNoFilterChain(f"no filter chain of {listener.get('name')} matches a "
                           f"{transport} connection (sni {call.sni!r}, alpn {list(call.alpn)})")


def _handshake(chain: dict[str, Any], call: Call) -> None:
    socket = chain.get("transport_socket") or {}
    if socket.get("name") != "envoy.transport_sockets.tls":
        return
    if not call.tls:
        raise ErrTLSHandshake("the chain terminates TLS and the client sent plaintext")
    if socket.get("typed_config", {}).get("require_client_certificate") and not call.client_cert:
        raise ErrTLSHandshake("the chain requires a client certificate and the client sent "
                              "none")


def simulate(snapshot: Snapshot, call: Call) -> Result:
    """Follow `call` through `snapshot`; raise a SimulationError where Envoy would fail it."""
    listener = next((lis for lis in snapshot.listeners.values()
                     if lis["address"]["socket_address"]["port_value"] == call.port), None)
    if listener is None:
        raise ErrNoListener(f"no listener on port {call.port}")
    chain = select_filter_chain(listener, call)
    _handshake(chain, call)
    config = chain["filters"][0]["typed_config"]
    if "stat_prefix" in config and "http_filters" not in config:  # tcp_proxy
        weighted = {c["name"]: c["weight"] for c in
                    (config.get("weighted_clusters") or {}).get("clusters", [])}
        clusters = weighted or {config["cluster"]: 100}
        _check_clusters(snapshot, clusters)
        return Result(listener["name"], clusters, filter_chain=chain)
    route_config = (snapshot.routes.get(config["rds"]["route_config_name"]) if "rds" in config
                    else config.get("route_config"))
    if route_config is None:
        raise ErrNoRoute(f"listener {listener['name']} has no route configuration")
    vhost = pick_virtual_host(route_config, call.authority)
    for route in vhost.get("routes", []):
        if not route_matches(route.get("match", {}), call):
            continue
        result = Result(listener["name"], {}, route_config["name"], vhost["name"],
                        route.get("name", ""), filter_chain=chain)
        result.envoy_route = route
        if "direct_response" in route:
            result.direct_status = int(route["direct_response"]["status"])
            return result
        if "redirect" in route:
            result.redirect = route["redirect"]
            return result
        per_filter = route.get("typed_per_filter_config") or {}
        result.cors = per_filter.get("envoy.filters.http.cors")
        action = route.get("route") or {}
        if "weighted_clusters" in action:
            result.clusters = {c["name"]: int(c["weight"])
                               for c in action["weighted_clusters"]["clusters"]}
        else:
            result.clusters = {action["cluster"]: 100}
        result.mirrors = {m["cluster"]: mirror_percent(m)
                          for m in action.get("request_mirror_policies", [])}
        result.hash_policy = list(action.get("hash_policy", []))
        _check_clusters(snapshot, [*result.clusters, *result.mirrors])
        result.fault = per_filter.get("envoy.filters.http.fault")
        result.timeout = action.get("timeout", "")
        return result
    raise ErrNoRoute(f"no route in virtual host {vhost['name']} matches {call.path}")


def mirror_percent(policy: dict[str, Any]) -> float:
    """The share of requests a mirror policy copies, in percent (all when unset)."""
    value = (policy.get("runtime_fraction") or {}).get("default_value")
    if value is None:
        return 100.0
    scale = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}[
        value.get("denominator", "HUNDRED")]
    return 100.0 * int(value.get("numerator", 0)) / scale


def cors_preflight(result: Result, origin: str, method: str) -> dict[str, str] | None:
    """The headers the proxy's cors filter answers a preflight (`OPTIONS` with `Origin` and
    `Access-Control-Request-Method`) with, or None when it passes the request on."""
    policy = result.cors
    if policy is None or not any(string_matches(m, origin)
                                 for m in policy.get("allow_origin_string_match", [])):
        return None
    methods = [m.strip() for m in policy.get("allow_methods", "").split(",") if m.strip()]
    if methods and method not in methods:
        return None
    headers = {"access-control-allow-origin": origin,
               "access-control-allow-methods": policy.get("allow_methods", "")}
    for field_name, header in (("allow_headers", "access-control-allow-headers"),
                               ("max_age", "access-control-max-age")):
        if field_name in policy:
            headers[header] = str(policy[field_name])
    if policy.get("allow_credentials"):
        headers["access-control-allow-credentials"] = "true"
    return headers


def _check_clusters(snapshot: Snapshot, clusters: Iterable[str]) -> None:
    for name in clusters:
        if name not in snapshot.clusters:
            raise ErrNoCluster(f"route points at missing cluster {name}")
