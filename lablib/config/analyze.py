"""Cross-resource checks over a whole (candidate) store, in the spirit of `istioctl analyze`.

Codes are stable. Istio's own codes are used where Istio has the analyzer:
IST0101 ReferencedResourceNotFound, IST0102 NamespaceNotInjected,
IST0104 GatewayPortNotOnWorkload, IST0109 ConflictingMeshGatewayVirtualServiceHosts.
The kit adds LAB02xx checks for mistakes a learner makes in the labs:

LAB0201 route weights do not sum to 100        LAB0209 percentage outside 0..100
LAB0202 negative route weight                  LAB0210 negative or zero duration
LAB0203 Gateway selector matches no workload   LAB0211 connection pool limit below 1
LAB0204 namespace does not exist               LAB0212 tcp route on an HTTP port
LAB0205 Deployment selector vs template labels LAB0213 two VirtualServices, same gateway host
LAB0206 Service targetPort not on any pod      LAB0214 route to a subset with no pods
LAB0207 workload selector matches nothing      LAB0215 destination port not on the Service
LAB0208 duplicate subset name                 LAB0220 TLS server credential not found
                                               LAB0221 MUTUAL server without a client CA
                                               LAB0222 credential unreadable or key mismatch
                                               LAB0223 credential certificate expired
                                               LAB0224 volume's Secret/ConfigMap not found
                                               LAB0225 DestinationRule tls incomplete/mixed
                                               LAB0226 DR tls file not mounted in any proxy
                                               LAB0227 DR credentialName ignored at sidecars
                                               LAB0409 Sidecar ingress tls file not mounted

Severity "Error" refuses an apply, except IST0101 for a route destination that is no Service
(Istio accepts it and the route answers 503; the apply prints it as a warning); "Warning"
and "Info" are reported and let through.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from ..errors import Diagnostic
from .analyze_egress import egress_findings
from .analyze_routing import analyze_routing
from .hosts import (
    HTTP_PROTOCOLS,
    canonical_host,
    fqdn,
    port_protocol,
    resolve_host,
    service_fqdn,
)
from .injection import injected
from .model import Resource
from .schema import parse_duration
from .store import ConfigStore, pod_labels, selector_matches

__all__ = ["analyze", "canonical_host", "dangling_destination", "errors", "fqdn",
           "resolve_host", "service_fqdn"]

ERROR, WARNING, INFO = "Error", "Warning", "Info"
MESH = "mesh"
# Namespaces whose workloads are Istio's own or Kubernetes', never injected.
SYSTEM_NAMESPACES = frozenset({"istio-system", "kube-system", "kube-public", "kube-node-lease"})


def dangling_destination(diagnostic: Diagnostic) -> bool:
    """IST0101 for a route destination whose host does not exist (yet, or any more): Istio
    accepts the VirtualService and its route answers 503 until the Service exists, so a
    learner can apply in any order and delete a Service a route still names."""
    return (diagnostic.code == "IST0101" and diagnostic.field.endswith(".destination.host")
            and diagnostic.message.startswith("Referenced host not found"))


def errors(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    """Only the findings that refuse an apply (istioctl analyze still reports them all)."""
    return [d for d in diagnostics if d.severity == ERROR and not dangling_destination(d)]


# --- Small readers that tolerate any shape (analysis runs on unvalidated input too) ------


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok else None


def _seconds(value: Any) -> float | None:
    try:
        return parse_duration(value)
    except ValueError:
        return None


def _labels_text(labels: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items())


# --- Namespaces --------------------------------------------------------------------------


def _missing_namespaces(store: ConfigStore) -> Iterator[Diagnostic]:
    """LAB0204: a namespaced resource in a namespace that was never created."""
    for resource in store:
        ns = resource.namespace
        if ns and not store.has_namespace(ns):
            yield Diagnostic(
                "LAB0204", ERROR, resource.ref, f'namespace "{ns}" does not exist',
                "metadata.namespace", f"kubectl create namespace {ns}",
            )


def _injection(store: ConfigStore) -> Iterator[Diagnostic]:
    """IST0102: workloads in a namespace that is not labelled for sidecar injection."""
    for ns in store.namespaces():
        if ns in SYSTEM_NAMESPACES or not store.workloads(ns):
            continue
        labels = store.namespace_labels(ns)
        if "istio-injection" in labels or "istio.io/rev" in labels:
            continue
        yield Diagnostic(
            "IST0102", INFO, f"Namespace {ns}",
            "The namespace is not enabled for Istio injection: its pods run without a sidecar, "
            "so VirtualServices and DestinationRules do not apply to their outbound calls.",
            "metadata.labels",
            f"kubectl label namespace {ns} istio-injection=enabled (then restart its pods), or "
            f"label it istio-injection=disabled to say this is intended",
        )


# --- Workloads and Services --------------------------------------------------------------


def _deployment_selectors(store: ConfigStore) -> Iterator[Diagnostic]:
    """LAB0205: a Deployment whose selector does not select its own pods."""
    for deployment in store.list("Deployment"):
        wanted = _dict(_dict(deployment.spec.get("selector")).get("matchLabels"))
        labels = pod_labels(deployment)
        missing = {k: v for k, v in wanted.items() if labels.get(k) != v}
        if missing:
            yield Diagnostic(
                "LAB0205", ERROR, deployment.ref,
                f"selector does not match template labels: the pods would not carry "
                f"{_labels_text(missing)}",
                "spec.selector.matchLabels",
                f"make spec.template.metadata.labels include {_labels_text(missing)}",
            )


def _sidecar_ports(store: ConfigStore, deployment: Resource) -> set[int]:
    """Ports a Sidecar's ingress listeners open in front of this workload."""
    ports: set[int] = set()
    for sidecar in store.list("Sidecar", deployment.namespace):
        selector = _dict(_dict(sidecar.spec.get("workloadSelector")).get("labels"))
        if selector and not selector_matches(selector, pod_labels(deployment)):
            continue
        for listener in _list(sidecar.spec.get("ingress")):
            number = _int(_dict(_dict(listener).get("port")).get("number"))
            if number:
                ports.add(number)
    return ports


def _container_ports(deployment: Resource) -> list[dict[str, Any]]:
    pod = _dict(_dict(deployment.spec.get("template")).get("spec"))
    return [_dict(p) for c in _list(pod.get("containers")) for p in _list(_dict(c).get("ports"))]


