"""LDS: listeners for sidecars and the kube-proxy stand-in (Istio's listener*.go).

Outputs `envoy.config.listener.v3.Listener` dicts, all bound to 127.0.0.1:
- sidecar `outbound_http`: the forward proxy its app uses as `http_proxy` (RDS `outbound_http`);
- sidecar `inbound|<containerPort>`: where other workloads reach the pod; forwards to the app;
- kube `kube_<namespace>`: the forward proxy of workloads without a sidecar.

Gateways' listeners are built in gateway.py.
"""

from __future__ import annotations

from typing import Any

from .accesslog import FILE_LOG_TYPE, mesh_access_log
from .authz import secure_http, secure_tcp
from .context import Proxy, PushContext, selector_matches
from .mtls import TLS_INSPECTOR, XFCC, inbound_chains
from .naming import inbound_cluster
from .route_policies import cors_filter
from .routes import FAULT_FILTER
from .sidecar import InboundPort, downstream_file_tls, ingress_ports

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
HCM = "envoy.filters.network.http_connection_manager"
HCM_TYPE = ("type.googleapis.com/"
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager")
TCP_PROXY = "envoy.filters.network.tcp_proxy"
TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
HEADER_MUTATION_TYPE = ("type.googleapis.com/"
                        "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation")
ADS = {"ads": {}, "resource_api_version": "V3"}

ACCESS_LOG_FORMAT = {
    "start_time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_host": "%UPSTREAM_HOST%",
    "authority": "%REQ(:AUTHORITY)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "route_name": "%ROUTE_NAME%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "peer_uri_san": "%DOWNSTREAM_PEER_URI_SAN%",
    "upstream_peer_uri_san": "%UPSTREAM_PEER_URI_SAN%",
    "peer_metadata_id": "%REQ(X-ENVOY-PEER-METADATA-ID)%",
}


def access_log(proxy: Proxy, ctx: PushContext) -> list[dict[str, Any]]:
    """The kit's JSON log for telemetry, then the log meshConfig asks for (accesslog.py)."""
    path = ctx.access_log_paths.get(proxy.id)
    telemetry = [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": FILE_LOG_TYPE, "path": path,
        "log_format": {"json_format": ACCESS_LOG_FORMAT}}}] if path else []
    return telemetry + mesh_access_log(proxy, ctx)


def socket_address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def peer_id_filter(proxy: Proxy) -> dict[str, Any]:
    """Name this proxy on the requests it sends, as Istio's metadata exchange does with
    `x-envoy-peer-metadata-id`: the server side's telemetry then knows its client."""
    return {"name": "envoy.filters.http.header_mutation", "typed_config": {
        "@type": HEADER_MUTATION_TYPE,
        "mutations": {"request_mutations": [{"append": {
            "header": {"key": "x-envoy-peer-metadata-id", "value": proxy.id},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}}]}}}


def http_filters(proxy: Proxy | None = None) -> list[dict[str, Any]]:
    """CORS (idle unless a route sets a policy), fault injection, then routing, in Istio's
    order; a client-side proxy first names itself."""
    return [
        *([peer_id_filter(proxy)] if proxy is not None else []),
        cors_filter(),
        {"name": FAULT_FILTER, "typed_config": {"@type": FAULT_TYPE}},
        {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}},
    ]


def hcm(stat_prefix: str, proxy: Proxy, ctx: PushContext, *, rds: str | None = None,
        route_config: dict[str, Any] | None = None, gateway: bool = False,
        client_side: bool = False) -> dict[str, Any]:
    config: dict[str, Any] = {
        "@type": HCM_TYPE,
        "stat_prefix": stat_prefix,
        "http_filters": http_filters(proxy if client_side or gateway else None),
        "access_log": access_log(proxy, ctx),
        "normalize_path": True,
        "upgrade_configs": [{"upgrade_type": "websocket"}, {"upgrade_type": "CONNECT"}],
        "stream_idle_timeout": "0s",
        "server_name": "istio-envoy",
    }
    if rds:
        config["rds"] = {"route_config_name": rds, "config_source": ADS}
    else:
        config["route_config"] = route_config
    if gateway:
        config["use_remote_address"] = True
        if ctx.mesh_config.num_trusted_proxies:
            config["xff_num_trusted_hops"] = ctx.mesh_config.num_trusted_proxies
    return {"name": HCM, "typed_config": config}


def listener(name: str, port: int, filters: list[dict[str, Any]]) -> dict[str, Any]:
    return {"@type": LISTENER_TYPE, "name": name, "address": socket_address(port),
            "filter_chains": [{"filters": filters}]}


