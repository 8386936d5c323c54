"""The security labs' flows end to end on real Envoy, checked with the real curl and openssl.

TLS passthrough (lab 11): nginx behind a PASSTHROUGH gateway serves its own certificate,
an unknown SNI is reset, and an nginx whose certificate is not mounted is refused with
nginx's message while the mesh keeps serving. Plug-in CA (lab 12): istiod signs with the
`cacerts` it finds at install, not with one applied later; the chain a sidecar presents
verifies against the plugged-in root with `openssl verify`; XFCC names both identities.
Each flow runs in a mesh of its own (its own LAB_MESH and state folder).
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from walkthrough_samples import MY_NGINX, NGINX_CONF

import lablib
from lablib import certs

pytestmark = pytest.mark.envoy

NGINX_NS = "tls-passthrough-test"
NGINX_HOST = "nginx.example.com"
PASSTHROUGH = """
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata:
  name: mygateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 443
      name: https
      protocol: HTTPS
    tls:
      mode: PASSTHROUGH
    hosts:
    - nginx.example.com
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata:
  name: nginx
spec:
  hosts:
  - nginx.example.com
  gateways:
  - mygateway
  tls:
  - match:
    - port: 443
      sniHosts:
      - nginx.example.com
    route:
    - destination:
        host: my-nginx
        port:
          number: 443
"""


@contextmanager
def own_mesh(tmp_path_factory, name: str) -> Iterator[lablib.Backend]:
    """A mesh of this test module's own, uninstalled (stopped) at the end."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAB_STATE_DIR", str(tmp_path_factory.mktemp(f"{name}-state")))
        patch.setenv("LAB_MESH", name)
        mesh = lablib.connect("local")
        try:
            yield mesh
        finally:
            mesh.uninstall()


def configmap(name: str, namespace: str, files: dict[str, str]) -> dict:
    """`kubectl create configmap NAME --from-file=KEY=PATH`, from text."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace}, "data": files}


# --- TLS passthrough -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab_ca(tmp_path_factory) -> certs.RootCA:
    return certs.RootCA.load_or_create(tmp_path_factory.mktemp("lab-ca"))


@pytest.fixture(scope="module")
def nginx_crt(lab_ca, tmp_path_factory) -> tuple[Path, Path]:
    return certs.issue_server(lab_ca, [NGINX_HOST], tmp_path_factory.mktemp("nginx-certs"))


@pytest.fixture(scope="module")
def passthrough(tmp_path_factory, nginx_crt) -> Iterator[lablib.Backend]:
    """The walkthrough's passthrough set-up, done with the public API."""
    with own_mesh(tmp_path_factory, "sec-passthrough") as mesh:
        mesh.install()
        mesh.create_namespace(NGINX_NS, {"istio-injection": "enabled"})
        mesh.apply(certs.tls_secret("nginx-tls-secret", NGINX_NS, *nginx_crt))
        mesh.apply(configmap("nginx-configmap", NGINX_NS, {"nginx.conf": NGINX_CONF}))
        mesh.apply(MY_NGINX, NGINX_NS)
        mesh.apply(PASSTHROUGH, NGINX_NS)
        yield mesh


def curl(mesh, ca: certs.RootCA, name: str = NGINX_HOST) -> subprocess.CompletedProcess:
    host, port = mesh.ingress_address("https")
    return subprocess.run(
        ["curl", "-sS", "-i", "--max-time", "10", "--resolve", f"{name}:{port}:{host}",
         "--cacert", str(ca.cert_path), f"https://{name}:{port}/"],
        capture_output=True, text=True)


def s_client(mesh, ca: certs.RootCA, name: str = NGINX_HOST) -> subprocess.CompletedProcess:
    host, port = mesh.ingress_address("https")
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"{host}:{port}", "-servername", name,
         "-CAfile", str(ca.cert_path), "-verify_hostname", name, "-verify_return_error",
         "-showcerts"], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)


def test_nginx_answers_through_the_passthrough_gateway(passthrough, lab_ca):
    page = curl(passthrough, lab_ca)
    assert page.returncode == 0, page.stderr
    status_line, _, rest = page.stdout.partition("\n")
    # HTTP/1.1: ALPN was agreed with nginx (no http2 in its listen), not with the gateway.
    assert status_line.strip() == "HTTP/1.1 200 OK"
    assert "Server: nginx" in rest and "<h1>Welcome to nginx!</h1>" in rest