def _service_target_ports(store: ConfigStore) -> Iterator[Diagnostic]:
    """LAB0206: a Service port that no container of its selected pods exposes."""
    for service in store.list("Service"):
        selector = _dict(service.spec.get("selector"))
        if not selector:
            continue
        workloads = store.workloads(service.namespace, selector)
        if not workloads:
            continue
        declared = [p for d in workloads for p in _container_ports(d)]
        if not declared:
            continue  # containerPort is optional documentation; nothing to compare against
        numbers: set[Any] = {p.get("containerPort") for p in declared}
        names: set[Any] = {p.get("name") for p in declared}
        for deployment in workloads:
            numbers |= _sidecar_ports(store, deployment)
        for i, port in enumerate(_list(service.spec.get("ports"))):
            port = _dict(port)
            target = port.get("targetPort", port.get("port"))
            if target is None or target in (names if isinstance(target, str) else numbers):
                continue
            field = "targetPort" if "targetPort" in port else "port"
            shown = ", ".join(str(n) for n in sorted(n for n in numbers if _int(n))) or "none"
            pods = ", ".join(d.name for d in workloads)
            yield Diagnostic(
                "LAB0206", WARNING, service.ref,
                f"targetPort {target} is not a containerPort of the selected pods "
                f"({pods}; they declare: {shown})",
                f"spec.ports[{i}].{field}",
                "set targetPort to the port the container listens on, or declare that port "
                "under the container's ports",
            )


def _workload_selectors(store: ConfigStore) -> Iterator[Diagnostic]:
    """LAB0207: a policy whose workload selector matches no pod in its namespace."""
    readers: list[tuple[str, str, Callable[[Resource], dict[str, Any]]]] = [
        ("PeerAuthentication", "spec.selector.matchLabels",
         lambda r: _dict(_dict(r.spec.get("selector")).get("matchLabels"))),
        ("Sidecar", "spec.workloadSelector.labels",
         lambda r: _dict(_dict(r.spec.get("workloadSelector")).get("labels"))),
        ("DestinationRule", "spec.workloadSelector.matchLabels",
         lambda r: _dict(_dict(r.spec.get("workloadSelector")).get("matchLabels"))),
    ]
    for kind, field, read in readers:
        for resource in store.list(kind):
            selector = read(resource)
            if selector and not store.workloads(resource.namespace, selector):
                yield Diagnostic(
                    "LAB0207", WARNING, resource.ref,
                    f"no workload in namespace {resource.namespace} has the labels "
                    f"{_labels_text(selector)}, so this {kind} applies to nothing",
                    field,
                    "check the labels against the pods' (kubectl get pods --show-labels)",
                )


# --- Gateways ----------------------------------------------------------------------------


def _gateway_ports(store: ConfigStore, workloads: list[Resource]) -> dict[int, str]:
    """Ports (and targetPorts) of the Services in front of gateway workloads, with a label."""
    ports: dict[int, str] = {}
    for deployment in workloads:
        labels = pod_labels(deployment)
        for service in store.list("Service", deployment.namespace):
            selector = _dict(service.spec.get("selector"))
            if not selector or not selector_matches(selector, labels):
                continue
            for port in _list(service.spec.get("ports")):
                number, target = _int(_dict(port).get("port")), _dict(port).get("targetPort")
                label = f"{number}->{target}" if target not in (None, number) else f"{number}"
                if number:
                    ports.setdefault(number, label)
                target_number = _int(target)
                if target_number:
                    ports.setdefault(target_number, label)
    return ports


def _gateways(store: ConfigStore) -> Iterator[Diagnostic]:
    """LAB0203 selector matching no workload; IST0104 server port not on the workload."""
    for gateway in store.list("Gateway"):
        selector = _dict(gateway.spec.get("selector"))
        if not selector:
            continue
        workloads = store.workloads(None, selector)
        if not workloads:
            yield Diagnostic(
                "LAB0203", ERROR, gateway.ref,
                f"no workload has the labels {_labels_text(selector)}: no gateway proxy would "
                f"serve this Gateway",
                "spec.selector", _gateway_selector_fix(store),
            )
            continue
        ports = _gateway_ports(store, workloads)
        for i, server in enumerate(_list(gateway.spec.get("servers"))):
            number = _int(_dict(_dict(server).get("port")).get("number"))
            if number is None or number in ports:
                continue
            exposed = ", ".join(sorted(set(ports.values()), key=lambda t: int(t.split("-")[0])))
            yield Diagnostic(
                "IST0104", WARNING, gateway.ref,
                f"The gateway refers to a port that is not exposed on the workload "
                f"(pod selector {_labels_text(selector)}; port {number})",
                f"spec.servers[{i}].port.number",
                f"use a port the gateway Service exposes ({exposed or 'none'}), or add {number} "
                f"to that Service's ports",
            )


TERMINATING_TLS = ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL")


def _secret_data(secret: Resource) -> dict[str, bytes]:
    """A Secret's values as bytes, from `data` (base64) or `stringData`."""
    out = {k: str(v).encode() for k, v in _dict(secret.body.get("stringData")).items()}
    for key, value in _dict(secret.body.get("data")).items():
        try:
            out[key] = base64.b64decode(str(value), validate=True)
        except ValueError:
            out[key] = b""
    return out


