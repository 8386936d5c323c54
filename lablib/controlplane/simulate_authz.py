"""Simulate Envoy's jwt_authn and RBAC filters on a proxy's inbound listener.

`authorize(snapshot, Request(...))` picks the listener by port and the filter chain by
transport (mesh mTLS or plaintext), verifies a bearer token against the providers'
JWKS as jwt_authn does (401 `Jwt verification fails`, `Jwt is expired`), then walks the
RBAC filters in order (403 `RBAC: access denied` from a DENY match or no ALLOW match;
shadow rules only counted) and answers what Envoy would: 200 when the request reaches the
router, 401, 403, or `closed` for a TCP connection the network RBAC filter refuses.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from .authz import HTTP_RBAC, NETWORK_RBAC
from .jwt import JWT_FILTER, PAYLOAD_KEY
from .simulate import ErrNoListener
from .snapshot import Snapshot

ISSUER_UNKNOWN = "Jwt issuer is not configured"
CLOCK_SKEW_SECONDS = 60  # jwt_authn's default clock_skew_seconds


@dataclass
class Request:
    port: int  # the loopback port of the inbound (or gateway) listener
    method: str = "GET"
    path: str = "/"
    authority: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    peer: str = ""  # the client certificate's SPIFFE URI; "" for plaintext
    source_ip: str = "127.0.0.1"  # the connection's peer address
    remote_ip: str = ""  # the client's address after X-Forwarded-For; "" = source_ip
    sni: str = ""
    tcp: bool = False  # a TCP connection rather than an HTTP request


@dataclass
class Decision:
    status: int | str  # 200, 401, 403 or "closed"
    body: str = ""
    policy: str = ""  # the RBAC policy that decided (DENY match or ALLOW match)
    shadow: dict[str, str] = field(default_factory=dict)  # stat prefix -> allowed/denied

    @property
    def allowed(self) -> bool:
        return self.status == 200


def _in_cidr(address: str, cidr: dict[str, Any]) -> bool:
    network = ipaddress.ip_network(f"{cidr['address_prefix']}/{cidr['prefix_len']}",
                                   strict=False)
    return ipaddress.ip_address(address) in network


def string_matches(match: dict[str, Any], value: str | None) -> bool:
    if value is None:
        return False
    if match.get("ignore_case"):
        value = value.lower()
        match = {k: (v.lower() if isinstance(v, str) else v) for k, v in match.items()}
    if "exact" in match:
        return value == match["exact"]
    if "prefix" in match:
        return value.startswith(match["prefix"])
    if "suffix" in match:
        return value.endswith(match["suffix"])
    if "safe_regex" in match:
        return re.fullmatch(match["safe_regex"]["regex"], value) is not None
    if "contains" in match:
        return match["contains"] in value
    raise AssertionError(f"unknown string matcher {match}")


def _value_matches(matcher: dict[str, Any], value: Any) -> bool:
    if "present_match" in matcher:
        return value is not None
    if "string_match" in matcher:
        return isinstance(value, str) and string_matches(matcher["string_match"], value)
    if "list_match" in matcher:
        return isinstance(value, list) and any(_value_matches(matcher["list_match"]["one_of"], v)
                                               for v in value)
    raise AssertionError(f"unknown value matcher {matcher}")


@dataclass
class _Context:
    request: Request
    headers: dict[str, str]
    metadata: dict[str, Any]

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def _header_matches(spec: dict[str, Any], ctx: _Context) -> bool:
    value = ctx.header(spec["name"])
    if spec.get("present_match"):
        found = value is not None
    else:
        found = string_matches(spec["string_match"], value)
    return found != bool(spec.get("invert_match"))


def _metadata(spec: dict[str, Any], ctx: _Context) -> bool:
    value: Any = ctx.metadata.get(spec["filter"])
    for step in spec["path"]:
        value = value.get(step["key"]) if isinstance(value, dict) else None
    return _value_matches(spec["value"], value)


def _template_matches(template: str, path: str) -> bool:
    pattern = "/".join("[^/]+" if part == "{*}" else ".*" if part == "{**}" else re.escape(part)
                       for part in template.split("/"))
    return re.fullmatch(pattern, path) is not None


def permission_matches(rule: dict[str, Any], ctx: _Context) -> bool:
    request = ctx.request
    if rule.get("any"):
        return True
    if "and_rules" in rule:
        return all(permission_matches(r, ctx) for r in rule["and_rules"]["rules"])
    if "or_rules" in rule:
        return any(permission_matches(r, ctx) for r in rule["or_rules"]["rules"])
    if "not_rule" in rule:
        return not permission_matches(rule["not_rule"], ctx)
    if "header" in rule:
        return not request.tcp and _header_matches(rule["header"], ctx)
    if "url_path" in rule:
        return not request.tcp and string_matches(rule["url_path"]["path"],
                                                  request.path.split("?", 1)[0])
    if "uri_template" in rule:
        template = rule["uri_template"]["typed_config"]["path_template"]
        return not request.tcp and _template_matches(template, request.path.split("?", 1)[0])
    if "destination_port" in rule:
        return request.port == rule["destination_port"]
    if "destination_ip" in rule:
        return _in_cidr("127.0.0.1", rule["destination_ip"])
    if "requested_server_name" in rule:
        return string_matches(rule["requested_server_name"], request.sni)
    raise AssertionError(f"unknown permission {rule}")


def principal_matches(rule: dict[str, Any], ctx: _Context) -> bool:
    request = ctx.request
    if rule.get("any"):
        return True
    if "and_ids" in rule:
        return all(principal_matches(r, ctx) for r in rule["and_ids"]["ids"])
    if "or_ids" in rule:
        return any(principal_matches(r, ctx) for r in rule["or_ids"]["ids"])
    if "not_id" in rule:
        return not principal_matches(rule["not_id"], ctx)
    if "authenticated" in rule:
        return bool(request.peer) and string_matches(
            rule["authenticated"]["principal_name"], request.peer)
    if "direct_remote_ip" in rule:
        return _in_cidr(request.source_ip, rule["direct_remote_ip"])
    if "remote_ip" in rule:
        return _in_cidr(request.remote_ip or request.source_ip, rule["remote_ip"])
    if "header" in rule:
        return not request.tcp and _header_matches(rule["header"], ctx)
    if "metadata" in rule:
        return _metadata(rule["metadata"], ctx)
    raise AssertionError(f"unknown principal {rule}")


def _matching_policy(rules: dict[str, Any], ctx: _Context) -> str | None:
    for name, policy in sorted(rules.get("policies", {}).items()):
        if any(permission_matches(p, ctx) for p in policy["permissions"]) and any(
                principal_matches(p, ctx) for p in policy["principals"]):
            return name
    return None


def _enforce(rules: dict[str, Any], ctx: _Context) -> tuple[bool, str]:
    """(allowed, deciding policy) for one RBAC rule set."""
    matched = _matching_policy(rules, ctx)
    action = rules.get("action", "ALLOW")
    if action == "DENY":
        return matched is None, matched or ""
    if action == "LOG":
        return True, matched or ""
    return matched is not None, matched or ""


def _token(request: Request, provider: dict[str, Any]) -> str | None:
    """The token where the provider looks for it; with no location configured, Envoy's
    defaults: `Authorization: Bearer` and the `access_token` query parameter."""
    headers = {k.lower(): v for k, v in request.headers.items()}
    default = not any(provider.get(k) for k in ("from_headers", "from_params", "from_cookies"))
    for location in provider.get("from_headers") or (
            [{"name": "Authorization", "value_prefix": "Bearer "}] if default else []):
        value = headers.get(location["name"].lower())
        prefix = location.get("value_prefix", "")
        if value is not None and value.startswith(prefix):
            return value[len(prefix):].strip()
    cookies = dict(part.strip().partition("=")[::2]
                   for part in headers.get("cookie", "").split(";") if part.strip())
    for name in provider.get("from_cookies") or []:
        if name in cookies:
            return cookies[name]
    query = request.path.partition("?")[2]
    params = dict(p.partition("=")[::2] for p in query.split("&") if p)
    for name in provider.get("from_params") or (["access_token"] if default else []):
        if name in params:
            return params[name]
    return None


def _verify(token: str, provider: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The payload a provider accepts, or None and Envoy's reason."""
    import jwt as pyjwt

    try:
        header = pyjwt.get_unverified_header(token)
        claims = pyjwt.decode(token, options={"verify_signature": False})
    except pyjwt.PyJWTError:
        return None, "Jwt is not in the form of Header.Payload.Signature"
    if claims.get("iss") != provider["issuer"]:
        return None, ISSUER_UNKNOWN
    keys = json.loads(provider["local_jwks"]["inline_string"])["keys"]
    candidates = [k for k in keys if not (header.get("kid") and k.get("kid"))
                  or k["kid"] == header["kid"]]
    if not candidates:
        return None, "Jwks doesn't have key to match kid or alg from Jwt"
    for jwk in candidates:
        try:
            pyjwt.decode(token, pyjwt.PyJWK(jwk).key, algorithms=[header.get("alg", "RS256")],
                         options={"verify_aud": False, "verify_exp": False})
            break
        except pyjwt.PyJWTError:
            continue
    else:
        return None, "Jwt verification fails"
    if "exp" in claims and claims["exp"] + CLOCK_SKEW_SECONDS < time.time():
        return None, "Jwt is expired"
    audiences = provider.get("audiences")
    if audiences:
        aud = claims.get("aud")
        given = aud if isinstance(aud, list) else [aud]
        if not set(audiences) & set(given):
            return None, "Audiences in Jwt are not allowed"
    return claims, ""


