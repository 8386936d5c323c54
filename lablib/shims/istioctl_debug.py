"""The istioctl commands of Istio's "Diagnostic tools" pages, for the local mesh:
`proxy-config log`, `proxy-status POD` (control plane against proxy), `x precheck` and
`x describe pod|svc`. Output in istioctl 1.20's shapes; flags istioctl would refuse are
refused by the command table in istioctl.py."""

from __future__ import annotations

import difflib
import json
from datetime import datetime
from typing import Any

from ..config.analyze_troubleshooting import mtls_mode
from ..config.hosts import port_protocol
from ..config.store import selector_matches
from ..local.client import LocalBackend
from .flags import UsageError
from .session import Failure

__all__ = ["describe_pod", "describe_service", "precheck", "proxy_log", "proxy_status_diff"]

LOG_LEVELS = ("trace", "debug", "info", "warning", "error", "critical", "off")
SECTIONS = (("Clusters", "ClustersConfigDump",
             "type.googleapis.com/envoy.config.cluster.v3.Cluster"),
            ("Listeners", "ListenersConfigDump",
             "type.googleapis.com/envoy.config.listener.v3.Listener"),
            ("Routes", "RoutesConfigDump",
             "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"))


# --- proxy-config log -----------------------------------------------------------------------------


def _loggers(text: str) -> dict[str, str]:
    """Envoy's `active loggers:` listing as logger -> level."""
    pairs = (line.strip().partition(": ") for line in text.splitlines()[1:] if line.strip())
    return {name: level for name, _, level in pairs}


def proxy_log(mesh: LocalBackend, pod: str, namespace: str, level: str | None,
              reset: bool) -> str:
    """`istioctl proxy-config log POD [--level L | --level logger:L,...] [--reset]`: Envoy's
    logger levels after the change, as Envoy's admin lists them."""
    current = mesh.proxy_admin(pod, namespace, "logging", method="POST")
    if reset:
        level = "warning"  # istioctl's --reset: every logger back to the default
    if not level:
        return current
    known = _loggers(current)
    for item in level.split(","):
        name, colon, wanted = item.rpartition(":")
        wanted = wanted.strip()
        if wanted not in LOG_LEVELS:
            raise UsageError(f"unrecognized logging level: {wanted}")
        if colon and name not in known:
            raise UsageError(f"unrecognized logger name: {name}")
        query = f"{name}={wanted}" if colon else f"level={wanted}"
        current = mesh.proxy_admin(pod, namespace, f"logging?{query}", method="POST")
    return current


# --- proxy-status POD ----------------------------------------------------------------------------


def _dump_names(configs: list[dict[str, Any]], section: str) -> tuple[list[str], str]:
    """Resource names in one config dump section, and the latest `last_updated` in it."""
    dump = next((c for c in configs if str(c.get("@type", "")).endswith("." + section)), {})
    names, updated = [], ""
    for key, wrapper in (("dynamic_active_clusters", "cluster"),
                         ("dynamic_listeners", "active_state"),
                         ("dynamic_route_configs", "route_config")):
        for item in dump.get(key) or []:
            body = item.get(wrapper) or {}
            if wrapper == "active_state":
                body = body.get("listener") or {}
            names.append(str(body.get("name", "")))
            updated = max(updated, str(item.get("last_updated") or
                                       (item.get("active_state") or {}).get("last_updated", "")))
    return sorted(names), updated


def proxy_status_diff(mesh: LocalBackend, pod: str, namespace: str) -> str:
    """`istioctl proxy-status POD.NS`: per xDS type, whether the resources the control plane
    holds for this proxy are the ones the proxy has (compared by name), with a diff if not."""
    sent = mesh.snapshot(pod, namespace)
    configs = json.loads(mesh.proxy_admin(pod, namespace, "config_dump"))["configs"]
    lines = []
    for title, section, type_url in SECTIONS:
        istiod = sorted(str(n) for n in (sent.get(type_url) or {}))
        envoy, updated = _dump_names(configs, section)
        if istiod == envoy:
            text = f"{title} Match"
            if title == "Routes" and updated:
                loaded = datetime.fromisoformat(updated.replace("Z", "+00:00"))
                text += f" (RDS last loaded at {loaded.strftime('%a, %d %b %Y %H:%M:%S %Z')})"
            lines.append(text)
            continue
        lines.append(f"{title} Don't Match")
        lines += difflib.unified_diff(istiod, envoy, f"Istiod {title}", f"Envoy {title}",
                                      lineterm="")
    return "\n".join(lines) + "\n"


# --- x precheck ----------------------------------------------------------------------------------