def _credential_problem(data: dict[str, bytes]) -> tuple[str, str] | None:
    """(code, message) when tls.crt/tls.key are unusable or the certificate has expired."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(data.get("tls.crt", b""))
    except ValueError:
        return "LAB0222", "tls.crt is not a PEM certificate"
    try:
        key = serialization.load_pem_private_key(data.get("tls.key", b""), password=None)
    except (ValueError, TypeError):
        return "LAB0222", "tls.key is not an unencrypted PEM private key"
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.PEM
    if key.public_key().public_bytes(encoding, public) != \
            cert.public_key().public_bytes(encoding, public):
        return "LAB0222", "tls.key does not belong to the certificate in tls.crt"
    expires = cert.not_valid_after_utc
    if expires < datetime.now(UTC):
        return "LAB0223", f"the certificate in tls.crt expired on {expires:%Y-%m-%d %H:%M} UTC"
    return None


def _gateway_credentials(store: ConfigStore) -> Iterator[Diagnostic]:
    """LAB0220-0223: what a terminating TLS server needs from its credentialName Secret,
    looked up where the gateway's pods run (istio-system for the default ingress)."""
    for gateway in store.list("Gateway"):
        selector = _dict(gateway.spec.get("selector"))
        namespaces = sorted({d.namespace for d in store.workloads(None, selector)}
                            ) if selector else []
        for i, server in enumerate(_list(gateway.spec.get("servers"))):
            tls = _dict(_dict(server).get("tls"))
            mode = str(tls.get("mode", "")).upper()
            if mode not in TERMINATING_TLS or not namespaces:
                continue
            path = f"spec.servers[{i}].tls"
            name = str(tls.get("credentialName") or "")
            ns = namespaces[0]
            create = (f"kubectl create -n {ns} secret tls {name or 'NAME'} "
                      f"--key=KEY.pem --cert=CERT.pem")
            secret = store.get("Secret", ns, name) if name else None
            if secret is None:
                what = (f'Secret "{name}" not found in namespace {ns}, where the gateway runs'
                        if name else "no credentialName: the local gateway reads its "
                        "certificate from a Secret")
                fix = (f"create it first: {create}" if name else
                       f"set {path}.credentialName to a Secret's name, and create that Secret: "
                       f"{create}")
                yield Diagnostic("LAB0220", ERROR, gateway.ref, what, f"{path}.credentialName",
                                 fix)
                continue
            data = _secret_data(secret)
            problem = _credential_problem(data)
            if problem:
                code, message = problem
                yield Diagnostic(code, ERROR, gateway.ref, f'Secret {ns}/{name}: {message}',
                                 f"{path}.credentialName",
                                 f"issue a new certificate and key, then {create}")
            cacert = store.get("Secret", ns, f"{name}-cacert")
            has_ca = "ca.crt" in data or (cacert is not None and "ca.crt" in _secret_data(cacert))
            if mode == "MUTUAL" and not has_ca:
                yield Diagnostic(
                    "LAB0221", ERROR, gateway.ref,
                    f"mode MUTUAL needs the CA that signs client certificates, but Secret "
                    f"{ns}/{name} has no ca.crt (nor is there a Secret {name}-cacert)",
                    f"{path}.mode",
                    f"kubectl create -n {ns} secret generic {name} --from-file=tls.key=KEY.pem "
                    f"--from-file=tls.crt=CERT.pem --from-file=ca.crt=CA.pem")


def _volume_sources(store: ConfigStore) -> Iterator[Diagnostic]:
    """LAB0224: a pod volume from a Secret or ConfigMap that does not exist (and is not
    optional): its pods would never start."""
    for deployment in store.list("Deployment"):
        spec = _dict(_dict(deployment.spec.get("template")).get("spec"))
        for i, volume in enumerate(_list(spec.get("volumes"))):
            volume = _dict(volume)
            for key, kind, field in (("secret", "Secret", "secretName"),
                                     ("configMap", "ConfigMap", "name")):
                source = _dict(volume.get(key))
                name = source.get(field)
                if not source or not name or source.get("optional"):
                    continue
                if store.get(kind, deployment.namespace, str(name)) is None:
                    word = "secret" if kind == "Secret" else "configmap"
                    yield Diagnostic(
                        "LAB0224", ERROR, deployment.ref,
                        f'{kind} "{name}" not found in namespace {deployment.namespace}: the '
                        "pods could not mount it and would never start",
                        f"spec.template.spec.volumes[{i}].{key}.{field}",
                        f"create it first: kubectl create -n {deployment.namespace} {word} "
                        f"{name} --from-file=...")


def _gateway_selector_fix(store: ConfigStore) -> str:
    workloads = sorted(store.workloads(), key=lambda d: "gateway" not in
                       pod_labels(d).get("istio", ""))  # gateways first: istiod is no gateway
    for deployment in workloads:
        labels = pod_labels(deployment)
        if "gateway" in labels.get("istio", ""):
            return (f"use the labels of a gateway's pods, e.g. istio: {labels['istio']} "
                    f"(Deployment {deployment.namespace}/{deployment.name})")
    return "use the labels of a gateway's pods (kubectl get pods -n istio-system --show-labels)"


def _gateway_ref(store: ConfigStore, name: str, namespace: str) -> Resource | None:
    ns, _, short = name.rpartition("/")
    return store.get("Gateway", ns or namespace, short)


# --- VirtualServices ---------------------------------------------------------------------


def _bound_gateways(vs: Resource) -> list[str]:
    return [g for g in _list(vs.spec.get("gateways")) if isinstance(g, str)] or [MESH]


def _rules(vs: Resource) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(section, path, rule) for every http, tcp and tls rule."""
    for section in ("http", "tcp", "tls"):
        for i, rule in enumerate(_list(vs.spec.get(section))):
            if isinstance(rule, dict):
                yield section, f"spec.{section}[{i}]", rule


def _destinations(vs: Resource) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, destination) for every route, mirror and mirrors destination."""
    for section, path, rule in _rules(vs):
        for j, weighted in enumerate(_list(rule.get("route"))):
            destination = _dict(weighted).get("destination")
            if isinstance(destination, dict):
                yield f"{path}.route[{j}].destination", destination
        if section != "http":
            continue
        if isinstance(rule.get("mirror"), dict):
            yield f"{path}.mirror", rule["mirror"]
        for j, mirror in enumerate(_list(rule.get("mirrors"))):
            destination = _dict(mirror).get("destination")
            if isinstance(destination, dict):
                yield f"{path}.mirrors[{j}].destination", destination


def _target(store: ConfigStore, host: str, namespace: str) -> tuple[Resource, str] | None:
    resource = resolve_host(store, host, namespace)
    if resource is None:
        return None
    return resource, canonical_host(store, host, namespace)


def _subsets(store: ConfigStore, resource: Resource, host: str) -> dict[str, dict[str, Any]]:
    """Subsets (name -> subset) that DestinationRules define for this Service/ServiceEntry."""
    found: dict[str, dict[str, Any]] = {}
    for rule in store.list("DestinationRule"):
        rule_host = rule.spec.get("host")
        if not isinstance(rule_host, str):
            continue
        target = _target(store, rule_host, rule.namespace)
        if target and target[0].key == resource.key and target[1] == host:
            for subset in _list(rule.spec.get("subsets")):
                name = _dict(subset).get("name")
                if isinstance(name, str):
                    found.setdefault(name, _dict(subset))
    return found


def _not_found(resource: Resource, what: str, value: str, field: str, fix: str) -> Diagnostic:
    return Diagnostic("IST0101", ERROR, resource.ref,
                      f'Referenced {what} not found: "{value}"', field, fix)


