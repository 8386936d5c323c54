"""DestinationRule `tls` toward a host (SIMPLE, MUTUAL, ISTIO_MUTUAL, DISABLE), Gateway
ISTIO_MUTUAL, and Istio's mesh ALPN on both sides of mesh mTLS.

Translation tests check the clusters, listeners and secrets a proxy gets (and that Envoy's own
protobuf schema accepts them); the mesh tests run real Envoy with the real curl and openssl:
a sidecar originates TLS to an nginx that serves its own certificate, verifying it against a
CA mounted into the sidecar; DISABLE toward a STRICT workload is refused; TLS from outside the
mesh to a PERMISSIVE port reaches the app, not the mesh chain; a Gateway ISTIO_MUTUAL port
refuses clients without a mesh certificate and serves a sidecar that has one.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import lablib
from lablib import certs
from lablib.config.analyze import analyze
from lablib.config.loader import load
from lablib.config.store import ConfigStore
from lablib.controlplane.ads import to_any
from lablib.controlplane.context import Proxy, PushContext, Workload
from lablib.controlplane.mtls import MESH_ALPNS, MESH_HTTP_ALPNS, MESH_TCP_ALPNS
from lablib.controlplane.naming import node_id
from lablib.controlplane.snapshot import Snapshot, build_snapshot

NS = "tls-unit"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
SERVICES = """
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  selector: {app: db}
  ports: [{name: tcp, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: nginx}
spec:
  selector: {app: nginx}
  ports: [{port: 443, protocol: TCP}]
---
apiVersion: v1
kind: Secret
metadata: {name: client-certs}
type: Opaque
data:
  ca.crt: Q0EtUEVN
  tls.crt: Q0VSVC1QRU0=
  tls.key: S0VZLVBFTQ==
---
apiVersion: v1
kind: Secret
metadata: {name: egress-credential}
type: kubernetes.io/tls
data: {tls.crt: Q0VSVA==, tls.key: S0VZ, ca.crt: Q0E=}
"""
INGRESS = """
apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  ports: [{name: https, port: 443, targetPort: 8443}]
---
apiVersion: v1
kind: Secret
metadata: {name: egress-credential, namespace: istio-system}
type: kubernetes.io/tls
data: {tls.crt: R1ctQ0VSVA==, tls.key: R1ctS0VZ, ca.crt: R1ctQ0E=}
"""
MOUNTS = {
    "sidecar.istio.io/userVolume": json.dumps({"certs": {"secret": {"secretName":
                                                                    "client-certs"}}}),
    "sidecar.istio.io/userVolumeMount": json.dumps({"certs": {"mountPath": "/etc/certs"}}),
}
CLIENT = Workload("client-a", NS, {"app": "client"}, "client", True, {80: 20000},
                  declared_ports=(80,), annotations=MOUNTS)
WEB = Workload("web-a", NS, {"app": "web"}, "web", True, {80: 20001}, declared_ports=(80,))
DB = Workload("db-a", NS, {"app": "db"}, "db", True, {5432: 20002}, declared_ports=(5432,))
NGINX = Workload("nginx-a", NS, {"app": "nginx"}, "nginx", True, {443: 20003},
                 declared_ports=(443,))
GATEWAY_WORKLOAD = Workload("istio-ingressgateway-a", "istio-system",
                            {"istio": "ingressgateway"}, "istio-ingressgateway", False,
                            {8443: 30443})


def sidecar(workload: Workload) -> Proxy:
    return Proxy(node_id("sidecar", workload.name, NS), "sidecar", NS, workload,
                 outbound_port=15001, app_ports={p: 21000 + i for i, p in
                                                 enumerate(workload.ports)})


CLIENT_PROXY, WEB_PROXY, DB_PROXY, NGINX_PROXY = map(sidecar, (CLIENT, WEB, DB, NGINX))
GATEWAY = Proxy(node_id("router", GATEWAY_WORKLOAD.name, "istio-system"), "router",
                "istio-system", GATEWAY_WORKLOAD)
PROXIES = (CLIENT_PROXY, WEB_PROXY, DB_PROXY, NGINX_PROXY, GATEWAY)


def context(*docs: str, mtls: bool = True) -> PushContext:
    resources = []
    for text in (SERVICES, INGRESS, *docs):
        resources += load(text, namespace=None if "istio-system" in text else NS)
    store = ConfigStore.with_namespaces([NS, "istio-system"]).with_applied(resources)
    identities = {p.id: ("CHAIN", "KEY") for p in PROXIES} if mtls else {}
    return PushContext(store, tuple(p.workload for p in PROXIES if p.workload), PROXIES, {},
                       identities, "ROOT" if mtls else "")


def snapshot(proxy: Proxy, *docs: str, mtls: bool = True) -> Snapshot:
    snap = build_snapshot(proxy, context(*docs, mtls=mtls))
    for by_name in snap.resources.values():  # Envoy's own schema accepts every resource
        for resource in by_name.values():
            assert to_any(resource).type_url == resource["@type"]
    return snap


def rule(host: str, tls: dict | None = None, name: str = "dr", **spec) -> str:
    body: dict = {"host": host, **spec}
    if tls is not None:
        body["trafficPolicy"] = {"tls": tls}
    return json.dumps({"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
                       "metadata": {"name": name}, "spec": body})


def cluster(snap: Snapshot, host: str, port: int, subset: str = "") -> dict:
    return snap.clusters[f"outbound|{port}|{subset}|{host}.{NS}.svc.cluster.local"]


def tls_context(found: dict) -> dict:
    return found["transport_socket"]["typed_config"]


def decoded(secret: dict, *path: str) -> bytes:
    value = secret
    for key in path:
        value = value[key]
    return base64.b64decode(str(value))


# --- SIMPLE and MUTUAL: TLS origination -----------------------------------------------------


def test_simple_verifies_the_server_with_the_mounted_ca_and_names():
    snap = snapshot(CLIENT_PROXY, rule("nginx", {
        "mode": "SIMPLE", "caCertificates": "/etc/certs/ca.crt", "sni": "nginx.example.com",
        "subjectAltNames": ["nginx.example.com", "spiffe://x/ns/a/sa/b"]}))
    found = cluster(snap, "nginx", 443)
    context_ = tls_context(found)
    assert context_["sni"] == "nginx.example.com"
    common = context_["common_tls_context"]
    assert "tls_certificate_sds_secret_configs" not in common  # one-way TLS: no client cert
    assert "alpn_protocols" not in common  # not mesh mTLS: no istio ALPN
    validation = common["combined_validation_context"]
    assert validation["validation_context_sds_secret_config"]["name"] == \
        "file-root:/etc/certs/ca.crt"
    assert validation["default_validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "nginx.example.com"}},
        {"san_type": "URI", "matcher": {"exact": "spiffe://x/ns/a/sa/b"}}]
    assert "transport_socket_matches" not in found
    assert decoded(snap.secrets["file-root:/etc/certs/ca.crt"], "validation_context",
                   "trusted_ca", "inline_bytes") == b"CA-PEM"
    # sni is set: no automatic SNI from the Host header
    assert "upstream_http_protocol_options" not in (
        found.get("typed_extension_protocol_options", {}).get(HTTP_OPTIONS, {}))


def test_simple_without_sni_or_ca_uses_the_host_header_and_the_os_trust_store():
    snap = snapshot(CLIENT_PROXY, rule("nginx", {"mode": "SIMPLE"}))
    found = cluster(snap, "nginx", 443)
    options = found["typed_extension_protocol_options"][HTTP_OPTIONS]
    assert options["upstream_http_protocol_options"] == {"auto_sni": True,
                                                         "auto_san_validation": True}
    assert "sni" not in tls_context(found)
    root = snap.secrets["file-root:system"]["validation_context"]["trusted_ca"]
    assert root == {"filename": "/etc/ssl/certs/ca-certificates.crt"}


def test_insecure_skip_verify_verifies_nothing():
    snap = snapshot(CLIENT_PROXY, rule("nginx", {"mode": "SIMPLE", "insecureSkipVerify": True,
                                                 "caCertificates": "/etc/certs/ca.crt"}))
    found = cluster(snap, "nginx", 443)
    assert "combined_validation_context" not in tls_context(found)["common_tls_context"]
    options = found["typed_extension_protocol_options"][HTTP_OPTIONS]
    assert options["upstream_http_protocol_options"] == {"auto_sni": True}


def test_mutual_presents_the_mounted_client_certificate():
    snap = snapshot(CLIENT_PROXY, rule("nginx", {
        "mode": "MUTUAL", "clientCertificate": "/etc/certs/tls.crt",
        "privateKey": "/etc/certs/tls.key", "caCertificates": "/etc/certs/ca.crt"}))
    common = tls_context(cluster(snap, "nginx", 443))["common_tls_context"]
    name = "file-cert:/etc/certs/tls.crt~/etc/certs/tls.key"
    assert [c["name"] for c in common["tls_certificate_sds_secret_configs"]] == [name]
    secret = snap.secrets[name]["tls_certificate"]
    assert decoded(secret, "certificate_chain", "inline_bytes") == b"CERT-PEM"
    assert decoded(secret, "private_key", "inline_bytes") == b"KEY-PEM"


def test_files_the_proxy_cannot_see_fail_closed_not_open():
    """A path no volume mounts: Istio's agent cannot read it and the handshake fails; here the
    secret is a certificate nobody trusts, never an empty (unverified) context."""
    snap = snapshot(CLIENT_PROXY, rule("nginx", {
        "mode": "MUTUAL", "clientCertificate": "/nowhere/tls.crt",
        "privateKey": "/nowhere/tls.key", "caCertificates": "/nowhere/ca.crt"}))
    root = decoded(snap.secrets["file-root:/nowhere/ca.crt"], "validation_context",
                   "trusted_ca", "inline_bytes")
    cert = decoded(snap.secrets["file-cert:/nowhere/tls.crt~/nowhere/tls.key"],
                   "tls_certificate", "certificate_chain", "inline_bytes")
    assert root.startswith(b"-----BEGIN CERTIFICATE-----") and root == cert
    assert certs.describe(root)["subject"] == "CN=lablib: not mounted"


def test_port_level_and_subset_tls_apply_where_they_are_set():
    docs = rule("web", name="web", trafficPolicy={
        "tls": {"mode": "ISTIO_MUTUAL"},
        "portLevelSettings": [{"port": {"number": 80}, "tls": {"mode": "DISABLE"}}]},
        subsets=[{"name": "v1", "labels": {"app": "web"},
                  "trafficPolicy": {"tls": {"mode": "SIMPLE",
                                            "caCertificates": "/etc/certs/ca.crt"}}}])
    snap = snapshot(CLIENT_PROXY, docs)
    host = cluster(snap, "web", 80)
    assert "transport_socket" not in host and "transport_socket_matches" not in host
    v1 = cluster(snap, "web", 80, "v1")
    assert "file-root:/etc/certs/ca.crt" in json.dumps(tls_context(v1))


def test_credential_name_counts_at_gateways_and_selected_sidecars_only():
    tls = {"mode": "MUTUAL", "credentialName": "egress-credential"}
    plain = snapshot(CLIENT_PROXY, rule("nginx", tls))
    # Istio: a sidecar ignores credentialName without a workloadSelector (and sends plaintext)
    assert "transport_socket" not in cluster(plain, "nginx", 443)
    selected = snapshot(CLIENT_PROXY, rule("nginx", tls,
                                           workloadSelector={"matchLabels": {"app": "client"}}))
    common = tls_context(cluster(selected, "nginx", 443))["common_tls_context"]
    assert common["tls_certificate_sds_secret_configs"][0]["name"] == \
        "kubernetes://egress-credential"
    assert decoded(selected.secrets["kubernetes://egress-credential"], "tls_certificate",
                   "certificate_chain", "inline_bytes") == b"CERT"
    gateway = snapshot(GATEWAY, rule("nginx", tls))
    # the gateway reads the Secret of its own namespace
    assert decoded(gateway.secrets["kubernetes://egress-credential-cacert"],
                   "validation_context", "trusted_ca", "inline_bytes") == b"GW-CA"
    assert "kubernetes://egress-credential" in json.dumps(
        tls_context(cluster(gateway, "nginx", 443)))


# --- explicit settings against auto mTLS ------------------------------------------------------


def test_auto_mtls_offers_istio_alpn_by_port_protocol():
    snap = snapshot(CLIENT_PROXY)
    for host, port, alpn in (("web", 80, MESH_HTTP_ALPNS), ("db", 5432, MESH_TCP_ALPNS)):
        matches = cluster(snap, host, port)["transport_socket_matches"]
        common = matches[0]["transport_socket"]["typed_config"]["common_tls_context"]
        assert common["alpn_protocols"] == alpn and "istio" in alpn


@pytest.mark.parametrize("mode", ["SIMPLE", "DISABLE", "ISTIO_MUTUAL"])
def test_an_explicit_mode_replaces_auto_mtls(mode):
    tls = {"mode": mode, "caCertificates": "/etc/certs/ca.crt"} if mode == "SIMPLE" else \
        {"mode": mode}
    found = cluster(snapshot(CLIENT_PROXY, rule("web", tls)), "web", 80)
    assert "transport_socket_matches" not in found
    endpoint = found["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert "metadata" not in endpoint
    if mode == "DISABLE":
        assert "transport_socket" not in found
        return
    text = json.dumps(tls_context(found))
    assert ('"default"' in text) == (mode == "ISTIO_MUTUAL")  # the mesh certificate or not
    assert ("istio" in text.split("alpn_protocols")[-1][:60]) == (mode == "ISTIO_MUTUAL")


def test_istio_mutual_takes_the_rules_sni_and_subject_alt_names():
    found = cluster(snapshot(CLIENT_PROXY, rule("web", {
        "mode": "ISTIO_MUTUAL", "sni": "web.example", "subjectAltNames": [
            "spiffe://cluster.local/ns/other/sa/web"]})), "web", 80)
    context_ = tls_context(found)
    assert context_["sni"] == "web.example"
    assert context_["common_tls_context"]["combined_validation_context"][
        "default_validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/other/sa/web"}}]


# --- the server side: the mesh chain matches Istio's ALPN ------------------------------------


def chains(snap: Snapshot, port: int) -> list[dict]:
    return snap.listeners[f"inbound|{port}"]["filter_chains"]


def test_permissive_mesh_chain_matches_istio_alpn_only():
    web = chains(snapshot(WEB_PROXY), 80)
    assert web[0]["filter_chain_match"] == {"transport_protocol": "tls",
                                            "application_protocols": MESH_ALPNS}
    assert "transport_socket" in web[0]
    # a port declared HTTP has no chain for other TLS (Istio resets it)
    assert [c["filter_chain_match"]["transport_protocol"] for c in web] == ["tls", "raw_buffer"]


@pytest.mark.parametrize("proxy, port", [(DB_PROXY, 5432), (NGINX_PROXY, 443)])
def test_other_tls_to_a_tcp_or_undeclared_port_passes_through_to_the_app(proxy, port):
    found = chains(snapshot(proxy), port)
    assert [c["filter_chain_match"]["transport_protocol"] for c in found] == \
        ["tls", "raw_buffer", "tls"]
    passthrough = found[2]
    assert "transport_socket" not in passthrough  # the app terminates its own TLS
    assert "application_protocols" not in passthrough["filter_chain_match"]
    [tcp] = passthrough["filters"]
    assert tcp["name"] == "envoy.filters.network.tcp_proxy"
    assert tcp["typed_config"]["cluster"] == f"inbound|{port}||"


def test_strict_takes_any_tls_and_disable_none():
    strict = chains(snapshot(WEB_PROXY, """
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default}
spec: {mtls: {mode: STRICT}}
"""), 80)
    assert [c["filter_chain_match"] for c in strict] == [{"transport_protocol": "tls"}]
    disabled = chains(snapshot(WEB_PROXY, """
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default}
spec: {mtls: {mode: DISABLE}}
"""), 80)
    assert len(disabled) == 1 and "transport_socket" not in disabled[0]


# --- Gateway ISTIO_MUTUAL -------------------------------------------------------------------

MESH_GATEWAY = """
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {name: mesh-gw}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: ISTIO_MUTUAL}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: ["*"]
  gateways: [mesh-gw]
  http: [{route: [{destination: {host: web}}]}]
