"""AuthorizationPolicy into Envoy RBAC filters (Istio's pilot/pkg/security/authz).

A workload's inbound side and a gateway get, per port, the policies that apply to them:
those in their namespace whose `selector` matches them (or that have none), and those in
the root namespace `istio-system` (mesh-wide without a selector). Istio's order:
- CUSTOM is refused by validation before it gets here (no ext-authz on the local mesh yet);
- a DENY `envoy.filters.http.rbac` (or `envoy.filters.network.rbac` on a TCP port);
- an ALLOW filter when any ALLOW policy applies: requests that match none are denied, so an
  ALLOW policy without rules (`spec: {}`) denies everything and `rules: [{}]` allows all;
- AUDIT as an RBAC filter with action LOG (marks requests, never blocks them);
- policies annotated `istio.io/dry-run: "true"` as shadow rules (logged and counted under
  `istio_dry_run_allow_` / `istio_dry_run_deny_`, never enforced).
Each rule is one RBAC policy `ns[NS]-policy[NAME]-rule[i]`: permissions from `to` and the
destination `when` keys, principals from `from` and the other `when` keys. On a TCP port an
HTTP-only field drops the whole rule of an ALLOW policy and only that field of a DENY (or
AUDIT) policy, as Istio does. Request principals and claims are read from the JWT payload
jwt.py has Envoy's jwt_authn put in dynamic metadata.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from ..config import security
from ..config.model import Resource
from .context import Proxy, PushContext, selector_matches
from .jwt import JWT_FILTER, PAYLOAD_KEY

ROOT_NAMESPACE = "istio-system"
HTTP_RBAC = "envoy.filters.http.rbac"
HTTP_RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
NETWORK_RBAC = "envoy.filters.network.rbac"
NETWORK_RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
URI_TEMPLATE_TYPE = ("type.googleapis.com/"
                     "envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig")
ACTIONS = {"DENY": "DENY", "ALLOW": "ALLOW", "AUDIT": "LOG"}
ANY = {"any": True}
NEVER_PRINCIPAL = {"not_id": {"any": True}}


class HttpOnly(Exception):
    """A field that has no meaning on a TCP port."""


def applies(policy: Resource, proxy: Proxy) -> bool:
    """Whether a policy (AuthorizationPolicy or RequestAuthentication) selects this proxy."""
    if proxy.workload is None:
        return False
    if policy.namespace not in (proxy.namespace, ROOT_NAMESPACE):
        return False
    labels = dict((policy.spec.get("selector") or {}).get("matchLabels") or {})
    if not labels:
        return True
    return selector_matches(labels, proxy.labels)


def policies_for(proxy: Proxy, ctx: PushContext, kind: str) -> list[Resource]:
    found = [p for p in ctx.store.list(kind) if applies(p, proxy)]
    return sorted(found, key=lambda p: (p.namespace, p.name))


def dry_run(policy: Resource) -> bool:
    return str(policy.annotations.get(security.DRY_RUN_ANNOTATION, "")).lower() == "true"


# --- value matchers ------------------------------------------------------------------------


def string_match(value: str, *, ignore_case: bool = False) -> dict[str, Any]:
    """Istio's wildcards: `*` any non-empty value, `x*` prefix, `*x` suffix, else exact."""
    if value == "*":
        match: dict[str, Any] = {"safe_regex": {"regex": ".+"}}
    elif value.endswith("*"):
        match = {"prefix": value[:-1]}
    elif value.startswith("*"):
        match = {"suffix": value[1:]}
    else:
        match = {"exact": value}
    if ignore_case and "safe_regex" not in match:
        match["ignore_case"] = True
    return match


def header_permission(name: str, value: str, *, ignore_case: bool = False) -> dict[str, Any]:
    if value == "*":
        return {"header": {"name": name, "present_match": True}}
    return {"header": {"name": name, "string_match": string_match(value,
                                                                  ignore_case=ignore_case)}}


def header_principal(name: str, value: str) -> dict[str, Any]:
    """`request.headers[...]`: a value anywhere in a comma-joined header, as Istio matches."""
    if value == "*":
        return {"header": {"name": name, "present_match": True}}
    if value.endswith("*"):
        pattern = re.escape(value[:-1]) + ".*"
    elif value.startswith("*"):
        pattern = ".*" + re.escape(value[1:])
    else:
        pattern = re.escape(value)
    regex = f"^{pattern}$|^{pattern},.*|.*,{pattern},.*|.*,{pattern}$"
    return {"header": {"name": name, "string_match": {"safe_regex": {"regex": regex}}}}