def _vs_references(store: ConfigStore, vs: Resource) -> Iterator[Diagnostic]:
    """IST0101 for gateways, hosts, destinations and subsets; LAB0215 for ports."""
    ns = vs.namespace
    gateways = _list(vs.spec.get("gateways"))
    gateway_fields = [(f"spec.gateways[{i}]", g) for i, g in enumerate(gateways)]
    for _, path, rule in _rules(vs):
        for j, match in enumerate(_list(rule.get("match"))):
            for k, g in enumerate(_list(_dict(match).get("gateways"))):
                gateway_fields.append((f"{path}.match[{j}].gateways[{k}]", g))
    for field, name in gateway_fields:
        if isinstance(name, str) and name != MESH and not _gateway_ref(store, name, ns):
            yield _not_found(vs, "gateway", name, field,
                             f"create Gateway {name} in namespace {ns}, or write <namespace>/"
                             f"<name> for a Gateway in another namespace")
    if MESH in _bound_gateways(vs):
        for i, host in enumerate(_list(vs.spec.get("hosts"))):
            if isinstance(host, str) and "*" not in host and not resolve_host(store, host, ns):
                yield _not_found(vs, "host", host, f"spec.hosts[{i}]",
                                 f"create a Service {host} in namespace {ns} (or a "
                                 f"ServiceEntry), or bind this VirtualService to a Gateway")
    for path, destination in _destinations(vs):
        yield from _destination_references(store, vs, path, destination)


def _destination_references(store: ConfigStore, vs: Resource, path: str,
                            destination: dict[str, Any]) -> Iterator[Diagnostic]:
    host = destination.get("host")
    if not isinstance(host, str):
        return
    target = _target(store, host, vs.namespace)
    if target is None:
        yield _not_found(vs, "host", host, f"{path}.host",
                         f"name a Service of namespace {vs.namespace} (or <name>.<namespace> "
                         f"for another namespace), or add a ServiceEntry for {host}")
        return
    resource, canonical = target
    subset = destination.get("subset")
    if isinstance(subset, str) and subset:
        defined = _subsets(store, resource, canonical)
        if subset not in defined:
            known = f" (defined: {', '.join(defined)})" if defined else ""
            yield _not_found(vs, "host+subset in destinationrule", f"{host}+{subset}",
                             f"{path}.subset",
                             f'define subset "{subset}" in a DestinationRule for host {host}'
                             f"{known}, and apply it before this VirtualService")
        else:
            yield from _empty_subset(store, vs, path, resource, subset, defined[subset])
    number = _int(_dict(destination.get("port")).get("number"))
    if number and resource.kind == "Service":
        ports = [_int(_dict(p).get("port")) for p in _list(resource.spec.get("ports"))]
        if number not in ports:
            shown = ", ".join(str(p) for p in ports if p) or "none"
            yield Diagnostic(
                "LAB0215", ERROR, vs.ref,
                f"Service {resource.namespace}/{resource.name} has no port {number} "
                f"(its ports: {shown})",
                f"{path}.port.number", f"use one of the Service's ports: {shown}",
            )


def _empty_subset(store: ConfigStore, vs: Resource, path: str, service: Resource, name: str,
                  subset: dict[str, Any]) -> Iterator[Diagnostic]:
    """LAB0214: routing to a subset whose labels match none of the Service's pods."""
    labels = _dict(subset.get("labels"))
    pods = _service_pods(store, service)
    if labels and pods and not any(selector_matches(labels, pod_labels(d)) for d in pods):
        yield Diagnostic(
            "LAB0214", WARNING, vs.ref,
            f'subset "{name}" ({_labels_text(labels)}) selects no pod of Service '
            f"{service.namespace}/{service.name}; requests routed to it get 503",
            f"{path}.subset",
            "deploy a version with those labels, or route to a subset that has pods",
        )


def _weights(vs: Resource) -> Iterator[Diagnostic]:
    """LAB0201 weights not summing to 100; LAB0202 negative weights."""
    for _, path, rule in _rules(vs):
        route = [_dict(d) for d in _list(rule.get("route"))]
        if not route:
            continue
        negative = False
        for j, destination in enumerate(route):
            weight = _int(destination.get("weight"))
            if weight is not None and weight < 0:
                negative = True
                yield Diagnostic("LAB0202", ERROR, vs.ref, f"weight {weight} is negative",
                                 f"{path}.route[{j}].weight", "use a weight from 0 to 100")
        if negative:
            continue
        weights = [_int(d.get("weight")) or 0 for d in route]
        total = sum(weights)
        if len(route) == 1 and total in (0, 100):
            continue  # a lone destination gets all the traffic
        if total != 100:
            unset = sum(1 for d in route if d.get("weight") is None)
            note = f"; {unset} destination(s) without a weight count as 0" if unset else ""
            yield Diagnostic(
                "LAB0201", ERROR, vs.ref,
                f"the weights of {path}.route sum to {total}, not 100{note}",
                f"{path}.route", f"make the weights of {path}.route sum to 100 (now {total})",
            )


def _percent(resource: Resource, value: Any, field: str) -> Iterator[Diagnostic]:
    number = _number(value)
    if number is not None and not 0 <= number <= 100:
        yield Diagnostic("LAB0209", ERROR, resource.ref,
                         f"{field.rsplit('.', 1)[-1]} {value:g} is outside 0..100", field,
                         "use a percentage from 0 to 100")


def _duration(resource: Resource, value: Any, field: str, allow_zero: bool
              ) -> Iterator[Diagnostic]:
    seconds = _seconds(value)
    if seconds is None or (allow_zero and seconds == 0):
        return
    name = field.rsplit(".", 1)[-1]
    millis = seconds * 1000
    if seconds >= 0 and not allow_zero and millis >= 1 and abs(millis - round(millis)) > 1e-6:
        yield Diagnostic("LAB0210", ERROR, resource.ref,
                         f"{name} {value}: only durations to ms precision are supported", field,
                         f"round {name} to whole milliseconds, such as 2ms or 1.5s")
        return
    # Istio's ValidateDuration: at least 1ms ("duration must be greater than 1ms").
    if seconds > 0 and (allow_zero or millis >= 1 - 1e-9):
        return
    rule = "must not be negative" if allow_zero else "must be at least 1ms"
    yield Diagnostic("LAB0210", ERROR, resource.ref, f"{name} {value} {rule}", field,
                     "use a positive duration such as 1s or 100ms"
                     + ("; 0s turns the timeout off" if allow_zero else ""))


