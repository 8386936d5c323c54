"""What Istio's validation refuses in AuthorizationPolicy and RequestAuthentication beyond
their structure (schema.py): `when` keys, paths, CIDRs, ports, JWKS, providers, targetRefs.

The readers here (`when_key`, `claim_path`, `cidr`) are the one home of those rules: the
translation in controlplane/authz.py and controlplane/jwt.py reads values through them.

LAB0501 unknown `when` key              LAB0506 targetRef(s) need a Gateway API gateway
LAB0502 path with `*` in the middle     LAB0507 port not a number from 0 to 65535
LAB0503 IP block not an address/CIDR    LAB0508 empty source, operation or condition
LAB0504 JWKS not JSON or without keys   LAB0509 invalid dry-run annotation
LAB0505 CUSTOM provider missing/unknown LAB0510 jwksUri not an http(s) URL
                                        LAB0511 CUSTOM not supported locally yet
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

from ..errors import Diagnostic
from .model import Resource

ERROR = "Error"
DRY_RUN_ANNOTATION = "istio.io/dry-run"

# `when` keys with no argument, and whether each is HTTP-only (meaningless on a TCP port).
PLAIN_WHEN_KEYS: dict[str, bool] = {
    "source.ip": False, "remote.ip": False, "source.namespace": False,
    "source.principal": False, "destination.ip": False, "destination.port": False,
    "connection.sni": False, "request.auth.principal": True,
    "request.auth.audiences": True, "request.auth.presenter": True,
}
_HEADER_KEY = re.compile(r"request\.headers\[([^\[\]]+)\]")
_CLAIM_KEY = re.compile(r"request\.auth\.claims((?:\[[^\[\]]+\])+)")
IP_WHEN_KEYS = {"source.ip", "remote.ip", "destination.ip"}
HTTP_SOURCE_FIELDS = ("requestPrincipals", "notRequestPrincipals")
HTTP_OPERATION_FIELDS = ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")
_PATH_TEMPLATE = re.compile(r"\{\*\*?\}")


def when_key(key: str) -> tuple[str, list[str]] | None:
    """(`header`, [name]), (`claim`, [name, nested...]) or (key, []) for a known `when` key;
    None for a key Istio does not know."""
    if key in PLAIN_WHEN_KEYS:
        return key, []
    header = _HEADER_KEY.fullmatch(key)
    if header:
        return "header", [header.group(1)]
    claim = _CLAIM_KEY.fullmatch(key)
    if claim:
        return "claim", re.findall(r"\[([^\[\]]+)\]", claim.group(1))
    return None


def http_only_when(key: str) -> bool:
    parsed = when_key(key)
    if parsed is None:
        return False
    return parsed[0] in ("header", "claim") or PLAIN_WHEN_KEYS.get(parsed[0], False)


def cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address or CIDR as a network (an address is its /32 or /128); ValueError else."""
    return ipaddress.ip_network(text.strip(), strict=False)


def is_path_template(path: str) -> bool:
    return bool(_PATH_TEMPLATE.search(path))


def _path_problem(path: str) -> str | None:
    if is_path_template(path):
        for segment in path.split("/"):
            if "{" in segment and not _PATH_TEMPLATE.fullmatch(segment):
                return f'path template "{path}": {{*}} and {{**}} must be whole segments'
        if "{**}" in path.rpartition("/")[0]:
            return f'path template "{path}": {{**}} may only be the last segment'
        return None
    if path in ("*", ""):
        return None
    inner = path[1:-1] if len(path) > 2 else ""
    if "*" in inner:
        return (f'path "{path}" has a "*" in the middle: Istio matches only exact paths, '
                'prefixes ("/x/*"), suffixes ("*/x") or presence ("*")')
    if path.startswith("*") and path.endswith("*"):
        return f'path "{path}" has a "*" at both ends; use one wildcard, at the start or end'
    return None


def _diag(resource: Resource, code: str, message: str, path: str, fix: str) -> Diagnostic:
    return Diagnostic(code, ERROR, resource.ref, message, path, fix)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _ip_blocks(resource: Resource, values: list[Any], path: str) -> Iterator[Diagnostic]:
    for i, value in enumerate(values):
        try:
            cidr(str(value))
        except ValueError:
            yield _diag(resource, "LAB0503", f'"{value}" is not an IP address or CIDR block',
                        f"{path}[{i}]", 'write an address like "10.1.2.3" or a block like '
                        '"10.1.0.0/16"')


def _ports(resource: Resource, values: list[Any], path: str) -> Iterator[Diagnostic]:
    for i, value in enumerate(values):
        text = str(value)
        if not text.isdigit() or not 0 <= int(text) <= 65535:
            yield _diag(resource, "LAB0507", f'"{value}" is not a port number 0-65535',
                        f"{path}[{i}]", 'write the port as a quoted number, like "8080"')


def _targets(resource: Resource) -> Iterator[Diagnostic]:
    spec = _dict(resource.spec)
    for name in ("targetRef", "targetRefs"):
        if spec.get(name):
            yield _diag(resource, "LAB0506",
                        f"{name} attaches a policy to a Gateway API gateway, a Service or a "
                        "waypoint; the local mesh has none of these (its gateways and "
                        "sidecars are selected by labels)", f"spec.{name}",
                        "use spec.selector.matchLabels, or run on a cluster "
                        "(LAB_BACKEND=kubernetes)")