def cidr_range(value: str) -> dict[str, Any]:
    network = security.cidr(value)
    return {"address_prefix": str(network.network_address), "prefix_len": network.prefixlen}


def path_permission(value: str) -> dict[str, Any]:
    if security.is_path_template(value):
        return {"uri_template": {"name": "uri-template", "typed_config": {
            "@type": URI_TEMPLATE_TYPE, "path_template": value}}}
    return {"url_path": {"path": string_match(value)}}


def peer_principal(value: str) -> dict[str, Any]:
    """A SPIFFE identity (`cluster.local/ns/NS/sa/SA`) from the peer's mTLS certificate."""
    if value == "*":
        match: dict[str, Any] = {"safe_regex": {"regex": ".+"}}
    elif value.endswith("*"):
        match = {"prefix": "spiffe://" + value[:-1]}
    elif value.startswith("*"):
        match = {"safe_regex": {"regex": "spiffe://.*" + re.escape(value[1:])}}
    else:
        match = {"exact": "spiffe://" + value}
    return {"authenticated": {"principal_name": match}}


def namespace_principal(value: str) -> dict[str, Any]:
    if value == "*":
        pattern = ".*"
    elif value.endswith("*"):
        pattern = re.escape(value[:-1]) + ".*"
    elif value.startswith("*"):
        pattern = ".*" + re.escape(value[1:])
    else:
        pattern = re.escape(value)
    return {"authenticated": {"principal_name": {"safe_regex": {
        "regex": f".*/ns/{pattern}/.*"}}}}


def payload(path: list[str], value: dict[str, Any]) -> dict[str, Any]:
    """A match on the verified JWT payload jwt_authn stored in dynamic metadata."""
    return {"metadata": {"filter": JWT_FILTER,
                         "path": [{"key": key} for key in [PAYLOAD_KEY, *path]],
                         "value": value}}


def claim_principal(path: list[str], value: str) -> dict[str, Any]:
    """A claim equal to `value` or, for a list claim (groups, aud), holding it."""
    if value == "*":
        return payload(path, {"present_match": True})
    match = string_match(value)
    return {"or_ids": {"ids": [payload(path, {"string_match": match}),
                               payload(path, {"list_match": {"one_of": {
                                   "string_match": match}}})]}}


def _and_ids(ids: list[dict[str, Any]]) -> dict[str, Any]:
    return ids[0] if len(ids) == 1 else {"and_ids": {"ids": ids}}


def _or_ids(ids: list[dict[str, Any]]) -> dict[str, Any]:
    if not ids:
        return NEVER_PRINCIPAL
    return ids[0] if len(ids) == 1 else {"or_ids": {"ids": ids}}


def _slashes(text: str) -> list[int]:
    return [i for i, ch in enumerate(text) if ch == "/"]


def request_principal(value: str) -> dict[str, Any]:
    """`iss/sub` of the verified token. Envoy keeps `iss` and `sub` apart, so the pattern is
    tried at every `/` where the issuer could end."""
    def iss(match: dict[str, Any]) -> dict[str, Any]:
        return payload(["iss"], {"string_match": match})

    def sub(match: dict[str, Any]) -> dict[str, Any]:
        return payload(["sub"], {"string_match": match})

    if value == "*":
        return payload(["iss"], {"present_match": True})
    if value.endswith("*"):
        text = value[:-1]
        options = [iss({"prefix": text})] + [
            _and_ids([iss({"exact": text[:i]}), sub({"prefix": text[i + 1:]})])
            for i in _slashes(text)]
    elif value.startswith("*"):
        text = value[1:]
        options = [sub({"suffix": text})] + [
            _and_ids([iss({"suffix": text[:i]}), sub({"exact": text[i + 1:]})])
            for i in _slashes(text)]
    else:
        options = [_and_ids([iss({"exact": value[:i]}), sub({"exact": value[i + 1:]})])
                   for i in _slashes(value)]
    return _or_ids(options)


# --- rules ---------------------------------------------------------------------------------

