"""The resource types the shims know, named every way kubectl accepts them."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..config.schema import KINDS as ACCEPTED_VERSIONS
from ..config.schema import PREFERRED_VERSION
from .flags import UsageError

__all__ = ["ALL", "KINDS", "Kind", "by_kind", "resolve"]


@dataclass(frozen=True)
class Kind:
    """One resource type: `deployment` / `deployments.apps` / `deploy` / `Deployment`."""

    kind: str
    plural: str
    api_version: str
    short: tuple[str, ...] = ()
    namespaced: bool = True

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def word(self) -> str:
        """How kubectl names one: `service`, `deployment.apps`, `gateway.networking.istio.io`."""
        return f"{self.singular}.{self.group}" if self.group else self.singular

    @property
    def resource(self) -> str:
        """How kubectl names the type in errors: `services`, `deployments.apps`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def names(self) -> set[str]:
        words = {self.singular, self.plural, *self.short}
        if self.group:
            words |= {f"{w}.{self.group}" for w in (self.singular, self.plural)}
        return words

    def ref(self, name: str) -> dict[str, object]:
        """The least of a manifest that names one object (what `kubectl delete` sends)."""
        return {"apiVersion": self.api_version, "kind": self.kind, "metadata": {"name": name}}


NETWORKING = PREFERRED_VERSION["VirtualService"]
KINDS = (
    Kind("Namespace", "namespaces", "v1", ("ns",), namespaced=False),
    Kind("Pod", "pods", "v1", ("po",)),
    Kind("Service", "services", "v1", ("svc",)),
    Kind("Deployment", "deployments", "apps/v1", ("deploy",)),
    Kind("Secret", "secrets", "v1"),
    Kind("ConfigMap", "configmaps", "v1", ("cm",)),
    Kind("ServiceAccount", "serviceaccounts", "v1", ("sa",)),
    Kind("Gateway", "gateways", NETWORKING, ("gw",)),
    Kind("VirtualService", "virtualservices", NETWORKING, ("vs",)),
    Kind("DestinationRule", "destinationrules", NETWORKING, ("dr",)),
    Kind("Sidecar", "sidecars", NETWORKING),
    Kind("ServiceEntry", "serviceentries", NETWORKING, ("se",)),
    Kind("PeerAuthentication", "peerauthentications", PREFERRED_VERSION["PeerAuthentication"],
         ("pa",)),
    Kind("Telemetry", "telemetries", "telemetry.istio.io/v1alpha1"),
    Kind("AuthorizationPolicy", "authorizationpolicies",
         PREFERRED_VERSION["AuthorizationPolicy"], ("ap",)),
    Kind("RequestAuthentication", "requestauthentications",
         PREFERRED_VERSION["RequestAuthentication"], ("ra",)),
    Kind("IstioOperator", "istiooperators", "install.istio.io/v1alpha1", ("iop", "io")),
)
_BY_WORD = {word: k for k in KINDS for word in k.names()}
# `kubectl get all`: the workload kinds the local mesh has (no ReplicaSets or Jobs here).
ALL = tuple(k for k in KINDS if k.kind in ("Pod", "Service", "Deployment"))


def by_kind(kind: str) -> Kind:
    return next(k for k in KINDS if k.kind == kind)


def _versioned(word: str) -> Kind | None:
    """`vs.v1alpha3.networking.istio.io`: the kind read at that version (the API server
    converts on read), when the kit accepts the version for it."""
    name, _, rest = word.partition(".")
    version, _, group = rest.partition(".")
    found = _BY_WORD.get(name)
    if found is None or not group or group != found.group:
        return None
    api_version = f"{group}/{version}"
    if api_version not in ACCEPTED_VERSIONS.get(found.kind, ()):
        return None
    return replace(found, api_version=api_version)


def resolve(word: str) -> Kind:
    """The Kind for `svc`, `Service`, `services`, `virtualservice.networking.istio.io`..."""
    found = _BY_WORD.get(word.lower()) or _versioned(word.lower())
    if found is None:
        raise UsageError(f'the server doesn\'t have a resource type "{word}"', hint=False)
    return found