"""


def test_gateway_istio_mutual_terminates_with_the_mesh_identity():
    snap = snapshot(GATEWAY, MESH_GATEWAY)
    [chain] = snap.listeners["0.0.0.0_8443"]["filter_chains"]
    context_ = chain["transport_socket"]["typed_config"]
    assert context_["require_client_certificate"] is True
    common = context_["common_tls_context"]
    assert [c["name"] for c in common["tls_certificate_sds_secret_configs"]] == ["default"]
    assert common["combined_validation_context"]["validation_context_sds_secret_config"][
        "name"] == "ROOTCA"
    assert not any(name.startswith("kubernetes://") for name in snap.secrets)
    # no mesh identity, no certificate to terminate with: no chain, handshakes fail
    assert "0.0.0.0_8443" not in snapshot(GATEWAY, MESH_GATEWAY, mtls=False).listeners


# --- analyzer -------------------------------------------------------------------------------

CLIENT_DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: client}
spec:
  selector: {matchLabels: {app: client}}
  template:
    metadata:
      labels: {app: client, sidecar.istio.io/inject: "true"}
      annotations:
        sidecar.istio.io/userVolume: '{"certs":{"secret":{"secretName":"client-certs"}}}'
        sidecar.istio.io/userVolumeMount: '{"certs":{"mountPath":"/etc/certs"}}'
    spec:
      containers: [{name: client, image: curlimages/curl}]
"""


