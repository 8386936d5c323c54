"""Certificates for the security labs, on `cryptography`: what the walkthrough does with mkcert.

    ca = certs.RootCA.load_or_create()        # rootCA.pem + rootCA-key.pem in $CAROOT or the state
    crt, key = certs.issue_server(ca, ["httpbin.example.com"], "work")   # like `mkcert NAME`
    cli, cli_key = certs.issue_client(ca, ["client.example.com"], "work")   # `mkcert -client`
    secret = certs.tls_secret("httpbin-credential", "istio-system", crt, key, ca.cert_path)
    certs.table([crt, cli, ca.cert_path])     # subject, issuer, SANs, validity, serial, ...
    certs.intermediate_ca(ca, "cluster1", "cacerts")   # the files of Istio's plug-in CA task

Private keys are written 0600 and atomically, and never shown: `PrivatePEM`, `WorkloadCert`,
`Credential`, the CA classes and `SecretManifest` print `<redacted>` where a key would be.
"""

from __future__ import annotations

import base64
import binascii
import errno
import getpass
import ipaddress
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import LabError

if TYPE_CHECKING:  # pandas only for the tables; meshd issues certificates without it
    import pandas as pd

__all__ = [
    "CA", "CertificateError", "Credential", "IntermediateCA", "PrivatePEM", "RootCA",
    "SecretManifest", "WorkloadCert", "CACERTS_FILES", "cacerts_files", "caroot", "certificates",
    "chain_table", "check_chain", "check_not_expired", "check_pair", "describe",
    "generic_secret", "intermediate_ca", "issue_client", "issue_server", "issue_workload",
    "load_cacerts", "mount_secret", "read_credential", "redacted", "secret_data", "spiffe_id",
    "table", "tls_secret", "verify_chain",
]

PathLike = str | os.PathLike[str]
# A certificate source: a path, PEM text or bytes (one or many certificates), DER bytes, a
# parsed certificate, or a list of those.
CertSource = PathLike | bytes | x509.Certificate | Sequence[Any]

ROOT_CERT = "rootCA.pem"
ROOT_KEY = "rootCA-key.pem"
# The `cacerts` secret istiod reads (Istio's "Plug in CA Certificates" task): the signing
# certificate and its key, the root of trust, and the chain from the signing cert to the root.
CACERTS_FILES = ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem")
MKCERT_INSTALL = "install it (Debian: apt-get install mkcert) or call without use_mkcert=True"
ISTIOD_SAN = "istiod.istio-system.svc"
# Istio backdates workload certificates so a peer whose clock is a little behind accepts them.
WORKLOAD_BACKDATE = timedelta(minutes=2)

_SERVER_AUTH = ExtendedKeyUsageOID.SERVER_AUTH
_CLIENT_AUTH = ExtendedKeyUsageOID.CLIENT_AUTH
_EKU_NAMES = {
    _SERVER_AUTH: "serverAuth", _CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
}
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_KEY_USAGES = (
    ("digital_signature", "digitalSignature"), ("content_commitment", "nonRepudiation"),
    ("key_encipherment", "keyEncipherment"), ("data_encipherment", "dataEncipherment"),
    ("key_agreement", "keyAgreement"), ("key_cert_sign", "keyCertSign"),
    ("crl_sign", "cRLSign"),
)


class CertificateError(LabError):
    """A certificate, key or secret cannot be used; the message names it and the fix."""


class PrivatePEM(bytes):
    """A PEM-encoded private key: plain bytes everywhere, but printed as `<redacted>`."""

    def __repr__(self) -> str:
        return f"<private key PEM, {len(self)} bytes, redacted>"

    __str__ = __repr__

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


# --- small helpers -----------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(when: datetime) -> datetime:
    """`when` as an aware UTC time; a naive one is taken to be UTC already."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _add_months(when: datetime, months: int) -> datetime:
    """`when` plus whole months, like Go's AddDate (days past the month's end roll over)."""
    index = when.month - 1 + months
    year, month = when.year + index // 12, index % 12 + 1
    first = when.replace(year=year, month=month, day=1)
    return first + timedelta(days=when.day - 1)


def _user_and_host() -> str:
    """`user@host`, the OU mkcert writes into its certificates."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _name(**attrs: str) -> x509.Name:
    oids = {"O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
            "CN": NameOID.COMMON_NAME, "L": NameOID.LOCALITY_NAME}
    return x509.Name([x509.NameAttribute(oids[k], v) for k, v in attrs.items()])


def _name_text(name: x509.Name) -> str:
    """A name in openssl's order: `O=Istio, CN=Root CA`."""
    return ", ".join(f"{a.rfc4514_attribute_name}={a.value!s}" for a in name)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: PrivateKeyTypes) -> PrivatePEM:
    # PKCS#8 ("BEGIN PRIVATE KEY"), the only form mkcert reads back from rootCA-key.pem.
    return PrivatePEM(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))


def _write(path: Path, data: bytes, mode: int) -> Path:
    """Write `data` to `path` atomically: a new file created with `mode`, renamed into place."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # The file is born with its final mode (never readable by others, not even briefly), and
    # the rename replaces an older file whatever that file's mode was.
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise CertificateError(_write_failed(path, exc)) from exc
    return path


def _write_failed(path: Path, exc: OSError) -> str:
    """Why `path` could not be written, and what to do about it."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        why, fix = "the disk is full", f"free some space on the disk holding {path.parent}"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why, fix = "the folder is not writable", "pass a folder you can write"
    else:
        why, fix = exc.strerror or str(exc), "check the folder, then run the cell again"
    return f"cannot write {path.name} in {path.parent}: {why} ({exc})\n    fix: {fix}"


