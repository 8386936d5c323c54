"""TLS at the ingress gateway on real Envoy, checked with the real curl.

SIMPLE serves the credentialName certificate by SNI; MUTUAL also demands a client
certificate from the secret's CA: none, or one from a foreign CA, is a real refusal.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

import lablib

pytestmark = pytest.mark.envoy
NS = "tls-test"
HOST = "httpbin.example.com"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(folder: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
            f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.crt",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=folder)


def make_leaf(folder: Path, ca: str, name: str, usage: str) -> None:
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=folder)
    (folder / f"{name}.ext").write_text(
        f"subjectAltName=DNS:{name}\nextendedKeyUsage={usage}\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.crt",
            cwd=folder)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pki")
    make_ca(folder, "root")
    make_ca(folder, "foreign")
    make_leaf(folder, "root", HOST, "serverAuth")
    make_leaf(folder, "root", "client.example.com", "clientAuth")
    make_leaf(folder, "foreign", "intruder.example.com", "clientAuth")
    return folder


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def tls_secret(pki: Path, name: str, with_ca: bool) -> dict:
    data = {"tls.crt": b64(pki / f"{HOST}.crt"), "tls.key": b64(pki / f"{HOST}.key")}
    if with_ca:
        data["ca.crt"] = b64(pki / "root.crt")
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": "istio-system"}, "data": data}


def gateway(mode: str, credential: str) -> list[dict]:
    return [
        {"apiVersion": "networking.istio.io/v1beta1", "kind": "Gateway",
         "metadata": {"name": "secure", "namespace": NS},
         "spec": {"selector": {"istio": "ingressgateway"}, "servers": [
             {"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
              "tls": {"mode": mode, "credentialName": credential}, "hosts": [HOST]}]}},
        {"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
         "metadata": {"name": "httpbin", "namespace": NS},
         "spec": {"hosts": [HOST], "gateways": ["secure"], "http": [
             {"route": [{"destination": {"host": "httpbin", "port": {"number": 8000}}}]}]}},
    ]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, pki):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAB_STATE_DIR", str(tmp_path_factory.mktemp("tls-state")))
        patch.setenv("LAB_MESH", "tls")
        mesh = lablib.connect("local")
        try:
            mesh.install()
            mesh.create_namespace(NS, {"istio-injection": "enabled"})
            mesh.apply("samples/httpbin/httpbin.yaml", namespace=NS)
            yield mesh
        finally:
            mesh.uninstall()


def curl(mesh, pki: Path, *extra: str, sni: str = HOST) -> subprocess.CompletedProcess:
    _, port = mesh.ingress_address("https")
    return subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
         "--resolve", f"{sni}:{port}:127.0.0.1", "--cacert", str(pki / "root.crt"), *extra,
         f"https://{sni}:{port}/status/418"], capture_output=True, text=True)


def test_simple_tls_serves_the_credential_by_sni(mesh, pki):
    mesh.apply([tls_secret(pki, "httpbin-credential", with_ca=False),
                *gateway("SIMPLE", "httpbin-credential")])
    answer = curl(mesh, pki)
    assert (answer.returncode, answer.stdout) == (0, "418")
    unknown = curl(mesh, pki, sni="other.example.com")
    assert unknown.returncode != 0  # no filter chain for that SNI: the handshake fails


def test_mutual_tls_demands_a_client_certificate_from_the_ca(mesh, pki):
    mesh.apply([tls_secret(pki, "httpbin-mutual", with_ca=True),
                *gateway("MUTUAL", "httpbin-mutual")])
    client = ("--cert", str(pki / "client.example.com.crt"),
              "--key", str(pki / "client.example.com.key"))
    intruder = ("--cert", str(pki / "intruder.example.com.crt"),
                "--key", str(pki / "intruder.example.com.key"))
    assert curl(mesh, pki, *client).stdout == "418"
    refused = curl(mesh, pki)
    assert refused.returncode != 0 and refused.stdout in ("000", "")
    foreign = curl(mesh, pki, *intruder)
    assert foreign.returncode != 0 and foreign.stdout in ("000", "")
