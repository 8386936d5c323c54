"""lablib.certs end to end: real certificates, checked by the real openssl and TLS handshakes."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from lablib import certs
from lablib.certs import CertificateError
from lablib.errors import LabError

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
needs_mkcert = pytest.mark.skipif(shutil.which("mkcert") is None, reason="mkcert is not on PATH")


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("certs")


@pytest.fixture(scope="module")
def ca(work) -> certs.RootCA:
    return certs.RootCA.load_or_create(work / "ca")


@pytest.fixture(scope="module")
def foreign_ca(work) -> certs.RootCA:
    return certs.RootCA.load_or_create(work / "foreign-ca")


@pytest.fixture(scope="module")
def server(ca, work) -> tuple[Path, Path]:
    return certs.issue_server(ca, ["httpbin.example.com", "127.0.0.1"], work / "out")


@pytest.fixture(scope="module")
def client(ca, work) -> tuple[Path, Path]:
    return certs.issue_client(ca, ["client.example.com"], work / "out")


@pytest.fixture(scope="module")
def foreign_client(foreign_ca, work) -> tuple[Path, Path]:
    return certs.issue_client(foreign_ca, ["client.example.com"], work / "foreign")


@pytest.fixture(scope="module")
def intermediate(ca, work) -> certs.IntermediateCA:
    return certs.intermediate_ca(ca, "cluster1", work / "cluster1")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def openssl(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert OPENSSL is not None
    return subprocess.run([OPENSSL, *map(str, args)], capture_output=True, text=True,
                          timeout=30, check=False)


def key_body(path_or_pem: Path | bytes) -> str:
    """A long run of the key's base64 body: what must never appear in any repr."""
    pem = path_or_pem if isinstance(path_or_pem, bytes) else path_or_pem.read_bytes()
    lines = pem.decode().splitlines()
    assert "PRIVATE KEY" in lines[0]
    return lines[5]


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
              server_hostname: str | None = "httpbin.example.com"
              ) -> tuple[bytes | Exception, dict[str, Any]]:
    """One TLS connection on loopback: what the client read (or its error), the server's view."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    seen: dict[str, Any] = {}

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(10)
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                seen["peer"] = tls.getpeercert()
                seen["request"] = tls.recv(4)
                tls.sendall(b"hello")
        except (ssl.SSLError, OSError) as exc:
            seen["error"] = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    got: bytes | Exception
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                tls.sendall(b"ping")
                got = tls.recv(5)
    except (ssl.SSLError, OSError) as exc:
        got = exc
    finally:
        thread.join(10)
        listener.close()
    return got, seen


def server_context(cert: Path, key: Path, client_ca: bytes | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:  # MUTUAL: a client certificate from this CA is required
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=client_ca.decode())
    return ctx


def client_context(root: bytes, cert: Path | None = None, key: Path | None = None
                   ) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cadata=root.decode())
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


# --- the root CA -------------------------------------------------------------------------------


def test_root_ca_files_modes_and_reuse(ca, work):
    assert ca.cert_path == work / "ca" / "rootCA.pem"
    assert ca.key_path == work / "ca" / "rootCA-key.pem"
    assert mode(work / "ca") == 0o700
    assert mode(ca.key_path) == 0o600
    assert mode(ca.cert_path) == 0o644
    info = certs.describe(ca.cert_path)
    assert info["is_ca"] and info["subject"] == info["issuer"]
    assert info["key_usage"] == ["keyCertSign"]
    again = certs.RootCA.load_or_create(work / "ca")
    assert again.cert == ca.cert
    assert certs.describe(again.cert)["sha256"] == info["sha256"]


def test_caroot_is_CAROOT_else_the_state_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("CAROOT", str(tmp_path / "mine"))
    assert certs.caroot() == tmp_path / "mine"
    created = certs.RootCA.load_or_create()
    assert created.cert_path == tmp_path / "mine" / "rootCA.pem"
    monkeypatch.delenv("CAROOT")
    monkeypatch.setenv("LAB_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LAB_MESH", "certs-test")
    assert certs.caroot() == tmp_path / "state" / "certs-test" / "certs" / "ca"
    assert certs.caroot(tmp_path / "other") == tmp_path / "other" / "certs" / "ca"


def test_a_root_without_its_key_is_refused(tmp_path, ca):
    (tmp_path / "rootCA.pem").write_bytes(ca.cert_pem)
    with pytest.raises(CertificateError, match="rootCA-key.pem is missing"):
        certs.RootCA.load_or_create(tmp_path)


# --- server and client certificates ------------------------------------------------------------


@needs_openssl
def test_server_certificate_verifies_with_openssl(ca, foreign_ca, server):
    cert, key = server
    assert (cert.name, key.name) == ("httpbin.example.com+1.pem", "httpbin.example.com+1-key.pem")
    assert mode(key) == 0o600 and mode(cert.parent) == 0o700
    done = openssl("verify", "-CAfile", ca.cert_path, "-purpose", "sslserver", cert)
    assert done.returncode == 0 and done.stdout.strip().endswith(": OK"), done
    refused = openssl("verify", "-CAfile", foreign_ca.cert_path, cert)
    assert refused.returncode != 0
    assert "unable to get local issuer certificate" in refused.stdout + refused.stderr
    assert certs.verify_chain(cert, None, ca.cert_path)
    assert not certs.verify_chain(cert, None, foreign_ca.cert_path)
    info = certs.describe(cert)
    assert info["sans"] == ["DNS:httpbin.example.com", "IP:127.0.0.1"]
    assert info["ext_key_usage"] == ["serverAuth"]
    assert not info["is_ca"] and info["key_type"] == "RSA" and info["key_size"] == 2048
    certs.check_pair(cert, key)
    certs.check_not_expired(cert)


@needs_openssl
def test_client_certificate_verifies_for_client_auth(ca, client):
    cert, key = client
    assert (cert.name, key.name) == ("client.example.com-client.pem",
                                     "client.example.com-client-key.pem")
    assert mode(key) == 0o600
    done = openssl("verify", "-CAfile", ca.cert_path, "-purpose", "sslclient", cert)
    assert done.returncode == 0, done
    assert "clientAuth" in certs.describe(cert)["ext_key_usage"]
    # A server-only certificate is no client certificate.
    server_only, _ = certs.issue_server(ca, ["only.example.com"], cert.parent)
    assert openssl("verify", "-CAfile", ca.cert_path, "-purpose", "sslclient",
                   server_only).returncode != 0


def test_file_names_follow_mkcert(ca, tmp_path):
    three = certs.issue_server(ca, ["example.com", "*.example.com", "::1"], tmp_path)
    assert [p.name for p in three] == ["example.com+2.pem", "example.com+2-key.pem"]
    wildcard = certs.issue_server(ca, ["*.example.com"], tmp_path)
    assert wildcard[0].name == "_wildcard.example.com.pem"
    named = certs.issue_server(ca, ["httpbin.example.com"], tmp_path, "httpbin")
    assert [p.name for p in named] == ["httpbin.pem", "httpbin-key.pem"]
    assert certs.describe(three[0])["sans"] == ["DNS:example.com", "DNS:*.example.com", "IP:::1"]
    with pytest.raises(CertificateError, match="at least one name"):
        certs.issue_server(ca, [], tmp_path)


def test_an_existing_key_file_is_replaced_with_mode_0600(ca, tmp_path):
    loose = tmp_path / "httpbin-key.pem"
    loose.write_text("old")
    loose.chmod(0o644)
    certs.issue_server(ca, ["httpbin.example.com"], tmp_path, "httpbin")
    assert mode(loose) == 0o600
    assert b"PRIVATE KEY" in loose.read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))


@needs_openssl
def test_describe_agrees_with_openssl(server):
    cert = server[0]
    info = certs.describe(cert)
    serial = openssl("x509", "-in", cert, "-noout", "-serial").stdout.strip()
    assert serial == f"serial={info['serial']}"
    fingerprint = openssl("x509", "-in", cert, "-noout", "-fingerprint", "-sha256").stdout
    assert fingerprint.strip().split("=", 1)[1] == info["sha256"]
    sans = openssl("x509", "-in", cert, "-noout", "-ext", "subjectAltName").stdout
    assert "DNS:httpbin.example.com, IP Address:127.0.0.1" in sans
    end = openssl("x509", "-in", cert, "-noout", "-enddate").stdout.strip().split("=", 1)[1]
    assert datetime.strptime(end, "%b %d %H:%M:%S %Y GMT").replace(tzinfo=UTC) \
        == info["not_after"]


# --- TLS handshakes on loopback ----------------------------------------------------------------


def test_simple_tls_trusts_only_the_issuing_root(ca, foreign_ca, server):
    got, seen = handshake(server_context(*server), client_context(ca.cert_pem))
    assert got == b"hello" and seen["request"] == b"ping"
    got, _ = handshake(server_context(*server), client_context(foreign_ca.cert_pem))
    assert isinstance(got, ssl.SSLCertVerificationError)
    assert "unable to get local issuer certificate" in str(got)
    got, _ = handshake(server_context(*server), client_context(ca.cert_pem), "other.example.com")
    assert isinstance(got, ssl.SSLCertVerificationError) and "mismatch" in str(got)


def test_mutual_tls_requires_a_client_certificate_from_the_ca(ca, server, client,
                                                              foreign_client):
    mutual = server_context(server[0], server[1], client_ca=ca.cert_pem)
    got, seen = handshake(mutual, client_context(ca.cert_pem, *client))
    assert got == b"hello"
    assert ("DNS", "client.example.com") in seen["peer"]["subjectAltName"]

    got, seen = handshake(mutual, client_context(ca.cert_pem))
    assert got != b"hello"
    assert isinstance(seen.get("error"), ssl.SSLError)
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in str(seen["error"])

    got, seen = handshake(mutual, client_context(ca.cert_pem, *foreign_client))
    assert got != b"hello"
    assert isinstance(seen.get("error"), ssl.SSLError)
    assert "CERTIFICATE_VERIFY_FAILED" in str(seen["error"])


def test_workload_certificates_do_mesh_mtls_with_spiffe_ids(intermediate, ca, tmp_path):
    def files(identity: str) -> tuple[Path, Path]:
        issued = certs.issue_workload(intermediate, identity)
        secret = certs.generic_secret("w", "foo", {
            "cert-chain.pem": issued.cert_pem + issued.chain_pem, "key.pem": issued.key_pem})
        mounted = certs.mount_secret(secret, tmp_path / identity.rsplit("/", 1)[1])
        return mounted["cert-chain.pem"], mounted["key.pem"]

    httpbin = files(certs.spiffe_id("foo", "httpbin"))
    sleep = files(certs.spiffe_id("foo", "sleep"))
    server_ctx = server_context(*httpbin, client_ca=ca.cert_pem)
    client_ctx = client_context(ca.cert_pem, *sleep)
    client_ctx.check_hostname = False  # the mesh checks SPIFFE IDs, not host names
    got, seen = handshake(server_ctx, client_ctx, None)
    assert got == b"hello"
    assert ("URI", "spiffe://cluster.local/ns/foo/sa/sleep") in seen["peer"]["subjectAltName"]


# --- workload certificates, intermediates and the cacerts files -------------------------------


def test_workload_certificate_looks_like_istiods(intermediate):
    issued = certs.issue_workload(intermediate, "spiffe://cluster.local/ns/foo/sa/httpbin", 1)
    info = certs.describe(issued.cert_pem)
    assert info["subject"] == ""
    assert info["sans"] == ["URI:spiffe://cluster.local/ns/foo/sa/httpbin"]
    assert info["spiffe_id"] == "spiffe://cluster.local/ns/foo/sa/httpbin"
    assert info["ext_key_usage"] == ["serverAuth", "clientAuth"]
    lifetime = info["not_after"] - info["not_before"]
    assert timedelta(hours=1) < lifetime <= timedelta(hours=1, minutes=3)
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    certs.check_pair(issued.cert_pem, issued.key_pem)
    assert certs.certificates(issued.chain_pem) == intermediate.chain
    with pytest.raises(CertificateError, match="not a SPIFFE ID"):
        certs.issue_workload(intermediate, "cluster.local/ns/foo/sa/httpbin")


@needs_openssl
def test_intermediate_cacerts_files_verify_with_openssl(ca, intermediate, work, tmp_path):
    files = intermediate.files
    folder = work / "cluster1"
    assert set(files) == {"ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"}
    assert all(path.parent == folder and path.is_file() for path in files.values())
    assert mode(folder) == 0o700 and mode(files["ca-key.pem"]) == 0o600
    assert files["root-cert.pem"].read_bytes() == ca.cert_path.read_bytes()
    chain = certs.certificates(files["cert-chain.pem"])
    assert chain == [intermediate.cert, ca.cert]
    assert certs.describe(files["ca-cert.pem"])["is_ca"]
    assert certs.describe(files["ca-cert.pem"])["path_length"] == 0

    issued = certs.issue_workload(intermediate, certs.spiffe_id("foo", "httpbin"))
    leaf = tmp_path / "workload.pem"
    leaf.write_bytes(issued.cert_pem)
    done = openssl("verify", "-CAfile", files["root-cert.pem"], "-untrusted",
                   files["cert-chain.pem"], leaf)
    assert done.returncode == 0 and done.stdout.strip().endswith(": OK"), done
    assert openssl("verify", "-CAfile", files["root-cert.pem"], leaf).returncode != 0
    assert certs.verify_chain(leaf, files["cert-chain.pem"], files["root-cert.pem"])
    assert not certs.verify_chain(leaf, None, files["root-cert.pem"])


def test_load_cacerts_round_trip_and_refusals(ca, foreign_ca, intermediate, work):
    loaded = certs.load_cacerts(work / "cluster1")
    assert loaded.cert == intermediate.cert and loaded.chain == intermediate.chain
    secret = certs.generic_secret("cacerts", "istio-system", intermediate.files)
    from_secret = certs.load_cacerts(certs.secret_data(secret))
    assert from_secret.root == ca.cert

    incomplete = {k: v for k, v in certs.secret_data(secret).items() if k != "root-cert.pem"}
    with pytest.raises(CertificateError, match="lacks root-cert.pem"):
        certs.load_cacerts(incomplete)
    wrong_key = dict(certs.secret_data(secret), **{"ca-key.pem": ca.key_pem})
    with pytest.raises(CertificateError, match="does not belong"):
        certs.load_cacerts(wrong_key)
    wrong_root = dict(certs.secret_data(secret), **{"root-cert.pem": foreign_ca.cert_pem})
    with pytest.raises(CertificateError, match="does not verify"):
        certs.load_cacerts(wrong_root)


@needs_openssl
def test_a_root_plugged_in_directly_like_the_walkthrough(ca, tmp_path):
    files = certs.cacerts_files(ca, tmp_path / "cacerts")
    assert files["ca-cert.pem"].read_bytes() == files["root-cert.pem"].read_bytes() \
        == files["cert-chain.pem"].read_bytes() == ca.cert_pem
    plugged = certs.load_cacerts(tmp_path / "cacerts")
    assert plugged.chain == [ca.cert]
    files["cert-chain.pem"].write_bytes(b"")  # what older Istio docs ask for in this case
    assert certs.load_cacerts(tmp_path / "cacerts").chain == [ca.cert]
    issued = certs.issue_workload(plugged, certs.spiffe_id("foo", "sleep"))
    leaf = tmp_path / "proxy-cert-1.pem"
    leaf.write_bytes(issued.cert_pem)
    assert openssl("verify", "-CAfile", ca.cert_path, leaf).returncode == 0
    assert certs.verify_chain(issued.cert_pem, issued.chain_pem, ca.cert_pem)


def test_a_pathlen_zero_root_cannot_sign_an_intermediate(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "mkcert development CA")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    with pytest.raises(CertificateError, match="pathlen:0"):
        certs.intermediate_ca(certs.CA(cert, key), "cluster1", tmp_path)


# --- validity checks ---------------------------------------------------------------------------


@needs_openssl
def test_an_expired_certificate_is_detected(ca, tmp_path):
    cert, key = certs.issue_server(ca, ["httpbin.example.com"], tmp_path,
                                   not_after=datetime(2024, 1, 1))
    with pytest.raises(CertificateError) as caught:
        certs.check_not_expired(cert)
    message = str(caught.value)
    assert "certificate for httpbin.example.com expired on 2024-01-01" in message
    assert "certs.issue_server(ca, ['httpbin.example.com'], folder)" in message
    assert isinstance(caught.value, LabError)
    certs.check_not_expired(cert, now=datetime(2023, 12, 31, 12, tzinfo=UTC))
    certs.check_not_expired(cert, now=datetime(2023, 12, 31, 12))  # naive means UTC
    refused = openssl("verify", "-CAfile", ca.cert_path, cert)
    assert refused.returncode != 0 and "certificate has expired" in refused.stderr
    assert not certs.verify_chain(cert, None, ca.cert_path)
    with pytest.raises(CertificateError, match="expired"):
        certs.read_credential(certs.tls_secret("expired", "istio-system", cert, key))


def test_not_yet_valid_and_client_hint(ca, tmp_path):
    soon = datetime.now(UTC) + timedelta(days=2)
    cert, _ = certs.issue_client(ca, ["client.example.com"], tmp_path, not_before=soon,
                                 not_after=soon + timedelta(days=1))
    with pytest.raises(CertificateError, match=r"not valid before .*certs\.issue_client"):
        certs.check_not_expired(cert)


def test_check_pair_refuses_a_foreign_key(server, client):
    with pytest.raises(CertificateError, match="does not belong to the certificate for "
                                               "httpbin.example.com"):
        certs.check_pair(server[0], client[1])
    with pytest.raises(CertificateError, match="does not belong"):
        certs.tls_secret("mixed", "istio-system", server[0], client[1])


def test_verification_by_hand_agrees_with_cryptography(ca, foreign_ca, intermediate, server):
    issued = certs.issue_workload(intermediate, certs.spiffe_id("foo", "httpbin"))
    leaf = x509.load_pem_x509_certificate(issued.cert_pem)
    now = datetime.now(UTC)
    certs._verify_by_hand(leaf, [intermediate.cert], [ca.cert], now)
    certs._verify_by_hand(certs.certificates(server[0])[0], [], [ca.cert], now)
    with pytest.raises(CertificateError, match="nothing in the chain"):
        certs._verify_by_hand(leaf, [], [ca.cert], now)
    with pytest.raises(CertificateError, match="nothing in the chain"):
        certs._verify_by_hand(leaf, [intermediate.cert], [foreign_ca.cert], now)
    with pytest.raises(CertificateError, match="expired"):
        certs._verify_by_hand(leaf, [intermediate.cert], [ca.cert], now + timedelta(days=2))
    # The intermediate's pathlen:0 forbids another CA under it, for both verifiers.
    sub = certs.CA(intermediate.cert, intermediate.key, intermediate.chain)
    deeper_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "too deep")])
    deeper = (x509.CertificateBuilder().subject_name(name).issuer_name(sub.cert.subject)
              .public_key(deeper_key.public_key()).serial_number(7)
              .not_valid_before(now - timedelta(minutes=1))
              .not_valid_after(now + timedelta(days=1))
              .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
              .add_extension(x509.KeyUsage(True, False, False, False, False, True, False, False,
                                           False), critical=True)
              .add_extension(x509.SubjectKeyIdentifier.from_public_key(deeper_key.public_key()),
                             critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                  sub.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value),
                  critical=False)
              .sign(sub.key, hashes.SHA256()))
    grandchild = certs.issue_workload(certs.CA(deeper, deeper_key, [deeper, *sub.chain]),
                                      certs.spiffe_id("foo", "deep"))
    too_deep = x509.load_pem_x509_certificate(grandchild.cert_pem)
    with pytest.raises(CertificateError, match="allows 0 CA"):
        certs._verify_by_hand(too_deep, [deeper, intermediate.cert], [ca.cert], now)
    assert not certs.verify_chain(too_deep, [deeper, intermediate.cert], ca.cert)


# --- tables ------------------------------------------------------------------------------------


def test_table_shows_sans_including_spiffe(ca, server, intermediate):
    issued = certs.issue_workload(intermediate, certs.spiffe_id("foo", "httpbin"))
    frame = certs.table([server[0], issued.cert_pem, ca.cert_path])
    assert list(frame["source"]) == ["httpbin.example.com+1.pem", "#1", "rootCA.pem"]
    assert frame.loc[1, "sans"] == "URI:spiffe://cluster.local/ns/foo/sa/httpbin"
    assert frame.loc[1, "spiffe_id"] == "spiffe://cluster.local/ns/foo/sa/httpbin"
    assert frame.loc[0, "sans"] == "DNS:httpbin.example.com, IP:127.0.0.1"
    assert list(frame["is_ca"]) == [False, False, True]
    for column in ("subject", "issuer", "not_before", "not_after", "serial", "key_type",
                   "key_size", "key_usage", "ext_key_usage", "sha256"):
        assert column in frame
    assert frame["not_after"].dt.tz is not None
    bundle = certs.table(issued.cert_pem + issued.chain_pem)
    assert list(bundle["source"]) == ["#0", "#0[1]", "#0[2]"]


def test_chain_table_from_s_client_output(ca, foreign_ca, intermediate):
    issued = certs.issue_workload(intermediate, certs.spiffe_id("foo", "httpbin"))
    text = (b"CONNECTED(00000003)\n---\nCertificate chain\n 0 s:\n   i:O = Istio\n"
            + issued.cert_pem + b" 1 s:O = Istio\n" + issued.chain_pem
            + b"---\nServer certificate\nsubject=\n")
    frame = certs.chain_table(text)
    assert list(frame["position"]) == [0, 1, 2]
    assert list(frame["verifies_against_next"]) == [True, True, True]
    assert frame.loc[0, "spiffe_id"] == "spiffe://cluster.local/ns/foo/sa/httpbin"
    assert frame.loc[1, "path_length"] == 0
    broken = certs.chain_table([issued.cert_pem, foreign_ca.cert_pem])
    assert list(broken["verifies_against_next"]) == [False, True]
    short = certs.chain_table(issued.cert_pem)
    assert short.loc[0, "verifies_against_next"] is None
    with pytest.raises(CertificateError, match="no certificate"):
        certs.chain_table(b"-----BEGIN NOTHING-----\n")


# --- secrets -----------------------------------------------------------------------------------


def test_tls_secret_is_kubectl_create_secret_tls(ca, server):
    cert, key = server
    secret = certs.tls_secret("httpbin-credential", "istio-system", cert, key, ca.cert_path)
    assert secret["kind"] == "Secret" and secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"] == {"name": "httpbin-credential", "namespace": "istio-system"}
    assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    assert base64.b64decode(secret["data"]["tls.key"]) == key.read_bytes()
    assert certs.secret_data(secret)["ca.crt"] == ca.cert_path.read_bytes()
    assert isinstance(secret, dict)
    without_ca = certs.tls_secret("httpbin-credential", "istio-system", cert, key)
    assert set(without_ca["data"]) == {"tls.crt", "tls.key"}


def test_generic_secret_and_mounting_it(ca, server, tmp_path):
    cert, key = server
    secret = certs.generic_secret("httpbin-credential", "istio-system", {
        "tls.key": key, "tls.crt": cert, "ca.crt": ca.cert_path})
    assert secret["type"] == "Opaque"
    files = certs.mount_secret(secret, tmp_path / "tls-certs")
    assert mode(tmp_path / "tls-certs") == 0o700
    assert {name: mode(path) for name, path in files.items()} == dict.fromkeys(
        ["tls.key", "tls.crt", "ca.crt"], 0o600)
    assert files["tls.key"].read_bytes() == key.read_bytes()
    with pytest.raises(CertificateError, match="cannot read"):
        certs.generic_secret("x", "ns", {"ca.crt": tmp_path / "missing.pem"})
    with pytest.raises(CertificateError, match="not a valid secret key"):
        certs.generic_secret("x", "ns", {"../escape": b"data"})
    sneaky = {"metadata": {"name": "x"}, "data": {"..": base64.b64encode(b"x").decode()}}
    with pytest.raises(CertificateError, match="not a valid secret key"):
        certs.mount_secret(sneaky, tmp_path / "sneaky")


def test_read_credential_the_way_istios_gateway_does(ca, server):
    cert, key = server
    simple = certs.read_credential(certs.tls_secret("cred", "istio-system", cert, key))
    assert simple.cert_pem == cert.read_bytes() and simple.ca_pem is None
    with pytest.raises(CertificateError, match="(?s)MUTUAL needs a CA.*cred-cacert"):
        certs.read_credential(certs.tls_secret("cred", "istio-system", cert, key), mutual=True)
    generic = certs.generic_secret("cred", "istio-system", {"cert": cert, "key": key})
    ca_secret = certs.generic_secret("cred-cacert", "istio-system", {"cacert": ca.cert_path})
    mutual = certs.read_credential(generic, ca_secret, mutual=True)
    assert mutual.ca_pem == ca.cert_pem and mutual.key_pem == key.read_bytes()
    with pytest.raises(CertificateError, match="found ca.crt"):
        certs.read_credential(certs.generic_secret("cred", "ns", {"ca.crt": ca.cert_path}))
    as_text = {"metadata": {"name": "s"}, "stringData": {"tls.crt": cert.read_text(),
                                                         "tls.key": key.read_text()}}
    assert certs.read_credential(as_text).key_pem == key.read_bytes()


# --- no key material in any repr --------------------------------------------------------------


def test_reprs_never_show_key_material(ca, intermediate, server):
    from IPython.lib.pretty import pretty

    cert, key = server
    issued = certs.issue_workload(intermediate, certs.spiffe_id("foo", "httpbin"))
    secret = certs.tls_secret("httpbin-credential", "istio-system", cert, key)
    credential = certs.read_credential(secret)
    secret_key_b64 = secret["data"]["tls.key"][100:160]
    holders: list[tuple[Any, str]] = [
        (ca, key_body(ca.key_path)), (intermediate, key_body(intermediate.key_pem)),
        (issued, key_body(issued.key_pem)), (issued.key_pem, key_body(issued.key_pem)),
        (ca.key_pem, key_body(ca.key_path)), (credential, key_body(key)),
        (secret, secret_key_b64), ([secret, issued], secret_key_b64),
    ]
    for holder, body in holders:
        for text in (repr(holder), str(holder), pretty(holder), f"{holder}"):
            assert body not in text and "PRIVATE KEY" not in text, type(holder)
    assert "<redacted" in repr(secret) and "tls.key" in repr(secret)
    assert certs.redacted(secret)["data"]["tls.key"] == f"<redacted, {key.stat().st_size} bytes>"
    # Still plain data for whoever needs it.
    assert bytes(issued.key_pem).startswith(b"-----BEGIN PRIVATE KEY-----")
    cert_pem, key_pem, chain_pem = issued
    serialization.load_pem_private_key(key_pem, password=None)
    assert dict(secret)["data"]["tls.key"] == base64.b64encode(key.read_bytes()).decode()


# --- mkcert itself, where installed ------------------------------------------------------------


@needs_mkcert
@needs_openssl
def test_mkcert_makes_the_same_files(tmp_path):
    root = certs.RootCA.load_or_create(tmp_path / "mkcert-ca", use_mkcert=True)
    assert certs.describe(root.cert)["subject"].startswith("O=mkcert development CA")
    assert stat.S_IMODE(root.key_path.stat().st_mode) & 0o077 == 0
    assert sorted(p.name for p in (tmp_path / "mkcert-ca").iterdir()) == [
        "rootCA-key.pem", "rootCA.pem"]
    cert, key = certs.issue_server(root, ["httpbin.example.com", "127.0.0.1"], tmp_path / "out",
                                   use_mkcert=True)
    assert (cert.name, key.name) == ("httpbin.example.com+1.pem", "httpbin.example.com+1-key.pem")
    assert mode(key) == 0o600
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([cert.name, key.name])
    client_cert, _ = certs.issue_client(root, ["client.example.com"], tmp_path / "out",
                                        use_mkcert=True)
    assert client_cert.name == "client.example.com-client.pem"
    assert certs.describe(client_cert)["ext_key_usage"] == ["clientAuth", "serverAuth"]
    assert certs.describe(cert)["sans"] == ["DNS:httpbin.example.com", "IP:127.0.0.1"]
    assert openssl("verify", "-CAfile", root.cert_path, cert).returncode == 0
    assert certs.verify_chain(cert, None, root.cert_path)
    certs.check_pair(cert, key)
    with pytest.raises(CertificateError, match="pathlen:0"):
        certs.intermediate_ca(root, "cluster1", tmp_path / "cluster1")
    # mkcert also signs with a root made here, through CAROOT.
    ours = certs.RootCA.load_or_create(tmp_path / "our-ca")
    signed, _ = certs.issue_server(ours, ["a.example.com"], tmp_path / "ours", use_mkcert=True)
    assert certs.verify_chain(signed, None, ours.cert_path)


def test_mkcert_missing_is_a_clear_error(ca, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CertificateError, match="mkcert is not on PATH"):
        certs.issue_server(ca, ["a.example.com"], tmp_path, use_mkcert=True)
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None,
                    reason="needs root to mount a small tmpfs")
def test_a_full_disk_is_a_clear_error_and_leaves_no_partial_file(ca, tmp_path) -> None:
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)], check=True)
    try:
        (full / "filler").write_bytes(b"\0" * 60 * 1024)
        with pytest.raises(CertificateError) as refused:
            certs.issue_server(ca, ["httpbin.example.com"], full)
        message = str(refused.value)
        assert f"in {full}: the disk is full" in message and "fix: free some space" in message
        # Nothing half-written: neither a truncated PEM nor a temporary file stays.
        assert sorted(p.name for p in full.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", str(full)], check=True)
