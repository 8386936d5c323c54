"""Mesh mTLS: workload identity, PeerAuthentication and auto mTLS (Istio's authn and
cluster_tls.go).

- Each proxy holds two SDS secrets, named as Istio names them: `default` (its workload
  certificate, SPIFFE ID `spiffe://cluster.local/ns/NS/sa/SA`) and `ROOTCA` (the mesh root).
- A sidecar's inbound listener accepts mTLS, plaintext or both, as the PeerAuthentication in
  force for that workload and port says (STRICT, DISABLE, PERMISSIVE); the TLS chain demands a
  client certificate from the mesh CA and sets X-Forwarded-Client-Cert.
- Clients originate mTLS only to endpoints that have a sidecar whose port accepts it (auto
  mTLS, by endpoint metadata `tlsMode: istio`), checking the server's SPIFFE ID; a
  DestinationRule `tls.mode` of DISABLE or ISTIO_MUTUAL overrides that.
"""

from __future__ import annotations

import base64
from typing import Any

from ..certs import spiffe_id
from .context import Proxy, PushContext, Service, Workload, selector_matches

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
ADS = {"ads": {}, "resource_api_version": "V3"}
DOWNSTREAM_TLS = ("type.googleapis.com/"
                  "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext")
UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
RAW_BUFFER = {"name": "envoy.transport_sockets.raw_buffer", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}}
TLS_INSPECTOR = {"name": "envoy.filters.listener.tls_inspector", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}
ISTIO_TLS_MATCH = {"tlsMode": "istio"}
ROOT_NAMESPACE = "istio-system"


def has_identity(proxy: Proxy, ctx: PushContext) -> bool:
    return proxy.id in ctx.certificates and bool(ctx.root_cert)


# --- PeerAuthentication ------------------------------------------------------------------


def peer_authentication_mode(ctx: PushContext, workload: Workload, port: int) -> str:
    """STRICT, PERMISSIVE or DISABLE for one workload port: workload-selector policy, else
    the namespace's, else the mesh-wide one in istio-system, else PERMISSIVE; `UNSET`
    inherits from the next level, and portLevelMtls beats the policy's own mode."""
    policies = list(ctx.store.list("PeerAuthentication"))
    levels = [
        [p for p in policies if p.namespace == workload.namespace
         and selector_matches(dict((p.spec.get("selector") or {}).get("matchLabels") or {}),
                              workload.labels)],
        [p for p in policies if p.namespace == workload.namespace and not p.spec.get("selector")],
        [p for p in policies if p.namespace == ROOT_NAMESPACE and not p.spec.get("selector")],
    ]
    for level in levels:
        for policy in level[:1]:  # the oldest wins a conflict, as in Istio
            # Port-level settings reach only ports the pod declares (istio/istio#27994).
            port_modes = (policy.spec.get("portLevelMtls") or {}) \
                if port in workload.declared_ports else {}
            mode = (port_modes.get(str(port)) or port_modes.get(port) or {}).get("mode") \
                or (policy.spec.get("mtls") or {}).get("mode", "UNSET")
            if str(mode).upper() != "UNSET":
                return str(mode).upper()
    return "PERMISSIVE"


# --- the server side: a sidecar's inbound listener ---------------------------------------


def sds(name: str) -> dict[str, Any]:
    return {"name": name, "sds_config": ADS}


def downstream_mtls() -> dict[str, Any]:
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": DOWNSTREAM_TLS,
        "require_client_certificate": True,
        "common_tls_context": {
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
            "alpn_protocols": ["h2", "http/1.1"],
            "tls_certificate_sds_secret_configs": [sds("default")],
            "validation_context_sds_secret_config": sds("ROOTCA"),
        }}}


