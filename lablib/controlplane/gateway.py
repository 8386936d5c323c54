"""Gateways: Gateway servers and the VirtualServices bound to them (Istio's gateway.go).

For each workload port that Gateway servers select, one listener `0.0.0.0_<port>` with a
filter chain per kind of server:
- plain HTTP: an HTTP connection manager with RDS `http.<port>`;
- TLS terminated at the gateway (`tls.mode` SIMPLE or MUTUAL): a chain matched by SNI on the
  server's hosts, with the certificate from the `credentialName` Secret over SDS
  (`kubernetes://NAME`, and `kubernetes://NAME-cacert` for the client CA), RDS
  `https.<port>.<server>`; ISTIO_MUTUAL terminates with the gateway's own workload
  certificate (SDS `default`) and demands a client certificate from the mesh CA (`ROOTCA`);
- TLS passed through (PASSTHROUGH): a chain per `tls` route's `sniHosts`, proxied as TCP;
- TCP: a TCP proxy from the `tcp` routes.
Plus the `status` listener on 15021.
"""

from __future__ import annotations

from typing import Any

from ..config.model import Resource
from .authz import secure_http, secure_tcp
from .context import Proxy, PushContext, selector_matches
from .listeners import ADS, hcm, socket_address, tcp_proxy
from .mtls import SECRET_TYPE, TLS_INSPECTOR, has_identity, san_matchers, sds
from .route_policies import exported_to, l4_matches, weighted
from .routes import ROUTE_TYPE, http_routes

TLS_TYPE = ("type.googleapis.com/"
            "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext")
TERMINATING_MODES = {"SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL", "ISTIO_MUTUAL"}
PASSTHROUGH_MODES = {"PASSTHROUGH", "AUTO_PASSTHROUGH"}
TCP_PROTOCOLS = {"TCP", "TLS", "MONGO", "MYSQL", "REDIS"}

Server = tuple[Resource, dict[str, Any]]


def server_kind(server: dict[str, Any]) -> str:
    """`http`, `https` (terminated here), `passthrough` or `tcp`."""
    tls = server.get("tls") or {}
    protocol = str(server["port"].get("protocol", "HTTP")).upper()
    mode = str(tls.get("mode", "SIMPLE" if protocol == "HTTPS" else "")).upper()
    if mode in TERMINATING_MODES and not tls.get("httpsRedirect"):
        return "https"
    if mode in PASSTHROUGH_MODES:
        return "passthrough"
    return "tcp" if protocol in TCP_PROTOCOLS else "http"


def server_hosts(server: dict[str, Any]) -> list[str]:
    """A server's hosts without their `namespace/` part."""
    return [str(h).rpartition("/")[2] for h in server.get("hosts") or []]


def server_hosts_match(server_hosts: list[str], vs_host: str, vs_namespace: str) -> bool:
    """Does a VirtualService host fall under a Gateway server's `hosts` (`ns/host` allowed)?"""
    for entry in server_hosts:
        ns, _, host = entry.rpartition("/")
        if ns not in ("", "*", ".") and ns != vs_namespace:
            continue
        if host == "*" or vs_host == host or vs_host == "*":
            return True
        if host.startswith("*.") and vs_host.endswith(host[1:]):
            return True
    return False


def gateway_servers(proxy: Proxy, ctx: PushContext) -> dict[int, list[Server]]:
    """Gateway servers that select this gateway, by the workload port they listen on."""
    by_port: dict[int, list[Server]] = {}
    for gw in ctx.gateways:
        if not selector_matches(dict(gw.spec.get("selector") or {}), proxy.labels):
            continue
        for server in gw.spec.get("servers") or []:
            port = ctx.gateway_target_port(proxy, int(server["port"]["number"]))
            by_port.setdefault(port, []).append((gw, server))
    return by_port


def bound_virtual_services(ctx: PushContext, proxy: Proxy, gw: Resource,
                           server: dict[str, Any]):
    """VirtualServices bound to this Gateway, exported to the gateway proxy's namespace (as
    Istio looks them up), with a host this server accepts."""
    gw_name = f"{gw.namespace}/{gw.name}"
    for vs in ctx.virtual_services:
        if gw_name in ctx.vs_gateways(vs) and exported_to(vs, proxy.namespace) and any(
                server_hosts_match(server.get("hosts") or [], str(h), vs.namespace)
                for h in vs.spec.get("hosts") or []):
            yield vs