def findings(*docs: str) -> list:
    resources = []
    for text in (SERVICES, CLIENT_DEPLOYMENT, *docs):
        resources += load(text, namespace=NS)
    store = ConfigStore.with_namespaces([NS]).with_applied(resources)
    return [d for d in analyze(store) if d.code in ("LAB0225", "LAB0226", "LAB0227")]


def test_mutual_without_a_client_certificate_is_refused_with_the_fix():
    [found] = findings(rule("nginx", {"mode": "MUTUAL", "caCertificates": "/etc/certs/ca.crt"}))
    assert (found.code, found.severity) == ("LAB0225", "Error")
    assert found.field == "spec.trafficPolicy.tls.clientCertificate"
    assert "clientCertificate and privateKey are not set" in found.message
    assert "userVolumeMount" in found.fix and "credentialName" in found.fix
    port_level = findings(rule("nginx", name="p", trafficPolicy={"portLevelSettings": [
        {"port": {"number": 443}, "tls": {"mode": "MUTUAL",
                                          "clientCertificate": "/etc/certs/tls.crt"}}]}))
    assert [f.field for f in port_level] == [
        "spec.trafficPolicy.portLevelSettings[0].tls.privateKey"]


def test_credential_name_with_files_is_refused():
    [found] = findings(rule("nginx", {"mode": "SIMPLE", "credentialName": "c",
                                      "caCertificates": "/etc/certs/ca.crt"},
                            workloadSelector={"matchLabels": {"app": "client"}}))
    assert found.code == "LAB0225" and "caCertificates" in found.field


