"""One namespace prefix per learner, so a classroom shares one cluster.

With `LAB_NAMESPACE_PREFIX=alice` the labs keep saying `bookinfo-test`, and the cluster sees
`alice-bookinfo-test`. The rule, applied on the way in and undone on the way out:

- every namespace name is prefixed, except Istio's and Kubernetes' own (`istio-system`,
  `kube-system`, `kube-public`, `kube-node-lease`) and the wildcards `*`, `.` and `~`;
  `default` is prefixed too, so each learner has a `default` of their own;
- inside manifests: `metadata.namespace` (and a Namespace's own name); any field named
  `namespace` or `sourceNamespace`; lists named `namespaces`, `notNamespaces` and `exportTo`;
  the namespace part of `ns/host` and `ns/gateway` references (`hosts`, `gateways`);
  Kubernetes service names `NAME.NS.svc[.cluster.local]` in `host`, `hosts`,
  `externalName` and `gateways`; and `.../ns/NS/sa/...` in `principals`, `notPrincipals`.

Limits: strings anywhere else (an env var holding a URL, a header value, a ConfigMap's data,
a command line) are left alone, and short names such as `reviews.bookinfo-test` (no `.svc`)
are not recognised as service names. Text read back from a proxy has its service names
(`reviews.alice-bookinfo-test.svc.cluster.local`) and `ns/` paths turned back; other text
(exec output, logs) shows the real namespaces.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

SYSTEM_NAMESPACES = frozenset({"istio-system", "kube-system", "kube-public", "kube-node-lease"})
WILDCARDS = frozenset({"", "*", ".", "~"})
_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_PREFIX = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?-?")
# NAME.NS.svc or NAME.NS.svc.cluster.local (NAME may itself hold dots, or be "*").
_SERVICE_HOST = re.compile(
    rf"^(?P<name>.+\.)(?P<ns>{_LABEL})(?P<tail>\.svc(?:\.cluster\.local)?\.?)$")
_PRINCIPAL = re.compile(r"(^|/)ns/([^/]+)(/sa/)")
_HOST_KEYS = frozenset({"host", "hosts", "externalName", "gateways"})
_NAMESPACE_KEYS = frozenset({"namespace", "sourceNamespace", "namespaces", "notNamespaces"})
_PRINCIPAL_KEYS = frozenset({"principals", "notPrincipals"})
# Payloads that are the user's own bytes, and what the server reports back.
_UNTOUCHED_TOP_KEYS = frozenset({"metadata", "status", "data", "stringData", "binaryData"})
MAX_NAMESPACE_LENGTH = 63


class PrefixError(ValueError):
    """LAB_NAMESPACE_PREFIX is not usable as the start of a namespace name."""


def normalise(prefix: str | None) -> str:
    """`alice` and `alice-` both become `alice-`; empty means no prefix."""
    prefix = (prefix or "").strip()
    if not prefix:
        return ""
    if not _PREFIX.fullmatch(prefix):
        raise PrefixError(
            f'LAB_NAMESPACE_PREFIX="{prefix}" cannot start a namespace name: use lower-case '
            "letters, digits and '-', starting with a letter or digit (e.g. alice)")
    return prefix if prefix.endswith("-") else prefix + "-"


class NamespacePrefix:
    """Maps namespace names and manifests between the labs' view and the cluster's."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = normalise(prefix)

    def __bool__(self) -> bool:
        return bool(self.prefix)

    def __repr__(self) -> str:
        return f"NamespacePrefix({self.prefix!r})"

    # --- names -----------------------------------------------------------------------------
    def to_cluster(self, namespace: str) -> str:
        """`bookinfo-test` -> `alice-bookinfo-test`; system namespaces and wildcards stay."""
        if not self.prefix or namespace in SYSTEM_NAMESPACES or namespace in WILDCARDS:
            return namespace
        name = self.prefix + namespace
        if len(name) > MAX_NAMESPACE_LENGTH:
            raise PrefixError(f'namespace "{namespace}" with prefix "{self.prefix}" is '
                              f"{len(name)} characters; Kubernetes allows "
                              f"{MAX_NAMESPACE_LENGTH}: use a shorter LAB_NAMESPACE_PREFIX")
        return name

    def to_lab(self, namespace: str) -> str | None:
        """`alice-bookinfo-test` -> `bookinfo-test`; None for a namespace that is not ours."""
        if not self.prefix or namespace in SYSTEM_NAMESPACES or namespace in WILDCARDS:
            return namespace
        if namespace.startswith(self.prefix) and len(namespace) > len(self.prefix):
            return namespace[len(self.prefix):]
        return None

    def is_ours(self, namespace: str) -> bool:
        """Whether this learner may see the namespace (theirs, or a system one)."""
        return self.to_lab(namespace) is not None

    def _strip(self, namespace: str) -> str:
        """to_lab, leaving other learners' names as they are (inside manifests)."""
        return self.to_lab(namespace) or namespace

    # --- manifests -------------------------------------------------------------------------
    def manifest_to_cluster(self, body: dict[str, Any]) -> dict[str, Any]:
        """A copy of `body` with its namespace references prefixed."""
        return _rewrite_manifest(body, self.to_cluster) if self.prefix else body

    def manifest_to_lab(self, body: dict[str, Any]) -> dict[str, Any]:
        """A copy of `body` as the labs wrote it: this learner's prefix removed."""
        return _rewrite_manifest(body, self._strip) if self.prefix else body

    def text_to_lab(self, text: str) -> str:
        """Service names and `ns/` or `namespaces/` paths in proxy output, without the prefix."""
        if not self.prefix:
            return text
        p = re.escape(self.prefix)
        text = re.sub(rf"\.{p}({_LABEL}\.svc\b)", r".\1", text)
        return re.sub(rf"(/ns/|/namespaces/){p}({_LABEL})", r"\1\2", text)