def _vs_values(vs: Resource) -> Iterator[Diagnostic]:
    """LAB0209 percentages and LAB0210 durations of http rules."""
    for section, path, rule in _rules(vs):
        if section != "http":
            continue
        fault = _dict(rule.get("fault"))
        for part in ("delay", "abort"):
            spec = _dict(fault.get(part))
            base = f"{path}.fault.{part}"
            yield from _percent(vs, _dict(spec.get("percentage")).get("value"),
                                f"{base}.percentage.value")
            yield from _percent(vs, spec.get("percent"), f"{base}.percent")
        delay = _dict(fault.get("delay"))
        for name in ("fixedDelay", "exponentialDelay"):
            yield from _duration(vs, delay.get(name), f"{path}.fault.delay.{name}", False)
        yield from _percent(vs, _dict(rule.get("mirrorPercentage")).get("value"),
                            f"{path}.mirrorPercentage.value")
        yield from _percent(vs, rule.get("mirrorPercent"), f"{path}.mirrorPercent")
        for j, mirror in enumerate(_list(rule.get("mirrors"))):
            yield from _percent(vs, _dict(_dict(mirror).get("percentage")).get("value"),
                                f"{path}.mirrors[{j}].percentage.value")
        yield from _duration(vs, rule.get("timeout"), f"{path}.timeout", True)
        retries = _dict(rule.get("retries"))
        for name in ("perTryTimeout", "backoff"):
            yield from _duration(vs, retries.get(name), f"{path}.retries.{name}", False)
        yield from _duration(vs, _dict(rule.get("corsPolicy")).get("maxAge"),
                             f"{path}.corsPolicy.maxAge", True)


def _service_port(service: Resource, number: int | None) -> dict[str, Any] | None:
    ports = [_dict(p) for p in _list(service.spec.get("ports"))]
    if number is None:
        return ports[0] if len(ports) == 1 else None
    return next((p for p in ports if p.get("port") == number), None)


def _http_server(server: dict[str, Any]) -> bool:
    """Whether a Gateway server terminates HTTP (so only http: rules can use it)."""
    port = _dict(server.get("port"))
    protocol = str(port.get("protocol", "")).upper()
    passthrough = _dict(server.get("tls")).get("mode") in ("PASSTHROUGH", "AUTO_PASSTHROUGH")
    return protocol in HTTP_PROTOCOLS or (protocol == "HTTPS" and not passthrough)


def _tcp_on_http(store: ConfigStore, vs: Resource) -> Iterator[Diagnostic]:
    """LAB0212: tcp rules that match, or send to, a port Istio treats as HTTP."""
    bound = _bound_gateways(vs)
    for i, rule in enumerate(_list(vs.spec.get("tcp"))):
        path = f"spec.tcp[{i}]"
        for j, match in enumerate(_list(_dict(rule).get("match"))):
            number = _int(_dict(match).get("port"))
            if number is None:
                continue
            why = _http_port_reason(store, vs, bound, number)
            if why:
                yield Diagnostic(
                    "LAB0212", ERROR, vs.ref,
                    f"port {number} is {why}, so this tcp rule never applies",
                    f"{path}.match[{j}].port",
                    "write the rule under http:, or use a port whose protocol is TCP",
                )
        for j, weighted in enumerate(_list(_dict(rule).get("route"))):
            destination = _dict(_dict(weighted).get("destination"))
            service = resolve_host(store, str(destination.get("host", "")), vs.namespace)
            if service is None or service.kind != "Service":
                continue
            port = _service_port(service, _int(_dict(destination.get("port")).get("number")))
            if port and port_protocol(port) in HTTP_PROTOCOLS:
                yield Diagnostic(
                    "LAB0212", ERROR, vs.ref,
                    f"tcp route to port {port.get('port')} of Service {service.namespace}/"
                    f"{service.name}, which is an HTTP port (named \"{port.get('name', '')}\"): "
                    f"its sidecar expects HTTP, not raw TCP",
                    f"{path}.route[{j}].destination",
                    "route to a TCP port of the Service (port names tcp-...), or use http:",
                )


def _http_port_reason(store: ConfigStore, vs: Resource, bound: list[str], number: int) -> str:
    for name in bound:
        if name == MESH:
            for host in _list(vs.spec.get("hosts")):
                service = resolve_host(store, str(host), vs.namespace)
                if service is not None and service.kind == "Service":
                    port = _service_port(service, number)
                    if port and port_protocol(port) in HTTP_PROTOCOLS:
                        return (f"an HTTP port of Service {service.namespace}/{service.name} "
                                f"(named \"{port.get('name', '')}\")")
            continue
        gateway = _gateway_ref(store, name, vs.namespace)
        if gateway is None:
            continue
        for server in _list(gateway.spec.get("servers")):
            server = _dict(server)
            if _int(_dict(server.get("port")).get("number")) == number and _http_server(server):
                protocol = _dict(server.get("port")).get("protocol")
                return f"a {protocol} server of Gateway {gateway.namespace}/{gateway.name}"
    return ""


def _virtual_services(store: ConfigStore) -> Iterator[Diagnostic]:
    for vs in store.list("VirtualService"):
        yield from _vs_references(store, vs)
        yield from _weights(vs)
        yield from _vs_values(vs)
        yield from _tcp_on_http(store, vs)


def _conflicts(store: ConfigStore) -> Iterator[Diagnostic]:
    """IST0109 two mesh VirtualServices for one host; LAB0213 the same on one gateway."""
    owners: dict[tuple[str, str], list[tuple[Resource, int]]] = {}
    for vs in store.list("VirtualService"):
        seen: set[tuple[str, str]] = set()
        for name in _bound_gateways(vs):
            if name == MESH:
                scope = MESH
            else:
                gateway = _gateway_ref(store, name, vs.namespace)
                if gateway is None:
                    continue
                scope = f"{gateway.namespace}/{gateway.name}"
            for i, host in enumerate(_list(vs.spec.get("hosts"))):
                if not isinstance(host, str):
                    continue
                key = (scope, canonical_host(store, host, vs.namespace) if scope == MESH else host)
                if key not in seen:
                    seen.add(key)
                    owners.setdefault(key, []).append((vs, i))
    for (scope, host), holders in owners.items():
        if len(holders) < 2:
            continue
        names = ", ".join(f"{v.namespace}/{v.name}" for v, _ in holders)
        for vs, i in holders:
            if scope == MESH:
                yield Diagnostic(
                    "IST0109", ERROR, vs.ref,
                    f"The VirtualServices {names} associated with mesh gateway define the same "
                    f"host {host} which can lead to undefined behavior",
                    f"spec.hosts[{i}]", "merge them into a single VirtualService",
                )
            else:
                yield Diagnostic(
                    "LAB0213", WARNING, vs.ref,
                    f"The VirtualServices {names} both serve host {host} on Gateway {scope}; "
                    f"Istio merges their rules in an unspecified order",
                    f"spec.hosts[{i}]", "merge them into a single VirtualService",
                )