def test_a_ca_file_no_client_proxy_mounts_is_a_warning_naming_the_mount():
    [found] = findings(rule("nginx", {"mode": "SIMPLE", "caCertificates": "/etc/other/ca.crt"}))
    assert (found.code, found.severity) == ("LAB0226", "Warning")
    assert found.field == "spec.trafficPolicy.tls.caCertificates"
    assert f"{NS}/client" in found.message and "sidecar.istio.io/userVolume" in found.fix
    # mounted (the Secret has the key), the OS store, or unverified: nothing to say
    assert findings(rule("nginx", {"mode": "SIMPLE", "caCertificates": "/etc/certs/ca.crt"})) == []
    assert findings(rule("nginx", {"mode": "SIMPLE"})) == []
    assert findings(rule("nginx", {"mode": "SIMPLE", "insecureSkipVerify": True,
                                   "caCertificates": "/etc/other/ca.crt"})) == []
    missing_key = findings(rule("nginx", {"mode": "SIMPLE", "caCertificates": "/etc/certs/x"}))
    assert [f.code for f in missing_key] == ["LAB0226"]


def test_credential_name_without_selector_warns_that_sidecars_send_plaintext():
    [found] = findings(rule("nginx", {"mode": "SIMPLE", "credentialName": "c"}))
    assert (found.code, found.severity) == ("LAB0227", "Warning")
    assert "plaintext" in found.message and "workloadSelector" in found.fix


