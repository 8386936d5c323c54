"""Mesh mTLS: workload identity, PeerAuthentication and auto mTLS (Istio's authn and
cluster_tls.go).

- Each proxy holds two SDS secrets, named as Istio names them: `default` (its workload
  certificate, SPIFFE ID `spiffe://cluster.local/ns/NS/sa/SA`) and `ROOTCA` (the mesh root).
- A sidecar's inbound listener accepts mTLS, plaintext or both, as the PeerAuthentication in
  force for that workload and port says (STRICT, DISABLE, PERMISSIVE); the TLS chain demands a
  client certificate from the mesh CA and sets X-Forwarded-Client-Cert.
- Mesh mTLS carries Istio's ALPN: clients offer `istio` (with `istio-http/1.1` or
  `istio-peer-exchange`), and a PERMISSIVE port's mTLS chain matches only those, so TLS from
  a client outside the mesh reaches the app (TCP and undeclared ports) or is refused (ports
  declared HTTP), never the mesh chain.
- Clients originate mTLS only to endpoints that have a sidecar whose port accepts it (auto
  mTLS, by endpoint metadata `tlsMode: istio`), checking the server's SPIFFE ID. An explicit
  DestinationRule `tls` wins: DISABLE (plaintext), ISTIO_MUTUAL (mesh mTLS to every
  endpoint), SIMPLE and MUTUAL (TLS origination with certificates from files mounted into the
  proxy, `file-cert:`/`file-root:` SDS secrets, or from `credentialName`).
"""

from __future__ import annotations

import base64
import ipaddress
import os
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from ..certs import spiffe_id
from ..config.hosts import HTTP_PROTOCOLS, port_protocol
from ..config.model import Resource
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
# Istio's ALPN: what a PERMISSIVE port's mesh chain matches, and what clients offer over mesh
# mTLS for HTTP (Istio's alpn filter for HTTP/1.1) and for TCP.
MESH_ALPNS = ["istio-peer-exchange", "istio", "istio-http/1.0", "istio-http/1.1", "istio-h2"]
MESH_HTTP_ALPNS = ["istio-http/1.1", "istio", "http/1.1"]
MESH_TCP_ALPNS = ["istio-peer-exchange", "istio"]
# The OS trust store, where the istio-proxy image (and Debian) keep it: what a SIMPLE or MUTUAL
# DestinationRule without caCertificates verifies the server against.
SYSTEM_ROOTS = "/etc/ssl/certs/ca-certificates.crt"


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


def declared_http(ctx: PushContext, workload: Workload, port: int) -> bool:
    """Whether a Service names this container port's protocol as HTTP (`http-*`, appProtocol),
    rather than TCP or nothing (a port Istio would sniff)."""
    for svc in ctx.store.list("Service"):
        selector = dict(svc.spec.get("selector") or {})
        if svc.namespace != workload.namespace or not selector_matches(selector,
                                                                       workload.labels):
            continue
        for entry in svc.spec.get("ports") or []:
            target = entry.get("targetPort", entry.get("port"))
            cport = workload.port_names.get(target) if isinstance(target, str) else target
            if cport == port and port_protocol(entry) in HTTP_PROTOCOLS:
                return True
    return False


def passthrough_filters(proxy: Proxy, ctx: PushContext, port: int,
                        filters_for: Any) -> list[dict[str, Any]] | None:
    """A PERMISSIVE port's chain for TLS that is not mesh mTLS (a client outside the mesh, or
    TLS the client's sidecar originated): proxied as TCP to the app, as Istio does for TCP
    and undeclared ports; None for a port declared HTTP, where Istio has no such chain."""
    from .authz import secure_tcp
    from .listeners import TCP_PROXY, tcp_proxy
    from .naming import inbound_cluster
    from .sidecar import ingress_ports

    assert proxy.workload is not None
    plain = filters_for(False)
    if plain and plain[-1].get("name") == TCP_PROXY:
        return list(plain)
    if declared_http(ctx, proxy.workload, port):
        return None
    target = next((p.target for p in ingress_ports(ctx, proxy.workload) or []
                   if p.number == port), port)
    return secure_tcp([tcp_proxy(f"inbound|{port}", [(inbound_cluster(target), 100)], proxy, ctx)],
                      proxy, ctx, port)


