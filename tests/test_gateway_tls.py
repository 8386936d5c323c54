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


def expired_secret(pki: Path) -> dict:
    """A certificate for HOST that expired yesterday, signed by the test root."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    root_key = serialization.load_pem_private_key((pki / "root.key").read_bytes(), None)
    root = x509.load_pem_x509_certificate((pki / "root.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
            .issuer_name(root.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=3))
            .not_valid_after(now - datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
            .sign(root_key, hashes.SHA256()))
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": "expired", "namespace": "istio-system"},
            "data": {"tls.crt": base64.b64encode(cert.public_bytes(
                serialization.Encoding.PEM)).decode(),
                "tls.key": base64.b64encode(pem_key).decode()}}


def mismatched_secret(pki: Path) -> dict:
    secret = tls_secret(pki, "mismatched", with_ca=False)
    secret["data"]["tls.key"] = b64(pki / "client.example.com.key")
    return secret


@pytest.mark.parametrize("case, code", [
    ("credential that does not exist", "LAB0220"),
    ("MUTUAL without ca.crt", "LAB0221"),
    ("key that is not the certificate's", "LAB0222"),
    ("expired certificate", "LAB0223"),
])
def test_bad_credentials_are_refused_and_the_gateway_keeps_serving(mesh, pki, case, code):
    mesh.apply([tls_secret(pki, "httpbin-credential", with_ca=False),
                *gateway("SIMPLE", "httpbin-credential")])
    change = {
        "credential that does not exist": gateway("SIMPLE", "no-such-secret"),
        "MUTUAL without ca.crt": gateway("MUTUAL", "httpbin-credential"),
        "key that is not the certificate's": [mismatched_secret(pki),
                                              *gateway("SIMPLE", "mismatched")],
        "expired certificate": [expired_secret(pki), *gateway("SIMPLE", "expired")],
    }[case]
    with pytest.raises(lablib.ConfigError) as refused:
        mesh.apply(change)
    message = str(refused.value)
    assert code in message and "spec.servers[0].tls" in message and "fix:" in message
    assert curl(mesh, pki).stdout == "418"


def test_deleting_the_credential_breaks_only_its_handshakes_until_it_returns(mesh, pki):
    """As the walkthrough does between SIMPLE and MUTUAL: delete the secret, create it anew."""
    secret = tls_secret(pki, "httpbin-credential", with_ca=False)
    mesh.apply([secret, *gateway("SIMPLE", "httpbin-credential")])
    mesh.delete(secret)
    assert curl(mesh, pki).returncode != 0
    mesh.apply(secret)
    assert curl(mesh, pki).stdout == "418"


def test_a_certificate_for_another_name_is_refused_by_the_client(mesh, pki):
    """curl checks the server's SAN: a credential issued for another host fails it."""
    make_leaf(pki, "root", "other.example.com", "serverAuth")
    wrong = tls_secret(pki, "wrong-name", with_ca=False)
    wrong["data"]["tls.crt"] = b64(pki / "other.example.com.crt")
    wrong["data"]["tls.key"] = b64(pki / "other.example.com.key")
    mesh.apply([wrong, *gateway("SIMPLE", "wrong-name")])
    answer = curl(mesh, pki)
    assert answer.returncode == 60  # curl: SSL peer certificate or SSH remote key was not OK


def gateway_with(mode: str, credential: str, **tls: object) -> list[dict]:
    found = gateway(mode, credential)
    found[0]["spec"]["servers"][0]["tls"].update(tls)
    return found


def test_protocol_versions_ciphers_and_client_names_are_enforced(mesh, pki):
    make_leaf(pki, "root", "other-client.example.com", "clientAuth")
    client = ("--cert", str(pki / "client.example.com.crt"),
              "--key", str(pki / "client.example.com.key"))
    other = ("--cert", str(pki / "other-client.example.com.crt"),
             "--key", str(pki / "other-client.example.com.key"))
    mesh.apply([tls_secret(pki, "httpbin-versions", with_ca=True),
                *gateway_with("MUTUAL", "httpbin-versions", minProtocolVersion="TLSV1_3",
                              subjectAltNames=["client.example.com"])])
    assert curl(mesh, pki, *client).stdout == "418"
    assert curl(mesh, pki, *client, "--tls-max", "1.2").returncode != 0
    assert curl(mesh, pki, *other).stdout in ("000", "")  # a name the server does not accept
    mesh.apply(gateway_with("SIMPLE", "httpbin-versions", maxProtocolVersion="TLSV1_2",
                            cipherSuites=["ECDHE-RSA-AES128-GCM-SHA256"]))
    assert curl(mesh, pki, "--ciphers", "ECDHE-RSA-AES128-GCM-SHA256").stdout == "418"
    assert curl(mesh, pki, "--ciphers", "ECDHE-RSA-AES256-GCM-SHA384").returncode != 0
    assert curl(mesh, pki, "--tlsv1.3").returncode != 0