def _write_key(path: Path, data: bytes) -> Path:
    return _write(path, data, 0o600)


def _write_cert(path: Path, data: bytes) -> Path:
    return _write(path, data, 0o644)


def _folder(folder: PathLike, private: bool = False) -> Path:
    """Create `folder` (0700) if missing; a private folder is made 0700 even if it existed."""
    path = Path(folder).expanduser().absolute()
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if private:
            path.chmod(0o700)
    except OSError as exc:
        raise CertificateError(f"cannot use the folder {path}: {exc.strerror or exc}\n"
                               "    fix: pass a folder you can write") from exc
    return path


def _new_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _sign_hash(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) \
        else hashes.SHA256()


def _ext(cert: x509.Certificate, kind: type[Any]) -> Any:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _label(cert: x509.Certificate) -> str:
    """What a learner calls a certificate: its first SAN, else its CN, else its subject."""
    san = _ext(cert, x509.SubjectAlternativeName)
    if san is not None:
        for entry in san:
            return str(entry.value)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else (_name_text(cert.subject) or "(no subject)")


def _general_name(name: str) -> x509.GeneralName:
    """An IP SAN for an IP address, a URI SAN for `scheme://host...`, else a DNS SAN (mkcert)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if "://" in name:
        return x509.UniformResourceIdentifier(name)
    return x509.DNSName(name)


def _authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = _ext(issuer, x509.SubjectKeyIdentifier)
    if ski is not None:
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    # A certificate's key type may be one that cannot sign (X25519...): not for an issuer.
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(
        issuer.public_key())  # type: ignore[arg-type]


def _leaf_usage() -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False,
                         key_encipherment=True, data_encipherment=False, key_agreement=False,
                         key_cert_sign=False, crl_sign=False, encipher_only=False,
                         decipher_only=False)


def _ca_usage(signing_too: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=signing_too, content_commitment=signing_too,
                         key_encipherment=signing_too, data_encipherment=False,
                         key_agreement=False, key_cert_sign=True, crl_sign=False,
                         encipher_only=False, decipher_only=False)


# --- certificate authorities -------------------------------------------------------------------


class CA:
    """A certificate authority that can sign: its certificate, key, and chain up to the root."""

    def __init__(self, cert: x509.Certificate, key: CertificateIssuerPrivateKeyTypes,
                 chain: Sequence[x509.Certificate] | None = None,
                 folder: PathLike | None = None) -> None:
        self.cert = cert
        self.key = key
        # This CA's certificate first, the self-signed root last (just [cert] for a root).
        self.chain = list(chain) if chain else [cert]
        self.folder = Path(folder) if folder is not None else None

    @property
    def root(self) -> x509.Certificate:
        """The root of trust this CA chains to."""
        return self.chain[-1]

    @property
    def cert_pem(self) -> bytes:
        """This CA's certificate as PEM."""
        return _pem(self.cert)

    @property
    def chain_pem(self) -> bytes:
        """This CA's certificate and its issuers up to the root, as one PEM bundle."""
        return b"".join(_pem(c) for c in self.chain)

    @property
    def root_pem(self) -> bytes:
        """The root certificate as PEM (what workloads trust)."""
        return _pem(self.root)

    @property
    def key_pem(self) -> PrivatePEM:
        """This CA's private key as PKCS#8 PEM (prints as `<redacted>`)."""
        return _key_pem(self.key)

    def __repr__(self) -> str:
        where = f", folder='{self.folder}'" if self.folder else ""
        return (f"{type(self).__name__}(subject='{_name_text(self.cert.subject)}', "
                f"not_after={self.cert.not_valid_after_utc:%Y-%m-%d}{where}, key=<redacted>)")

    __str__ = __repr__