def inbound_chains(proxy: Proxy, ctx: PushContext, port: int,
                   filters_for: Any) -> tuple[list[dict[str, Any]], bool]:
    """Filter chains of one inbound port, and whether they need the TLS inspector.

    `filters_for(tls: bool)` builds the chain's network filters."""
    assert proxy.workload is not None
    mode = peer_authentication_mode(ctx, proxy.workload, port)
    if not has_identity(proxy, ctx) or mode == "DISABLE":
        return [{"filters": filters_for(False)}], False
    tls_chain = {"filter_chain_match": {"transport_protocol": "tls"},
                 "transport_socket": downstream_mtls(), "filters": filters_for(True)}
    if mode == "STRICT":
        return [tls_chain], True
    plain = {"filter_chain_match": {"transport_protocol": "raw_buffer"},
             "filters": filters_for(False)}
    return [tls_chain, plain], True


XFCC = {
    "forward_client_cert_details": "APPEND_FORWARD",
    "set_current_client_cert_details": {"subject": True, "dns": True, "uri": True},
}


# --- the client side: clusters toward the mesh --------------------------------------------


def accepts_mtls(ctx: PushContext, workload: Workload, port: int) -> bool:
    from .sidecar import terminates_tls

    return (workload.injected and peer_authentication_mode(ctx, workload, port) != "DISABLE"
            and not terminates_tls(ctx, workload, port))


def endpoint_metadata(tls: bool) -> dict[str, Any]:
    return {"filter_metadata": {"envoy.transport_socket_match": ISTIO_TLS_MATCH}} if tls else {}


def upstream_mtls(ctx: PushContext, svc: Service, subset: str, port: int,
                  identities: list[str]) -> dict[str, Any]:
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": UPSTREAM_TLS,
        "sni": f"outbound_.{port}_.{subset}_.{svc.fqdn}",
        "common_tls_context": {
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
            "alpn_protocols": ["http/1.1"],
            "tls_certificate_sds_secret_configs": [sds("default")],
            "combined_validation_context": {
                "default_validation_context": {"match_typed_subject_alt_names": [
                    {"san_type": "URI", "matcher": {"exact": identity}}
                    for identity in identities]},
                "validation_context_sds_secret_config": sds("ROOTCA"),
            },
        }}}


def apply_upstream_tls(cluster: dict[str, Any], proxy: Proxy, ctx: PushContext, svc: Service,
                       subset: str, port: int, target: int | str,
                       endpoints: list[tuple[int, Workload]], tls_mode: str | None) -> None:
    """Auto mTLS on a cluster: TLS to the endpoints that take it, plaintext to the rest;
    `tls_mode` is the DestinationRule's `tls.mode` when it sets one."""
    if not has_identity(proxy, ctx) or (tls_mode or "").upper() == "DISABLE":
        return
    identities = sorted({spiffe_id(w.namespace, w.service_account) for _, w in endpoints})
    tls = upstream_mtls(ctx, svc, subset, port, identities)
    if (tls_mode or "").upper() == "ISTIO_MUTUAL":
        cluster["transport_socket"] = tls
        return
    lb_endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    for lb_endpoint, (_, workload) in zip(lb_endpoints, endpoints, strict=True):
        cport = workload.port_names.get(target) if isinstance(target, str) else target
        if cport is not None and accepts_mtls(ctx, workload, int(cport)):
            lb_endpoint["metadata"] = endpoint_metadata(True)
    cluster["transport_socket_matches"] = [
        {"name": "tlsMode-istio", "match": ISTIO_TLS_MATCH, "transport_socket": tls},
        {"name": "tlsMode-disabled", "match": {}, "transport_socket": RAW_BUFFER},
    ]


# --- identity secrets ---------------------------------------------------------------------


def identity_secrets(proxy: Proxy, ctx: PushContext) -> list[dict[str, Any]]:
    """`default` (this proxy's certificate and key) and `ROOTCA` (the mesh root), over SDS."""
    if not has_identity(proxy, ctx):
        return []
    chain, key = ctx.certificates[proxy.id]

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return [
        {"@type": SECRET_TYPE, "name": "default", "tls_certificate": {
            "certificate_chain": {"inline_bytes": b64(chain)},
            "private_key": {"inline_bytes": b64(key)}}},
        {"@type": SECRET_TYPE, "name": "ROOTCA",
         "validation_context": {"trusted_ca": {"inline_bytes": b64(ctx.root_cert)}}},
    ]