def tcp_route_clusters(proxy: Proxy, port: int, servers: list[Server],
                       ctx: PushContext) -> list[tuple[str, int]]:
    """Weighted clusters of the first VirtualService `tcp` route bound here that matches
    (port, and `sourceLabels`/`sourceNamespace`/`gateways` selecting this gateway)."""
    for gw, server in servers:
        number = int(server["port"]["number"])
        for vs in bound_virtual_services(ctx, proxy, gw, server):
            for tcp in vs.spec.get("tcp") or []:
                if any(int(m.get("port", number)) in (number, port)
                       for m in l4_matches(tcp.get("match"), proxy, gw_ref(gw, vs))):
                    return weighted(ctx, vs, tcp.get("route") or [])
    return []


def gw_ref(gw: Resource, vs: Resource) -> tuple[str, str]:
    """(the gateway as `ns/name`, the VirtualService's namespace for short names)."""
    return f"{gw.namespace}/{gw.name}", vs.namespace


def passthrough_routes(proxy: Proxy, port: int, servers: list[Server],
                       ctx: PushContext) -> list[tuple[list[str], list[tuple[str, int]]]]:
    """(SNI names, weighted clusters) for each `tls` route bound to passthrough servers."""
    out = []
    for gw, server in servers:
        number = int(server["port"]["number"])
        for vs in bound_virtual_services(ctx, proxy, gw, server):
            for tls in vs.spec.get("tls") or []:
                for match in l4_matches(tls.get("match"), proxy, gw_ref(gw, vs)):
                    if int(match.get("port", number)) not in (number, port):
                        continue
                    out.append((sorted(str(h) for h in match.get("sniHosts") or []),
                                weighted(ctx, vs, tls.get("route") or [])))
    return out


def secret_name(credential: str) -> str:
    return f"kubernetes://{credential}"


TLS_VERSIONS = {"TLS_AUTO": "TLS_AUTO", "TLSV1_0": "TLSv1_0", "TLSV1_1": "TLSv1_1",
                "TLSV1_2": "TLSv1_2", "TLSV1_3": "TLSv1_3"}


def tls_params(tls: dict[str, Any]) -> dict[str, Any]:
    """`minProtocolVersion` (Istio's default TLS 1.2), `maxProtocolVersion`, `cipherSuites`."""
    params: dict[str, Any] = {"tls_minimum_protocol_version": TLS_VERSIONS[
        str(tls.get("minProtocolVersion", "TLSV1_2")).upper()]}
    if "maxProtocolVersion" in tls:
        params["tls_maximum_protocol_version"] = TLS_VERSIONS[
            str(tls["maxProtocolVersion"]).upper()]
    if tls.get("cipherSuites"):
        params["cipher_suites"] = [str(c) for c in tls["cipherSuites"]]
    return params


def downstream_tls(server: dict[str, Any]) -> dict[str, Any]:
    """The DownstreamTlsContext of a terminating server: its certificate over SDS and, for
    MUTUAL, the client CA (Istio reads `ca.crt` of the secret or of `<name>-cacert`)."""
    tls = server["tls"]
    credential = str(tls.get("credentialName", ""))
    common: dict[str, Any] = {
        "tls_params": tls_params(tls),
        "alpn_protocols": ["h2", "http/1.1"],
        "tls_certificate_sds_secret_configs": [
            {"name": secret_name(credential), "sds_config": ADS}],
    }
    mode = str(tls.get("mode", "SIMPLE")).upper()
    context: dict[str, Any] = {"@type": TLS_TYPE, "common_tls_context": common}
    if mode == "ISTIO_MUTUAL":
        # The mesh's identity, not a credential: a client must hold a mesh certificate.
        common["tls_certificate_sds_secret_configs"] = [sds("default")]
        names = [str(n) for n in tls.get("subjectAltNames") or []]
        common["combined_validation_context"] = {
            "default_validation_context": {"match_typed_subject_alt_names": san_matchers(names)}
            if names else {},
            "validation_context_sds_secret_config": sds("ROOTCA")}
        context["require_client_certificate"] = True
        return {"name": "envoy.transport_sockets.tls", "typed_config": context}
    if mode in ("MUTUAL", "OPTIONAL_MUTUAL"):
        client_ca = {"name": secret_name(credential) + "-cacert", "sds_config": ADS}
        names = [str(n) for n in tls.get("subjectAltNames") or []]
        if names:
            common["combined_validation_context"] = {
                "default_validation_context": {"match_typed_subject_alt_names":
                                               san_matchers(names)},
                "validation_context_sds_secret_config": client_ca}
        else:
            common["validation_context_sds_secret_config"] = client_ca
        context["require_client_certificate"] = mode == "MUTUAL"
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def credential_present(proxy: Proxy, ctx: PushContext, server: dict[str, Any]) -> bool:
    """Whether the server's credentialName Secret (and for MUTUAL its CA) exists; for
    ISTIO_MUTUAL, whether the gateway holds a mesh identity."""
    if str(server["tls"].get("mode", "")).upper() == "ISTIO_MUTUAL":
        return has_identity(proxy, ctx)
    credential = str(server["tls"].get("credentialName", ""))
    found = ctx.store.get("Secret", proxy.namespace, credential)
    if found is None:
        return False
    if str(server["tls"].get("mode", "")).upper() != "MUTUAL":
        return True
    cacert = ctx.store.get("Secret", proxy.namespace, credential + "-cacert")
    return "ca.crt" in (found.body.get("data") or {}) or (
        cacert is not None and "ca.crt" in (cacert.body.get("data") or {}))


