"""Checks of ServiceEntries and the Sidecar's egress fields (LAB060x), in the manner of
Istio's ServiceEntry validation and `istioctl analyze`.

LAB0601 bad host (Error)                    LAB0605 host the outside world does not serve
LAB0602 duplicate port number/name (Error)  LAB0606 field with no local translation (Warning)
LAB0603 resolution and endpoints disagree   LAB0607 Sidecar egress field not translated
        (Error)                                     (Warning)
LAB0604 endpoint address unreachable here   LAB0608 DYNAMIC_DNS (Error)
        (Warning)                           LAB0609 host that is a Service's name (Warning)
LAB0610 Sidecar egress host not `namespace/host` (Error)
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from ..errors import Diagnostic
from .hosts import is_ip, resolve_host
from .model import Resource
from .outside import served_hosts, site_of
from .store import ConfigStore

ERROR, WARNING = "Error", "Warning"
ON_A_CLUSTER = "it works on a cluster (LAB_BACKEND=kubernetes)"
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", re.IGNORECASE)
LOOPBACK = frozenset({"127.0.0.1", "localhost"})


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def host_problem(host: Any) -> str | None:
    """Why a ServiceEntry host is invalid, as Istio's validation says it, or None."""
    if not isinstance(host, str) or not host:
        return "a host must be a non-empty name"
    if host == "*":
        return '"*" is not allowed as a ServiceEntry host: name the hosts (or *.domain)'
    labels = host[2:].split(".") if host.startswith("*.") else host.split(".")
    if "*" in "".join(labels):
        return f'"{host}": a wildcard is allowed only as the whole first label ("*.example.com")'
    if not all(_LABEL.fullmatch(label) for label in labels):
        return f'"{host}" is not a valid DNS name (letters, digits and "-" between dots)'
    return None


def _hosts(entry: Resource) -> Iterator[Diagnostic]:
    for i, host in enumerate(_list(entry.spec.get("hosts"))):
        problem = host_problem(host)
        if problem:
            yield Diagnostic("LAB0601", ERROR, entry.ref, problem, f"spec.hosts[{i}]",
                             "write a DNS name such as httpbin.org, or *.wikipedia.org")


def _ports(entry: Resource) -> Iterator[Diagnostic]:
    numbers: dict[Any, int] = {}
    names: dict[Any, int] = {}
    for i, port in enumerate(_list(entry.spec.get("ports"))):
        port = _dict(port)
        for key, seen in (("number", numbers), ("name", names)):
            value = port.get(key)
            if value in seen:
                yield Diagnostic("LAB0602", ERROR, entry.ref,
                                 f"port {key} {value!r} is already used by spec.ports"
                                 f"[{seen[value]}]", f"spec.ports[{i}].{key}",
                                 f"give each port its own {key}")
            elif value is not None:
                seen[value] = i


def _resolution(entry: Resource) -> Iterator[Diagnostic]:
    resolution = str(entry.spec.get("resolution") or "NONE")
    endpoints = _list(entry.spec.get("endpoints"))
    selector = entry.spec.get("workloadSelector")
    if resolution == "DYNAMIC_DNS":
        yield Diagnostic("LAB0608", ERROR, entry.ref,
                         "resolution DYNAMIC_DNS is not supported on the local mesh",
                         "spec.resolution", f"use DNS; {ON_A_CLUSTER}")
    if resolution == "STATIC" and not endpoints and not selector:
        yield Diagnostic("LAB0603", ERROR, entry.ref,
                         "resolution STATIC needs endpoints (or a workloadSelector): there is "
                         "no address to send to", "spec.resolution",
                         "add spec.endpoints with addresses, or use resolution DNS")
    for i, endpoint in enumerate(endpoints):
        address = str(_dict(endpoint).get("address", ""))
        if resolution == "STATIC" and address and not is_ip(address) \
                and not address.startswith("unix://"):
            yield Diagnostic("LAB0603", ERROR, entry.ref,
                             f'resolution STATIC needs IP addresses, and "{address}" is a name',
                             f"spec.endpoints[{i}].address",
                             "use resolution DNS for names, or give the IP address")
        elif (is_ip(address) or "://" in address) and address not in LOOPBACK:
            yield Diagnostic("LAB0604", WARNING, entry.ref,
                             f"the local mesh cannot reach {address}: requests to this "
                             f"endpoint fail with 503 (no healthy upstream)",
                             f"spec.endpoints[{i}].address",
                             f"use 127.0.0.1 and a local port, or a host name; {ON_A_CLUSTER}")
    if resolution in ("DNS", "DNS_ROUND_ROBIN") and not endpoints:
        for i, host in enumerate(_list(entry.spec.get("hosts"))):
            if isinstance(host, str) and host.startswith("*."):
                yield Diagnostic("LAB0603", ERROR, entry.ref,
                                 f'resolution {resolution} cannot resolve the wildcard "{host}"',
                                 f"spec.hosts[{i}]",
                                 "use resolution NONE for a wildcard host, or name the hosts")