class RootCA(CA):
    """A self-signed local root CA kept as rootCA.pem and rootCA-key.pem, like mkcert's CAROOT."""

    @property
    def cert_path(self) -> Path:
        """rootCA.pem: give it to curl as `--cacert` and to secrets as `ca.crt`."""
        return self._folder() / ROOT_CERT

    @property
    def key_path(self) -> Path:
        """rootCA-key.pem (0600): the CA's private key."""
        return self._folder() / ROOT_KEY

    def _folder(self) -> Path:
        if self.folder is None:
            raise CertificateError("this RootCA was not loaded from a folder\n"
                                   "    fix: use certs.RootCA.load_or_create(folder)")
        return self.folder

    @classmethod
    def load_or_create(cls, folder: PathLike | None = None, *, use_mkcert: bool = False
                       ) -> RootCA:
        """The CA in `folder` (default `caroot()`), created there first if it has none."""
        path = _folder(folder if folder is not None else caroot(), private=True)
        if not (path / ROOT_CERT).exists():
            if use_mkcert:
                _mkcert_create_ca(path)
            else:
                cls._create(path)
        return cls.load(path)

    @classmethod
    def load(cls, folder: PathLike) -> RootCA:
        """The CA already in `folder`; a clear error if its certificate or key is missing."""
        path = Path(folder).expanduser().absolute()
        if not (path / ROOT_CERT).is_file():
            raise CertificateError(
                f"there is no {ROOT_CERT} in {path}\n"
                "    fix: create the CA with certs.RootCA.load_or_create(folder)")
        if not (path / ROOT_KEY).is_file():
            raise CertificateError(
                f"{path / ROOT_CERT} has no key next to it ({ROOT_KEY} is missing), so it "
                "cannot sign certificates\n    fix: put the key back, or point CAROOT at an "
                "empty folder to create a new CA")
        cert = certificates(path / ROOT_CERT)[0]
        key = _load_issuer_key((path / ROOT_KEY).read_bytes(), f"{path / ROOT_KEY}")
        check_pair(cert, key)
        return cls(cert, key, [cert], path)

    @classmethod
    def _create(cls, folder: Path) -> None:
        """Write a new root like mkcert's (RSA 3072, ten years), but allowing intermediates."""
        key = _new_key(3072)
        who = _user_and_host()
        subject = _name(O="istio-lab-kit development CA", OU=who, CN=f"istio-lab-kit {who}")
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(_add_months(now, 120))
            # No path length limit (mkcert sets 0): `intermediate_ca` must be able to sign
            # the Istio CA of the plug-in-CA lab.
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_ca_usage(signing_too=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        # The key first: a rootCA.pem without its key would make this folder unusable.
        _write_key(folder / ROOT_KEY, _key_pem(key))
        _write_cert(folder / ROOT_CERT, _pem(cert))


class IntermediateCA(CA):
    """A CA signed by another one, stored as the four `cacerts` files istiod plugs in."""

    @property
    def files(self) -> dict[str, Path]:
        """The `cacerts` files by name (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem)."""
        folder = self.folder if self.folder is not None else Path(".")
        return {name: folder / name for name in CACERTS_FILES}


def caroot(state_dir: PathLike | None = None) -> Path:
    """The CA root folder, like `mkcert -CAROOT`: `$CAROOT`, else `<state_dir>/certs/ca`.

    `state_dir` is the mesh's state folder (`StateDir.path`); by default this user's folder
    for `$LAB_MESH`, computed without creating anything.
    """
    configured = os.environ.get("CAROOT")
    if configured:
        return Path(configured).expanduser()
    if state_dir is None:
        from .local.state import default_root, mesh_name

        state_dir = default_root() / mesh_name()
    return Path(state_dir).expanduser() / "certs" / "ca"


def _load_issuer_key(data: bytes, where: str) -> CertificateIssuerPrivateKeyTypes:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"{where} is not an unencrypted PEM private key ({exc})\n"
                               "    fix: give the PEM file the key was written to") from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | dsa.DSAPrivateKey
                      | ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        raise CertificateError(f"{where} holds a {type(key).__name__}, which cannot sign "
                               "certificates\n    fix: use an RSA or ECDSA key")
    return key


def _require_ca(ca: CA) -> None:
    constraints = _ext(ca.cert, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        raise CertificateError(f"{_label(ca.cert)} is not a CA certificate, so it cannot sign "
                               "others\n    fix: pass a RootCA or an intermediate_ca(...)")


# --- issuing -----------------------------------------------------------------------------------


def _file_stem(names: Sequence[str], client: bool) -> str:
    """mkcert's file name: the first name (`*` as `_wildcard`), `+N` more, `-client`."""
    stem = names[0].replace(":", "_").replace("*", "_wildcard")
    if len(names) > 1:
        stem += f"+{len(names) - 1}"
    return stem + ("-client" if client else "")


def _leaf_cert(ca: CA, public_key: Any, subject: x509.Name, sans: list[x509.GeneralName],
               usages: list[x509.ObjectIdentifier], not_before: datetime, not_after: datetime,
               *, workload: bool = False) -> x509.Certificate:
    _require_ca(ca)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(_leaf_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        # RFC 5280: with an empty subject (Istio's workload certificates) the SANs are the
        # identity and their extension must be critical.
        .add_extension(x509.SubjectAlternativeName(sans), critical=workload)
        .add_extension(_authority_key_id(ca.cert), critical=False)
    )
    if workload:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                        critical=True)
    return builder.sign(ca.key, _sign_hash(ca.key))


def _issue(ca: CA, names: Sequence[str], folder: PathLike, stem: str | None, client: bool,
           use_mkcert: bool, not_before: datetime | None, not_after: datetime | None
           ) -> tuple[Path, Path]:
    names = [str(n) for n in names]
    if not names or not all(names):
        raise CertificateError("a certificate needs at least one name (a host name or IP)\n"
                               '    fix: e.g. issue_server(ca, ["httpbin.example.com"], folder)')
    out = _folder(folder)
    base = stem or _file_stem(names, client)
    cert_path, key_path = out / f"{base}.pem", out / f"{base}-key.pem"
    if use_mkcert:
        if not_before is not None or not_after is not None:
            raise CertificateError("mkcert cannot choose validity dates\n"
                                   "    fix: call without use_mkcert=True to set not_after")
        _mkcert_issue(ca, names, client, cert_path, key_path)
        return cert_path, key_path
    now = _now()
    end = _utc(not_after) if not_after else _add_months(now, 27)  # mkcert: 2 years 3 months
    start = _utc(not_before) if not_before else min(now, end - timedelta(days=1))
    if end <= start:
        raise CertificateError(f"not_after ({end:%Y-%m-%d %H:%M}) must be later than not_before "
                               f"({start:%Y-%m-%d %H:%M})\n    fix: swap or correct the dates")
    # mkcert: clientAuth for -client, and serverAuth whenever there are host names or IPs.
    usages = [_CLIENT_AUTH, _SERVER_AUTH] if client else [_SERVER_AUTH]
    key = _new_key()
    subject = _name(O="istio-lab-kit development certificate", OU=_user_and_host())
    cert = _leaf_cert(ca, key.public_key(), subject, [_general_name(n) for n in names], usages,
                      start, end)
    _write_key(key_path, _key_pem(key))
    try:
        _write_cert(cert_path, _pem(cert))
    except CertificateError:
        key_path.unlink(missing_ok=True)  # a key without its certificate is of no use
        raise
    return cert_path, key_path