def inbound_chains(proxy: Proxy, ctx: PushContext, port: int,
                   filters_for: Any) -> tuple[list[dict[str, Any]], bool]:
    """Filter chains of one inbound port, and whether they need the TLS inspector.

    `filters_for(tls: bool)` builds the chain's network filters. STRICT takes any TLS (and
    refuses it without a mesh certificate); PERMISSIVE tells mesh mTLS from other TLS by
    Istio's ALPN."""
    assert proxy.workload is not None
    mode = peer_authentication_mode(ctx, proxy.workload, port)
    if not has_identity(proxy, ctx) or mode == "DISABLE":
        return [{"filters": filters_for(False)}], False
    tls_chain = {"filter_chain_match": {"transport_protocol": "tls"},
                 "transport_socket": downstream_mtls(), "filters": filters_for(True)}
    if mode == "STRICT":
        return [tls_chain], True
    tls_chain["filter_chain_match"] = {"transport_protocol": "tls",
                                       "application_protocols": list(MESH_ALPNS)}
    plain = {"filter_chain_match": {"transport_protocol": "raw_buffer"},
             "filters": filters_for(False)}
    chains = [tls_chain, plain]
    passthrough = passthrough_filters(proxy, ctx, port, filters_for)
    if passthrough is not None:
        chains.append({"filter_chain_match": {"transport_protocol": "tls"},
                       "filters": passthrough})
    return chains, True


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


def san_matchers(names: list[str]) -> list[dict[str, Any]]:
    """Typed SAN matchers: a SPIFFE ID (or any URI) as URI, an address as IP, else DNS."""
    out = []
    for name in names:
        san_type = "URI" if "://" in name else "DNS"
        try:
            ipaddress.ip_address(name)
            san_type = "IP_ADDRESS"
        except ValueError:
            pass
        out.append({"san_type": san_type, "matcher": {"exact": name}})
    return out


def upstream_mtls(ctx: PushContext, svc: Service, subset: str, port: int,
                  identities: list[str], sni: str | None = None) -> dict[str, Any]:
    """ISTIO_MUTUAL: the workload certificate, the mesh root, the server's identities, and
    Istio's mesh ALPN for the port's protocol."""
    service_port = svc.port(port)
    http = service_port is None or service_port.protocol == "HTTP"
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": UPSTREAM_TLS,
        "sni": sni or f"outbound_.{port}_.{subset}_.{svc.fqdn}",
        "common_tls_context": {
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
            "alpn_protocols": list(MESH_HTTP_ALPNS if http else MESH_TCP_ALPNS),
            "tls_certificate_sds_secret_configs": [sds("default")],
            "combined_validation_context": {
                "default_validation_context": {
                    "match_typed_subject_alt_names": san_matchers(identities)},
                "validation_context_sds_secret_config": sds("ROOTCA"),
            },
        }}}


# --- the client side: TLS origination (DestinationRule tls SIMPLE and MUTUAL) --------------


def file_cert_name(tls: dict[str, Any]) -> str:
    return f"file-cert:{tls.get('clientCertificate')}~{tls.get('privateKey')}"


def file_root_name(tls: dict[str, Any]) -> str:
    return f"file-root:{tls.get('caCertificates') or 'system'}"


def credential_secret_name(credential: str) -> str:
    return f"kubernetes://{credential}"


def uses_credential(proxy: Proxy, tls: dict[str, Any], dr_selects: bool) -> bool:
    """credentialName counts at gateways, and at sidecars only for a DestinationRule with a
    workloadSelector (elsewhere sidecars read the certificate paths), as Istio documents."""
    return bool(tls.get("credentialName")) and (proxy.kind == "router" or dr_selects)