# Source fields: (Istio field, builder, HTTP-only).
SOURCE_FIELDS = {
    "principals": (peer_principal, False),
    "namespaces": (namespace_principal, False),
    "ipBlocks": (lambda v: {"direct_remote_ip": cidr_range(v)}, False),
    "remoteIpBlocks": (lambda v: {"remote_ip": cidr_range(v)}, False),
    "requestPrincipals": (request_principal, True),
}
OPERATION_FIELDS = {
    "hosts": (lambda v: header_permission(":authority", v, ignore_case=True), True),
    "methods": (lambda v: header_permission(":method", v), True),
    "paths": (path_permission, True),
    "ports": (lambda v: {"destination_port": int(v)}, False),
}
DESTINATION_WHEN: dict[str, Callable[[str], dict[str, Any]]] = {
    "destination.ip": lambda v: {"destination_ip": cidr_range(v)},
    "destination.port": lambda v: {"destination_port": int(v)},
    "connection.sni": lambda v: {"requested_server_name": string_match(v)},
}


def when_principal(key: str, value: str) -> dict[str, Any]:
    parsed = security.when_key(key)
    assert parsed is not None, key  # validation refused unknown keys
    name, args = parsed
    if name == "header":
        return header_principal(args[0], value)
    if name == "claim":
        return claim_principal(args, value)
    builders = {
        "source.ip": lambda v: {"direct_remote_ip": cidr_range(v)},
        "remote.ip": lambda v: {"remote_ip": cidr_range(v)},
        "source.namespace": namespace_principal,
        "source.principal": peer_principal,
        "request.auth.principal": request_principal,
        "request.auth.audiences": lambda v: claim_principal(["aud"], v),
        "request.auth.presenter": lambda v: claim_principal(["azp"], v),
    }
    return builders[name](value)


def _combine(values: list[Any], build: Any, negate: bool, kind: str) -> dict[str, Any]:
    items = [build(str(v)) for v in values]
    if kind == "rules":
        joined = items[0] if len(items) == 1 else {"or_rules": {"rules": items}}
        return {"not_rule": joined} if negate else joined
    joined = items[0] if len(items) == 1 else {"or_ids": {"ids": items}}
    return {"not_id": joined} if negate else joined


class _Fields:
    """The matchers of one source, operation or condition list, with TCP's rule applied:
    an HTTP-only field raises HttpOnly for ALLOW and is left out otherwise."""

    def __init__(self, tcp: bool, strict: bool) -> None:
        self.tcp, self.strict = tcp, strict
        self.items: list[dict[str, Any]] = []

    def add(self, values: list[Any], build: Any, http_only: bool, negate: bool,
            kind: str) -> None:
        if not values:
            return
        if self.tcp and http_only:
            if self.strict:
                raise HttpOnly
            return
        self.items.append(_combine(values, build, negate, kind))


def _permission(items: list[dict[str, Any]]) -> dict[str, Any]:
    if not items:
        return dict(ANY)
    return items[0] if len(items) == 1 else {"and_rules": {"rules": items}}


def _principal(items: list[dict[str, Any]]) -> dict[str, Any]:
    if not items:
        return dict(ANY)
    return _and_ids(items)


def _entries(entries: Any, holder: str, fields: dict[str, tuple[Any, bool]], kind: str,
             tcp: bool, strict: bool) -> list[list[dict[str, Any]]]:
    """The matchers of each `from` source or `to` operation (their fields and `not` forms);
    one empty list when the rule has none, so the rule's conditions still count."""
    out = []
    for entry in entries or []:
        found = _Fields(tcp, strict)
        spec = entry.get(holder) or {}
        for name, (build, http_only) in fields.items():
            negated = "not" + name[0].upper() + name[1:]
            found.add(spec.get(name) or [], build, http_only, False, kind)
            found.add(spec.get(negated) or [], build, http_only, True, kind)
        out.append(found.items)
    return out or [[]]