def issue_server(ca: CA, names: Sequence[str], folder: PathLike = ".", stem: str | None = None,
                 *, use_mkcert: bool = False, not_before: datetime | None = None,
                 not_after: datetime | None = None) -> tuple[Path, Path]:
    """`mkcert NAME...`: a serverAuth certificate for DNS names and IPs -> (cert, key) paths.

    Files are `<stem>.pem` and `<stem>-key.pem` (key 0600); the stem defaults to mkcert's
    (`httpbin.example.com`, `example.com+2` for three names). `not_after` in the past makes an
    expired certificate, for showing what a proxy does with one.
    """
    return _issue(ca, names, folder, stem, False, use_mkcert, not_before, not_after)


def issue_client(ca: CA, names: Sequence[str], folder: PathLike = ".", stem: str | None = None,
                 *, use_mkcert: bool = False, not_before: datetime | None = None,
                 not_after: datetime | None = None) -> tuple[Path, Path]:
    """`mkcert -client NAME...`: a clientAuth certificate (`NAME-client.pem`, `-client-key.pem`).

    Like mkcert's, it also carries serverAuth, because it names hosts.
    """
    return _issue(ca, names, folder, stem, True, use_mkcert, not_before, not_after)


def spiffe_id(namespace: str, service_account: str, trust_domain: str = "cluster.local") -> str:
    """A workload's Istio identity: `spiffe://cluster.local/ns/NS/sa/SA`."""
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


class WorkloadCert(NamedTuple):
    """A workload certificate as istiod hands it out: cert, key, and the CA chain to the root."""

    cert_pem: bytes
    key_pem: PrivatePEM
    chain_pem: bytes  # the issuing CA's certificate up to the root; the proxy sends cert + chain

    def __repr__(self) -> str:
        return (f"WorkloadCert(identity='{_label(x509.load_pem_x509_certificate(self.cert_pem))}'"
                ", key=<redacted>)")

    def __str__(self) -> str:
        return repr(self)


def issue_workload(ca: CA, spiffe_id: str, ttl_hours: float = 24) -> WorkloadCert:
    """What istiod's CA signs for a sidecar: a short-lived certificate for one SPIFFE ID."""
    trust_domain, _, path = spiffe_id.removeprefix("spiffe://").partition("/")
    if not spiffe_id.startswith("spiffe://") or not trust_domain or not path:
        raise CertificateError(
            f'"{spiffe_id}" is not a SPIFFE ID\n    fix: use spiffe://cluster.local/ns/NS/sa/SA '
            "(certs.spiffe_id(namespace, service_account))")
    if ttl_hours <= 0:
        raise CertificateError(f"ttl_hours must be positive, not {ttl_hours}\n"
                               "    fix: Istio's default is 24")
    now = _now()
    key = _new_key()
    # Like Istio's: no subject at all; the identity is the URI SAN.
    cert = _leaf_cert(ca, key.public_key(), x509.Name([]),
                      [x509.UniformResourceIdentifier(spiffe_id)], [_SERVER_AUTH, _CLIENT_AUTH],
                      now - WORKLOAD_BACKDATE, now + timedelta(hours=ttl_hours), workload=True)
    return WorkloadCert(_pem(cert), _key_pem(key), ca.chain_pem)


def intermediate_ca(root: CA, name: str, folder: PathLike, *, days: int = 730
                    ) -> IntermediateCA:
    """Istio's `make NAME-cacerts`: an intermediate CA for istiod, written as the cacerts files.

    `folder` gets ca-cert.pem (the intermediate), ca-key.pem (its key, 0600), root-cert.pem
    (the root) and cert-chain.pem (ca-cert.pem then the root): `generic_secret("cacerts",
    "istio-system", ca.files)` is the secret the plug-in-CA task creates.
    """
    _require_ca(root)
    if _ext(root.cert, x509.BasicConstraints).path_length == 0:
        raise CertificateError(
            f"{_label(root.cert)} allows no CA below it (pathlen:0, as mkcert's root has)\n"
            "    fix: plug it in directly, like the walkthrough: certs.cacerts_files(ca, "
            "folder); or sign with a root made by certs.RootCA.load_or_create()")
    key = _new_key(3072)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(O="Istio", CN="Intermediate CA", L=name))
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + timedelta(days=days))
        # Like Istio's tools/certs: a CA that signs workloads only (pathlen 0), named for istiod.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_usage(signing_too=True), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(ISTIOD_SAN)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(_authority_key_id(root.cert), critical=False)
        .sign(root.key, _sign_hash(root.key))
    )
    ca = IntermediateCA(cert, key, [cert, *root.chain])
    ca.folder = cacerts_files(ca, folder)["ca-cert.pem"].parent
    return ca


def cacerts_files(ca: CA, folder: PathLike) -> dict[str, Path]:
    """Write any CA as the four `cacerts` files; for a root, all but the key are the root."""
    out = _folder(folder, private=True)
    _write_cert(out / "ca-cert.pem", ca.cert_pem)
    _write_key(out / "ca-key.pem", ca.key_pem)
    _write_cert(out / "root-cert.pem", ca.root_pem)
    _write_cert(out / "cert-chain.pem", ca.chain_pem)
    return {name: out / name for name in CACERTS_FILES}