def _authorization_policy(resource: Resource) -> Iterator[Diagnostic]:
    spec = _dict(resource.spec)
    yield from _targets(resource)
    dry_run = resource.annotations.get(DRY_RUN_ANNOTATION)
    if dry_run is not None and str(dry_run).lower() not in ("true", "false"):
        yield _diag(resource, "LAB0509", f'annotation {DRY_RUN_ANNOTATION}: "{dry_run}" is '
                    'neither "true" nor "false"',
                    f'metadata.annotations["{DRY_RUN_ANNOTATION}"]', 'set it to "true"')
    action = spec.get("action", "ALLOW")
    provider = _dict(spec.get("provider")).get("name")
    if action == "CUSTOM" and not provider:
        yield _diag(resource, "LAB0505", "a CUSTOM policy needs provider.name", "spec.provider",
                    "name an extensionProvider set with istioctl install --set "
                    "meshConfig.extensionProviders[0].name=...")
    if action == "CUSTOM" and provider:
        yield _diag(resource, "LAB0511", "action CUSTOM (an external authorizer) is not "
                    "supported on the local mesh yet; it works on a cluster "
                    "(LAB_BACKEND=kubernetes)", "spec.action",
                    "use ALLOW or DENY rules here, or run this policy on a cluster")
    if action != "CUSTOM" and spec.get("provider"):
        yield _diag(resource, "LAB0505", f"provider is allowed only with action CUSTOM, not "
                    f"{action}", "spec.provider", "remove provider, or set action: CUSTOM")
    for r, rule in enumerate(_list(spec.get("rules"))):
        rule = _dict(rule)
        base = f"spec.rules[{r}]"
        for f, entry in enumerate(_list(rule.get("from"))):
            source = _dict(_dict(entry).get("source"))
            path = f"{base}.from[{f}].source"
            if not any(source.values()):
                yield _diag(resource, "LAB0508", "a source must set at least one field", path,
                            "add principals, namespaces, ipBlocks... or remove this entry")
            for name in ("ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks"):
                yield from _ip_blocks(resource, _list(source.get(name)), f"{path}.{name}")
        for t, entry in enumerate(_list(rule.get("to"))):
            operation = _dict(_dict(entry).get("operation"))
            path = f"{base}.to[{t}].operation"
            if not any(operation.values()):
                yield _diag(resource, "LAB0508", "an operation must set at least one field",
                            path, "add hosts, ports, methods or paths, or remove this entry")
            for name in ("ports", "notPorts"):
                yield from _ports(resource, _list(operation.get(name)), f"{path}.{name}")
            for name in ("paths", "notPaths"):
                for i, value in enumerate(_list(operation.get(name))):
                    problem = _path_problem(str(value))
                    if problem:
                        yield _diag(resource, "LAB0502", problem, f"{path}.{name}[{i}]",
                                    'use "/exact", "/prefix/*", "*/suffix" or "*"')
        for w, condition in enumerate(_list(rule.get("when"))):
            yield from _condition(resource, _dict(condition), f"{base}.when[{w}]")


def _condition(resource: Resource, condition: dict[str, Any], path: str) -> Iterator[Diagnostic]:
    key = str(condition.get("key", ""))
    parsed = when_key(key)
    if parsed is None:
        known = ", ".join([*PLAIN_WHEN_KEYS, "request.headers[NAME]",
                           "request.auth.claims[NAME]"])
        yield _diag(resource, "LAB0501", f'unknown condition key "{key}"', f"{path}.key",
                    f"use one of Istio's keys: {known}")
        return
    values = _list(condition.get("values")) + _list(condition.get("notValues"))
    if not values:
        yield _diag(resource, "LAB0508", f'condition "{key}" sets neither values nor '
                    "notValues", path, "add values: [...] or notValues: [...]")
    for name in ("values", "notValues"):
        items = _list(condition.get(name))
        if parsed[0] in IP_WHEN_KEYS:
            yield from _ip_blocks(resource, items, f"{path}.{name}")
        elif parsed[0] == "destination.port":
            yield from _ports(resource, items, f"{path}.{name}")


def jwks_problem(text: str) -> str | None:
    """Why a JWKS document cannot verify tokens, or None when it has keys."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"jwks is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not keys:
        return 'jwks has no keys: a JWKS is a JSON object {"keys": [ ... ]}'
    return None


def _request_authentication(resource: Resource) -> Iterator[Diagnostic]:
    yield from _targets(resource)
    for i, rule in enumerate(_list(_dict(resource.spec).get("jwtRules"))):
        rule = _dict(rule)
        path = f"spec.jwtRules[{i}]"
        if isinstance(rule.get("jwks"), str):
            problem = jwks_problem(rule["jwks"])
            if problem:
                yield _diag(resource, "LAB0504", problem, f"{path}.jwks",
                            'paste the issuer\'s JWKS, {"keys": [{"kty": "RSA", ...}]}')
        uri = rule.get("jwksUri")
        if isinstance(uri, str) and urlparse(uri).scheme not in ("http", "https"):
            yield _diag(resource, "LAB0510", f'jwksUri "{uri}" is not an http(s) URL',
                        f"{path}.jwksUri", "write the full URL, like "
                        "https://issuer.example/.well-known/jwks.json")


def validate(resource: Resource) -> list[Diagnostic]:
    """The field-level errors Istio's validation gives these kinds (others: none)."""
    if resource.kind == "AuthorizationPolicy":
        return list(_authorization_policy(resource))
    if resource.kind == "RequestAuthentication":
        return list(_request_authentication(resource))
    return []
