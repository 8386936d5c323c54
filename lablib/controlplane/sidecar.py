"""The Sidecar resource's `ingress` listeners (Istio's listener_inbound.go for Sidecar API).

A Sidecar with `ingress` replaces a workload's inbound ports by its own: each listens on
`port.number` and forwards to `defaultEndpoint` (the app's port). With the install-time
feature ENABLE_TLS_ON_SIDECAR_INGRESS, an ingress `tls` block (SIMPLE or MUTUAL, with
certificate files mounted into the proxy through the `sidecar.istio.io/userVolume` and
`userVolumeMount` annotations) terminates TLS there instead of mesh mTLS. Istio names those
file-based SDS secrets `file-cert:<cert>~<key>` and `file-root:<ca>`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..config.model import Resource
from .context import PushContext, Workload, selector_matches
from .mtls import ADS, DOWNSTREAM_TLS, ROOT_NAMESPACE, SECRET_TYPE

TLS_FEATURE = "ENABLE_TLS_ON_SIDECAR_INGRESS"


@dataclass(frozen=True)
class InboundPort:
    number: int  # where the sidecar listens (the pod port others reach)
    target: int  # the app's container port it forwards to
    tls: dict[str, Any] | None = None  # the Sidecar ingress `tls`, when it applies


def sidecar_for(ctx: PushContext, workload: Workload) -> Resource | None:
    """The Sidecar in force: one selecting this workload, else the namespace's default, else
    the root namespace's (istio-system), which Istio applies mesh-wide."""
    candidates = [s for s in ctx.store.list("Sidecar") if s.namespace == workload.namespace]
    for sidecar in candidates:
        labels = dict((sidecar.spec.get("workloadSelector") or {}).get("labels") or {})
        if labels and selector_matches(labels, workload.labels):
            return sidecar
    root = [s for s in ctx.store.list("Sidecar") if s.namespace == ROOT_NAMESPACE]
    return next((s for s in candidates + root if not s.spec.get("workloadSelector")), None)


def endpoint_port(default_endpoint: str, fallback: int) -> int:
    """`0.0.0.0:80` or `127.0.0.1:80` -> 80."""
    _, _, port = str(default_endpoint or "").rpartition(":")
    return int(port) if port.isdigit() else fallback


def ingress_ports(ctx: PushContext, workload: Workload) -> list[InboundPort] | None:
    """The Sidecar's ingress ports for this workload, or None when no Sidecar sets any."""
    sidecar = sidecar_for(ctx, workload)
    entries = (sidecar.spec.get("ingress") if sidecar else None) or []
    if not entries:
        return None
    tls_on = ctx.features.get(TLS_FEATURE, "").lower() == "true"
    out = []
    for entry in entries:
        number = int(entry["port"]["number"])
        tls = entry.get("tls") if tls_on else None
        out.append(InboundPort(number, endpoint_port(entry.get("defaultEndpoint", ""), number),
                               tls))
    return out


def terminates_tls(ctx: PushContext, workload: Workload, port: int) -> bool:
    """Whether this port uses the Sidecar's own TLS (so clients must not send mesh mTLS)."""
    return any(p.number == port and p.tls for p in ingress_ports(ctx, workload) or [])


# --- certificates from files mounted into the proxy ----------------------------------------


def mounted_file(ctx: PushContext, workload: Workload, path: str) -> str | None:
    """Base64 content of a file the proxy sees at `path` through the userVolume annotations."""
    volumes = json.loads(workload.annotations.get("sidecar.istio.io/userVolume") or "{}")
    mounts = json.loads(workload.annotations.get("sidecar.istio.io/userVolumeMount") or "{}")
    for name, mount in mounts.items():
        folder = str(mount.get("mountPath", "")).rstrip("/") + "/"
        if not path.startswith(folder):
            continue
        source = (volumes.get(name) or {}).get("secret") or {}
        secret = ctx.store.get("Secret", workload.namespace, str(source.get("secretName", "")))
        if secret is not None:
            return (secret.body.get("data") or {}).get(path[len(folder):])
    return None


def cert_secret_name(tls: dict[str, Any]) -> str:
    return f"file-cert:{tls.get('serverCertificate')}~{tls.get('privateKey')}"


def root_secret_name(tls: dict[str, Any]) -> str:
    return f"file-root:{tls.get('caCertificates')}"


def downstream_file_tls(tls: dict[str, Any]) -> dict[str, Any]:
    common: dict[str, Any] = {
        "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
        "alpn_protocols": ["h2", "http/1.1"],
        "tls_certificate_sds_secret_configs": [{"name": cert_secret_name(tls),
                                                "sds_config": ADS}]}
    context: dict[str, Any] = {"@type": DOWNSTREAM_TLS, "common_tls_context": common}
    if str(tls.get("mode", "SIMPLE")).upper() == "MUTUAL":
        common["validation_context_sds_secret_config"] = {"name": root_secret_name(tls),
                                                          "sds_config": ADS}
        context["require_client_certificate"] = True
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def file_secrets(ctx: PushContext, workload: Workload) -> list[dict[str, Any]]:
    """The SDS secrets for the certificate files the Sidecar's ingress `tls` names."""
    out = []
    for port in ingress_ports(ctx, workload) or []:
        if not port.tls:
            continue
        cert = mounted_file(ctx, workload, str(port.tls.get("serverCertificate", "")))
        key = mounted_file(ctx, workload, str(port.tls.get("privateKey", "")))
        if cert and key:
            out.append({"@type": SECRET_TYPE, "name": cert_secret_name(port.tls),
                        "tls_certificate": {"certificate_chain": {"inline_bytes": cert},
                                            "private_key": {"inline_bytes": key}}})
        ca = mounted_file(ctx, workload, str(port.tls.get("caCertificates", "")))
        if ca:
            out.append({"@type": SECRET_TYPE, "name": root_secret_name(port.tls),
                        "validation_context": {"trusted_ca": {"inline_bytes": ca}}})
    return out
