"""RequestAuthentication into Envoy's `envoy.filters.http.jwt_authn` (Istio's authn builder).

Every `jwtRules` entry of the policies that select a proxy becomes one provider; one rule
accepts a request when any provider verifies its token or when it carries none, so a
request with an invalid or expired token is refused with 401 and one without a token goes
on to authorization (only an AuthorizationPolicy can demand a token), as in Istio. The
verified payload lands in dynamic metadata (`payload`), where authz.py reads `iss`, `sub`,
`aud`, `azp` and the claims.

A `jwksUri` is fetched by the control plane and inlined, as istiod does by default; a URI
that cannot be fetched gets a key set no token matches, so tokens are refused (Istio does
the same) and `jwks_fetch_errors()` says why.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from functools import cache
from typing import Any

from ..config.schema import parse_duration
from .context import Proxy, PushContext

JWT_FILTER = "envoy.filters.http.jwt_authn"
JWT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
PAYLOAD_KEY = "payload"
JWKS_REFRESH_SECONDS = 20 * 60  # istiod's default PILOT_JWT_PUB_KEY_REFRESH_INTERVAL
_fetched: dict[str, tuple[float, str]] = {}
_fetch_errors: dict[str, str] = {}
_lock = threading.Lock()


@cache
def unmatchable_jwks() -> str:
    """A key set whose key nobody holds: what a proxy gets when a jwksUri cannot be read."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    jwk = json.loads(RSAAlgorithm.to_jwk(key))
    return json.dumps({"keys": [{**jwk, "kid": "unreachable-jwks-uri", "alg": "RS256"}]})


def fetch_jwks(uri: str, timeout: float = 5.0) -> str:
    """The JWKS at `uri`, cached for istiod's refresh interval; a fetch that fails gives
    the unmatchable set and is remembered in jwks_fetch_errors()."""
    now = time.monotonic()
    with _lock:
        cached = _fetched.get(uri)
        if cached and now - cached[0] < JWKS_REFRESH_SECONDS:
            return cached[1]
    try:
        with urllib.request.urlopen(uri, timeout=timeout) as response:  # noqa: S310
            text = response.read().decode()
        json.loads(text)
    except (OSError, ValueError) as exc:
        with _lock:
            _fetch_errors[uri] = str(exc)
        return unmatchable_jwks()
    with _lock:
        _fetched[uri] = (now, text)
        _fetch_errors.pop(uri, None)
    return text


def jwks_fetch_errors() -> dict[str, str]:
    """jwksUri -> why the last fetch failed."""
    with _lock:
        return dict(_fetch_errors)


def provider(rule: dict[str, Any]) -> dict[str, Any]:
    """One jwt_authn provider from one `jwtRules` entry."""
    if rule.get("jwks"):
        jwks = str(rule["jwks"])
    elif rule.get("jwksUri"):
        timeout = parse_duration(rule["timeout"]) if rule.get("timeout") else 5.0
        jwks = fetch_jwks(str(rule["jwksUri"]), timeout)
    else:
        jwks = unmatchable_jwks()
    out: dict[str, Any] = {
        "issuer": str(rule["issuer"]),
        "local_jwks": {"inline_string": jwks},
        "forward": bool(rule.get("forwardOriginalToken", False)),
        "payload_in_metadata": PAYLOAD_KEY,
    }
    if rule.get("audiences"):
        out["audiences"] = [str(a) for a in rule["audiences"]]
    if rule.get("fromHeaders"):
        out["from_headers"] = [{"name": str(h["name"]),
                                **({"value_prefix": str(h["prefix"])} if h.get("prefix") else {})}
                               for h in rule["fromHeaders"]]
    if rule.get("fromParams"):
        out["from_params"] = [str(p) for p in rule["fromParams"]]
    if rule.get("fromCookies"):
        out["from_cookies"] = [str(c) for c in rule["fromCookies"]]
    if rule.get("outputPayloadToHeader"):
        out["forward_payload_header"] = str(rule["outputPayloadToHeader"])
    if rule.get("outputClaimToHeaders"):
        out["claim_to_headers"] = [{"header_name": str(c["header"]),
                                    "claim_name": str(c["claim"])}
                                   for c in rule["outputClaimToHeaders"]]
    return out


def jwt_filters(proxy: Proxy, ctx: PushContext) -> list[dict[str, Any]]:
    """The jwt_authn filter for `proxy`, or nothing when no RequestAuthentication selects it."""
    from .authz import policies_for

    providers = {}
    for policy in policies_for(proxy, ctx, "RequestAuthentication"):
        for i, rule in enumerate(policy.spec.get("jwtRules") or []):
            providers[f"origins-{policy.namespace}-{policy.name}-{i}"] = provider(rule)
    if not providers:
        return []
    requirements: list[dict[str, Any]] = [{"provider_name": name} for name in providers]
    requirements.append({"allow_missing": {}})
    return [{"name": JWT_FILTER, "typed_config": {
        "@type": JWT_TYPE,
        "providers": providers,
        "rules": [{"match": {"prefix": "/"},
                   "requires": {"requires_any": {"requirements": requirements}}}],
        "bypass_cors_preflight": True,
    }}]