def origination_secret_names(proxy: Proxy, tls: dict[str, Any], dr_selects: bool
                             ) -> tuple[str | None, str | None]:
    """(client certificate secret, validation secret) a SIMPLE or MUTUAL setting needs."""
    mutual = str(tls.get("mode", "")).upper() == "MUTUAL"
    verify = not tls.get("insecureSkipVerify")
    if uses_credential(proxy, tls, dr_selects):
        name = credential_secret_name(str(tls["credentialName"]))
        return (name if mutual else None), (name + "-cacert" if verify else None)
    cert = file_cert_name(tls) if mutual and tls.get("clientCertificate") \
        and tls.get("privateKey") else None
    return cert, (file_root_name(tls) if verify else None)


def originate_tls(proxy: Proxy, tls: dict[str, Any], dr_selects: bool
                  ) -> dict[str, Any] | None:
    """The UpstreamTlsContext of a SIMPLE or MUTUAL setting (Istio's constructUpstreamTLS);
    None where Istio builds none: a credentialName a sidecar may not use."""
    if tls.get("credentialName") and not uses_credential(proxy, tls, dr_selects):
        return None  # Istio then sends plaintext; the analyzer warns (LAB0227)
    cert, root = origination_secret_names(proxy, tls, dr_selects)
    common: dict[str, Any] = {"tls_params": {"tls_minimum_protocol_version": "TLSv1_2"}}
    if cert:
        common["tls_certificate_sds_secret_configs"] = [sds(cert)]
    if root:
        default: dict[str, Any] = {}
        names = [str(n) for n in tls.get("subjectAltNames") or []]
        if names:
            default["match_typed_subject_alt_names"] = san_matchers(names)
        common["combined_validation_context"] = {"default_validation_context": default,
                                                 "validation_context_sds_secret_config":
                                                     sds(root)}
    context: dict[str, Any] = {"@type": UPSTREAM_TLS, "common_tls_context": common}
    if tls.get("sni"):
        context["sni"] = str(tls["sni"])
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def auto_sni_options(tls: dict[str, Any]) -> dict[str, bool]:
    """Without `sni`, the SNI is the request's host; without `sni` and `subjectAltNames` (and
    when verifying), the server certificate must name that host (Istio's auto SNI/SAN)."""
    out = {}
    if not tls.get("sni"):
        out["auto_sni"] = True
        if not tls.get("subjectAltNames") and not tls.get("insecureSkipVerify"):
            out["auto_san_validation"] = True
    return out


def set_upstream_http_options(cluster: dict[str, Any], options: dict[str, bool]) -> None:
    from .clusters import HTTP_OPTIONS, HTTP_OPTIONS_TYPE

    holder = cluster.setdefault("typed_extension_protocol_options", {}).setdefault(
        HTTP_OPTIONS, {"@type": HTTP_OPTIONS_TYPE,
                       "explicit_http_config": {"http_protocol_options": {}}})
    holder["upstream_http_protocol_options"] = dict(options)