def test_the_client_sees_nginx_certificate_not_the_gateways(passthrough, lab_ca, nginx_crt):
    shown = s_client(passthrough, lab_ca)
    assert shown.returncode == 0 and "Verify return code: 0 (ok)" in shown.stdout, shown.stderr
    leaf = certs.describe(shown.stdout.encode())
    assert leaf["sha256"] == certs.describe(nginx_crt[0])["sha256"]
    assert leaf["sans"] == [f"DNS:{NGINX_HOST}"] and leaf["issuer"] == certs.describe(
        lab_ca.cert)["subject"]
    # The gateway holds no credential at all: only its own mesh identity and root.
    gateway = passthrough.pod_name({"istio": "ingressgateway"}, "istio-system")
    dump = json.loads(passthrough.proxy_admin(gateway, "istio-system",
                                              "config_dump?resource=dynamic_active_secrets"))
    assert {item["name"] for item in dump["configs"]} <= {"default", "ROOTCA"}


def test_an_unknown_sni_is_reset_without_a_certificate(passthrough, lab_ca):
    refused = curl(passthrough, lab_ca, name="other.example.com")
    assert refused.returncode == 35 and refused.stdout == "", refused.stderr
    shown = s_client(passthrough, lab_ca, name="other.example.com")
    assert shown.returncode != 0 and "BEGIN CERTIFICATE" not in shown.stdout


def test_an_nginx_without_its_certificate_is_refused_and_the_mesh_keeps_serving(passthrough,
                                                                              lab_ca):
    broken = MY_NGINX.replace("name: my-nginx\n", "name: broken-nginx\n").replace(
        "run: my-nginx", "run: broken-nginx")
    # Mount only the config: the certificate folder nginx.conf names is in no volume.
    broken = broken.split("        - name: nginx-server-certs\n")[0] + (
        "      volumes:\n      - name: nginx-config\n        configMap:\n"
        "          name: nginx-configmap\n")
    with pytest.raises(lablib.BackendError) as refused:
        passthrough.apply(broken, NGINX_NS)
    message = str(refused.value)
    assert 'nginx: [emerg] ssl_certificate "/etc/nginx-server-certs/tls.crt"' in message
    assert "mounted: /etc/nginx" in message
    names = {d["metadata"]["name"] for d in passthrough.get("deploy", namespace=NGINX_NS)}
    assert names == {"my-nginx"}
    assert curl(passthrough, lab_ca).returncode == 0


# --- plug-in CA ----------------------------------------------------------------------------

CA_NS = "foo"
STRICT = {"apiVersion": "security.istio.io/v1beta1", "kind": "PeerAuthentication",
          "metadata": {"name": "default", "namespace": CA_NS}, "spec": {"mtls": {"mode": "STRICT"}}}


def spiffe(service_account: str) -> str:
    return f"spiffe://cluster.local/ns/{CA_NS}/sa/{service_account}"


def deploy_foo(mesh) -> None:
    mesh.create_namespace(CA_NS, {"istio-injection": "enabled"})
    mesh.apply("samples/httpbin/httpbin.yaml", CA_NS)
    mesh.apply("samples/sleep/sleep.yaml", CA_NS)
    mesh.apply(STRICT)


def sidecar_chain(mesh) -> str:
    """What the walkthrough runs: openssl s_client from sleep's istio-proxy to httpbin."""
    sleep = mesh.pod_name({"app": "sleep"}, CA_NS)
    shown = mesh.exec(sleep, ["openssl", "s_client", "-showcerts", "-connect",
                              f"httpbin.{CA_NS}:8000"], namespace=CA_NS, container="istio-proxy")
    assert "BEGIN CERTIFICATE" in shown.stdout, shown.stderr
    return shown.stdout


def root_of(mesh, pod: str, namespace: str) -> str:
    """The SHA-256 of the root the proxy trusts (its SDS secret ROOTCA)."""
    dump = json.loads(mesh.proxy_admin(pod, namespace,
                                       "config_dump?resource=dynamic_active_secrets"))
    rootca = next(i for i in dump["configs"] if i["name"] == "ROOTCA")
    pem = base64.b64decode(rootca["secret"]["validation_context"]["trusted_ca"]["inline_bytes"])
    return str(certs.describe(pem)["sha256"])


