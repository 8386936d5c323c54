"""Findings about routing values the control plane cannot translate as written
(LAB0240-LAB0244), in the manner of `istioctl analyze`:

LAB0240 redirectCode Envoy cannot send        LAB0243 useSourceIp: every local pod is 127.0.0.1
LAB0241 grpcStatus that names no gRPC status  LAB0244 a DestinationRule workloadSelector that
LAB0242 a fault Istio does not implement              names no labels
LAB0245 a subset whose only DestinationRules do not apply to every client of the route
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..errors import Diagnostic
from .hosts import canonical_host
from .model import Resource
from .store import ConfigStore

ERROR, WARNING = "Error", "Warning"
# The redirect codes Envoy can send, and gRPC's status names (their index is the code), as
# Istio's `redirectCode` and `fault.abort.grpcStatus` take them.
REDIRECT_CODES = (301, 302, 303, 307, 308)
GRPC_STATUS = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
               "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
               "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
               "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
CLUSTER_HINT = "works on a cluster (LAB_BACKEND=kubernetes)"


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _http_rules(vs: Resource) -> Iterator[tuple[str, dict[str, Any]]]:
    for i, rule in enumerate(vs.spec.get("http") or []):
        if isinstance(rule, dict):
            yield f"spec.http[{i}]", rule


def _redirect_and_faults(vs: Resource) -> Iterator[Diagnostic]:
    for path, rule in _http_rules(vs):
        code = _dict(rule.get("redirect")).get("redirectCode")
        if isinstance(code, int) and code not in REDIRECT_CODES:
            yield Diagnostic(
                "LAB0240", ERROR, vs.ref,
                f"redirectCode {code} is not a redirect Envoy can send (Istio drops such a "
                "route)", f"{path}.redirect.redirectCode",
                f"use one of {', '.join(map(str, REDIRECT_CODES))} (301 when unset)")
        abort = _dict(_dict(rule.get("fault")).get("abort"))
        status = abort.get("grpcStatus")
        if status is not None and str(status) not in GRPC_STATUS:
            yield Diagnostic(
                "LAB0241", ERROR, vs.ref, f'grpcStatus "{status}" is not a gRPC status',
                f"{path}.fault.abort.grpcStatus",
                f"use a gRPC status name such as UNAVAILABLE ({', '.join(GRPC_STATUS)})")
        if "http2Error" in abort:
            yield Diagnostic(
                "LAB0242", ERROR, vs.ref,
                "http2Error aborts are not implemented by Istio (it drops them), so the local "
                "mesh refuses them", f"{path}.fault.abort.http2Error",
                "abort with httpStatus or grpcStatus instead")
        if "exponentialDelay" in _dict(_dict(rule.get("fault")).get("delay")):
            yield Diagnostic(
                "LAB0242", ERROR, vs.ref,
                "exponentialDelay is not implemented by Istio, so the local mesh refuses it",
                f"{path}.fault.delay.exponentialDelay", "use fixedDelay instead")


def _policies(rule: Resource) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, trafficPolicy) of the host, its port settings, subsets and theirs."""
    holders = [("spec.trafficPolicy", _dict(rule.spec.get("trafficPolicy")))]
    for i, subset in enumerate(rule.spec.get("subsets") or []):
        holders.append((f"spec.subsets[{i}].trafficPolicy",
                        _dict(_dict(subset).get("trafficPolicy"))))
    for path, policy in holders:
        yield path, policy
        for j, port in enumerate(policy.get("portLevelSettings") or []):
            yield f"{path}.portLevelSettings[{j}]", _dict(port)


def _destination_rules(rule: Resource) -> Iterator[Diagnostic]:
    for path, policy in _policies(rule):
        hashing = _dict(_dict(policy.get("loadBalancer")).get("consistentHash"))
        if hashing.get("useSourceIp"):
            yield Diagnostic(
                "LAB0243", WARNING, rule.ref,
                "every pod of the local mesh has the source IP 127.0.0.1, so useSourceIp sends "
                "every client to the same endpoint; pods on a cluster have IPs of their own",
                f"{path}.loadBalancer.consistentHash.useSourceIp",
                f"hash on httpHeaderName or httpCookie to tell clients apart locally; "
                f"useSourceIp {CLUSTER_HINT}")
    selector = rule.spec.get("workloadSelector")
    if isinstance(selector, dict) and not _dict(selector.get("matchLabels")):
        yield Diagnostic(
            "LAB0244", ERROR, rule.ref, "workloadSelector names no labels, so it selects no "
            "client (Istio requires matchLabels)", "spec.workloadSelector.matchLabels",
            "add the labels of the client pods this rule is for, or drop workloadSelector")


def _applies_in(rule: Resource, namespace: str) -> bool:
    """A DestinationRule applies in its own namespace whatever its `exportTo` (as in
    Istio), elsewhere where it is exported."""
    targets = [str(t) for t in rule.spec.get("exportTo") or ["*"]]
    return rule.namespace == namespace or any(t in ("*", namespace) for t in targets)


def _scoped_subsets(store: ConfigStore, vs: Resource) -> Iterator[Diagnostic]:
    """LAB0245: a route to a subset that only DestinationRules with a workloadSelector, or
    not exported to the route's namespace, define: the clients they leave out have no such
    cluster and get 503 (NC), on a cluster as here."""
    for section in ("http", "tcp", "tls"):
        for i, rule in enumerate(vs.spec.get(section) or []):
            for j, weighted in enumerate(_dict(rule).get("route") or []):
                dest = _dict(_dict(weighted).get("destination"))
                subset = dest.get("subset")
                if not subset or not dest.get("host"):
                    continue
                host = canonical_host(store, str(dest["host"]), vs.namespace)
                defining = [r for r in store.list("DestinationRule")
                            if canonical_host(store, str(r.spec.get("host", "")), r.namespace)
                            == host and any(_dict(s).get("name") == subset
                                            for s in r.spec.get("subsets") or [])]
                if not defining or any(not r.spec.get("workloadSelector")
                                       and _applies_in(r, vs.namespace) for r in defining):
                    continue
                names = ", ".join(r.ref for r in defining)
                yield Diagnostic(
                    "LAB0245", WARNING, vs.ref,
                    f'subset "{subset}" is defined only by {names}, whose workloadSelector '
                    f"or exportTo leaves out some clients of this route: they have no such "
                    "cluster and get 503 (NC), as in Istio",
                    f"spec.{section}[{i}].route[{j}].destination.subset",
                    "define the subset in a DestinationRule without workloadSelector, "
                    f"exported to {vs.namespace}, or limit the route to the selected clients "
                    "with match.sourceLabels")


def analyze_routing(store: ConfigStore) -> Iterator[Diagnostic]:
    """LAB0240-LAB0245 for every VirtualService and DestinationRule."""
    for vs in store.list("VirtualService"):
        yield from _redirect_and_faults(vs)
        yield from _scoped_subsets(store, vs)
    for rule in store.list("DestinationRule"):
        yield from _destination_rules(rule)