def apply_upstream_tls(cluster: dict[str, Any], proxy: Proxy, ctx: PushContext, svc: Service,
                       subset: str, port: int, target: int | str,
                       endpoints: list[tuple[int, Workload]], tls: dict[str, Any] | None,
                       dr_selects: bool = False) -> None:
    """A cluster's transport: the DestinationRule's `tls` when it sets a mode (it wins over
    auto mTLS), else auto mTLS: TLS to the endpoints that take it, plaintext to the rest."""
    settings = dict(tls or {})
    mode = str(settings.get("mode", "")).upper()
    if mode in ("SIMPLE", "MUTUAL"):
        socket = originate_tls(proxy, settings, dr_selects)
        if socket is not None:
            cluster["transport_socket"] = socket
            # As Istio does whatever the port's protocol: an HTTP route may use the cluster
            # (an egress gateway's port 80 sends to an HTTPS port 443), and TCP ignores it.
            options = auto_sni_options(settings)
            if options:
                set_upstream_http_options(cluster, options)
        return
    if not has_identity(proxy, ctx) or mode == "DISABLE":
        return
    identities = sorted({spiffe_id(w.namespace, w.service_account) for _, w in endpoints})
    if mode == "ISTIO_MUTUAL":
        names = [str(n) for n in settings.get("subjectAltNames") or []] or identities
        cluster["transport_socket"] = upstream_mtls(ctx, svc, subset, port, names,
                                                    settings.get("sni"))
        return
    if not ctx.mesh_config.enable_auto_mtls:
        return  # meshConfig.enableAutoMtls=false: plaintext unless a rule says ISTIO_MUTUAL
    tls_socket = upstream_mtls(ctx, svc, subset, port, identities)
    lb_endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    for lb_endpoint, (_, workload) in zip(lb_endpoints, endpoints, strict=True):
        cport = workload.port_names.get(target) if isinstance(target, str) else target
        if cport is not None and accepts_mtls(ctx, workload, int(cport)):
            lb_endpoint["metadata"] = endpoint_metadata(True)
    cluster["transport_socket_matches"] = [
        {"name": "tlsMode-istio", "match": ISTIO_TLS_MATCH, "transport_socket": tls_socket},
        {"name": "tlsMode-disabled", "match": {}, "transport_socket": RAW_BUFFER},
    ]


# --- identity and client certificate secrets ----------------------------------------------


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


@cache
def unusable_pair() -> tuple[str, str]:
    """(certificate, key), base64: a self-signed certificate nobody trusts, served where a
    file or credential is missing so that handshakes fail closed, as they do in Istio when
    its agent cannot read them (never a silent fallback to no verification)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lablib: not mounted")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return b64(cert.public_bytes(serialization.Encoding.PEM)), b64(key_pem)


def secret_value(secret: Resource | None, *keys: str) -> str | None:
    """Base64 of the first of `keys` a Secret holds (`data`, else `stringData`)."""
    if secret is None:
        return None
    data = secret.body.get("data") or {}
    plain = secret.body.get("stringData") or {}
    for key in keys:
        if key in data:
            return str(data[key])
        if key in plain:
            return b64(str(plain[key]))
    return None


def certificate_secret(name: str, cert: str | None, key: str | None) -> dict[str, Any]:
    if not cert or not key:
        cert, key = unusable_pair()
    return {"@type": SECRET_TYPE, "name": name, "tls_certificate": {
        "certificate_chain": {"inline_bytes": cert}, "private_key": {"inline_bytes": key}}}


def root_secret(name: str, ca: str | None) -> dict[str, Any]:
    trusted = {"inline_bytes": ca or unusable_pair()[0]}
    return {"@type": SECRET_TYPE, "name": name,
            "validation_context": {"trusted_ca": trusted}}


def proxy_file(ctx: PushContext, proxy: Proxy, path: str) -> dict[str, str] | None:
    """A file the proxy sees: mounted from a Secret, or the image's OS trust store."""
    from .sidecar import mounted_file

    if path in ("system", SYSTEM_ROOTS):
        # The local outside world's public CA is part of the image's trust store, as a
        # public root is.
        roots = ctx.outside_world.roots if ctx.outside_world else SYSTEM_ROOTS
        return {"filename": roots} if os.path.exists(roots) else None
    content = mounted_file(ctx, proxy.workload, path) if proxy.workload else None
    return {"inline_bytes": content} if content else None


