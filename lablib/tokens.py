"""JWTs for the end-user authentication labs: what Istio's `security/tools/jwt/gen-jwt.py`
does, with a key made here instead of a downloaded one.

    issuer = tokens.Issuer("testing@secure.istio.io")
    issuer.jwks                                  # the JSON a RequestAuthentication's jwks takes
    issuer.token(sub="alice", groups=["group1"], aud="bookinfo", expires_in=3600)
    issuer.token(expires_in=-300)                # expired (Envoy allows 60 s of clock skew)
    tokens.claims(token)                         # the payload, unverified, to look at
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

__all__ = ["Issuer", "claims"]


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Issuer:
    """An RS256 signing key and the issuer name its tokens carry."""

    name: str = "testing@secure.istio.io"
    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    key: rsa.RSAPrivateKey = field(default_factory=_new_key, repr=False)

    @property
    def jwks(self) -> str:
        """The public key set, as JSON text (RequestAuthentication `jwks`, or served at a
        jwksUri)."""
        public = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        return json.dumps({"keys": [{**public, "kid": self.kid, "alg": "RS256", "use": "sig"}]})

    def token(self, sub: str | None = None, *, groups: list[str] | None = None,
              aud: str | list[str] | None = None, expires_in: float = 3600,
              **extra: Any) -> str:
        """A signed token: `iss` is this issuer, `sub` defaults to it (as gen-jwt does),
        `exp` is `expires_in` seconds from now (negative: already expired)."""
        now = int(time.time())
        payload: dict[str, Any] = {"iss": self.name, "sub": sub or self.name, "iat": now,
                                   "exp": int(now + expires_in)}
        if groups is not None:
            payload["groups"] = list(groups)
        if aud is not None:
            payload["aud"] = aud
        payload.update(extra)
        return jwt.encode(payload, self.key, algorithm="RS256", headers={"kid": self.kid})

    def principal(self, sub: str | None = None) -> str:
        """The `requestPrincipals` entry Istio derives from a token: `iss/sub`."""
        return f"{self.name}/{sub or self.name}"


def claims(token: str) -> dict[str, Any]:
    """A token's payload without checking its signature (for showing, never for trusting)."""
    return dict(jwt.decode(token, options={"verify_signature": False}))
