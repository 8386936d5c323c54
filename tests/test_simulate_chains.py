"""Filter chains matched as Envoy matches them (destination port, server names, transport
protocol, ALPN, source), so TLS and mTLS translation is tested without starting Envoy."""

from __future__ import annotations

import pytest
from test_tls_origination import CLIENT_PROXY, DB_PROXY, GATEWAY, NGINX_PROXY, WEB_PROXY, snapshot

from lablib.controlplane.mtls import MESH_HTTP_ALPNS
from lablib.controlplane.simulate import (
    Call,
    ErrNoFilterChain,
    ErrTLSHandshake,
    select_filter_chain,
    simulate,
)

STRICT = """
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default}
spec: {mtls: {mode: STRICT}}
"""
MESH = {"tls": True, "alpn": tuple(MESH_HTTP_ALPNS), "client_cert": True}


def inbound(proxy, *docs):
    snap = snapshot(proxy, *docs)
    port = next(iter(proxy.workload.ports.values()))
    return snap, port


def test_permissive_takes_mesh_mtls_and_plaintext_on_their_own_chains():
    snap, port = inbound(WEB_PROXY)
    plain = simulate(snap, Call(port, "web", "/"))
    mesh = simulate(snap, Call(port, "web", "/", **MESH))
    assert plain.filter_chain["filter_chain_match"]["transport_protocol"] == "raw_buffer"
    assert mesh.filter_chain["filter_chain_match"]["transport_protocol"] == "tls"
    assert "transport_socket" in mesh.filter_chain
    assert plain.cluster == mesh.cluster == "inbound|80||"


def test_an_http_port_resets_tls_that_is_not_istios():
    snap, port = inbound(WEB_PROXY)
    with pytest.raises(ErrNoFilterChain):
        simulate(snap, Call(port, "web", tls=True, alpn=("h2",), sni="web.example"))


@pytest.mark.parametrize("proxy", [DB_PROXY, NGINX_PROXY])
def test_other_tls_to_a_tcp_port_passes_through_to_the_app(proxy):
    snap, port = inbound(proxy)
    result = simulate(snap, Call(port, tls=True, alpn=("h2",), sni="db.example"))
    assert "transport_socket" not in result.filter_chain
    assert result.cluster.startswith("inbound|")


def test_strict_refuses_plaintext_and_a_client_without_a_certificate():
    snap, port = inbound(WEB_PROXY, STRICT)
    with pytest.raises(ErrNoFilterChain):
        simulate(snap, Call(port, "web"))
    with pytest.raises(ErrTLSHandshake, match="client certificate"):
        simulate(snap, Call(port, "web", tls=True, alpn=tuple(MESH_HTTP_ALPNS)))
    assert simulate(snap, Call(port, "web", **MESH)).cluster == "inbound|80||"


GATEWAY_TLS = """
apiVersion: v1
kind: Secret
metadata: {name: web-credential, namespace: istio-system}
type: kubernetes.io/tls
data: {tls.crt: Q0VSVA==, tls.key: S0VZ}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: gw, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [web.example.com]
    tls: {mode: SIMPLE, credentialName: web-credential}
  - port: {number: 443, name: tls, protocol: TLS}
    hosts: [db.example.com]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web.example.com]
  gateways: [istio-system/gw]
  http: [{route: [{destination: {host: web.tls-unit.svc.cluster.local}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db}
spec:
  hosts: [db.example.com]
  gateways: [istio-system/gw]
  tls:
  - match: [{sniHosts: [db.example.com]}]
    route: [{destination: {host: db.tls-unit.svc.cluster.local, port: {number: 5432}}}]
"""


def test_a_gateway_picks_its_chain_by_sni_terminating_or_passing_through():
    snap = snapshot(GATEWAY, GATEWAY_TLS)
    terminated = simulate(snap, Call(30443, "web.example.com", tls=True,
                                     sni="web.example.com", alpn=("h2",)))
    assert terminated.cluster == "outbound|80||web.tls-unit.svc.cluster.local"
    assert "transport_socket" in terminated.filter_chain
    passed = simulate(snap, Call(30443, tls=True, sni="db.example.com"))
    assert passed.cluster == "outbound|5432||db.tls-unit.svc.cluster.local"
    assert "transport_socket" not in passed.filter_chain
    with pytest.raises(ErrNoFilterChain):
        simulate(snap, Call(30443, tls=True, sni="other.example.com"))


def test_the_most_specific_server_name_wins():
    listener = {"name": "l", "listener_filters": [
        {"name": "envoy.filters.listener.tls_inspector"}], "filter_chains": [
        {"name": "wild", "filter_chain_match": {"server_names": ["*.example.com"]}},
        {"name": "deeper", "filter_chain_match": {"server_names": ["*.a.example.com"]}},
        {"name": "exact", "filter_chain_match": {"server_names": ["x.a.example.com"]}},
        {"name": "any"}]}
    def pick(sni: str, tls: bool = True) -> str:
        return select_filter_chain(listener, Call(1, tls=tls, sni=sni))["name"]
    assert pick("x.a.example.com") == "exact"
    assert pick("y.a.example.com") == "deeper"
    assert pick("y.example.com") == "wild"
    assert pick("example.org") == "any"
    assert pick("x.a.example.com", tls=False) == "any"  # no SNI without a TLS handshake


def test_port_level_disable_opens_one_port_to_plaintext_and_clients_follow():
    rule = STRICT.replace("spec: {mtls: {mode: STRICT}}", """spec:
  selector: {matchLabels: {app: web}}
  mtls: {mode: STRICT}
  portLevelMtls: {80: {mode: DISABLE}}""")
    snap, port = inbound(WEB_PROXY, rule)
    assert simulate(snap, Call(port, "web")).cluster == "inbound|80||"
    # auto mTLS sees the DISABLE too: the client's sidecar sends plaintext there
    def web_endpoint(*docs: str) -> dict:
        cluster = snapshot(CLIENT_PROXY, *docs).clusters[
            "outbound|80||web.tls-unit.svc.cluster.local"]
        return cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert "metadata" in web_endpoint(STRICT)  # mTLS where the port is not disabled
    assert "metadata" not in web_endpoint(rule)