def client_certificate_secret(proxy: Proxy, ctx: PushContext, name: str,
                              tls: dict[str, Any]) -> dict[str, Any]:
    """The client certificate: from the credential Secret in the proxy's namespace (`tls.crt`
    and `tls.key`, or generic `cert` and `key`), else from the mounted files."""
    if name.startswith("kubernetes://"):
        found = ctx.store.get("Secret", proxy.namespace, str(tls.get("credentialName")))
        return certificate_secret(name, secret_value(found, "tls.crt", "cert"),
                                  secret_value(found, "tls.key", "key"))
    cert = proxy_file(ctx, proxy, str(tls.get("clientCertificate")))
    key = proxy_file(ctx, proxy, str(tls.get("privateKey")))
    return certificate_secret(name, (cert or {}).get("inline_bytes"),
                              (key or {}).get("inline_bytes"))


def server_ca_secret(proxy: Proxy, ctx: PushContext, name: str,
                     tls: dict[str, Any]) -> dict[str, Any]:
    """The CA the server's certificate must chain to: `ca.crt` (or `cacert`) of the credential
    or of `<credential>-cacert`, else the caCertificates file, else the OS trust store."""
    if name.startswith("kubernetes://"):
        credential = str(tls.get("credentialName"))
        ca = secret_value(ctx.store.get("Secret", proxy.namespace, credential),
                          "ca.crt", "cacert") or secret_value(
            ctx.store.get("Secret", proxy.namespace, credential + "-cacert"), "ca.crt", "cacert")
        return root_secret(name, ca)
    found = proxy_file(ctx, proxy, str(tls.get("caCertificates") or "system"))
    if found is not None and "filename" in found:
        return {"@type": SECRET_TYPE, "name": name, "validation_context": {"trusted_ca": found}}
    return root_secret(name, (found or {}).get("inline_bytes"))


def destination_tls_settings(dr: Resource) -> list[dict[str, Any]]:
    """Every `tls` block of a DestinationRule: host, port level, subsets and their ports."""
    policies = [dr.spec.get("trafficPolicy") or {}] + [
        s.get("trafficPolicy") or {} for s in dr.spec.get("subsets") or []]
    out = []
    for policy in policies:
        for holder in [policy, *(policy.get("portLevelSettings") or [])]:
            if isinstance(holder.get("tls"), dict):
                out.append(dict(holder["tls"]))
    return out


def origination_secrets(proxy: Proxy, ctx: PushContext) -> list[dict[str, Any]]:
    """SDS secrets for the SIMPLE and MUTUAL DestinationRule settings this proxy may use."""
    if proxy.kind not in ("sidecar", "router"):
        return []
    out: dict[str, dict[str, Any]] = {}
    # Every rule, not only the one in force per host: subsets merge across rules.
    for dr in ctx.store.list("DestinationRule"):
        dr_selects = bool(dr.spec.get("workloadSelector"))
        for tls in destination_tls_settings(dr):
            if str(tls.get("mode", "")).upper() not in ("SIMPLE", "MUTUAL"):
                continue
            cert, root = origination_secret_names(proxy, tls, dr_selects)
            if cert and cert not in out:
                out[cert] = client_certificate_secret(proxy, ctx, cert, tls)
            if root and root not in out:
                out[root] = server_ca_secret(proxy, ctx, root, tls)
    return list(out.values())


def identity_secrets(proxy: Proxy, ctx: PushContext) -> list[dict[str, Any]]:
    """`default` (this proxy's certificate and key) and `ROOTCA` (the mesh root), over SDS;
    and the client certificates and CAs its DestinationRules' TLS origination names."""
    secrets = origination_secrets(proxy, ctx)
    if not has_identity(proxy, ctx):
        return secrets
    chain, key = ctx.certificates[proxy.id]
    return [
        {"@type": SECRET_TYPE, "name": "default", "tls_certificate": {
            "certificate_chain": {"inline_bytes": b64(chain)},
            "private_key": {"inline_bytes": b64(key)}}},
        {"@type": SECRET_TYPE, "name": "ROOTCA",
         "validation_context": {"trusted_ca": {"inline_bytes": b64(ctx.root_cert)}}},
        *secrets,
    ]