@pytest.fixture(scope="module")
def plugged(tmp_path_factory) -> Iterator[tuple[Path, certs.RootCA]]:
    folder = tmp_path_factory.mktemp("plug-in-ca")
    root = certs.RootCA.load_or_create(folder / "root")
    certs.intermediate_ca(root, "cluster1", folder / "cluster1")
    return folder / "cluster1", root


def test_a_cacerts_secret_applied_after_install_changes_nothing(tmp_path_factory, plugged):
    cacerts, root = plugged
    with own_mesh(tmp_path_factory, "sec-late-ca") as mesh:
        mesh.install()
        mesh.apply(certs.generic_secret("cacerts", "istio-system",
                                        {n: cacerts / n for n in certs.CACERTS_FILES}))
        deploy_foo(mesh)
        chain = certs.certificates(sidecar_chain(mesh).encode())
        # istiod read its CA when it started: still its own root, not the plugged-in one.
        assert certs.describe(chain[-1])["sha256"] != certs.describe(root.cert)["sha256"]
        assert not certs.verify_chain(chain[0], chain[1:], root.cert_pem)


def test_plugged_in_ca_signs_workloads_and_openssl_verifies_the_chain(tmp_path_factory,
                                                                      plugged, tmp_path):
    cacerts, root = plugged
    files = {n: cacerts / n for n in certs.CACERTS_FILES}
    with own_mesh(tmp_path_factory, "sec-plug-in-ca") as mesh:
        mesh.create_namespace("istio-system")
        # A secret missing a file is refused at install with the file named, then fixed.
        mesh.apply(certs.generic_secret("cacerts", "istio-system",
                                        {k: v for k, v in files.items() if k != "ca-key.pem"}))
        with pytest.raises(lablib.ConfigError) as incomplete:
            mesh.install()
        assert "LAB0230" in str(incomplete.value) and "ca-key.pem" in str(incomplete.value)
        mesh.apply(certs.generic_secret("cacerts", "istio-system", files))
        mesh.install()
        deploy_foo(mesh)

        shown = sidecar_chain(mesh)
        pems = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", shown,
                          re.S)
        for number, pem in enumerate(pems, start=1):
            (tmp_path / f"proxy-cert-{number}.pem").write_text(pem)
        assert len(pems) == 3
        assert (tmp_path / "proxy-cert-2.pem").read_bytes() == files["ca-cert.pem"].read_bytes()
        verify = ["openssl", "verify", "-untrusted", str(files["ca-cert.pem"]), "proxy-cert-1.pem"]
        ok = subprocess.run([*verify[:2], "-CAfile", str(files["root-cert.pem"]), *verify[2:]],
                            cwd=tmp_path, capture_output=True, text=True)
        assert (ok.returncode, ok.stdout.strip()) == (0, "proxy-cert-1.pem: OK"), ok.stderr
        foreign = certs.RootCA.load_or_create(tmp_path / "foreign")
        refused = subprocess.run([*verify[:2], "-CAfile", str(foreign.cert_path), *verify[2:]],
                                 cwd=tmp_path, capture_output=True, text=True)
        assert refused.returncode != 0

        leaf = certs.describe(pems[0])
        assert leaf["spiffe_id"] == spiffe("httpbin")
        assert leaf["issuer"] == certs.describe(files["ca-cert.pem"])["subject"]
        for app in ("httpbin", "sleep"):
            pod = mesh.pod_name({"app": app}, CA_NS)
            assert root_of(mesh, pod, CA_NS) == certs.describe(root.cert)["sha256"]

        sleep = mesh.pod_name({"app": "sleep"}, CA_NS)
        answer = mesh.exec(sleep, ["curl", "-s", f"http://httpbin.{CA_NS}:8000/headers"],
                           namespace=CA_NS, container="sleep")
        xfcc = json.loads(answer.stdout)["headers"]["X-Forwarded-Client-Cert"]
        fields = dict(field.split("=", 1) for field in xfcc.split(";"))
        assert (fields["By"], fields["URI"]) == (spiffe("httpbin"), spiffe("sleep"))