def tcp_proxy(stat_prefix: str, clusters: list[tuple[str, int]], proxy: Proxy,
              ctx: PushContext) -> dict[str, Any]:
    config: dict[str, Any] = {"@type": TCP_PROXY_TYPE, "stat_prefix": stat_prefix,
                              "access_log": access_log(proxy, ctx)}
    if len(clusters) == 1:
        config["cluster"] = clusters[0][0]
    else:
        config["weighted_clusters"] = {"clusters": [{"name": n, "weight": w} for n, w in clusters]}
    return {"name": TCP_PROXY, "typed_config": config}


def workload_port_protocols(proxy: Proxy, ctx: PushContext) -> dict[int, str]:
    """The protocol of each container port, from the Services that select the workload."""
    out: dict[int, str] = {}
    workload = proxy.workload
    if workload is None:
        return out
    for svc in ctx.services.values():
        if svc.namespace != workload.namespace or not selector_matches(svc.selector,
                                                                       workload.labels):
            continue
        for port in svc.ports:
            target = port.target_port
            cport = workload.port_names.get(target) if isinstance(target, str) else target
            if cport is not None:
                out[int(cport)] = port.protocol
    return out


def sidecar_listeners(proxy: Proxy, ctx: PushContext) -> list[dict[str, Any]]:
    listeners = [listener("outbound_http", proxy.outbound_port,
                          [forward_proxy_hcm("outbound_http", proxy, ctx)])]
    protocols = workload_port_protocols(proxy, ctx)
    assert proxy.workload is not None
    ports = ingress_ports(ctx, proxy.workload) or [
        InboundPort(cport, cport) for cport in sorted(proxy.app_ports)]
    for inbound_port in ports:
        cport = inbound_port.number
        if cport not in proxy.workload.ports or inbound_port.target not in proxy.app_ports:
            continue  # the runtime has not given this port a loopback port yet
        name = f"inbound|{cport}"
        cluster = inbound_cluster(inbound_port.target)
        # TLS the sidecar terminates carries HTTP (the ingress port's HTTPS) to the app.
        tcp = not inbound_port.tls and protocols.get(
            cport, protocols.get(inbound_port.target, "HTTP")) == "TCP"
        route_config = {"name": inbound_cluster(cport), "virtual_hosts": [{
            "name": f"inbound|http|{cport}", "domains": ["*"],
            "routes": [{"name": "default", "match": {"prefix": "/"},
                        "route": {"cluster": cluster, "timeout": "0s"}}]}]}

        def filters_for(tls: bool, name: str = name, cluster: str = cluster, tcp: bool = tcp,
                        route_config: dict[str, Any] = route_config,
                        cport: int = cport) -> list[dict[str, Any]]:
            if tcp:
                return secure_tcp([tcp_proxy(name, [(cluster, 100)], proxy, ctx)], proxy, ctx,
                                  cport)
            manager = secure_http(hcm(name, proxy, ctx, route_config=route_config), proxy, ctx,
                                  cport)
            if tls:
                manager["typed_config"].update(XFCC)
            return [manager]

        if inbound_port.tls:
            chains, inspect = [{"transport_socket": downstream_file_tls(inbound_port.tls),
                                "filters": filters_for(False)}], False
        else:
            chains, inspect = inbound_chains(proxy, ctx, cport, filters_for)
        inbound: dict[str, Any] = {"@type": LISTENER_TYPE, "name": name,
                                   "address": socket_address(proxy.workload.ports[cport]),
                                   "filter_chains": chains}
        if inspect:
            inbound["listener_filters"] = [TLS_INSPECTOR]
        listeners.append(inbound)
    return listeners


def forward_proxy_hcm(name: str, proxy: Proxy, ctx: PushContext) -> dict[str, Any]:
    """The HTTP connection manager of a forward-proxy listener; it also takes HTTP/1.0,
    which `openssl s_client -proxy` speaks for its CONNECT. A sidecar's names itself to
    servers; the kube-proxy stand-in, like kube-proxy, is nobody."""
    manager = hcm(name, proxy, ctx, rds=name, client_side=proxy.kind == "sidecar")
    manager["typed_config"]["http_protocol_options"] = {"accept_http_10": True}
    return manager


def kube_listeners(proxy: Proxy, ctx: PushContext) -> list[dict[str, Any]]:
    return [listener(f"kube_{ns}", port, [forward_proxy_hcm(f"kube_{ns}", proxy, ctx)])
            for ns, port in sorted(proxy.kube_ports.items())]


def build_listeners(proxy: Proxy, ctx: PushContext) -> list[dict[str, Any]]:
    """Every listener `proxy` needs."""
    if proxy.kind == "sidecar":
        return sidecar_listeners(proxy, ctx)
    return kube_listeners(proxy, ctx)

