"""istiod's CA on the local mesh: it signs each workload's SPIFFE certificate.

With a `cacerts` Secret in istio-system when Istio is installed (Istio's "plug in CA
certificates" task), it signs with that CA; otherwise with a self-signed root of its own,
kept in the mesh's state folder. Certificates are short-lived (24 h, as Istio's) and
re-issued when half their life has passed.
"""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path

from .. import certs
from ..config.model import Resource
from ..errors import ConfigError, Diagnostic

WORKLOAD_TTL_HOURS = 24.0


class MeshCA:
    """Signs workload certificates, one per SPIFFE ID, renewing them at half-life."""

    def __init__(self, signer: certs.CA, plugged_in: bool, ttl_hours: float = WORKLOAD_TTL_HOURS):
        self.signer = signer
        self.plugged_in = plugged_in
        self.ttl_hours = ttl_hours
        self._issued: dict[str, tuple[float, str, str]] = {}  # id -> (renew at, chain, key)
        self._lock = threading.Lock()

    @classmethod
    def for_install(cls, cacerts: Resource | None, folder: Path) -> MeshCA:
        """The CA istiod starts with: the plugged-in `cacerts`, else its own root."""
        if cacerts is None:
            return cls(certs.RootCA.load_or_create(folder), plugged_in=False)
        files = {key: base64.b64decode(value)
                 for key, value in (cacerts.body.get("data") or {}).items()}
        try:
            return cls(certs.load_cacerts(files), plugged_in=True)
        except certs.CertificateError as exc:
            message, _, fix = str(exc).partition("\n    fix: ")
            raise ConfigError([Diagnostic("LAB0230", "Error", cacerts.ref, message, "data",
                                          fix or "recreate the cacerts secret")]) from None

    @property
    def root_pem(self) -> str:
        return self.signer.root_pem.decode()

    def certificate(self, identity: str) -> tuple[str, str]:
        """(certificate chain PEM, key PEM) for a SPIFFE ID, issued or renewed as needed."""
        with self._lock:
            held = self._issued.get(identity)
            if held is None or time.time() >= held[0]:
                issued = certs.issue_workload(self.signer, identity, self.ttl_hours)
                renew_at = time.time() + self.ttl_hours * 3600 / 2
                held = (renew_at, (issued.cert_pem + issued.chain_pem).decode(),
                        bytes(issued.key_pem).decode())
                self._issued[identity] = held
            return held[1], held[2]

    def rotate(self) -> None:
        """Forget every issued certificate: the next push hands out new ones."""
        with self._lock:
            self._issued.clear()

    def next_renewal(self) -> float:
        """When the earliest certificate is due (inf when none was issued)."""
        with self._lock:
            return min((held[0] for held in self._issued.values()), default=float("inf"))
