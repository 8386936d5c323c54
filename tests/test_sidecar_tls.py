"""TLS termination at the sidecar (the walkthrough's TLS 终止; Istio's Ingress Sidecar TLS
Termination task) on real Envoy, with the real curl.

Inside the namespace plain HTTP to port 80 works (the client's sidecar adds mesh mTLS);
from a pod without a sidecar, HTTPS to 443 with a client certificate from the CA works,
without one it is refused, and plain HTTP to 80 is refused (STRICT).
"""

from __future__ import annotations

import pytest

import lablib
from lablib import certs

pytestmark = pytest.mark.envoy
NS = "tls-terminate-test"
HOST = f"httpbin.{NS}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sidecar-pki")
    ca = certs.RootCA.load_or_create(folder / "ca")
    server = certs.issue_server(ca, [HOST, f"{HOST}.svc.cluster.local"], folder, "httpbin.svc")
    client = certs.issue_client(ca, [f"client.{NS}.svc.cluster.local"], folder, "client")
    return ca, server, client


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, pki):
    ca, server, _ = pki
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAB_STATE_DIR", str(tmp_path_factory.mktemp("sidecar-tls-state")))
        patch.setenv("LAB_MESH", "sidecar-tls")
        mesh = lablib.connect("local")
        try:
            mesh.install(values={"values.pilot.env.ENABLE_TLS_ON_SIDECAR_INGRESS": "true"})
            mesh.create_namespace(NS, {"istio-injection": "enabled"})
            mesh.apply([certs.generic_secret("ca-secret", NS, {"ca.crt": ca.cert_path}),
                        certs.tls_secret("httpbin-svc-secret", NS, *server)])
            mesh.apply("samples/tls-termination/httpbin-sidecar-tls.yaml", namespace=NS)
            mesh.apply("samples/sleep/sleep.yaml", namespace=NS)
            mesh.apply("samples/sleep/sleep.yaml", namespace="default")
            yield mesh
        finally:
            mesh.uninstall()


def curl(mesh, namespace: str, *args: str):
    pod = mesh.pod_name({"app": "sleep"}, namespace)
    return mesh.exec(pod, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                           "--max-time", "5", *args], namespace=namespace, container="sleep")


def test_plain_http_inside_the_namespace(mesh):
    assert curl(mesh, NS, "http://httpbin/status/200").stdout == "200"


def test_https_from_outside_with_a_client_certificate(mesh, pki):
    ca, _, (client_cert, client_key) = pki
    answer = curl(mesh, "default", "--cacert", str(ca.cert_path), "--cert", str(client_cert),
                  "--key", str(client_key), f"https://{HOST}:443/status/200")
    assert answer.stdout == "200", answer.stderr


def test_https_from_outside_without_a_client_certificate_is_refused(mesh, pki):
    ca, _, _ = pki
    answer = curl(mesh, "default", "--cacert", str(ca.cert_path), f"https://{HOST}:443/status/200")
    assert answer.returncode != 0 and answer.stdout in ("000", "")


def test_plain_http_from_outside_is_refused(mesh):
    answer = curl(mesh, "default", f"http://{HOST}/status/200")
    assert answer.stdout != "200"  # the STRICT sidecar resets the plaintext connection