def precheck() -> tuple[bool, str]:
    """`istioctl x precheck`: what would stop an install here (the kit's doctor checks: tools,
    the state folder, ports, running meshes), with istioctl's all-clear when nothing does."""
    from ..doctor import checks

    failed = [row for row in checks() if row["ok"] is False]
    if not failed:
        return True, ("\u2714 No issues found when checking the cluster. Istio is safe to "
                      "install or upgrade!\n  To get started, check out "
                      "https://istio.io/latest/docs/setup/getting-started/\n")
    text = "".join(f"Error [{row['check']}] {row.get('detail', '')}\n    fix: "
                   f"{row.get('fix', '')}\n" for row in failed)
    return False, text + "Error: 1 or more issues found when checking the cluster\n"


# --- x describe ----------------------------------------------------------------------------------


def _store_items(mesh: LocalBackend, kind: str, namespace: str | None) -> list[dict[str, Any]]:
    return mesh.get(kind, namespace=namespace)


def _pod_services(mesh: LocalBackend, labels: dict[str, str], namespace: str
                  ) -> list[dict[str, Any]]:
    return [s for s in _store_items(mesh, "service", namespace)
            if (s.get("spec") or {}).get("selector")
            and selector_matches(s["spec"]["selector"], labels)]


def _fqdn(host: str, namespace: str) -> str:
    """`reviews`, `reviews.ns` or the full name, as the Service FQDN Istio reads it as."""
    if "." not in host:
        return f"{host}.{namespace}.svc.cluster.local"
    return host if ".svc" in host else f"{host}.svc.cluster.local"


def _service_fqdn(service: dict[str, Any]) -> str:
    return f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc.cluster.local"


def _rules_for(mesh: LocalBackend, service: dict[str, Any]) -> list[dict[str, Any]]:
    return [dr for dr in _store_items(mesh, "destinationrule", None)
            if _fqdn(str((dr.get("spec") or {}).get("host", "")),
                     dr["metadata"]["namespace"]) == _service_fqdn(service)]


def _destinations(vs: dict[str, Any]) -> list[tuple[str, str]]:
    """(host, subset) of every http/tcp/tls route destination."""
    found = []
    for section in ("http", "tcp", "tls"):
        for rule in (vs.get("spec") or {}).get(section) or []:
            for route in rule.get("route") or []:
                dest = route.get("destination") or {}
                found.append((str(dest.get("host", "")), str(dest.get("subset", ""))))
    return found


