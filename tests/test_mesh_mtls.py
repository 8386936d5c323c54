"""Mesh mTLS on real Envoy: workload identity, PeerAuthentication and auto mTLS.

A client with a sidecar reaches httpbin over mTLS (httpbin sees both SPIFFE identities in
X-Forwarded-Client-Cert); STRICT refuses a client without a sidecar; a DestinationRule's
DISABLE opens plaintext again; certificates rotate without a failed request. (portLevelMtls
is simulated in test_simulate_chains.py.)
"""

from __future__ import annotations

import base64
import json
import re
import threading

import pytest

import lablib
from lablib import traffic

pytestmark = pytest.mark.envoy
NS = "mtls-test"
PLAIN = "legacy"
URL = f"http://httpbin.{NS}:8000/headers"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAB_STATE_DIR", str(tmp_path_factory.mktemp("mtls-state")))
        patch.setenv("LAB_MESH", "mtls")
        mesh = lablib.connect("local")
        try:
            mesh.install()
            mesh.create_namespace(NS, {"istio-injection": "enabled"})
            mesh.create_namespace(PLAIN)
            mesh.apply("samples/httpbin/httpbin.yaml", namespace=NS)
            mesh.apply("samples/sleep/sleep.yaml", namespace=NS)
            mesh.apply("samples/sleep/sleep.yaml", namespace=PLAIN)
            yield mesh
        finally:
            mesh.uninstall()


@pytest.fixture(autouse=True)
def no_policies(mesh):
    yield
    mesh.delete([{"apiVersion": "security.istio.io/v1beta1", "kind": "PeerAuthentication",
                  "metadata": {"name": "default", "namespace": NS}},
                 {"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
                  "metadata": {"name": "httpbin", "namespace": NS}}])


def peer_authentication(mode: str) -> dict:
    return {"apiVersion": "security.istio.io/v1beta1", "kind": "PeerAuthentication",
            "metadata": {"name": "default", "namespace": NS}, "spec": {"mtls": {"mode": mode}}}


def curl(mesh, namespace: str):
    pod = mesh.pod_name({"app": "sleep"}, namespace)
    return mesh.exec(pod, ["curl", "-s", "--max-time", "5", URL], namespace=namespace,
                     container="sleep")


def xfcc(result) -> str:
    return json.loads(result.stdout)["headers"].get("X-Forwarded-Client-Cert", "")


def assert_reset(result) -> None:
    """The server's sidecar reset the plaintext connection: curl, which connects straight to
    the endpoint from a pod without a sidecar as on a cluster, exits 56 (recv failure)."""
    assert result.returncode == 56, (result.returncode, result.stdout, result.stderr)


def test_sidecars_talk_mtls_with_spiffe_identities(mesh):
    answer = curl(mesh, NS)
    assert answer.returncode == 0
    header = xfcc(answer)
    assert f"By=spiffe://cluster.local/ns/{NS}/sa/httpbin" in header
    assert f"URI=spiffe://cluster.local/ns/{NS}/sa/sleep" in header


def test_permissive_accepts_plaintext_from_a_workload_without_sidecar(mesh):
    answer = curl(mesh, PLAIN)
    assert answer.returncode == 0 and xfcc(answer) == ""


def test_strict_refuses_plaintext_and_keeps_mtls(mesh):
    mesh.apply(peer_authentication("STRICT"))
    assert_reset(curl(mesh, PLAIN))
    assert "spiffe://" in xfcc(curl(mesh, NS))


def test_destination_rule_can_turn_mtls_off_toward_a_host(mesh):
    mesh.apply({"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
                "metadata": {"name": "httpbin", "namespace": NS},
                "spec": {"host": "httpbin", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}})
    assert xfcc(curl(mesh, NS)) == ""


def serial(mesh, pod: str) -> str:
    certs = json.loads(mesh.proxy_admin(pod, NS, "certs"))["certificates"]
    chains = [c for c in certs if c.get("cert_chain")]
    return str(chains[0]["cert_chain"][0]["serial_number"])