# --- on real Envoy, with the real curl and openssl ---------------------------------------------

MESH_NS = "tls-origination"
EXT_NS = "tls-origination-ext"
NGINX_CONF = """\
events {
}
http {
  server {
    listen 443 ssl;
    root /usr/share/nginx/html;
    index index.html;
    server_name nginx.example.com;
    ssl_certificate /etc/nginx-server-certs/tls.crt;
    ssl_certificate_key /etc/nginx-server-certs/tls.key;
  }
}
"""
MY_NGINX = """
apiVersion: v1
kind: Service
metadata: {name: my-nginx, labels: {run: my-nginx}}
spec:
  ports: [{port: 443, protocol: TCP}]
  selector: {run: my-nginx}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: my-nginx}
spec:
  selector: {matchLabels: {run: my-nginx}}
  replicas: 1
  template:
    metadata: {labels: {run: my-nginx}}
    spec:
      containers:
      - name: my-nginx
        image: nginx
        ports: [{containerPort: 443}]
        volumeMounts:
        - {name: nginx-config, mountPath: /etc/nginx, readOnly: true}
        - {name: nginx-server-certs, mountPath: /etc/nginx-server-certs, readOnly: true}
      volumes:
      - {name: nginx-config, configMap: {name: nginx-configmap}}
      - {name: nginx-server-certs, secret: {secretName: nginx-tls-secret}}
"""
# The sleep sample, its sidecar given the lab CA at /etc/certs/ca.crt (the way Istio mounts
# files into istio-proxy: the userVolume annotations).
SLEEP = """
apiVersion: v1
kind: ServiceAccount
metadata: {name: sleep}
---
apiVersion: v1
kind: Service
metadata: {name: sleep, labels: {app: sleep}}
spec:
  ports: [{port: 80, name: http}]
  selector: {app: sleep}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: sleep}
spec:
  replicas: 1
  selector: {matchLabels: {app: sleep}}
  template:
    metadata:
      labels: {app: sleep}
      annotations:
        sidecar.istio.io/userVolume: '{"certs":{"secret":{"secretName":"client-certs"}}}'
        sidecar.istio.io/userVolumeMount: '{"certs":{"mountPath":"/etc/certs","readOnly":true}}'
    spec:
      serviceAccountName: sleep
      containers:
      - {name: sleep, image: curlimages/curl, command: ["/bin/sleep", "infinity"]}
"""