def https_route_name(port: int, gw: Resource, server: dict[str, Any]) -> str:
    """Istio's name: `https.443.<port name>.<gateway>.<namespace>`."""
    return f"https.{port}.{server['port'].get('name', port)}.{gw.name}.{gw.namespace}"


def filter_chains(proxy: Proxy, ctx: PushContext, port: int,
                  servers: list[Server]) -> list[dict[str, Any]]:
    name = f"0.0.0.0_{port}"
    chains: list[dict[str, Any]] = []
    if any(server_kind(s) == "http" for _, s in servers):
        chains.append({"filters": [secure_http(hcm(name, proxy, ctx, rds=f"http.{port}",
                                                   gateway=True), proxy, ctx, port)]})
    for gw, server in servers:
        if server_kind(server) != "https" or not credential_present(proxy, ctx, server):
            continue  # no certificate: handshakes for these hosts fail, as in Istio
        names = [h for h in server_hosts(server) if h != "*"]
        chain: dict[str, Any] = {
            "filters": [secure_http(hcm(name, proxy, ctx, rds=https_route_name(port, gw, server),
                                        gateway=True), proxy, ctx, port)],
            "transport_socket": downstream_tls(server)}
        if names:
            chain["filter_chain_match"] = {"server_names": names}
        chains.append(chain)
    passthrough = [s for s in servers if server_kind(s[1]) == "passthrough"]
    for names, clusters in passthrough_routes(proxy, port, passthrough, ctx):
        chains.append({"filter_chain_match": {"server_names": names},
                       "filters": secure_tcp([tcp_proxy(name, clusters, proxy, ctx)], proxy,
                                             ctx, port)})
    tcp = [s for s in servers if server_kind(s[1]) == "tcp"]
    clusters = tcp_route_clusters(proxy, port, tcp, ctx) if tcp else []
    if clusters:
        chains.append({"filters": secure_tcp([tcp_proxy(name, clusters, proxy, ctx)], proxy, ctx,
                                             port)})
    return chains


def gateway_listeners(proxy: Proxy, ctx: PushContext) -> list[dict[str, Any]]:
    """Every listener of a gateway: the status port and one per Gateway server port."""
    from .listeners import LISTENER_TYPE, listener

    workload = proxy.workload
    assert workload is not None
    listeners = []
    status_port = workload.ports.get(15021)
    if status_port:
        route_config = {"name": "status", "virtual_hosts": [{
            "name": "status", "domains": ["*"], "routes": [
                {"match": {"prefix": "/healthz/ready"}, "direct_response": {"status": 200}}]}]}
        listeners.append(listener("status", status_port,
                                  [hcm("status", proxy, ctx, route_config=route_config)]))
    for port, servers in sorted(gateway_servers(proxy, ctx).items()):
        local = workload.ports.get(port)
        chains = filter_chains(proxy, ctx, port, servers)
        if not local or not chains:
            continue
        out: dict[str, Any] = {"@type": LISTENER_TYPE, "name": f"0.0.0.0_{port}",
                               "address": socket_address(local), "filter_chains": chains}
        aliases = workload.port_aliases.get(port, ())
        if aliases:
            out["additional_addresses"] = [{"address": socket_address(p)} for p in aliases]
        if any("filter_chain_match" in c for c in chains):
            out["listener_filters"] = [TLS_INSPECTOR]
        listeners.append(out)
    return listeners