def rule_policy(rule: dict[str, Any], tcp: bool, strict: bool) -> dict[str, Any]:
    """One RBAC policy from one rule; HttpOnly when a TCP port must drop it."""
    destination = _Fields(tcp, strict)
    source_conditions = _Fields(tcp, strict)
    for condition in rule.get("when") or []:
        key = str(condition["key"])
        build: Callable[[str], dict[str, Any]]
        if key in DESTINATION_WHEN:
            target, build, http_only = destination, DESTINATION_WHEN[key], False
        else:
            target, build = source_conditions, functools.partial(when_principal, key)
            http_only = security.http_only_when(key)
        kind = "rules" if target is destination else "ids"
        target.add(condition.get("values") or [], build, http_only, False, kind)
        target.add(condition.get("notValues") or [], build, http_only, True, kind)

    permissions = [_permission(items + destination.items) for items in
                   _entries(rule.get("to"), "operation", OPERATION_FIELDS, "rules", tcp, strict)]
    principals = [_principal(items + source_conditions.items) for items in
                  _entries(rule.get("from"), "source", SOURCE_FIELDS, "ids", tcp, strict)]
    return {"permissions": permissions, "principals": principals}


def bind_port(tree: Any, port: int) -> Any:
    """Decide `destination_port` matchers for the listener of workload port `port`.

    Envoy compares them with the address the connection reached, which on the local mesh is
    a loopback port standing in for the pod's port; each listener serves one pod port, so
    the comparison is known here: a match becomes `any`, a mismatch `not any`."""
    if isinstance(tree, list):
        return [bind_port(item, port) for item in tree]
    if not isinstance(tree, dict):
        return tree
    if set(tree) == {"destination_port"}:
        return dict(ANY) if tree["destination_port"] == port else {"not_rule": dict(ANY)}
    return {key: bind_port(value, port) for key, value in tree.items()}


def policy_rules(policy: Resource, tcp: bool, port: int) -> dict[str, dict[str, Any]]:
    """RBAC policies by Istio's name for one AuthorizationPolicy on one workload port."""
    action = str(policy.spec.get("action", "ALLOW"))
    out = {}
    for i, rule in enumerate(policy.spec.get("rules") or []):
        try:
            built = rule_policy(rule or {}, tcp, strict=action == "ALLOW")
        except HttpOnly:
            continue
        out[f"ns[{policy.namespace}]-policy[{policy.name}]-rule[{i}]"] = bind_port(built, port)
    return out


def rbac_filters(proxy: Proxy, ctx: PushContext, port: int,
                 tcp: bool) -> list[dict[str, Any]]:
    """The RBAC filters (HTTP or network) for workload port `port` of `proxy`, in Istio's
    order."""
    policies = policies_for(proxy, ctx, "AuthorizationPolicy")
    filters = []
    for action in ("DENY", "ALLOW", "AUDIT"):
        chosen = [p for p in policies if str(p.spec.get("action", "ALLOW")) == action]
        enforced = [p for p in chosen if not dry_run(p)]
        shadow = [p for p in chosen if dry_run(p)]
        rules: dict[str, Any] = {}
        for policy in enforced:
            rules.update(policy_rules(policy, tcp, port))
        shadow_rules: dict[str, Any] = {}
        for policy in shadow:
            shadow_rules.update(policy_rules(policy, tcp, port))
        config: dict[str, Any] = {}
        if enforced:
            config["rules"] = {"action": ACTIONS[action], "policies": rules}
        if shadow:
            config["shadow_rules"] = {"action": ACTIONS[action], "policies": shadow_rules}
            config["shadow_rules_stat_prefix"] = f"istio_dry_run_{action.lower()}_"
        if not config:
            continue
        if tcp:
            filters.append({"name": NETWORK_RBAC, "typed_config": {
                "@type": NETWORK_RBAC_TYPE, "stat_prefix": "tcp.", **config}})
        else:
            filters.append({"name": HTTP_RBAC, "typed_config": {"@type": HTTP_RBAC_TYPE,
                                                                **config}})
    return filters


def secure_http(manager: dict[str, Any], proxy: Proxy, ctx: PushContext,
                port: int) -> dict[str, Any]:
    """An HTTP connection manager with jwt_authn and the RBAC filters first in its chain."""
    from .jwt import jwt_filters

    manager["typed_config"]["http_filters"][:0] = [*jwt_filters(proxy, ctx),
                                                   *rbac_filters(proxy, ctx, port, tcp=False)]
    return manager


def secure_tcp(filters: list[dict[str, Any]], proxy: Proxy, ctx: PushContext,
               port: int) -> list[dict[str, Any]]:
    """TCP filters behind the network RBAC filters."""
    return [*rbac_filters(proxy, ctx, port, tcp=True), *filters]
