"""The in-memory form of one Kubernetes/Istio manifest."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

CLUSTER_SCOPED_KINDS = frozenset({"Namespace"})


@dataclass(frozen=True)
class Resource:
    """One manifest: `body` is the whole document (apiVersion, kind, metadata, spec...)."""

    kind: str
    name: str
    namespace: str  # "" for cluster-scoped kinds
    body: dict[str, Any]
    source: str = "<string>"  # file path and document index, for error messages

    @property
    def api_version(self) -> str:
        return str(self.body.get("apiVersion", ""))

    @property
    def spec(self) -> dict[str, Any]:
        spec = self.body.get("spec")
        return spec if isinstance(spec, dict) else {}

    @property
    def labels(self) -> dict[str, str]:
        return dict((self.body.get("metadata") or {}).get("labels") or {})

    @property
    def annotations(self) -> dict[str, str]:
        return dict((self.body.get("metadata") or {}).get("annotations") or {})

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)

    @property
    def ref(self) -> str:
        """How analyzers name it: `VirtualService bookinfo-test/reviews`."""
        return f"{self.kind} {self.namespace + '/' if self.namespace else ''}{self.name}"

    def in_namespace(self, namespace: str) -> Resource:
        """A copy placed in `namespace` (as `kubectl apply -n` does when metadata has none)."""
        body = copy.deepcopy(self.body)
        body.setdefault("metadata", {})["namespace"] = namespace
        return Resource(self.kind, self.name, namespace, body, self.source)