def load_cacerts(files: Mapping[str, bytes | str] | PathLike) -> CA:
    """The CA istiod would run from a `cacerts` secret's files (or a folder holding them).

    Raises CertificateError naming a missing or empty file, a key that does not match
    ca-cert.pem, a chain that does not lead to root-cert.pem, or an expired certificate.
    """
    if isinstance(files, str | os.PathLike):
        folder = Path(files)
        data = {n: (folder / n).read_bytes() for n in CACERTS_FILES if (folder / n).is_file()}
        where = str(folder)
    else:
        data = {k: v.encode() if isinstance(v, str) else bytes(v) for k, v in files.items()}
        where = "the cacerts secret"
    # An empty cert-chain.pem is what older Istio docs ask for when ca-cert.pem is the root.
    missing = [n for n in CACERTS_FILES if n not in data
               or (n != "cert-chain.pem" and not data[n].strip())]
    if missing:
        raise CertificateError(
            f"{where} lacks {', '.join(missing)}; istiod needs all of {', '.join(CACERTS_FILES)} "
            "(or none, to use its self-signed root)\n    fix: recreate it with "
            "--from-file for each of the four files (certs.cacerts_files(ca, folder) writes them)")
    ca_cert = certificates(data["ca-cert.pem"])[0]
    root = certificates(data["root-cert.pem"])[0]
    chain = certificates(data["cert-chain.pem"]) if data["cert-chain.pem"].strip() else []
    key = _load_issuer_key(data["ca-key.pem"], "ca-key.pem")
    check_pair(ca_cert, key)
    for cert in (ca_cert, *chain, root):
        check_not_expired(cert)
    ca = CA(ca_cert, key)
    _require_ca(ca)
    check_chain(ca_cert, chain, root)
    # The chain as istiod serves it: ca-cert first, the root last, nothing twice.
    ordered = [ca_cert] + [c for c in chain if c != ca_cert and c != root]
    ca.chain = ordered + ([root] if ca_cert != root else [])
    return ca