def test_certificates_rotate_without_a_failed_request(mesh):
    httpbin = mesh.pod_name({"app": "httpbin"}, NS)
    sleep = mesh.pod_name({"app": "sleep"}, NS)
    before = serial(mesh, httpbin)
    results = []
    worker = threading.Thread(target=lambda: results.append(traffic.send(
        mesh, URL, n=150, from_pod=sleep, namespace=NS)))
    worker.start()
    mesh.call("rotate_certificates")
    worker.join()
    assert serial(mesh, httpbin) != before
    assert (results[0].status == 200).all(), results[0].status.value_counts()


def test_workload_certificates_are_short_lived_spiffe_certificates(mesh):
    pod = mesh.pod_name({"app": "httpbin"}, NS)
    certs = json.loads(mesh.proxy_admin(pod, NS, "certs"))["certificates"]
    leaf = next(c for c in certs if c.get("cert_chain"))["cert_chain"][0]
    uris = [san["uri"] for san in leaf["subject_alt_names"] if "uri" in san]
    assert uris == [f"spiffe://cluster.local/ns/{NS}/sa/httpbin"]
    days = int(re.sub(r"\D", "", str(leaf["days_until_expiration"])) or 0)
    assert days <= 1


def test_openssl_from_the_proxy_container_sees_the_workload_certificate(mesh):
    """As the plug-in CA task does: `kubectl exec sleep -c istio-proxy -- openssl s_client
    -showcerts -connect httpbin.NS:8000` shows the chain httpbin's sidecar presents. The task
    applies STRICT first: under PERMISSIVE, TLS without Istio's ALPN to a port declared HTTP is
    refused, as Istio has no filter chain for it there."""
    from lablib import certs

    mesh.apply(peer_authentication("STRICT"))
    pod = mesh.pod_name({"app": "sleep"}, NS)
    shown = mesh.exec(pod, ["openssl", "s_client", "-showcerts", "-connect",
                            f"httpbin.{NS}:8000"], namespace=NS, container="istio-proxy")
    chain = certs.chain_table(shown.stdout.encode())
    assert f"spiffe://cluster.local/ns/{NS}/sa/httpbin" in " ".join(
        str(v) for v in chain.iloc[0].to_dict().values())
    assert len(chain) >= 2 and bool(chain.iloc[0]["verifies_against_next"])


def test_proxy_config_secret_shows_the_identity_and_root_without_keys(mesh):
    from lablib.proxyconfig import proxy_config

    pod = mesh.pod_name({"app": "httpbin"}, NS)
    table = proxy_config(mesh, "secret", pod, NS)
    rows = {r["resource_name"]: r for r in table.to_dict("records")}
    assert rows["default"]["identity"] == f"spiffe://cluster.local/ns/{NS}/sa/httpbin"
    assert rows["ROOTCA"]["type"] == "CA"
    assert "key" not in " ".join(table.columns)


def test_every_namespace_gets_istiods_root_cert_configmap(mesh):
    """istiod publishes istio-ca-root-cert (the mesh root, which kube-injected pods mount)
    into every namespace; it is the root each proxy trusts (SDS ROOTCA)."""
    mesh.create_namespace("root-cert-check")
    try:
        found = mesh.get("configmap", "istio-ca-root-cert", "root-cert-check")
        assert len(found) == 1 and found[0]["metadata"]["labels"]["istio.io/config"] == "true"
        pod = mesh.pod_name({"app": "sleep"}, NS)
        dump = json.loads(mesh.proxy_admin(pod, NS, "config_dump?resource=dynamic_active_secrets"))
        trusted = [base64.b64decode(c["secret"]["validation_context"]["trusted_ca"]["inline_bytes"])
                   for c in dump["configs"] if c.get("name") == "ROOTCA"]
        assert trusted and trusted[0].decode() == found[0]["data"]["root-cert.pem"]
    finally:
        mesh.delete_namespace("root-cert-check")
