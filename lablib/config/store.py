"""An immutable snapshot of every applied resource, in the manner of Istio's push context.

Changes never mutate a store: `with_applied` and `without` return a new one with a higher
`version`, so the control plane can analyse a candidate snapshot and keep serving the last
good one if the candidate is refused.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .model import Resource

__all__ = ["ConfigStore", "Key", "namespace_resource", "pod_labels", "selector_matches"]

Key = tuple[str, str, str]  # (kind, namespace, name); namespace "" for cluster-scoped kinds


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, Any]) -> bool:
    """Kubernetes equality-based selection: every selector label is present with that value.

    An empty or missing selector matches everything, as `kubectl get -l ""` does.
    """
    return all(labels.get(key) == value for key, value in (selector or {}).items())


def pod_labels(deployment: Resource) -> dict[str, str]:
    """The labels a Deployment's pods carry (its pod template's labels)."""
    template = deployment.spec.get("template")
    metadata = template.get("metadata") if isinstance(template, dict) else None
    labels = metadata.get("labels") if isinstance(metadata, dict) else None
    return dict(labels) if isinstance(labels, dict) else {}


class ConfigStore:
    """Applied resources by (kind, namespace, name), listed in the order they were created."""

    __slots__ = ("_items", "_version")

    def __init__(self, resources: Iterable[Resource] = (), version: int = 0) -> None:
        self._items: dict[Key, Resource] = {r.key: r for r in resources}
        self._version = version

    @classmethod
    def empty(cls) -> ConfigStore:
        """A store with nothing in it, not even a namespace."""
        return cls()

    @classmethod
    def with_namespaces(cls, namespaces: Iterable[str] | Mapping[str, Mapping[str, str]]
                        ) -> ConfigStore:
        """A store holding just these Namespaces; pass a mapping to give them labels."""
        labelled = (namespaces if isinstance(namespaces, Mapping)
                    else {name: {} for name in namespaces})
        return cls(namespace_resource(name, labels) for name, labels in labelled.items())

    @property
    def version(self) -> int:
        """Grows by one with every change; an apply that changes nothing keeps it."""
        return self._version

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Resource]:
        return iter(self._items.values())

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __repr__(self) -> str:
        return f"<ConfigStore version={self._version} resources={len(self._items)}>"

    def get(self, kind: str, namespace: str, name: str) -> Resource | None:
        """One resource, or None; use namespace "" for cluster-scoped kinds."""
        return self._items.get((kind, namespace, name))

    def list(self, kind: str | None = None, namespace: str | None = None,
             selector: Mapping[str, Any] | None = None) -> builtins.list[Resource]:
        """Resources of `kind` (all kinds if None), in `namespace` (all if None), whose
        metadata labels match `selector`; oldest first, so "the oldest wins" is `[0]`."""
        return [
            r for r in self._items.values()
            if (kind is None or r.kind == kind)
            and (namespace is None or r.namespace == namespace)
            and (not selector or selector_matches(selector, r.labels))
        ]

    def workloads(self, namespace: str | None = None, selector: Mapping[str, Any] | None = None
                  ) -> builtins.list[Resource]:
        """Deployments whose pods (template labels) match `selector`; None matches all."""
        return [d for d in self.list("Deployment", namespace)
                if selector is None or selector_matches(selector, pod_labels(d))]

    def namespaces(self) -> builtins.list[str]:
        """Names of the Namespaces stored, sorted."""
        return sorted(r.name for r in self.list("Namespace"))

    def has_namespace(self, namespace: str) -> bool:
        """Whether a Namespace of that name is stored."""
        return ("Namespace", "", namespace) in self._items

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        """Labels of a stored Namespace (e.g. istio-injection); {} if it is not stored."""
        resource = self.get("Namespace", "", namespace)
        return resource.labels if resource else {}

    def with_applied(self, resources: Iterable[Resource]) -> ConfigStore:
        """A new store with `resources` created or replaced (a replaced one keeps its age)."""
        items = dict(self._items)
        changed = False
        for resource in resources:
            old = items.get(resource.key)
            if old is None or old.body != resource.body:  # `kubectl apply` says "unchanged"
                items[resource.key] = resource
                changed = True
        return self._next(items) if changed else self

    def without(self, items: Iterable[Resource | Key]) -> ConfigStore:
        """A new store without these resources (or keys); a removed Namespace takes its
        contents with it, as `kubectl delete namespace` does."""
        keys = {item.key if isinstance(item, Resource) else item for item in items}
        gone = {name for kind, _, name in keys if kind == "Namespace"}
        kept = {k: r for k, r in self._items.items() if k not in keys and r.namespace not in gone}
        return self._next(kept) if len(kept) != len(self._items) else self

    def _next(self, items: dict[Key, Resource]) -> ConfigStore:
        store = ConfigStore((), self._version + 1)
        store._items = items
        return store


def namespace_resource(name: str, labels: Mapping[str, str] | None = None) -> Resource:
    """A Namespace manifest, as `kubectl create namespace` (and `label`) would make it."""
    metadata: dict[str, Any] = {"name": name}
    if labels:
        metadata["labels"] = dict(labels)
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}
    return Resource("Namespace", name, "", body, "<kit>")