# --- DestinationRules --------------------------------------------------------------------

_POSITIVE_DURATIONS = {
    ("tcp", "connectTimeout"), ("tcp", "maxConnectionDuration"), ("tcpKeepalive", "time"),
    ("tcpKeepalive", "interval"), ("http2KeepAlive", "interval"), ("http2KeepAlive", "timeout"),
}
_AT_LEAST_ONE = ("maxConnections", "http1MaxPendingRequests", "http2MaxRequests",
                 "maxConcurrentStreams")
_AT_LEAST_ZERO = ("maxRequestsPerConnection", "maxRetries")


def _connection_pool(resource: Resource, pool: dict[str, Any], path: str
                     ) -> Iterator[Diagnostic]:
    """LAB0211 limits below their minimum; LAB0210 durations in a connection pool."""
    for section in ("tcp", "http"):
        settings = _dict(pool.get(section))
        for name, value in settings.items():
            number = _int(value)
            field = f"{path}.{section}.{name}"
            if number is not None and name in _AT_LEAST_ONE and number < 1:
                yield Diagnostic(
                    "LAB0211", ERROR, resource.ref,
                    f"{name} must be >= 1, got {number}"
                    + (" (Istio reads 0 as \"not set\", i.e. no limit)" if number == 0 else ""),
                    field, f"set {name} to 1 or more, or remove it for no limit",
                )
            elif number is not None and name in _AT_LEAST_ZERO and number < 0:
                yield Diagnostic("LAB0211", ERROR, resource.ref,
                                 f"{name} must be >= 0, got {number}", field,
                                 f"set {name} to 0 (no limit) or more")
            elif name == "idleTimeout":
                yield from _duration(resource, value, field, True)
            elif (section, name) in _POSITIVE_DURATIONS:
                yield from _duration(resource, value, field, False)
        for holder in ("tcpKeepalive", "http2KeepAlive"):
            for name, value in _dict(settings.get(holder)).items():
                if (holder, name) in _POSITIVE_DURATIONS:
                    yield from _duration(resource, value, f"{path}.{section}.{holder}.{name}",
                                         False)


def _traffic_policy(resource: Resource, policy: dict[str, Any], path: str
                    ) -> Iterator[Diagnostic]:
    yield from _connection_pool(resource, _dict(policy.get("connectionPool")),
                                f"{path}.connectionPool")
    outlier = _dict(policy.get("outlierDetection"))
    for name in ("interval", "baseEjectionTime"):
        yield from _duration(resource, outlier.get(name), f"{path}.outlierDetection.{name}",
                             False)
    for name in ("maxEjectionPercent", "minHealthPercent"):
        yield from _percent(resource, outlier.get(name), f"{path}.outlierDetection.{name}")
    for k, port_policy in enumerate(_list(policy.get("portLevelSettings"))):
        yield from _traffic_policy(resource, _dict(port_policy), f"{path}.portLevelSettings[{k}]")


def _destination_rules(store: ConfigStore) -> Iterator[Diagnostic]:
    """IST0101 unknown host; LAB0208 duplicate subsets; limits and durations of policies."""
    for rule in store.list("DestinationRule"):
        host = rule.spec.get("host")
        if (isinstance(host, str) and "*" not in host
                and resolve_host(store, host, rule.namespace) is None):
            yield _not_found(rule, "host", host, "spec.host",
                             f"name a Service of namespace {rule.namespace} (or <name>.<namespace>"
                             f"), or add a ServiceEntry for {host}")
        yield from _traffic_policy(rule, _dict(rule.spec.get("trafficPolicy")),
                                   "spec.trafficPolicy")
        seen: set[str] = set()
        for j, subset in enumerate(_list(rule.spec.get("subsets"))):
            subset = _dict(subset)
            name = subset.get("name")
            if isinstance(name, str) and name in seen:
                yield Diagnostic("LAB0208", ERROR, rule.ref, f'duplicate subset name "{name}"',
                                 f"spec.subsets[{j}].name", "give each subset its own name")
            if isinstance(name, str):
                seen.add(name)
            yield from _traffic_policy(rule, _dict(subset.get("trafficPolicy")),
                                       f"spec.subsets[{j}].trafficPolicy")


# --- DestinationRule tls (TLS origination) ---------------------------------------------------

_ORIGINATING = ("SIMPLE", "MUTUAL")
_FILE_FIELDS = ("caCertificates", "clientCertificate", "privateKey")
# Files every istio-proxy image has: the OS trust store ("system" is Istio's name for it).
_PROXY_IMAGE_FILES = frozenset({"system", "/etc/ssl/certs/ca-certificates.crt"})
_MOUNT_EXAMPLE = (
    """sidecar.istio.io/userVolume: '{"certs":{"secret":{"secretName":"SECRET"}}}' and """
    """sidecar.istio.io/userVolumeMount: '{"certs":{"mountPath":"/etc/certs"}}'""")


def _client_tls_blocks(rule: Resource) -> Iterator[tuple[str, dict[str, Any]]]:
    """(field path, tls) of every `tls` a DestinationRule sets: host, port, subset level."""
    policies = [("spec.trafficPolicy", _dict(rule.spec.get("trafficPolicy")))]
    for j, subset in enumerate(_list(rule.spec.get("subsets"))):
        policies.append((f"spec.subsets[{j}].trafficPolicy",
                         _dict(_dict(subset).get("trafficPolicy"))))
    for path, policy in policies:
        if isinstance(policy.get("tls"), dict):
            yield f"{path}.tls", policy["tls"]
        for k, port_policy in enumerate(_list(policy.get("portLevelSettings"))):
            tls = _dict(port_policy).get("tls")
            if isinstance(tls, dict):
                yield f"{path}.portLevelSettings[{k}].tls", tls


def _has_proxy(store: ConfigStore, deployment: Resource) -> bool:
    """Whether the Deployment's pods run an Envoy: injected as Istio decides, or a gateway."""
    labels = pod_labels(deployment)
    if str(labels.get("istio", "")).endswith("gateway"):
        return True
    annotations = _dict(_dict(_dict(deployment.spec.get("template")).get("metadata"))
                        .get("annotations"))
    return injected(store.namespace_labels(deployment.namespace), labels, annotations)