def configmap(name: str, namespace: str, files: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace}, "data": files}


@pytest.fixture(scope="module")
def lab_ca(tmp_path_factory) -> certs.RootCA:
    return certs.RootCA.load_or_create(tmp_path_factory.mktemp("origination-ca"))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, lab_ca) -> Iterator[lablib.Backend]:
    names = [f"my-nginx.{ns}{suffix}" for ns in (EXT_NS, MESH_NS)
             for suffix in ("", ".svc", ".svc.cluster.local")] + ["nginx.example.com"]
    crt, key = certs.issue_server(lab_ca, names, tmp_path_factory.mktemp("nginx-certs"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAB_STATE_DIR", str(tmp_path_factory.mktemp("origination-state")))
        patch.setenv("LAB_MESH", "tls-origination")
        mesh = lablib.connect("local")
        try:
            mesh.install()
            mesh.create_namespace(MESH_NS, {"istio-injection": "enabled"})
            mesh.create_namespace(EXT_NS)
            for ns in (MESH_NS, EXT_NS):
                mesh.apply([certs.tls_secret("nginx-tls-secret", ns, crt, key),
                            configmap("nginx-configmap", ns, {"nginx.conf": NGINX_CONF})])
                mesh.apply(MY_NGINX, namespace=ns)
            mesh.apply(certs.generic_secret("client-certs", MESH_NS, {"ca.crt": lab_ca.cert_path}))
            mesh.apply(SLEEP, namespace=MESH_NS)
            mesh.apply("samples/httpbin/httpbin.yaml", namespace=MESH_NS)
            yield mesh
        finally:
            mesh.uninstall()


@pytest.fixture
def applied(mesh) -> Iterator:
    """Apply resources for one test; delete them afterwards."""
    done: list = []

    def apply(*docs: str | dict) -> None:
        for doc in docs:
            mesh.apply(doc, namespace=MESH_NS)
            done.append(doc)

    yield apply
    for doc in reversed(done):
        mesh.delete(doc, namespace=MESH_NS)


def sleep_curl(mesh, url: str, *args: str) -> subprocess.CompletedProcess:
    pod = mesh.pod_name({"app": "sleep"}, MESH_NS)
    return mesh.exec(pod, ["curl", "-sS", "--max-time", "5", "-w", "\n%{http_code}", *args,
                           url], namespace=MESH_NS, container="sleep")


def status(result: subprocess.CompletedProcess) -> str:
    return result.stdout.rstrip().rpartition("\n")[2]


def origination(host: str, tls: dict) -> str:
    return rule(host, tls, name="nginx-tls")


EXT_URL = f"http://my-nginx.{EXT_NS}:443/"


def ssl_failures(mesh) -> dict[str, int]:
    """The sleep sidecar's TLS verification failures toward the nginx outside the mesh."""
    pod = mesh.pod_name({"app": "sleep"}, MESH_NS)
    prefix = f"cluster.outbound|443||my-nginx.{EXT_NS}.svc.cluster.local.ssl."
    out = {"fail_verify_san": 0, "fail_verify_error": 0}
    for line in mesh.proxy_admin(pod, MESH_NS, "stats").splitlines():
        name, _, value = line.partition(": ")
        if name.startswith(prefix) and name[len(prefix):] in out:
            out[name[len(prefix):]] = int(value)
    return out


@pytest.mark.envoy
def test_plain_http_to_the_tls_server_fails_without_origination(mesh):
    assert status(sleep_curl(mesh, EXT_URL)) != "200"


@pytest.mark.envoy
def test_simple_originates_tls_and_verifies_nginx_against_the_mounted_ca(mesh, applied):
    applied(origination(f"my-nginx.{EXT_NS}.svc.cluster.local",
                        {"mode": "SIMPLE", "caCertificates": "/etc/certs/ca.crt"}))
    answer = sleep_curl(mesh, EXT_URL, "-i")
    assert status(answer) == "200", answer.stdout + answer.stderr
    assert "<h1>Welcome to nginx!</h1>" in answer.stdout
    assert "server: envoy" not in answer.stdout.lower()  # nginx answered (via the sidecar)


@pytest.mark.envoy
@pytest.mark.parametrize("tls", [
    {"mode": "SIMPLE", "caCertificates": "/etc/certs/ca.crt",
     "subjectAltNames": ["someone-else.example.com"]},   # the certificate names another host
    {"mode": "SIMPLE"},                                  # the OS trust store: lab CA unknown
    {"mode": "SIMPLE", "caCertificates": "/etc/certs/missing.crt"},  # not mounted
], ids=["wrong-san", "os-trust-store", "unmounted-ca"])
def test_simple_refuses_a_server_it_cannot_verify(mesh, applied, tls):
    applied(origination(f"my-nginx.{EXT_NS}.svc.cluster.local", tls))
    before = ssl_failures(mesh)
    answer = sleep_curl(mesh, EXT_URL)
    assert status(answer) == "503", answer.stdout
    after = ssl_failures(mesh)
    # Envoy refused nginx's certificate: by its names, or as signed by an unknown CA
    reason = "fail_verify_san" if "subjectAltNames" in tls else "fail_verify_error"
    assert after[reason] > before[reason], (before, after)


@pytest.mark.envoy
def test_simple_to_an_in_mesh_tls_server_passes_through_its_sidecar(mesh, applied):
    """The client's sidecar originates TLS without Istio's ALPN: nginx's PERMISSIVE sidecar
    passes it to nginx instead of taking it for mesh mTLS."""
    applied(origination(f"my-nginx.{MESH_NS}.svc.cluster.local",
                        {"mode": "SIMPLE", "caCertificates": "/etc/certs/ca.crt"}))
    answer = sleep_curl(mesh, f"http://my-nginx.{MESH_NS}:443/")
    assert status(answer) == "200" and "Welcome to nginx!" in answer.stdout, answer.stdout


@pytest.mark.envoy
def test_tls_from_outside_the_mesh_to_a_permissive_port_reaches_the_app(mesh, lab_ca):
    """openssl without `-alpn istio`, from the proxy container (no sidecar in the way), sees
    nginx's own certificate, not the mesh certificate of nginx's sidecar."""
    pod = mesh.pod_name({"app": "sleep"}, MESH_NS)
    shown = mesh.exec(pod, ["openssl", "s_client", "-connect", f"my-nginx.{MESH_NS}:443",
                            "-servername", "nginx.example.com", "-CAfile",
                            str(lab_ca.cert_path), "-verify_hostname", "nginx.example.com",
                            "-verify_return_error"],
                      namespace=MESH_NS, container="istio-proxy")
    # signed by the lab CA for nginx.example.com: nginx's certificate, not a mesh one
    assert "Verify return code: 0 (ok)" in shown.stdout, shown.stdout + shown.stderr


HTTPBIN_URL = f"http://httpbin.{MESH_NS}:8000/headers"
STRICT = {"apiVersion": "security.istio.io/v1beta1", "kind": "PeerAuthentication",
          "metadata": {"name": "default", "namespace": MESH_NS},
          "spec": {"mtls": {"mode": "STRICT"}}}


@pytest.mark.envoy
def test_disable_toward_a_strict_workload_is_refused(mesh, applied):
    applied(STRICT)
    answer = sleep_curl(mesh, HTTPBIN_URL)
    assert status(answer) == "200" and "spiffe://" in answer.stdout  # auto mTLS
    applied(rule(f"httpbin.{MESH_NS}.svc.cluster.local", {"mode": "DISABLE"}, name="plain"))
    refused = sleep_curl(mesh, HTTPBIN_URL)
    assert status(refused) == "503", refused.stdout
    assert "reset" in refused.stdout or "termination" in refused.stdout, refused.stdout


MESH_ONLY_GATEWAY = f"""
apiVersion: networking.istio.io/v1beta1
kind: Gateway
metadata: {{name: mesh-only, namespace: {MESH_NS}}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: https-mesh, protocol: HTTPS}}
    hosts: ["*"]
    tls: {{mode: ISTIO_MUTUAL}}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {{name: mesh-only, namespace: {MESH_NS}}}
spec:
  hosts: ["*"]
  gateways: [mesh-only]
  http: [{{route: [{{destination: {{host: httpbin, port: {{number: 8000}}}}}}]}}]
"""


def host_curl(mesh, *args: str) -> subprocess.CompletedProcess:
    host, port = mesh.ingress_address("http2")
    return subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                           "--max-time", "5", "-k", *args, f"https://{host}:{port}/status/418"],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.envoy
def test_gateway_istio_mutual_refuses_clients_without_a_mesh_certificate(mesh, applied, lab_ca,
                                                                         tmp_path: Path):
    applied(MESH_ONLY_GATEWAY)
    bare = host_curl(mesh)
    assert bare.returncode != 0 and bare.stdout == "000", (bare.stdout, bare.stderr)
    client, key = certs.issue_client(lab_ca, ["client.example.com"], tmp_path)
    foreign = host_curl(mesh, "--cert", str(client), "--key", str(key))
    assert foreign.returncode != 0 and foreign.stdout == "000", (foreign.stdout, foreign.stderr)
    # a sidecar holds a mesh certificate: with ISTIO_MUTUAL toward the gateway it gets in
    applied(rule("istio-ingressgateway.istio-system.svc.cluster.local",
                 {"mode": "ISTIO_MUTUAL"}, name="to-gateway"))
    inside = sleep_curl(mesh, "http://istio-ingressgateway.istio-system:80/status/418")
    assert status(inside) == "418", inside.stdout
