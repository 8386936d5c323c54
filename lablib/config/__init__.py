"""Loading, validating and analysing Kubernetes and Istio manifests.

    resources = load("samples/bookinfo/platform/kube/bookinfo.yaml", namespace="bookinfo-test")
    candidate = store.with_applied(resources)
    problems = analyze(candidate)          # Errors refuse the apply; Warnings/Info inform
"""

from .analyze import analyze, errors
from .hosts import canonical_host, fqdn, port_protocol, resolve_host, service_fqdn
from .loader import KIT_ROOT, load, load_one
from .model import Resource
from .schema import parse_duration, validate
from .store import ConfigStore, pod_labels, selector_matches

__all__ = [
    "KIT_ROOT",
    "ConfigStore",
    "Resource",
    "analyze",
    "canonical_host",
    "errors",
    "fqdn",
    "load",
    "load_one",
    "parse_duration",
    "pod_labels",
    "port_protocol",
    "resolve_host",
    "selector_matches",
    "service_fqdn",
    "validate",
]