def _mkcert(args: list[str], caroot_folder: Path, cwd: Path) -> None:
    exe = shutil.which("mkcert")
    if exe is None:
        raise CertificateError(f"mkcert is not on PATH\n    fix: {MKCERT_INSTALL}")
    env = dict(os.environ, CAROOT=str(caroot_folder))
    done = subprocess.run([exe, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    if done.returncode != 0:
        raise CertificateError(f"mkcert {' '.join(args)} failed: {done.stderr.strip()}\n"
                               f"    fix: {MKCERT_INSTALL}")


def _mkcert_create_ca(folder: Path) -> None:
    # mkcert has no "create the CA only" command (-install would also touch the system's trust
    # stores), but creates the CA before its first certificate: make one and throw it away.
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        _mkcert(["-cert-file", "throwaway.pem", "-key-file", "throwaway-key.pem",
                 "lablib.invalid"], folder, Path(tmp))


def _mkcert_issue(ca: CA, names: list[str], client: bool, cert_path: Path, key_path: Path
                  ) -> None:
    if not isinstance(ca, RootCA) or ca.folder is None:
        raise CertificateError("mkcert signs only with the root CA in its CAROOT folder\n"
                               "    fix: pass the RootCA from RootCA.load_or_create(folder)")
    # mkcert writes in place (and keeps an older file's mode): let it write into a private
    # folder, then rename its files over ours.
    with tempfile.TemporaryDirectory(dir=cert_path.parent) as tmp:
        work = Path(tmp)
        _mkcert([*(["-client"] if client else []), "-cert-file", "cert.pem",
                 "-key-file", "key.pem", *names], ca.folder, work)
        (work / "key.pem").chmod(0o600)
        os.replace(work / "key.pem", key_path)
        os.replace(work / "cert.pem", cert_path)


# --- reading and describing --------------------------------------------------------------------


def certificates(source: CertSource) -> list[x509.Certificate]:
    """Every certificate in `source`: a path, PEM text (any text around it is ignored), DER."""
    if isinstance(source, x509.Certificate):
        return [source]
    if isinstance(source, bytes):
        return _parse(source, "the given bytes")
    if isinstance(source, str) and "-----BEGIN" in source:
        return _parse(source.encode(), "the given text")
    if isinstance(source, str | os.PathLike):
        path = Path(source).expanduser()
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CertificateError(f"cannot read {path}: {exc.strerror or exc}\n"
                                   "    fix: check the path") from exc
        return _parse(data, str(path))
    if isinstance(source, Iterable):
        items: Iterable[Any] = source
        return [c for item in items for c in certificates(item)]
    raise CertificateError(f"cannot read certificates from a {type(source).__name__}\n"
                           "    fix: pass a path, PEM text or bytes, or a list of them")


_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def _parse(data: bytes, where: str) -> list[x509.Certificate]:
    try:
        if b"-----BEGIN" in data:
            # Only the certificate blocks: `openssl s_client` output also holds other PEM
            # blocks (the TLS session), which are not certificates.
            blocks = _PEM_CERTIFICATE.findall(data)
            return x509.load_pem_x509_certificates(b"\n".join(blocks) if blocks else data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise CertificateError(f"no certificate found in {where} ({exc})\n"
                               "    fix: give a PEM file with -----BEGIN CERTIFICATE-----") from exc


def _one(source: CertSource) -> x509.Certificate:
    return certificates(source)[0]


def _fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 as `openssl x509 -fingerprint -sha256` prints it."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _serial(cert: x509.Certificate) -> str:
    """The serial as `openssl x509 -serial` prints it: upper-case hex in whole bytes."""
    text = f"{cert.serial_number:X}"
    return "0" * (len(text) % 2) + text


def _key_info(cert: x509.Certificate) -> tuple[str, int | None]:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA", key.key_size
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}", key.key_size
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519", 256
    if isinstance(key, dsa.DSAPublicKey):
        return "DSA", key.key_size
    return type(key).__name__, None


def _sans(cert: x509.Certificate) -> list[str]:
    """SANs as openssl prints them: `DNS:a.example.com`, `IP:127.0.0.1`, `URI:spiffe://...`."""
    san = _ext(cert, x509.SubjectAlternativeName)
    kinds: dict[type, str] = {x509.DNSName: "DNS", x509.IPAddress: "IP",
                              x509.UniformResourceIdentifier: "URI", x509.RFC822Name: "email"}
    return [f"{kinds.get(type(e), type(e).__name__)}:{e.value}" for e in (san or [])]


def _key_usage(cert: x509.Certificate) -> list[str]:
    usage = _ext(cert, x509.KeyUsage)
    return [name for attr, name in _KEY_USAGES if usage is not None and getattr(usage, attr)]


def describe(cert_or_path: CertSource) -> dict[str, Any]:
    """One certificate (the first in a bundle) as a dict of what `openssl x509 -text` shows."""
    cert = _one(cert_or_path)
    constraints = _ext(cert, x509.BasicConstraints)
    eku = _ext(cert, x509.ExtendedKeyUsage)
    sans = _sans(cert)
    key_type, key_size = _key_info(cert)
    return {
        "subject": _name_text(cert.subject),
        "issuer": _name_text(cert.issuer),
        "sans": sans,
        "spiffe_id": next((s[4:] for s in sans if s.startswith("URI:spiffe://")), None),
        "not_before": cert.not_valid_before_utc,
        "not_after": cert.not_valid_after_utc,
        "serial": _serial(cert),
        "key_type": key_type,
        "key_size": key_size,
        "is_ca": bool(constraints and constraints.ca),
        "path_length": constraints.path_length if constraints else None,
        "key_usage": _key_usage(cert),
        "ext_key_usage": [_EKU_NAMES.get(o, o.dotted_string) for o in (eku or [])],
        "sha256": _fingerprint(cert),
    }


def _row(cert: x509.Certificate) -> dict[str, Any]:
    row = describe(cert)
    for column in ("sans", "key_usage", "ext_key_usage"):
        row[column] = ", ".join(row[column])
    return row


def table(paths_or_pems: CertSource) -> pd.DataFrame:
    """One row per certificate (every one in each bundle), with a `source` column."""
    items: list[Any] = [paths_or_pems] if isinstance(
        paths_or_pems, str | bytes | os.PathLike | x509.Certificate) else list(paths_or_pems)
    rows = []
    for index, item in enumerate(items):
        is_path = isinstance(item, os.PathLike) or (isinstance(item, str)
                                                    and "-----BEGIN" not in item)
        name = Path(item).name if is_path else f"#{index}"
        for position, cert in enumerate(certificates(item)):
            rows.append({"source": name if position == 0 else f"{name}[{position}]",
                         **_row(cert)})
    return _frame(rows)


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    import pandas as pd

    frame = pd.DataFrame(rows)
    if "path_length" in frame:
        # Mixed None and ints would become floats (0.0); keep integers and show <NA>.
        frame["path_length"] = frame["path_length"].astype("Int64")
    return frame


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def chain_table(pem_bundle: CertSource) -> pd.DataFrame:
    """A chain (leaf first) one row per certificate; does each verify against the next one?

    The last row checks a self-signed root against itself and is empty (None) otherwise.
    """
    chain = certificates(pem_bundle)
    rows = []
    for position, cert in enumerate(chain):
        if position + 1 < len(chain):
            verifies: bool | None = _signed_by(cert, chain[position + 1])
        else:
            verifies = _signed_by(cert, cert) if cert.issuer == cert.subject else None
        rows.append({"position": position, **_row(cert), "verifies_against_next": verifies})
    return _frame(rows)


# --- checks ------------------------------------------------------------------------------------


def _reissue_hint(cert: x509.Certificate) -> str:
    info = describe(cert)
    names = [s.split(":", 1)[1] for s in info["sans"]]
    if info["is_ca"]:
        return ("make a new CA: certs.RootCA.load_or_create(empty_folder) or "
                "certs.intermediate_ca(root, name, folder)")
    if info["spiffe_id"]:
        return f'issue a new one with certs.issue_workload(ca, "{info["spiffe_id"]}")'
    kind = "issue_client" if "clientAuth" in info["ext_key_usage"] else "issue_server"
    return f"issue a new one with certs.{kind}(ca, {names or ['NAME']!r}, folder)"


def check_not_expired(cert_pem: CertSource, now: datetime | None = None) -> None:
    """Raise CertificateError if the certificate is expired or not valid yet at `now`."""
    cert = _one(cert_pem)
    when = _utc(now) if now else _now()
    label = _label(cert)
    if when > cert.not_valid_after_utc:
        raise CertificateError(
            f"certificate for {label} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
            f"{_reissue_hint(cert)}")
    if when < cert.not_valid_before_utc:
        raise CertificateError(
            f"certificate for {label} is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (a clock behind, or a date set in "
            f"the future); {_reissue_hint(cert)}")


def _public_der(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def check_pair(cert_pem: CertSource, key_pem: bytes | str | PathLike | PrivateKeyTypes) -> None:
    """Raise CertificateError unless the private key belongs to the certificate."""
    cert = _one(cert_pem)
    if isinstance(key_pem, bytes | str | os.PathLike):
        if isinstance(key_pem, bytes):
            data = key_pem
        elif isinstance(key_pem, str) and "-----BEGIN" in key_pem:
            data = key_pem.encode()
        else:
            data = _read_input(key_pem, f"the key of {_label(cert)}")
        try:
            key: Any = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise CertificateError(f"the key for {_label(cert)} is not an unencrypted PEM "
                                   f"private key ({exc})\n    fix: pass the -key.pem file "
                                   "written with the certificate") from exc
    else:
        key = key_pem
    if _public_der(key.public_key()) != _public_der(cert.public_key()):
        raise CertificateError(
            f"the private key does not belong to the certificate for {_label(cert)}\n"
            "    fix: pass the key written together with this certificate (NAME-key.pem next "
            "to NAME.pem), or issue both anew")


def check_chain(leaf_pem: CertSource, chain_pems: CertSource | None, root_pem: CertSource,
                now: datetime | None = None) -> None:
    """Raise CertificateError unless `leaf` chains through `chain` to the trusted `root`."""
    leaf = _one(leaf_pem)
    chain = certificates(chain_pems) if chain_pems is not None else []
    roots = certificates(root_pem)
    when = _utc(now) if now else _now()
    try:
        from cryptography.x509.verification import (
            ExtensionPolicy,
            PolicyBuilder,
            Store,
            VerificationError,
        )
    except ImportError:  # cryptography < 45: no ExtensionPolicy for non-webpki leaves
        _verify_by_hand(leaf, chain, roots, when)
        return
    # The client verifier needs no host name, and `permit_all` for the leaf admits what the
    # mesh uses and the web does not (subject-less SPIFFE certificates); CA certificates still
    # get the full web PKI checks, signatures and validity dates always.
    builder = (PolicyBuilder().store(Store(roots)).time(when)
               .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(),
                                   ee_policy=ExtensionPolicy.permit_all()))
    try:
        builder.build_client_verifier().verify(leaf, [c for c in chain if c not in roots])
    except VerificationError as exc:
        check_not_expired(leaf, when)
        raise CertificateError(
            f"the certificate for {_label(leaf)} does not verify against the root "
            f"{_label(roots[0])}: {exc}\n    fix: trust the root that issued it, and send the "
            "intermediate certificates with it (cert-chain.pem)") from exc


def _verify_by_hand(leaf: x509.Certificate, chain: list[x509.Certificate],
                    roots: list[x509.Certificate], when: datetime) -> None:
    """Path validation without cryptography's verifier: signatures, dates, CA constraints."""
    pool = chain + roots
    current, cas_below = leaf, 0
    for _ in range(len(pool) + 1):
        check_not_expired(current, when)
        if current in roots:
            return
        issuer = next((c for c in pool if c.subject == current.issuer
                       and _signed_by(current, c)), None)
        if issuer is None:
            raise CertificateError(
                f"nothing in the chain or root signed the certificate for {_label(current)} "
                f"(issuer {_name_text(current.issuer)})\n    fix: trust the root that issued "
                "it, and send the intermediate certificates with it")
        constraints = _ext(issuer, x509.BasicConstraints)
        usage = _ext(issuer, x509.KeyUsage)
        if not (constraints and constraints.ca) or (usage is not None
                                                    and not usage.key_cert_sign):
            raise CertificateError(f"{_label(issuer)} signed {_label(current)} but is not a CA"
                                   "\n    fix: sign with a CA certificate")
        if current is not leaf:
            cas_below += 1  # `current` is a CA between `issuer` and the leaf
        if constraints.path_length is not None and cas_below > constraints.path_length:
            raise CertificateError(
                f"{_label(issuer)} allows {constraints.path_length} CA(s) below it, the chain "
                f"has {cas_below}\n    fix: sign with a CA that allows intermediates")
        current = issuer
    raise CertificateError(f"the chain of {_label(leaf)} loops\n    fix: check cert-chain.pem")


def verify_chain(leaf_pem: CertSource, chain_pems: CertSource | None, root_pem: CertSource
                 ) -> bool:
    """Does `leaf` chain through `chain` to the trusted `root` (signatures, dates, CA rules)?"""
    try:
        check_chain(leaf_pem, chain_pems, root_pem)
    except CertificateError:
        return False
    return True


# --- secrets -----------------------------------------------------------------------------------


class SecretManifest(dict[str, Any]):
    """A Secret manifest: an ordinary dict for `mesh.apply`, shown with its data redacted."""

    def __repr__(self) -> str:
        return repr(redacted(self))

    __str__ = __repr__

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


def redacted(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a Secret with each value replaced by its size, as `kubectl describe` shows it."""
    copy = {k: v for k, v in manifest.items()}
    if isinstance(manifest.get("data"), Mapping):
        copy["data"] = {k: f"<redacted, {len(_b64decode(v, k))} bytes>"
                        for k, v in manifest["data"].items()}
    if isinstance(manifest.get("stringData"), Mapping):
        copy["stringData"] = {k: f"<redacted, {len(str(v).encode())} bytes>"
                              for k, v in manifest["stringData"].items()}
    return copy


def _b64decode(value: Any, key: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CertificateError(f'secret data "{key}" is not base64\n    fix: put raw text under '
                               "stringData, or base64-encode it under data") from exc


def _read_input(value: PathLike | bytes, key: str) -> bytes:
    if isinstance(value, bytes):
        return value
    path = Path(value).expanduser()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"cannot read {path} for {key}: {exc.strerror or exc}\n"
                               "    fix: check the path") from exc


def _check_key(key: str) -> str:
    """A Secret key is a file name: letters, digits, `-`, `_` and `.` (as Kubernetes checks)."""
    if not _SECRET_KEY.fullmatch(key) or key in (".", ".."):
        raise CertificateError(f'"{key}" is not a valid secret key\n    fix: use a file name '
                               'such as "tls.crt" (letters, digits, "-", "_", ".")')
    return key


def _secret(name: str, namespace: str, kind: str, data: Mapping[str, bytes]) -> SecretManifest:
    for key in data:
        _check_key(key)
    return SecretManifest({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": kind,
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    })


def tls_secret(name: str, namespace: str, cert_path: PathLike | bytes, key_path: PathLike | bytes,
               ca_path: PathLike | bytes | None = None) -> SecretManifest:
    """`kubectl create secret tls NAME --cert --key`: tls.crt, tls.key (+ ca.crt for MUTUAL)."""
    cert = _read_input(cert_path, "tls.crt")
    key = _read_input(key_path, "tls.key")
    # kubectl refuses a pair that does not match; so does this.
    check_pair(cert, key)
    data = {"tls.crt": cert, "tls.key": key}
    if ca_path is not None:
        data["ca.crt"] = _read_input(ca_path, "ca.crt")
        certificates(data["ca.crt"])
    return _secret(name, namespace, "kubernetes.io/tls", data)


def generic_secret(name: str, namespace: str, files: Mapping[str, PathLike | bytes]
                   ) -> SecretManifest:
    """`kubectl create secret generic NAME --from-file=KEY=PATH ...` (values: paths or bytes)."""
    if not files:
        raise CertificateError(f"secret {namespace}/{name} needs at least one file\n"
                               '    fix: e.g. generic_secret(name, ns, {"ca.crt": path})')
    return _secret(name, namespace, "Opaque",
                   {key: _read_input(value, key) for key, value in files.items()})


def secret_data(secret: Mapping[str, Any]) -> dict[str, bytes]:
    """A Secret's files, decoded: `data` (base64) merged with `stringData` (plain text)."""
    files = {k: _b64decode(v, k) for k, v in (secret.get("data") or {}).items()}
    files.update({k: str(v).encode() for k, v in (secret.get("stringData") or {}).items()})
    return files


def mount_secret(secret: Mapping[str, Any], folder: PathLike) -> dict[str, Path]:
    """A secret volume: each of the Secret's files written into `folder` (0700), files 0600."""
    out = _folder(folder, private=True)
    return {key: _write_key(out / _check_key(key), value)
            for key, value in secret_data(secret).items()}


@dataclass(frozen=True, repr=False)
class Credential:
    """What a gateway serves for a `credentialName`: cert chain, key, and CA for MUTUAL."""

    name: str
    cert_pem: bytes
    key_pem: PrivatePEM
    ca_pem: bytes | None = None

    def __repr__(self) -> str:
        ca = "yes" if self.ca_pem else "no"
        return (f"Credential(name='{self.name}', cert='{_label(_one(self.cert_pem))}', "
                f"ca={ca}, key=<redacted>)")

    __str__ = __repr__


def _secret_name(secret: Mapping[str, Any]) -> str:
    meta = secret.get("metadata") or {}
    return f"{meta.get('namespace', 'default')}/{meta.get('name', '?')}"


def _pick(files: Mapping[str, bytes], *keys: str) -> bytes | None:
    return next((files[k] for k in keys if files.get(k)), None)


def read_credential(secret: Mapping[str, Any], ca_secret: Mapping[str, Any] | None = None,
                    mutual: bool = False, now: datetime | None = None) -> Credential:
    """The credential Istio's gateway reads from a secret named by `credentialName`.

    Keys as Istio reads them: `cert`/`key`/`cacert` or `tls.crt`/`tls.key`/`ca.crt`. For
    MUTUAL the CA comes from `ca_secret` (the `<credentialName>-cacert` secret) when there is
    one, else from the same secret. Raises CertificateError for a missing key or CA, a key
    that does not match, or an expired certificate.
    """
    name = _secret_name(secret)
    files = secret_data(secret)
    cert = _pick(files, "cert", "tls.crt")
    key = _pick(files, "key", "tls.key")
    if cert is None or key is None:
        found = ", ".join(sorted(files)) or "nothing"
        raise CertificateError(
            f"secret {name} has no certificate and key (expected tls.crt and tls.key, or cert "
            f"and key; found {found})\n    fix: create it with certs.tls_secret(name, "
            "namespace, cert_path, key_path) (kubectl create secret tls)")
    check_pair(cert, key)
    check_not_expired(cert, now)
    ca = None
    if mutual:
        ca_files = secret_data(ca_secret) if ca_secret is not None else files
        ca = _pick(ca_files, "cacert", "ca.crt")
        if ca is None:
            where = _secret_name(ca_secret) if ca_secret is not None else name
            raise CertificateError(
                f"tls.mode MUTUAL needs a CA certificate to check clients, and secret {where} "
                "has no ca.crt (or cacert)\n    fix: recreate the secret with the CA: "
                "certs.tls_secret(name, namespace, cert, key, ca_path=ca.cert_path), or add a "
                f"secret {(secret.get('metadata') or {}).get('name', 'NAME')}-cacert with "
                "ca.crt")
        certificates(ca)
    return Credential(name, cert, PrivatePEM(key), ca)