def _services_text(mesh: LocalBackend, labels: dict[str, str], namespace: str,
                   services: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for service in services:
        name = service["metadata"]["name"]
        lines.append("--------------------")
        lines.append(f"Service: {name}")
        for port in (service.get("spec") or {}).get("ports") or []:
            protocol = port_protocol(port) or "auto-detect"
            lines.append(f"   Port: {port.get('name', '')} {port['port']}/{protocol} targets "
                         f"pod port {port.get('targetPort', port['port'])}")
        for dr in _rules_for(mesh, service):
            spec = dr.get("spec") or {}
            lines.append(f"DestinationRule: {dr['metadata']['name']} for \"{spec.get('host')}\"")
            subsets = spec.get("subsets") or []
            matching = [s["name"] for s in subsets
                        if selector_matches(s.get("labels") or {}, labels)]
            others = [s["name"] for s in subsets if s["name"] not in matching]
            if subsets:
                lines.append(f"   Matching subsets: {','.join(matching) or '(none)'}")
                if others:
                    lines.append(f"      (Non-matching subsets {','.join(others)})")
            policy = spec.get("trafficPolicy")
            lines.append(f"   Traffic Policy TLS Mode: {(policy.get('tls') or {}).get('mode')}"
                         if policy and policy.get("tls") else
                         "   Policies: " + ", ".join(sorted(policy)) if policy else
                         "   No Traffic Policy")
        for vs in _store_items(mesh, "virtualservice", None):
            dests = [(h, s) for h, s in _destinations(vs)
                     if _fqdn(h, vs["metadata"]["namespace"]) == _service_fqdn(service)]
            if not dests:
                continue
            gateways = (vs.get("spec") or {}).get("gateways") or ["mesh"]
            lines.append(f"VirtualService: {vs['metadata']['name']}"
                         + ("" if gateways == ["mesh"] else
                            f" (gateways: {', '.join(gateways)})"))
            rules = sum(len((vs.get("spec") or {}).get(k) or []) for k in ("http", "tcp", "tls"))
            lines.append(f"   {rules} route rule(s)")
            subsets = {s["name"]: s for dr in _rules_for(mesh, service)
                       for s in (dr.get("spec") or {}).get("subsets") or []}
            for _, subset in dests:
                if subset and subset in subsets and not selector_matches(
                        subsets[subset].get("labels") or {}, labels):
                    lines.append(f"   Route to non-matching subset {subset} for (everything)")
                elif subset and subset not in subsets:
                    lines.append(f"   WARNING: Route to UNKNOWN subset {subset}; check "
                                 "DestinationRule")
    return lines


def describe_pod(mesh: LocalBackend, pod: str, namespace: str) -> str:
    """`istioctl x describe pod POD`: its ports, Services, DestinationRules (matching subsets
    and policy), VirtualServices routing to it (and to which subsets), PeerAuthentication."""
    found = [p for p in _store_items(mesh, "pod", namespace) if p["metadata"]["name"] == pod]
    if not found:
        raise Failure(f'Error: pods "{pod}" not found')
    item = found[0]
    labels = dict(item["metadata"].get("labels") or {})
    containers = item["spec"].get("containers") or []
    ports = [f"{p['containerPort']} ({c['name']})" for c in containers
             for p in c.get("ports") or []]
    lines = [f"Pod: {pod}", "   Pod Revision: default" if any(
        c["name"] == "istio-proxy" for c in containers) else
        "   WARNING: pod has no sidecar (istio-proxy): mesh config does not apply to it",
        f"   Pod Ports: {', '.join(ports)}"]
    services = _pod_services(mesh, labels, namespace)
    if not services:
        lines.append("Suggestion: add a Service selecting this pod's labels")
    lines += _services_text(mesh, labels, namespace, services)
    lines.append("--------------------")
    lines.append("Effective PeerAuthentication:")
    from .istioctl import _mesh_store  # every stored resource, as analyze reads the mesh

    mode = mtls_mode(_mesh_store(mesh), namespace, labels)
    lines.append(f"   Workload mTLS mode: {mode}")
    lines += _ingress_text(mesh, services)
    return "\n".join(lines) + "\n"


def _uri_text(match: dict[str, Any]) -> str:
    uri = match.get("uri") or {}
    if "exact" in uri:
        return str(uri["exact"])
    if "prefix" in uri:
        return f"{uri['prefix']}*"
    return str(uri.get("regex", "/*"))


def _ingress_text(mesh: LocalBackend, services: list[dict[str, Any]]) -> list[str]:
    """istioctl's `Exposed on Ingress Gateway` part: the gateway-bound VirtualServices that
    route to the pod's Services, with the URIs they match."""
    wanted = {_service_fqdn(s) for s in services}
    exposed = []
    for vs in _store_items(mesh, "virtualservice", None):
        gateways = [g for g in (vs.get("spec") or {}).get("gateways") or [] if g != "mesh"]
        routes_here = [rule for rule in (vs.get("spec") or {}).get("http") or []
                       if any(_fqdn(str((r.get("destination") or {}).get("host", "")),
                                    vs["metadata"]["namespace"]) in wanted
                              for r in rule.get("route") or [])]
        if gateways and routes_here:
            uris = [_uri_text(m) for rule in routes_here for m in rule.get("match") or [{}]]
            exposed += [f"VirtualService: {vs['metadata']['name']}", "   " + ", ".join(uris)]
    if not exposed:
        return []
    host, port = mesh.ingress_address()
    return ["", "", f"Exposed on Ingress Gateway http://{host}:{port}", *exposed]


def describe_service(mesh: LocalBackend, service: str, namespace: str) -> str:
    """`istioctl x describe svc NAME`: as for a pod, from the Service's first pod."""
    found = [s for s in _store_items(mesh, "service", namespace)
             if s["metadata"]["name"] == service]
    if not found:
        raise Failure(f'Error: services "{service}" not found')
    selector = (found[0].get("spec") or {}).get("selector") or {}
    pods = [p for p in _store_items(mesh, "pod", namespace)
            if selector and selector_matches(selector, p["metadata"].get("labels") or {})]
    if not pods:
        return f"Service {service} has no pods\n"
    return describe_pod(mesh, pods[0]["metadata"]["name"], namespace)


def missing_proxies(mesh: LocalBackend, namespaces: set[str] | None) -> list[Any]:
    """IST0103 PodMissingProxy: pods in a namespace labelled for injection, started without a
    sidecar (created before the label; they need a restart)."""
    from ..errors import Diagnostic

    found = []
    for ns in mesh.get("namespace"):
        name = ns["metadata"]["name"]
        if (namespaces is not None and name not in namespaces) or (
                ns["metadata"].get("labels") or {}).get("istio-injection") != "enabled":
            continue
        for pod in mesh.get("pods", namespace=name):
            annotations = pod["metadata"].get("annotations") or {}
            labels = pod["metadata"].get("labels") or {}
            if "false" in (annotations.get("sidecar.istio.io/inject"),
                           labels.get("sidecar.istio.io/inject")):
                continue
            if not any(c["name"] == "istio-proxy" for c in pod["spec"].get("containers") or []):
                found.append(Diagnostic(
                    "IST0103", "Warning", f"Pod {name}/{pod['metadata']['name']}",
                    f"The pod {name}/{pod['metadata']['name']} is missing the Istio proxy. This "
                    "can often be resolved by restarting or redeploying the workload.",
                    "spec.containers", f"kubectl rollout restart deployment -n {name}"))
    return found