def route_config(name: str, port: int, servers: list[Server], ctx: PushContext,
                 proxy: Proxy) -> dict:
    """Virtual hosts for every VirtualService host bound to these servers. A server with
    `tls.httpsRedirect` makes its hosts answer plain HTTP with a 301 to https (Envoy's
    `require_tls: ALL`, as Istio sets it)."""
    by_domain: dict[str, list[dict[str, Any]]] = {}
    redirected: set[str] = set()
    for gw, server in servers:
        gw_name = f"{gw.namespace}/{gw.name}"
        for vs in bound_virtual_services(ctx, proxy, gw, server):
            # A route's `match.port` means the Gateway server's port, as in Istio.
            routes = http_routes(ctx, vs, gateway=gw_name, port=int(server["port"]["number"]),
                                 proxy=proxy)
            for host in vs.spec.get("hosts") or []:
                if server_hosts_match(server.get("hosts") or [], str(host), vs.namespace):
                    by_domain.setdefault(str(host), []).extend(routes)
                    if (server.get("tls") or {}).get("httpsRedirect"):
                        redirected.add(str(host))
    vhosts = []
    for host, routes in sorted(by_domain.items()):
        domains = ["*"] if host == "*" else [host, f"{host}:*"]
        vhost = {"name": f"{host}:{port}", "domains": domains, "routes": routes}
        if host in redirected:
            vhost["require_tls"] = "ALL"
        vhosts.append(vhost)
    return {"@type": ROUTE_TYPE, "name": name, "virtual_hosts": vhosts,
            "validate_clusters": False}


def gateway_route_configs(proxy: Proxy, ctx: PushContext) -> list[dict[str, Any]]:
    """`http.<port>` for plain HTTP servers, `https.<port>.…` for each terminating server."""
    configs = []
    for port, servers in sorted(gateway_servers(proxy, ctx).items()):
        plain = [s for s in servers if server_kind(s[1]) == "http"]
        if plain:
            configs.append(route_config(f"http.{port}", port, plain, ctx, proxy))
        for gw, server in servers:
            if server_kind(server) == "https":
                configs.append(route_config(https_route_name(port, gw, server), port,
                                            [(gw, server)], ctx, proxy))
    return configs


def gateway_secrets(proxy: Proxy, ctx: PushContext) -> list[dict[str, Any]]:
    """SDS secrets for the credentials this gateway's servers name, read from Secrets in the
    gateway's own namespace (as istiod reads them for the default ingress)."""
    secrets = []
    seen = set()
    for servers in gateway_servers(proxy, ctx).values():
        for _, server in servers:
            if server_kind(server) != "https" or \
                    str(server["tls"].get("mode", "")).upper() == "ISTIO_MUTUAL":
                continue  # ISTIO_MUTUAL uses the identity secrets
            credential = str(server["tls"].get("credentialName", ""))
            if credential in seen:
                continue
            seen.add(credential)
            found = ctx.store.get("Secret", proxy.namespace, credential)
            if found is None:
                continue  # the analyzer refuses this; the snapshot check catches the rest
            data = dict(found.body.get("data") or {})
            secrets.append({"@type": SECRET_TYPE, "name": secret_name(credential),
                            "tls_certificate": {
                                "certificate_chain": {"inline_bytes": data.get("tls.crt", "")},
                                "private_key": {"inline_bytes": data.get("tls.key", "")}}})
            ca = data.get("ca.crt")
            if ca is None:
                cacert = ctx.store.get("Secret", proxy.namespace, credential + "-cacert")
                ca = (cacert.body.get("data") or {}).get("ca.crt") if cacert else None
            if ca is not None:
                secrets.append({"@type": SECRET_TYPE, "name": secret_name(credential) + "-cacert",
                                "validation_context": {"trusted_ca": {"inline_bytes": ca}}})
    return secrets