def _rewrite_manifest(body: dict[str, Any], rename: Callable[[str], str]) -> dict[str, Any]:
    out = {key: (value if key in _UNTOUCHED_TOP_KEYS else _walk(value, key, rename))
           for key, value in body.items()}
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        metadata = dict(metadata)
        if isinstance(metadata.get("namespace"), str):
            metadata["namespace"] = rename(metadata["namespace"])
        if body.get("kind") == "Namespace" and isinstance(metadata.get("name"), str):
            metadata["name"] = rename(metadata["name"])
        out["metadata"] = metadata
    return out


def _walk(value: Any, key: str, rename: Callable[[str], str]) -> Any:
    """Rewrite namespace references in strings, by the name of the field holding them.

    Items of a list are judged by the list's field name (`hosts: [a, b]`)."""
    if isinstance(value, dict):
        return {k: _walk(v, str(k), rename) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, key, rename) for v in value]
    if isinstance(value, str):
        return rewrite_string(key, value, rename)
    return value


def rewrite_string(key: str, value: str, rename: Callable[[str], str]) -> str:
    """One string field's namespace references renamed, judged by the field's name."""
    if key in _NAMESPACE_KEYS or key == "exportTo":
        return rename(value)
    if key in _HOST_KEYS:
        return rewrite_host(value, rename)
    if key in _PRINCIPAL_KEYS:
        return _PRINCIPAL.sub(lambda m: f"{m[1]}ns/{rename(m[2])}{m[3]}", value)
    return value


def rewrite_host(host: str, rename: Callable[[str], str]) -> str:
    """`bookinfo-test/*`, `reviews.bookinfo-test.svc.cluster.local` and friends, renamed."""
    scope, slash, rest = host.rpartition("/")
    if slash and "/" not in scope:
        return f"{rename(scope)}/{rewrite_host(rest, rename)}"
    match = _SERVICE_HOST.match(host)
    if not match:
        return host
    return f"{match['name']}{rename(match['ns'])}{match['tail']}"