def _proxy_mounts(store: ConfigStore, deployment: Resource, path: str) -> bool:
    """Whether the Deployment's istio-proxy sees a file at `path` through the
    sidecar.istio.io/userVolume and userVolumeMount annotations (from a Secret's key)."""
    if path in _PROXY_IMAGE_FILES:
        return True
    annotations = _dict(_dict(_dict(deployment.spec.get("template")).get("metadata"))
                        .get("annotations"))
    try:
        volumes = _dict(json.loads(annotations.get("sidecar.istio.io/userVolume") or "{}"))
        mounts = _dict(json.loads(annotations.get("sidecar.istio.io/userVolumeMount") or "{}"))
    except ValueError:
        return False
    for name, mount in mounts.items():
        folder = str(_dict(mount).get("mountPath", "")).rstrip("/") + "/"
        if not path.startswith(folder):
            continue
        source = _dict(_dict(volumes.get(name)).get("secret"))
        secret = store.get("Secret", deployment.namespace, str(source.get("secretName", "")))
        if secret is not None and path[len(folder):] in _secret_data(secret):
            return True
    return False


def _client_tls_problems(rule: Resource, path: str, tls: dict[str, Any]
                         ) -> Iterator[Diagnostic]:
    """LAB0225: what Istio's validation refuses in a DestinationRule's `tls`."""
    mode = str(tls.get("mode", "")).upper()
    if mode == "MUTUAL" and not tls.get("credentialName"):
        missing = [f for f in ("clientCertificate", "privateKey") if not tls.get(f)]
        if missing:
            yield Diagnostic(
                "LAB0225", ERROR, rule.ref,
                f"mode MUTUAL needs the client's certificate and key, but "
                f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set "
                "(nor credentialName)",
                f"{path}.{missing[0]}",
                "set clientCertificate and privateKey to files mounted into the client's proxy "
                f"(e.g. /etc/certs/tls.crt and /etc/certs/tls.key, mounted with {_MOUNT_EXAMPLE}"
                "), or set credentialName at a gateway, or use mode SIMPLE for one-way TLS")
    if tls.get("credentialName"):
        mixed = [f for f in _FILE_FIELDS if tls.get(f)]
        if mixed:
            yield Diagnostic(
                "LAB0225", ERROR, rule.ref,
                f"credentialName and {', '.join(mixed)} are both set: only one of client "
                "certificates and CA certificate or credentialName can be specified",
                f"{path}.{mixed[0]}",
                f"remove {', '.join(mixed)} (the Secret {tls['credentialName']} holds them), or "
                "remove credentialName")


def _destination_rule_tls(store: ConfigStore) -> Iterator[Diagnostic]:
    """LAB0225-0227: TLS origination settings of DestinationRules."""
    for rule in store.list("DestinationRule"):
        selector = _dict(_dict(rule.spec.get("workloadSelector")).get("matchLabels"))
        if selector:
            clients = [d for d in store.workloads(rule.namespace, selector)
                       if _has_proxy(store, d)]
        else:
            clients = [d for d in store.workloads() if _has_proxy(store, d)]
        host = str(rule.spec.get("host", ""))
        for path, tls in _client_tls_blocks(rule):
            yield from _client_tls_problems(rule, path, tls)
            mode = str(tls.get("mode", "")).upper()
            if mode not in _ORIGINATING:
                continue
            if tls.get("credentialName"):
                if not selector:
                    yield Diagnostic(
                        "LAB0227", WARNING, rule.ref,
                        "credentialName is used only by gateways when the DestinationRule has no "
                        f"workloadSelector: sidecars ignore this tls and send plaintext to {host}",
                        f"{path}.credentialName",
                        "add spec.workloadSelector.matchLabels naming the client pods, or give "
                        "sidecars certificate files (clientCertificate, privateKey, "
                        "caCertificates) instead")
                continue
            fields = [f for f in _FILE_FIELDS if f != "caCertificates" or not
                      tls.get("insecureSkipVerify")]
            if mode == "SIMPLE":
                fields = [f for f in fields if f == "caCertificates"]
            for field in fields:
                file = tls.get(field)
                if not isinstance(file, str) or not file or not clients:
                    continue
                if any(_proxy_mounts(store, d, file) for d in clients):
                    continue
                names = ", ".join(f"{d.namespace}/{d.name}" for d in clients[:3]) + (
                    ", ..." if len(clients) > 3 else "")
                yield Diagnostic(
                    "LAB0226", WARNING, rule.ref,
                    f'{field} "{file}" is not a file in the proxy of any workload this rule '
                    f"applies to ({names}): their TLS handshakes with {host} will fail",
                    f"{path}.{field}",
                    f"mount the Secret holding it into the client pods' istio-proxy with the "
                    f"annotations {_MOUNT_EXAMPLE} (the path is mountPath/key)")


def _service_pods(store: ConfigStore, service: Resource) -> list[Resource]:
    if service.kind != "Service":
        return []
    selector = _dict(service.spec.get("selector"))
    return store.workloads(service.namespace, selector) if selector else []


def _sidecar_ingress_tls(store: ConfigStore, sidecar: Resource) -> Iterator[Diagnostic]:
    """LAB0409: an ingress `tls` naming a file the selected workloads' proxies do not mount
    (their listener could not load it)."""
    selector = _dict(_dict(sidecar.spec.get("workloadSelector")).get("labels"))
    workloads = [d for d in store.workloads(sidecar.namespace, selector or None)
                 if _has_proxy(store, d)]
    for i, listener in enumerate(_list(sidecar.spec.get("ingress"))):
        tls = _dict(_dict(listener).get("tls"))
        mode = str(tls.get("mode", "")).upper()
        if mode not in ("SIMPLE", "MUTUAL"):
            continue
        fields = ["serverCertificate", "privateKey"] + (["caCertificates"] if mode == "MUTUAL"
                                                        else [])
        for field in fields:
            file = tls.get(field)
            path = f"spec.ingress[{i}].tls.{field}"
            if not isinstance(file, str) or not file:
                yield Diagnostic("LAB0409", ERROR, sidecar.ref,
                                 f"tls mode {mode} needs {field}", path,
                                 f"set {field} to a file mounted into the proxy "
                                 f"({_MOUNT_EXAMPLE})")
                continue
            missing = [d for d in workloads if not _proxy_mounts(store, d, file)]
            if missing:
                names = ", ".join(f"{d.namespace}/{d.name}" for d in missing[:3])
                yield Diagnostic(
                    "LAB0409", ERROR, sidecar.ref,
                    f'{field} "{file}" is not a file in the proxy of {names}: the port\'s '
                    "listener could not load it", path,
                    f"mount the Secret holding it into the pods' istio-proxy with the "
                    f"annotations {_MOUNT_EXAMPLE} (the path is mountPath/key)")


