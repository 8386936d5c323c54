"""More `istioctl analyze` checks: the ones troubleshooting leans on. Istio's codes and
message texts where Istio has the analyzer, LAB070x where the kit adds one:

IST0108 UnknownAnnotation                 IST0132 VirtualServiceHostNotFoundInGateway
IST0118 PortNameIsNotUnderNamingConvention LAB0701 DestinationRule tls DISABLE toward STRICT
IST0130 VirtualServiceUnreachableRule      LAB0702 route timeout shorter than perTryTimeout
IST0131 VirtualServiceIneffectiveMatch

None is an Error: they are reported by analyze and never refuse an apply (Istio's own
admission accepts all of these).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import Diagnostic
from .analyze import (
    INFO,
    MESH,
    SYSTEM_NAMESPACES,
    WARNING,
    _bound_gateways,
    _dict,
    _gateway_ref,
    _list,
    _seconds,
)
from .hosts import port_protocol, resolve_host
from .store import ConfigStore, pod_labels

__all__ = ["ANALYZERS", "mtls_mode"]

# Annotations Istio knows (istio/api annotation/annotations.gen.go, the ones a user sets or
# reads); any other key under an istio.io domain is IST0108.
KNOWN_ANNOTATIONS = frozenset({
    "sidecar.istio.io/inject", "sidecar.istio.io/status", "sidecar.istio.io/userVolume",
    "sidecar.istio.io/userVolumeMount", "sidecar.istio.io/proxyCPU",
    "sidecar.istio.io/proxyCPULimit", "sidecar.istio.io/proxyMemory",
    "sidecar.istio.io/proxyMemoryLimit", "sidecar.istio.io/proxyImage",
    "sidecar.istio.io/logLevel", "sidecar.istio.io/componentLogLevel",
    "sidecar.istio.io/agentLogLevel", "sidecar.istio.io/rewriteAppHTTPProbers",
    "sidecar.istio.io/statsInclusionPrefixes", "sidecar.istio.io/statsInclusionSuffixes",
    "sidecar.istio.io/statsInclusionRegexps", "sidecar.istio.io/extraStatTags",
    "sidecar.istio.io/interceptionMode", "sidecar.istio.io/bootstrapOverride",
    "sidecar.istio.io/discoveryAddress", "sidecar.istio.io/enableCoreDump",
    "sidecar.istio.io/statsHistogramBuckets",
    "traffic.sidecar.istio.io/includeOutboundIPRanges",
    "traffic.sidecar.istio.io/excludeOutboundIPRanges",
    "traffic.sidecar.istio.io/includeInboundPorts",
    "traffic.sidecar.istio.io/excludeInboundPorts",
    "traffic.sidecar.istio.io/includeOutboundPorts",
    "traffic.sidecar.istio.io/excludeOutboundPorts", "traffic.sidecar.istio.io/kubevirtInterfaces",
    "status.sidecar.istio.io/port", "readiness.status.sidecar.istio.io/applicationPorts",
    "readiness.status.sidecar.istio.io/initialDelaySeconds",
    "readiness.status.sidecar.istio.io/periodSeconds",
    "readiness.status.sidecar.istio.io/failureThreshold",
    "proxy.istio.io/config", "proxy.istio.io/overrides", "inject.istio.io/templates",
    "istio.io/rev", "istio.io/dry-run", "istio.io/use-waypoint", "istio.io/dataplane-mode",
    "networking.istio.io/exportTo", "kubernetes.io/ingress.class",
    "prometheus.istio.io/merge-metrics", "topology.istio.io/controlPlaneClusters",
    "sidecar.istio.io/proxyImageType", "ambient.istio.io/redirection",
})


def _istio_key(key: str) -> bool:
    domain = key.partition("/")[0]
    return "/" in key and (domain == "istio.io" or domain.endswith(".istio.io"))


def _unknown_annotations(store: ConfigStore) -> Iterator[Diagnostic]:
    """IST0108: an annotation under an istio.io domain that Istio does not know (a typo
    such as `sidecar.istio.io/injet` silently does nothing)."""
    for resource in store:
        places = [("metadata.annotations", _dict(_dict(resource.body.get("metadata")).get(
            "annotations")))]
        if resource.kind == "Deployment":
            template = _dict(_dict(resource.spec.get("template")).get("metadata"))
            places.append(("spec.template.metadata.annotations",
                           _dict(template.get("annotations"))))
        for path, given in places:
            for key in given:
                if _istio_key(str(key)) and key not in KNOWN_ANNOTATIONS:
                    yield Diagnostic("IST0108", WARNING, resource.ref,
                                     f"Unknown annotation: {key}", f"{path}.{key}",
                                     "check the spelling against istio.io/latest/docs/reference/"
                                     "config/annotations/")


def _port_names(store: ConfigStore) -> Iterator[Diagnostic]:
    """IST0118: a Service port whose name (or appProtocol) gives Istio no protocol, so the
    proxy has to sniff it."""
    for service in store.list("Service"):
        if service.namespace in SYSTEM_NAMESPACES:
            continue
        for i, port in enumerate(_list(service.spec.get("ports"))):
            port = _dict(port)
            if port.get("protocol", "TCP") != "TCP" or port_protocol(port):
                continue
            name = str(port.get("name", ""))
            target = port.get("targetPort", port.get("port"))
            yield Diagnostic(
                "IST0118", INFO, service.ref,
                f"Port name {name} (port: {port.get('port')}, targetPort: {target}) doesn't "
                "follow the naming convention of Istio port.", f"spec.ports[{i}].name",
                "name the port <protocol>[-<suffix>] (http-web, tcp-db, grpc) or set "
                "appProtocol")


def _rule_name(rule: dict[str, Any], index: int) -> str:
    return json.dumps(rule["name"]) if rule.get("name") else f"#{index}"


def _unreachable_rules(store: ConfigStore) -> Iterator[Diagnostic]:
    """IST0130 rules no request can reach; IST0131 matches an earlier rule already takes."""
    for vs in store.list("VirtualService"):
        for section in ("http", "tcp", "tls"):
            seen: dict[str, int] = {}
            catch_all = -1
            rules = [_dict(r) for r in _list(vs.spec.get(section))]
            for n, rule in enumerate(rules):
                matches = [_dict(m) for m in _list(rule.get("match"))]
                path = f"spec.{section}[{n}]"
                if not matches:
                    if catch_all >= 0:
                        yield _unreachable(vs, rule, n, "only the last rule can have no "
                                           "matches", path)
                    catch_all = n
                    continue
                if catch_all >= 0:
                    yield _unreachable(vs, rule, n, "route without matches defined before",
                                       path)
                    continue
                duplicates = 0
                for m, match in enumerate(matches):
                    key = json.dumps({k: v for k, v in match.items() if k != "name"},
                                     sort_keys=True)
                    if key in seen:
                        duplicates += 1
                        first = seen[key]
                        request = json.dumps(match["name"]) if match.get("name") else f"#{m}"
                        yield Diagnostic(
                            "IST0131", INFO, vs.ref,
                            f"VirtualService rule {_rule_name(rule, n)} match {request} is not "
                            f"used (duplicate/overlapping match in rule "
                            f"{_rule_name(rules[first], first)}).", f"{path}.match[{m}]",
                            "remove the duplicate match, or change it")
                    else:
                        seen[key] = n
                if duplicates == len(matches):
                    yield _unreachable(vs, rule, n, "all matches used by prior rules", path)


def _unreachable(vs: Any, rule: dict[str, Any], n: int, reason: str, path: str) -> Diagnostic:
    return Diagnostic("IST0130", WARNING, vs.ref,
                      f"VirtualService rule {_rule_name(rule, n)} not used ({reason}).", path,
                      "Envoy takes the first rule that matches: put specific rules first and "
                      "the rule without `match` last")


def _host_matches(vs_host: str, gateway_host: str) -> bool:
    """Whether a VirtualService host falls under a Gateway server host (`*`, `*.example.com`,
    an exact name; a `namespace/` prefix is ignored)."""
    gateway_host = gateway_host.rpartition("/")[2]
    if gateway_host == "*" or vs_host == gateway_host:
        return True
    if gateway_host.startswith("*."):
        return vs_host.endswith(gateway_host[1:]) or vs_host == "*" + gateway_host[1:]
    if vs_host.startswith("*."):
        return gateway_host.endswith(vs_host[1:])
    return vs_host == "*"


def _hosts_not_in_gateway(store: ConfigStore) -> Iterator[Diagnostic]:
    """IST0132: a VirtualService bound to a Gateway with hosts none of its servers list, so
    the gateway never routes them."""
    for vs in store.list("VirtualService"):
        for name in _bound_gateways(vs):
            gateway = None if name == MESH else _gateway_ref(store, name, vs.namespace)
            if gateway is None:
                continue
            served = [str(h) for s in _list(gateway.spec.get("servers"))
                      for h in _list(_dict(s).get("hosts"))]
            missing = [str(h) for h in _list(vs.spec.get("hosts"))
                       if not any(_host_matches(str(h), g) for g in served)]
            if missing:
                yield Diagnostic(
                    "IST0132", WARNING, vs.ref,
                    f"one or more host [{' '.join(missing)}] defined in VirtualService "
                    f"{vs.namespace}/{vs.name} not found in Gateway "
                    f"{gateway.namespace}/{gateway.name}.", "spec.hosts",
                    f"list these hosts in a server of Gateway {gateway.name} (it serves: "
                    f"{', '.join(served)}), or correct the VirtualService's hosts")


def mtls_mode(store: ConfigStore, namespace: str, labels: dict[str, str], port: int = 0
              ) -> str:
    """The PeerAuthentication mode of a pod with these labels, by the control plane's own
    rule (workload, namespace, then mesh-wide policy)."""
    from ..controlplane.context import PushContext, Workload
    from ..controlplane.mtls import peer_authentication_mode

    workload = Workload("", namespace, labels, "default", True, {})
    return peer_authentication_mode(PushContext(store, (), ()), workload, port)


def _strict_modes(store: ConfigStore, service: Any) -> set[str]:
    """PeerAuthentication modes of the pods behind a Service."""
    modes = set()
    for deployment in store.workloads(service.namespace, _dict(service.spec.get("selector"))):
        for port in _list(service.spec.get("ports")):
            target = _dict(port).get("targetPort", _dict(port).get("port"))
            modes.add(mtls_mode(store, deployment.namespace, pod_labels(deployment),
                                target if isinstance(target, int) else 0))
    return modes


def _tls_disabled_toward_strict(store: ConfigStore) -> Iterator[Diagnostic]:
    """LAB0701: a DestinationRule sends plaintext (`tls.mode: DISABLE`) to pods that accept
    only mTLS: every call fails with 503 (Istio's old IST0113 MTLSPolicyConflict)."""
    for rule in store.list("DestinationRule"):
        host = rule.spec.get("host")
        if not isinstance(host, str):
            continue
        service = resolve_host(store, host, rule.namespace)
        if service is None or service.kind != "Service":
            continue
        tls = _dict(_dict(rule.spec.get("trafficPolicy")).get("tls"))
        if str(tls.get("mode", "")).upper() != "DISABLE":
            continue
        if "STRICT" in _strict_modes(store, service):
            yield Diagnostic(
                "LAB0701", WARNING, rule.ref,
                f"tls.mode DISABLE sends plaintext to {service.namespace}/{service.name}, whose "
                "PeerAuthentication is STRICT: every call will fail with 503",
                "spec.trafficPolicy.tls.mode",
                "use ISTIO_MUTUAL, or remove tls and let auto mTLS choose")


def _timeouts_below_per_try(store: ConfigStore) -> Iterator[Diagnostic]:
    """LAB0702: a route timeout shorter than its retries' perTryTimeout bounds every try."""
    for vs in store.list("VirtualService"):
        for n, rule in enumerate(_list(vs.spec.get("http"))):
            rule = _dict(rule)
            timeout = _seconds(rule.get("timeout"))
            per_try = _seconds(_dict(rule.get("retries")).get("perTryTimeout"))
            if timeout and per_try and timeout < per_try:
                yield Diagnostic(
                    "LAB0702", WARNING, vs.ref,
                    f"timeout {rule['timeout']} is shorter than retries.perTryTimeout "
                    f"{rule['retries']['perTryTimeout']}: the route gives up before a try "
                    "may end, and no retry runs", f"spec.http[{n}].timeout",
                    "make timeout at least perTryTimeout x (attempts + 1), or drop it")


ANALYZERS: tuple[Callable[[ConfigStore], Iterator[Diagnostic]], ...] = (
    _unknown_annotations,
    _port_names,
    _unreachable_rules,
    _hosts_not_in_gateway,
    _tls_disabled_toward_strict,
    _timeouts_below_per_try,
)
