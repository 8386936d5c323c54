"""meshConfig: the mesh-wide settings istiod reads, as `istioctl install --set meshConfig.K=V`
gives them.

This is the one home for which meshConfig keys the local mesh knows. A key is accepted only
when it is listed in KEYS with its parser; anything else is refused with a diagnostic naming
the key, never dropped. What each key *does* lives with the builder that honours it (the
ledger in config/fidelity.py names it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, Diagnostic

RESOURCE = "IstioOperator istio-system/installed-state"
CODE = "LAB0110"
INDEXED = re.compile(r"^([A-Za-z][A-Za-z0-9]*)\[(\d+)\]$")


def _boolean(text: str) -> bool:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    raise ValueError("expected true or false")


def _one_of(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return text
    return parse


def _text(text: str) -> str:
    return text


def _log_file(text: str) -> str:
    """Where proxies write the access log: only their own stdout/stderr exist here (what
    `kubectl logs POD -c istio-proxy` shows); a path would land on this machine's disk."""
    if text not in ("", "/dev/stdout", "/dev/stderr"):
        raise ValueError("the local mesh writes access logs to /dev/stdout or /dev/stderr "
                         "only (read them with kubectl logs POD -c istio-proxy); a file path "
                         "works on a cluster (LAB_BACKEND=kubernetes)")
    return text


def _count(text: str) -> int:
    if not text.isdigit():
        raise ValueError("expected a whole number, 0 or more")
    return int(text)


# Leaf keys under `meshConfig.` and how their values are read. `extensionProviders[N].…` is
# checked as a whole by _extension_provider below.
KEYS: dict[str, Callable[[str], Any]] = {
    "accessLogFile": _log_file,
    "accessLogEncoding": _one_of("TEXT", "JSON"),
    "accessLogFormat": _text,
    "outboundTrafficPolicy.mode": _one_of("ALLOW_ANY", "REGISTRY_ONLY"),
    "defaultConfig.holdApplicationUntilProxyStarts": _boolean,
    "enableAutoMtls": _boolean,
    "defaultConfig.gatewayTopology.numTrustedProxies": _count,
}

# What the profiles set before any --set (Istio's manifests/profiles/*.yaml).
PROFILE_DEFAULTS: dict[str, dict[str, Any]] = {
    "demo": {"accessLogFile": "/dev/stdout"},
}

# Extension provider types and the fields each takes (meshConfig.extensionProviders[]).
PROVIDER_FIELDS: dict[str, dict[str, Callable[[str], Any]]] = {
    "envoyExtAuthzHttp": {"service": _text, "port": int, "timeout": _text,
                          "pathPrefix": _text, "failOpen": _boolean,
                          "includeRequestHeadersInCheck": _text,
                          "headersToUpstreamOnAllow": _text,
                          "headersToDownstreamOnDeny": _text,
                          "includeAdditionalHeadersInCheck": _text},
    "envoyExtAuthzGrpc": {"service": _text, "port": int, "timeout": _text,
                          "failOpen": _boolean},
}


@dataclass(frozen=True)
class MeshConfig:
    """The meshConfig in force; `values` holds the accepted leaf keys (dotted), and
    `extension_providers` the providers by name."""

    values: Mapping[str, Any] = field(default_factory=dict)
    extension_providers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        if key not in KEYS:
            raise KeyError(f"meshConfig.{key} is not a key the local mesh knows")
        return self.values.get(key, default)

    @property
    def access_log_file(self) -> str:
        return str(self.get("accessLogFile", ""))

    @property
    def access_log_encoding(self) -> str:
        return str(self.get("accessLogEncoding", "TEXT"))

    @property
    def outbound_traffic_policy(self) -> str:
        return str(self.get("outboundTrafficPolicy.mode", "ALLOW_ANY"))

    @property
    def enable_auto_mtls(self) -> bool:
        return bool(self.get("enableAutoMtls", True))

    @property
    def num_trusted_proxies(self) -> int:
        """How many proxies in front of the gateways append to X-Forwarded-For: the
        gateways then take the client address that far from the right."""
        return int(self.get("defaultConfig.gatewayTopology.numTrustedProxies", 0))

    @property
    def hold_application_until_proxy_starts(self) -> bool:
        return bool(self.get("defaultConfig.holdApplicationUntilProxyStarts", False))


def _refusal(key: str, message: str, fix: str) -> Diagnostic:
    return Diagnostic(CODE, "Error", RESOURCE, message, field=f"meshConfig.{key}", fix=fix)


def _extension_provider(index: int, fields: dict[str, str],
                        problems: list[Diagnostic]) -> dict[str, Any]:
    where = f"extensionProviders[{index}]"
    provider: dict[str, Any] = {}
    for key, text in fields.items():
        head, _, rest = key.partition(".")
        if key == "name":
            provider["name"] = text
        elif head in PROVIDER_FIELDS and rest in PROVIDER_FIELDS[head]:
            try:
                provider.setdefault(head, {})[rest] = PROVIDER_FIELDS[head][rest](text)
            except ValueError as exc:
                problems.append(_refusal(f"{where}.{key}", f"{text!r} is not valid: {exc}",
                                         "give a value of the right type"))
        else:
            known = ", ".join(sorted(PROVIDER_FIELDS))
            problems.append(_refusal(
                f"{where}.{key}", "is not an extension provider field the local mesh "
                f"supports (provider types: {known}); it works on a cluster "
                "(LAB_BACKEND=kubernetes)", "remove it, or use one of the supported types"))
    if "name" not in provider:
        problems.append(_refusal(f"{where}.name", "an extension provider needs a name",
                                 f"add --set meshConfig.{where}.name=NAME"))
    return provider


def mesh_config(profile: str, values: Mapping[str, str]) -> MeshConfig:
    """The MeshConfig a profile plus `--set` values give; `values` keys other than
    `meshConfig.*` are ignored here (they belong to other parts of the install). Raises
    ConfigError naming every key it cannot honour."""
    accepted: dict[str, Any] = dict(PROFILE_DEFAULTS.get(profile, {}))
    providers: dict[int, dict[str, str]] = {}
    problems: list[Diagnostic] = []
    for full_key, text in values.items():
        if not full_key.startswith("meshConfig."):
            continue
        key = full_key.removeprefix("meshConfig.")
        head, _, rest = key.partition(".")
        indexed = INDEXED.match(head)
        if indexed and indexed.group(1) == "extensionProviders" and rest:
            providers.setdefault(int(indexed.group(2)), {})[rest] = str(text)
        elif key in KEYS:
            try:
                accepted[key] = KEYS[key](str(text))
            except ValueError as exc:
                problems.append(_refusal(key, f"{text!r} is not valid: {exc}",
                                         f"set meshConfig.{key} to a valid value"))
        else:
            known = ", ".join(sorted([*KEYS, "extensionProviders[N].*"]))
            problems.append(_refusal(
                key, "is not a meshConfig key the local mesh supports; it works on a cluster "
                "(LAB_BACKEND=kubernetes)", f"remove it; the local mesh knows {known}"))
    named = {}
    for index in sorted(providers):
        provider = _extension_provider(index, providers[index], problems)
        if "name" in provider:
            named[provider["name"]] = provider
    if problems:
        raise ConfigError(problems)
    return MeshConfig(accepted, named)