def _sidecars(store: ConfigStore) -> Iterator[Diagnostic]:
    """LAB0210/LAB0211 in a Sidecar's connection pools; LAB0409 its ingress TLS files."""
    for sidecar in store.list("Sidecar"):
        yield from _sidecar_ingress_tls(store, sidecar)
        yield from _connection_pool(sidecar, _dict(sidecar.spec.get("inboundConnectionPool")),
                                    "spec.inboundConnectionPool")
        for i, listener in enumerate(_list(sidecar.spec.get("ingress"))):
            yield from _connection_pool(sidecar, _dict(_dict(listener).get("connectionPool")),
                                        f"spec.ingress[{i}].connectionPool")


# --- Authorization -----------------------------------------------------------------------


def _policy_workloads(store: ConfigStore, policy: Resource) -> list[Resource]:
    """The Deployments an AuthorizationPolicy applies to (root namespace: every namespace)."""
    labels = _dict(_dict(policy.spec.get("selector")).get("matchLabels"))
    namespace = None if policy.namespace == "istio-system" else policy.namespace
    return store.workloads(namespace, labels or None)


def _tcp_ports(store: ConfigStore, deployment: Resource) -> list[int]:
    """Service ports in front of the Deployment that Istio treats as TCP."""
    found = []
    for service in store.list("Service", deployment.namespace):
        selector = _dict(service.spec.get("selector"))
        if selector and selector_matches(selector, pod_labels(deployment)):
            found += [int(p["port"]) for p in _list(service.spec.get("ports"))
                      if isinstance(p, dict) and port_protocol(p) not in HTTP_PROTOCOLS
                      and port_protocol(p)]
    return found


def _disables_mtls(store: ConfigStore, deployment: Resource) -> bool:
    """Whether a PeerAuthentication turns mTLS off for the workload (so no principal)."""
    for pa in store.list("PeerAuthentication"):
        labels = _dict(_dict(pa.spec.get("selector")).get("matchLabels"))
        applies = (pa.namespace == deployment.namespace and (
            not labels or selector_matches(labels, pod_labels(deployment)))) or (
            pa.namespace == "istio-system" and not labels)
        if applies and str(_dict(pa.spec.get("mtls")).get("mode", "")).upper() == "DISABLE":
            return True
    return False


def _authorization_policies(store: ConfigStore) -> Iterator[Diagnostic]:
    """LAB0520 HTTP-only fields toward TCP ports; LAB0521 identities without mTLS;
    LAB0522 a policy on workloads without a sidecar (nothing enforces it)."""
    from .security import HTTP_OPERATION_FIELDS, HTTP_SOURCE_FIELDS, http_only_when

    for policy in store.list("AuthorizationPolicy"):
        workloads = _policy_workloads(store, policy)
        bare = [d for d in workloads if not _has_proxy(store, d)]
        if workloads and len(bare) == len(workloads):
            yield Diagnostic(
                "LAB0522", WARNING, policy.ref,
                f"the workloads it selects ({', '.join(d.name for d in bare[:3])}) have no "
                "sidecar, so nothing enforces this policy", "spec.selector",
                "enable injection for their namespace (istio-injection=enabled) and restart "
                "them")
        for i, rule in enumerate(_list(policy.spec.get("rules"))):
            rule = _dict(rule)
            http_fields = [f"from[{j}].source.{name}"
                           for j, entry in enumerate(_list(rule.get("from")))
                           for name in HTTP_SOURCE_FIELDS
                           if _dict(_dict(entry).get("source")).get(name)]
            http_fields += [f"to[{j}].operation.{name}"
                            for j, entry in enumerate(_list(rule.get("to")))
                            for name in HTTP_OPERATION_FIELDS
                            if _dict(_dict(entry).get("operation")).get(name)]
            http_fields += [f"when[{j}].key" for j, cond in enumerate(_list(rule.get("when")))
                            if http_only_when(str(_dict(cond).get("key", "")))]
            tcp = sorted({p for d in workloads for p in _tcp_ports(store, d)})
            if http_fields and tcp:
                action = str(policy.spec.get("action", "ALLOW"))
                effect = ("this rule is left out there, so it allows nothing on them"
                          if action == "ALLOW" else "those fields are left out there, so "
                          "the rule matches more connections than on HTTP ports")
                yield Diagnostic(
                    "LAB0520", WARNING, policy.ref,
                    f"{', '.join(http_fields)} only mean something for HTTP, and the workloads "
                    f"it selects serve TCP on port(s) {', '.join(map(str, tcp))}: {effect}",
                    f"spec.rules[{i}]", "limit the rule with to.operation.ports to HTTP ports, "
                    "or use only TCP fields (principals, namespaces, ipBlocks, ports)")
            uses_identity = any(
                _dict(_dict(entry).get("source")).get(name)
                for entry in _list(rule.get("from"))
                for name in ("principals", "notPrincipals", "namespaces", "notNamespaces")
            ) or any(str(_dict(c).get("key")) in ("source.principal", "source.namespace")
                     for c in _list(rule.get("when")))
            plain = [d for d in workloads if _disables_mtls(store, d)]
            if uses_identity and plain:
                yield Diagnostic(
                    "LAB0521", WARNING, policy.ref,
                    "principals and namespaces come from the client's mTLS certificate, but "
                    f"mTLS is DISABLEd for {', '.join(d.name for d in plain[:3])}: no request "
                    "there carries an identity", f"spec.rules[{i}].from",
                    "set the PeerAuthentication to STRICT or PERMISSIVE for these workloads, "
                    "and give their clients sidecars")


_ANALYZERS: tuple[Callable[[ConfigStore], Iterator[Diagnostic]], ...] = (
    _missing_namespaces,
    _injection,
    _deployment_selectors,
    _service_target_ports,
    _workload_selectors,
    _gateways,
    _gateway_credentials,
    _volume_sources,
    _virtual_services,
    _conflicts,
    _destination_rules,
    _destination_rule_tls,
    _sidecars,
    egress_findings,
    analyze_routing,
    _authorization_policies,
)


def analyze(store: ConfigStore) -> list[Diagnostic]:
    """Every finding about the store as a whole, Errors first, in a stable order."""
    from .analyze_troubleshooting import ANALYZERS  # they build on this module's readers

    found = [d for analyzer in (*_ANALYZERS, *ANALYZERS) for d in analyzer(store)]
    rank = {ERROR: 0, WARNING: 1, INFO: 2}
    return sorted(found, key=lambda d: rank.get(d.severity, 3))