def _authenticate(config: dict[str, Any], request: Request,
                  metadata: dict[str, Any]) -> Decision | None:
    """jwt_authn with requires_any(providers..., allow_missing): a 401 Decision or None."""
    reasons = []
    found_token = False
    for provider in config["providers"].values():
        token = _token(request, provider)
        if token is None:
            continue
        found_token = True
        claims, reason = _verify(token, provider)
        if claims is not None:
            metadata[JWT_FILTER] = {PAYLOAD_KEY: claims}
            return None
        reasons.append(reason)
    if not found_token:
        return None
    return Decision(401, next((r for r in reasons if r != ISSUER_UNKNOWN), ISSUER_UNKNOWN))


def _chain(listener: dict[str, Any], request: Request) -> dict[str, Any]:
    transport = "tls" if request.peer else "raw_buffer"
    for chain in listener["filter_chains"]:
        match = chain.get("filter_chain_match") or {}
        if match.get("transport_protocol", transport) != transport:
            continue
        if match.get("server_names") and request.sni not in match["server_names"]:
            continue
        return dict(chain)
    raise ErrNoListener(f"no filter chain of {listener['name']} takes "
                        f"{'mTLS' if request.peer else 'plaintext'}: the connection is reset")


def authorize(snapshot: Snapshot, request: Request) -> Decision:
    """What the proxy's security filters do with `request`."""
    listener = next((lis for lis in snapshot.listeners.values()
                     if lis["address"]["socket_address"]["port_value"] == request.port), None)
    if listener is None:
        raise ErrNoListener(f"no listener on port {request.port}")
    filters = _chain(listener, request)["filters"]
    headers = {k.lower(): v for k, v in request.headers.items()}
    headers.update({":method": request.method, ":path": request.path,
                    ":authority": request.authority})
    ctx = _Context(request, headers, {})
    decision = Decision(200)
    if filters[-1]["name"] == "envoy.filters.network.http_connection_manager":
        stages = filters[-1]["typed_config"]["http_filters"]
        rbac_name, denied = HTTP_RBAC, Decision(403, "RBAC: access denied")
    else:
        stages, rbac_name, denied = filters, NETWORK_RBAC, Decision("closed")
    for stage in stages:
        config = stage.get("typed_config", {})
        if stage["name"] == JWT_FILTER and not request.tcp:
            refused = _authenticate(config, request, ctx.metadata)
            if refused:
                return refused
        elif stage["name"] == rbac_name:
            if "shadow_rules" in config:
                allowed, _ = _enforce(config["shadow_rules"], ctx)
                decision.shadow[config["shadow_rules_stat_prefix"]] = (
                    "allowed" if allowed else "denied")
            if "rules" in config:
                allowed, policy = _enforce(config["rules"], ctx)
                if not allowed:
                    denied.policy = policy
                    denied.shadow = decision.shadow
                    return denied
                decision.policy = decision.policy or policy
    return decision