def _served(entry: Resource) -> Iterator[Diagnostic]:
    """LAB0605: names the outside world stand-in answers no request for."""
    if _list(entry.spec.get("endpoints")) or entry.spec.get("workloadSelector"):
        return
    if str(entry.spec.get("location") or "MESH_EXTERNAL") != "MESH_EXTERNAL":
        return
    for i, host in enumerate(_list(entry.spec.get("hosts"))):
        if not isinstance(host, str) or host_problem(host) or "." not in host:
            continue
        probe = "www" + host[1:] if host.startswith("*.") else host
        if site_of(probe) is None:
            yield Diagnostic("LAB0605", WARNING, entry.ref,
                             f'the local outside world has no site "{host}": requests reach it '
                             f"and get a 502 (TLS: an unrecognized-name alert)",
                             f"spec.hosts[{i}]",
                             f"use one of {', '.join(served_hosts())}; {ON_A_CLUSTER}")


# Fields accepted without a local translation, and what a learner should know.
_UNTRANSLATED = {
    "addresses": "the local mesh has no IP capture: reach the host by name (http_proxy or "
                 "https_proxy); the addresses are not used",
    "workloadSelector": "pods are not taken as ServiceEntry endpoints on the local mesh",
    "subjectAltNames": "mTLS to ServiceEntry endpoints is not built locally: the names are "
                       "not checked",
}
_UNTRANSLATED_ENDPOINT = {
    "weight": "endpoints are balanced evenly on the local mesh",
    "locality": "the local mesh has one locality",
    "network": "the local mesh has one network",
    "serviceAccount": "mTLS to ServiceEntry endpoints is not built locally",
}


def _untranslated(entry: Resource) -> Iterator[Diagnostic]:
    for key, why in _UNTRANSLATED.items():
        if entry.spec.get(key):
            yield Diagnostic("LAB0606", WARNING, entry.ref, f"{why}", f"spec.{key}",
                             f"remove spec.{key} for the local mesh; {ON_A_CLUSTER}")
    if str(entry.spec.get("location") or "") == "MESH_INTERNAL":
        yield Diagnostic("LAB0606", WARNING, entry.ref,
                         "MESH_INTERNAL endpoints get no auto mTLS on the local mesh (none of "
                         "them has a sidecar): traffic to them is plaintext",
                         "spec.location", f"use MESH_EXTERNAL locally; {ON_A_CLUSTER}")
    for i, endpoint in enumerate(_list(entry.spec.get("endpoints"))):
        for key, why in _UNTRANSLATED_ENDPOINT.items():
            if _dict(endpoint).get(key):
                yield Diagnostic("LAB0606", WARNING, entry.ref, why,
                                 f"spec.endpoints[{i}].{key}",
                                 f"remove it for the local mesh; {ON_A_CLUSTER}")


def _sidecar_egress(sidecar: Resource) -> Iterator[Diagnostic]:
    """LAB0610: egress hosts not in Istio's `namespace/host` form; LAB0607: Sidecar egress
    fields the local mesh does not translate."""
    for i, listener in enumerate(_list(sidecar.spec.get("egress"))):
        for j, host in enumerate(_list(_dict(listener).get("hosts"))):
            ns, slash, name = str(host).partition("/")
            if not slash or not ns or not name:
                yield Diagnostic("LAB0610", ERROR, sidecar.ref,
                                 f'egress host "{host}" must be namespace/host',
                                 f"spec.egress[{i}].hosts[{j}]",
                                 'write e.g. "./*" (this namespace), "istio-system/*" or '
                                 '"*/httpbin.org"')
        for key in ("port", "bind", "captureMode"):
            if _dict(listener).get(key):
                yield Diagnostic("LAB0607", WARNING, sidecar.ref,
                                 f"egress[].{key} is not translated on the local mesh: the "
                                 f"hosts apply to every port (apps reach them through their "
                                 f"http_proxy, without capture)", f"spec.egress[{i}].{key}",
                                 f"remove it for the local mesh; {ON_A_CLUSTER}")
    if _dict(sidecar.spec.get("outboundTrafficPolicy")).get("egressProxy"):
        yield Diagnostic("LAB0607", WARNING, sidecar.ref,
                         "outboundTrafficPolicy.egressProxy is not translated on the local "
                         "mesh: unknown hosts follow the mode alone",
                         "spec.outboundTrafficPolicy.egressProxy",
                         f"route through the egress gateway with a VirtualService; "
                         f"{ON_A_CLUSTER}")


def _service_names(store: ConfigStore, entry: Resource) -> Iterator[Diagnostic]:
    """LAB0609: a host that is a Service's FQDN; the local mesh keeps the Service's routing."""
    for i, host in enumerate(_list(entry.spec.get("hosts"))):
        found = resolve_host(store, host, entry.namespace) if isinstance(host, str) else None
        if found is not None and found.kind == "Service":
            yield Diagnostic("LAB0609", WARNING, entry.ref,
                             f'"{host}" is a Service of the mesh: the local mesh routes it as '
                             f"the Service and ignores this entry for it",
                             f"spec.hosts[{i}]",
                             f"use a name outside the cluster's domain; {ON_A_CLUSTER} "
                             f"(Istio merges the two)")


def egress_findings(store: ConfigStore) -> Iterator[Diagnostic]:
    """Every LAB060x finding."""
    for entry in store.list("ServiceEntry"):
        for check in (_hosts, _ports, _resolution, _served, _untranslated):
            yield from check(entry)
        yield from _service_names(store, entry)
    for sidecar in store.list("Sidecar"):
        yield from _sidecar_egress(sidecar)
