"""`istioctl` for the local mesh: install, verify, proxy-config, proxy-status, analyze and
the rest of what the Istio tasks type, in istioctl 1.20's words. On the kubernetes backend it
is the real istioctl.

    istioctl_main(["install", "--set", "profile=demo", "-y"])  -> exit code
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..config.analyze import analyze
from ..config.fidelity import diagnostics as fidelity_diagnostics
from ..config.install import components_text, install_plan
from ..config.loader import load
from ..config.model import Resource
from ..config.schema import KINDS as SCHEMA_KINDS
from ..config.store import ConfigStore
from ..errors import ConfigError, Diagnostic
from ..local.client import LocalBackend
from . import addons, printers
from .dispatch import Command, Tool
from .dispatch import err as _err
from .dispatch import out as _out
from .flags import Flag, Parsed, UsageError
from .kinds import KINDS, resolve
from .session import ISTIO_VERSION, Failure, connect

__all__ = ["istioctl_main", "kube_inject"]

PROXY_IMAGE = f"docker.io/istio/proxyv2:{ISTIO_VERSION}"
GLOBAL = [Flag("namespace", "n"), Flag("istioNamespace", "i"), Flag("context"),
          Flag("kubeconfig", "c"), Flag("help", "h", "bool")]
ANALYSIS_DOCS = ("See https://istio.io/v1.20/docs/reference/config/analysis for more "
                 "information about causes and resolutions.")
# istioctl exits with this code when analysis finds an error.
ANALYZER_FOUND_ISSUES = 79
DASHBOARDS = ("prometheus", "grafana", "kiali", "jaeger", "zipkin", "skywalking", "loki",
              "controlz")


def _confirm(question: str, yes: bool) -> bool:
    """istioctl's `Proceed? (y/N)`; anything but y/yes (or no input) cancels."""
    if yes:
        return True
    _out(f"{question} Proceed? (y/N) ")
    line = sys.stdin.readline()
    if line.strip().lower() in ("y", "yes"):
        return True
    _out(("" if line else "\n") + "Cancelled.\n")
    return False


def _pod_and_namespace(p: Parsed, text: str) -> tuple[str, str]:
    """`POD.NS`, or `POD` in -n (default "default")."""
    pod, dot, namespace = text.partition(".")
    return pod, namespace if dot else str(p.get("namespace") or "default")


def _table(rows: list[list[str]]) -> str:
    """istioctl's tables: Go tabwriter, padding 5."""
    return printers.rows_text(rows, 0, 5) + "\n"


# --- install, verify, uninstall -------------------------------------------------------------------


def cmd_install(p: Parsed) -> int:
    if p.get("filename"):
        raise Failure("Error: IstioOperator files (-f) are not supported by the local mesh; "
                      "use --set profile=demo and --set values.KEY=VALUE")
    profile, values = "default", {}
    for setting in p.get("set"):
        key, eq, value = setting.partition("=")
        if not eq:
            raise UsageError(f"--set {setting}: expected KEY=VALUE")
        if key == "profile":
            profile = value
        else:
            values[key] = value
    revision = p.get("revision")
    if revision not in (None, "default"):
        values["revision"] = str(revision)
    try:
        plan = install_plan(profile, values)
    except ConfigError as exc:
        raise Failure("Error: " + "\n".join(str(d) for d in exc.diagnostics)) from None
    question = (f'This will install the Istio {ISTIO_VERSION} "{profile}" profile (with '
                f"components: {components_text(plan)}) into the cluster.")
    if not _confirm(question, bool(p.get("skip-confirmation"))):
        return 1
    mesh = connect(start=True)
    for line in mesh.install(profile=profile, values=values):
        _out(f"\u2714 {line}\n")
    _out("Made this installation the default for injection and validation.\n")
    if p.get("verify"):
        return _verify(mesh)
    return 0


ISTIO_CRDS = [k for k in KINDS if ".istio.io/" in k.api_version]


def _verify(mesh: LocalBackend) -> int:
    rows = mesh.verify_install()
    seen: set[tuple[str, str]] = set()
    failed = []
    for kind in ISTIO_CRDS:
        _out(f"\u2714 CustomResourceDefinition: {kind.resource}.istio-system checked "
             f"successfully\n")
    for row in rows:
        key = (str(row["kind"]), str(row["name"]))
        if key in seen:
            continue
        seen.add(key)
        if row["ok"]:
            _out(f"\u2714 {row['kind']}: {row['name']} checked successfully\n")
        else:
            failed.append(row)
            _out(f"\u2718 {row['kind']}: {row['name']}: {row.get('detail', 'not ready')}\n")
    deployments = sum(1 for kind, _ in seen if kind == "Deployment")
    _out(f"Checked {len(ISTIO_CRDS)} custom resource definitions\n")
    _out(f"Checked {deployments} Istio Deployments\n")
    if failed:
        raise Failure(f"Error: Istio installation failed: {len(failed)} check(s) failed "
                      f"(see the \u2718 lines above)")
    _out("\u2714 Istio is installed and verified successfully\n")
    return 0


def cmd_verify_install(p: Parsed) -> int:
    revision = p.get("revision")
    if revision not in (None, "default"):
        raise Failure(f'Error: revision "{revision}" is not installed; the local mesh has '
                      f'only the "default" revision')
    mesh = connect()
    if not any(d["metadata"]["name"] == "istiod"
               for d in mesh.get("deployment", namespace="istio-system")):
        raise Failure("Error: Istio is not installed in the local mesh: run istioctl install "
                      "--set profile=demo -y")
    return _verify(mesh)


def cmd_uninstall(p: Parsed) -> int:
    if not p.get("purge") and not p.get("revision"):
        raise UsageError("at least one of the --revision (or --set revision=<revision>), "
                         "--filename or --purge flags must be set")
    try:
        mesh = connect()
    except Failure:
        _out("\u2714 Uninstall complete\n")  # nothing is running: nothing to remove
        return 0
    if not _confirm("All Istio resources will be pruned from the cluster\n",
                    bool(p.get("skip-confirmation"))):
        return 1
    for kind in ("Deployment", "Service", "ServiceAccount"):
        for item in mesh.get(kind, namespace="istio-system"):
            _out(f"  Removed {kind}:istio-system:{item['metadata']['name']}.\n")
    _out(f'  Removed the local mesh "{mesh.state.mesh}" and every process it ran '
         f"(its namespaces go with it).\n")
    mesh.uninstall()
    _out("\u2714 Uninstall complete\n")
    return 0


# --- proxy-config and proxy-status --------------------------------------------------------------


def _camel(value: Any) -> Any:
    """Envoy's snake_case JSON as istioctl prints it (protojson's lowerCamelCase)."""
    if isinstance(value, list):
        return [_camel(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, v in value.items():
        if "_" in key and "." not in key and not key.startswith("@"):
            head, *rest = key.split("_")
            key = head + "".join(w[:1].upper() + w[1:] for w in rest)
        out[key] = _camel(v)
    return out


def _section(configs: list[dict[str, Any]], suffix: str) -> dict[str, Any]:
    return next((c for c in configs if str(c.get("@type", "")).endswith("." + suffix)), {})


def _match(match: dict[str, Any]) -> str:
    """A route's match as istioctl writes it: `/productpage`, `/static*`, `/*`."""
    if "path" in match:
        text = str(match["path"])
    elif "prefix" in match:
        text = f"{match['prefix']}*" if match["prefix"] != "/" else "/*"
    elif "safe_regex" in match:
        text = str(match["safe_regex"].get("regex"))
    elif "connect_matcher" in match:
        text = "CONNECT"
    else:
        text = "/*"
    for header in match.get("headers") or []:
        value = next(iter((header.get("string_match") or {}).values()), "*")
        text += f" ({header['name']}={value})"
    return text


def _domains(domains: list[str]) -> str:
    shown = list(dict.fromkeys(d for d in domains if not re.search(r":(\d+|\*)$", d)))
    shown = shown or domains
    if len(shown) > 2:
        return f"{shown[0]}, {shown[1]} + {len(shown) - 2} more..."
    return ", ".join(shown)


def _config_ref(route: dict[str, Any]) -> str:
    path = (((route.get("metadata") or {}).get("filter_metadata") or {}).get("istio") or
            {}).get("config", "")
    parts = str(path).split("/")
    if len(parts) > 7 and parts[4] == "namespaces":
        return f"{parts[-1]}.{parts[5]}"
    if "direct_response" in route:
        return str(route["direct_response"].get("status", "-"))
    return "-"


def _routes(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    dump = _section(configs, "RoutesConfigDump")
    return [r.get("route_config") or {} for r in dump.get("dynamic_route_configs") or []]


def _routes_table(configs: list[dict[str, Any]]) -> str:
    rows = [["NAME", "VHOST NAME", "DOMAINS", "MATCH", "VIRTUAL SERVICE"]]
    for rc in _routes(configs):
        for vhost in rc.get("virtual_hosts") or []:
            for route in vhost.get("routes") or []:
                rows.append([str(rc.get("name", "")), str(vhost.get("name", "")),
                             _domains(list(vhost.get("domains") or [])),
                             _match(route.get("match") or {}), _config_ref(route)])
    return _table(rows)


def _clusters(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    dump = _section(configs, "ClustersConfigDump")
    return [c.get("cluster") or {} for c in dump.get("dynamic_active_clusters") or []] + [
        c.get("cluster") or {} for c in dump.get("static_clusters") or []]


def _destination_rules(mesh: LocalBackend) -> dict[str, str]:
    """Service FQDN -> `name.namespace` of the DestinationRule for it."""
    out: dict[str, str] = {}
    for dr in mesh.get("destinationrule"):
        host, ns = str((dr.get("spec") or {}).get("host", "")), dr["metadata"]["namespace"]
        fqdn = host if host.endswith(".cluster.local") else (
            f"{host}.svc.cluster.local" if "." in host else f"{host}.{ns}.svc.cluster.local")
        out.setdefault(fqdn, f"{dr['metadata']['name']}.{ns}")
    return out


def _clusters_table(configs: list[dict[str, Any]], rules: dict[str, str]) -> str:
    rows = [["SERVICE FQDN", "PORT", "SUBSET", "DIRECTION", "TYPE", "DESTINATION RULE"]]
    for cluster in sorted(_clusters(configs), key=lambda c: str(c.get("name"))):
        name = str(cluster.get("name", ""))
        parts = name.split("|")
        kind = str(cluster.get("type") or "EDS")
        if len(parts) == 4:
            direction, port, subset, host = parts
            rows.append([host or "", port, subset or "-", direction, kind,
                         rules.get(host, "") if direction == "outbound" else ""])
        else:
            rows.append([name, "-", "-", "-", kind, ""])
    return _table(rows)


def _listeners(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    dump = _section(configs, "ListenersConfigDump")
    return [(item.get("active_state") or {}).get("listener") or {}
            for item in dump.get("dynamic_listeners") or []]


def _listeners_table(configs: list[dict[str, Any]]) -> str:
    from .. import proxyconfig  # pandas: imported only for this table

    rows = [["ADDRESS", "PORT", "MATCH", "DESTINATION"]]
    frame = proxyconfig.listeners(configs)
    for row in frame.itertuples(index=False):
        rows.append([str(row.address), str(row.port), "ALL", str(row.destination)])
    return _table(rows)


def _endpoints_table(mesh: LocalBackend, pod: str, namespace: str,
                     filters: dict[str, str]) -> str:
    from .. import proxyconfig  # pandas: imported only for this table

    rows = [["ENDPOINT", "STATUS", "OUTLIER CHECK", "CLUSTER"]]
    frame = proxyconfig.endpoints(mesh, pod, namespace)
    for row in frame.sort_values(["cluster", "endpoint"]).itertuples(index=False):
        address, _, port = str(row.endpoint).rpartition(":")
        if not _endpoint_selected(str(row.cluster), address, int(port) if port.isdigit() else 0,
                                  row.status == "HEALTHY", filters):
            continue
        rows.append([str(row.endpoint), str(row.status), str(row.outlier_check),
                     str(row.cluster)])
    return _table(rows)


def _secrets(configs: list[dict[str, Any]]) -> dict[str, Any]:
    dump = _section(configs, "SecretsConfigDump")
    return {k: v for k, v in dump.items() if k != "@type"}


def _secret_table(configs: list[dict[str, Any]]) -> str:
    rows = [["RESOURCE NAME", "TYPE", "STATUS", "VALID CERT", "SERIAL NUMBER", "NOT AFTER",
             "NOT BEFORE"]]
    for secret in _secrets(configs).get("dynamic_active_secrets") or []:
        kind = "CA" if "validation_context" in (secret.get("secret") or {}) else "Cert Chain"
        rows.append([str(secret.get("name", "")), kind, "ACTIVE", "true", "", "", ""])
    return _table(rows)


PROXY_CONFIG_KINDS = {
    "listeners": "listeners", "listener": "listeners", "l": "listeners",
    "routes": "routes", "route": "routes", "r": "routes",
    "clusters": "clusters", "cluster": "clusters", "c": "clusters",
    "endpoints": "endpoints", "endpoint": "endpoints", "ep": "endpoints", "eps": "endpoints",
    "secret": "secret", "secrets": "secret", "s": "secret",
    "all": "all", "bootstrap": "bootstrap", "b": "bootstrap", "log": "log", "o": "log",
}


# The filter flags each proxy-config subcommand takes, as istioctl has them.
PROXY_CONFIG_FILTERS = {
    "listeners": ("port", "type", "address"),
    "routes": ("name",),
    "clusters": ("fqdn", "port", "subset", "direction"),
    "endpoints": ("cluster", "port", "status", "address"),
    "secret": (), "all": (), "bootstrap": (),
}
FILTER_FLAGS = ("name", "fqdn", "port", "subset", "direction", "type", "address", "cluster",
                "status")


def _filters(p: Parsed, kind: str) -> dict[str, str]:
    """The filter flags given, refusing one this subcommand does not take (as istioctl's
    per-command flags do) and a port that is not a number."""
    given = {flag: str(p.get(flag)) for flag in FILTER_FLAGS if p.get(flag) is not None}
    for flag in given:
        if flag not in PROXY_CONFIG_FILTERS[kind]:
            raise UsageError(f"unknown flag: --{flag}")
    if "port" in given and not given["port"].isdigit():
        raise UsageError(f'invalid argument "{given["port"]}" for "--port" flag: '
                         "strconv.ParseInt: parsing: invalid syntax")
    return given


def _listener_type(listener: dict[str, Any]) -> str:
    """istioctl's TYPE of a listener: HTTP, TCP or HTTP+TCP, from its chains' filters."""
    names = {f.get("name", "") for chain in listener.get("filter_chains") or []
             for f in chain.get("filters") or []}
    http = "envoy.filters.network.http_connection_manager" in names
    tcp = "envoy.filters.network.tcp_proxy" in names
    return "HTTP+TCP" if http and tcp else "HTTP" if http else "TCP" if tcp else ""


def _listener_selected(listener: dict[str, Any], filters: dict[str, str]) -> bool:
    address = (listener.get("address") or {}).get("socket_address") or {}
    return (("address" not in filters or address.get("address") == filters["address"])
            and ("port" not in filters or address.get("port_value") == int(filters["port"]))
            and ("type" not in filters
                 or _listener_type(listener).upper() == filters["type"].upper()))


def _cluster_selected(cluster: dict[str, Any], filters: dict[str, str]) -> bool:
    """istioctl's ClusterFilter: the name's direction, port, subset and FQDN, each exact."""
    parts = str(cluster.get("name", "")).split("|")
    if not filters:
        return True
    if len(parts) != 4:
        return False
    direction, port, subset, fqdn = parts
    return (filters.get("fqdn", fqdn) == fqdn and filters.get("direction", direction) == direction
            and filters.get("subset", subset) == subset and filters.get("port", port) == port)


def _filtered_dump(configs: list[dict[str, Any]], kind: str,
                   filters: dict[str, str]) -> list[dict[str, Any]]:
    """The config dump with only the listeners, routes or clusters the filters select."""
    if not filters:
        return configs
    keep: dict[str, Any] = {
        "ListenersConfigDump": ("dynamic_listeners", lambda item: _listener_selected(
            (item.get("active_state") or {}).get("listener") or {}, filters)),
        "RoutesConfigDump": ("dynamic_route_configs", lambda item: (
            (item.get("route_config") or {}).get("name") == filters.get("name"))),
        "ClustersConfigDump": ("dynamic_active_clusters", lambda item: _cluster_selected(
            item.get("cluster") or {}, filters)),
    }
    section = {"listeners": "ListenersConfigDump", "routes": "RoutesConfigDump",
               "clusters": "ClustersConfigDump"}[kind]
    out = []
    for config in configs:
        if str(config.get("@type", "")).endswith("." + section):
            field, selected = keep[section]
            config = {**config, field: [i for i in config.get(field) or [] if selected(i)]}
            if section == "ClustersConfigDump":
                config["static_clusters"] = [i for i in config.get("static_clusters") or []
                                             if _cluster_selected(i.get("cluster") or {},
                                                                  filters)]
        out.append(config)
    return out


def _endpoint_selected(cluster: str, address: str, port: int, healthy: bool,
                       filters: dict[str, str]) -> bool:
    """istioctl's EndpointFilter: address, port, cluster exact; status HEALTHY/UNHEALTHY."""
    status = "HEALTHY" if healthy else "UNHEALTHY"
    return (filters.get("cluster", cluster) == cluster
            and filters.get("address", address) == address
            and int(filters.get("port", port)) == port
            and filters.get("status", status).upper() == status)


def _endpoints_json(data: dict[str, Any], filters: dict[str, str]) -> dict[str, Any]:
    statuses = []
    for status in data.get("cluster_statuses") or []:
        hosts = []
        for host in status.get("host_statuses") or []:
            address = (host.get("address") or {}).get("socket_address") or {}
            health = host.get("health_status") or {}
            healthy = health.get("eds_health_status", "HEALTHY") == "HEALTHY" and not any(
                v for k, v in health.items() if k.startswith("failed"))
            if _endpoint_selected(str(status.get("name")), str(address.get("address")),
                                  int(address.get("port_value", 0)), healthy, filters):
                hosts.append(host)
        if hosts:
            statuses.append({**status, "host_statuses": hosts})
    return {**data, "cluster_statuses": statuses}


def cmd_proxy_config(p: Parsed) -> int:
    if not p.args:
        raise UsageError('requires a subcommand: listeners, routes, clusters, endpoints, '
                         'secret, all or bootstrap')
    kind = PROXY_CONFIG_KINDS.get(p.args[0])
    if kind is None:
        raise UsageError(f'unknown command "{p.args[0]}" for "istioctl proxy-config"')
    if p.get("file"):
        raise Failure("Error: --file (a saved config dump) is not supported by the local mesh; "
                      "give the pod name, or run with LAB_BACKEND=kubernetes")
    if len(p.args) != 2:
        raise UsageError(f"proxy-config {kind} requires pod name or --file parameter")
    pod, namespace = _pod_and_namespace(p, p.args[1])
    mesh = connect()
    if kind == "log":
        from .istioctl_debug import proxy_log

        _out(proxy_log(mesh, pod, namespace, p.get("level"), bool(p.get("reset"))))
        return 0
    if p.get("level") or p.get("reset"):
        raise UsageError("unknown flag: --level (only `istioctl proxy-config log` takes it)")
    fmt = str(p.get("output") or "short")
    if fmt not in ("short", "json", "yaml"):
        raise UsageError(f'output format "{fmt}" not supported')
    filters = _filters(p, kind)
    if kind == "endpoints" and fmt == "short":
        _out(_endpoints_table(mesh, pod, namespace, filters))
        return 0
    configs = json.loads(mesh.proxy_admin(pod, namespace, "config_dump"))["configs"]
    if kind in ("listeners", "routes", "clusters"):
        configs = _filtered_dump(configs, kind, filters)
    if fmt == "short":
        tables = {"routes": lambda: _routes_table(configs),
                  "clusters": lambda: _clusters_table(configs, _destination_rules(mesh)),
                  "listeners": lambda: _listeners_table(configs),
                  "secret": lambda: _secret_table(configs)}
        if kind not in tables:
            fmt = "json"  # istioctl prints `all` and `bootstrap` as JSON
        else:
            _out(tables[kind]())
            return 0
    data: Any = {
        "routes": lambda: _routes(configs), "clusters": lambda: _clusters(configs),
        "listeners": lambda: _listeners(configs), "secret": lambda: _secrets(configs),
        "bootstrap": lambda: _section(configs, "BootstrapConfigDump"),
        "all": lambda: {"configs": configs},
        "endpoints": lambda: _endpoints_json(json.loads(mesh.proxy_admin(
            pod, namespace, "clusters?format=json")), filters),
    }[kind]()
    data = _camel(data)
    _out(json.dumps(data, indent=4) + "\n" if fmt == "json" else yaml.safe_dump(data))
    return 0


def _proxy_name(proxy_id: str) -> str:
    """`sidecar~127.0.0.1~POD.NS~NS.svc.cluster.local` as istioctl shows it: `POD.NS`."""
    parts = proxy_id.split("~")
    return parts[2] if len(parts) == 4 else proxy_id


def cmd_proxy_status(p: Parsed) -> int:
    mesh = connect()
    istiod = [i["metadata"]["name"] for i in mesh.get("pods", namespace="istio-system",
                                                       selector={"app": "istiod"})]
    wanted = None
    if p.args:
        pod, namespace = _pod_and_namespace(p, p.args[0])
        if any(i["metadata"]["name"] == pod for i in mesh.get("pods", namespace=namespace)):
            from .istioctl_debug import proxy_status_diff

            _out(proxy_status_diff(mesh, pod, namespace))
            return 0
        wanted = f"{pod}.{namespace}"
    rows = [["NAME", "CLUSTER", "CDS", "LDS", "EDS", "RDS", "ECDS", "ISTIOD", "VERSION"]]
    found = []
    for row in mesh.proxy_status():
        if str(row["proxy"]).startswith("kube~"):
            continue  # the local stand-in for kube-proxy is no pod
        name = _proxy_name(str(row["proxy"]))
        if wanted and name != wanted:
            continue
        found.append([name, "Kubernetes", str(row.get("CDS", "NOT SENT")),
                      str(row.get("LDS", "NOT SENT")), str(row.get("EDS", "NOT SENT")),
                      str(row.get("RDS", "NOT SENT")), "NOT SENT",
                      istiod[0] if istiod else "istiod", ISTIO_VERSION])
    if wanted and not found:
        raise Failure(f'Error: pods "{wanted.split(".")[0]}" not found')
    _out(_table(rows + sorted(found)))
    return 0


# --- analyze -----------------------------------------------------------------------------------


def _mesh_store(mesh: LocalBackend) -> ConfigStore:
    """Every stored resource, as the analyzer reads the cluster."""
    resources = []
    for kind in SCHEMA_KINDS:
        for item in mesh.get(kind):
            body = {k: v for k, v in item.items() if k != "status"}
            meta = body.get("metadata") or {}
            resources.append(Resource(kind, str(meta["name"]), str(meta.get("namespace", "")),
                                      body, "<cluster>"))
    return ConfigStore(resources)


def _resource_namespace(diagnostic: Diagnostic) -> str:
    kind, _, ref = diagnostic.resource.partition(" ")
    if kind == "Namespace":
        return ref
    return ref.split("/")[0] if "/" in ref else ""


def _finding(d: Diagnostic) -> str:
    text = f"{d.severity} [{d.code}] ({d.resource}) {d.message}"
    if d.fix:
        where = f"at {d.field}; " if d.field else ""
        text += f"\n    {where}fix: {d.fix}"
    return text


def cmd_analyze(p: Parsed) -> int:
    files = [*p.args, *(p.get("filename") or [])]
    all_ns = bool(p.get("all-namespaces"))
    namespace = str(p.get("namespace") or "default")
    use_kube = str(p.get("use-kube") or "true").lower() != "false"
    resources: list[Resource] = []
    for name in files:
        text = sys.stdin.read() if name == "-" else name
        resources += load(text, namespace=None if all_ns else namespace)
    pods_missing_proxy: list[Diagnostic] = []
    if use_kube:
        from .istioctl_debug import missing_proxies

        mesh = connect()
        store = _mesh_store(mesh)
        pods_missing_proxy = missing_proxies(mesh, None if all_ns else {namespace})
    else:
        store = ConfigStore.with_namespaces({r.namespace for r in resources if r.namespace})
    store = store.with_applied(resources)
    # What applying the files would say about fields the local mesh refuses or ignores.
    ledger = [d for r in resources for d in fidelity_diagnostics(r)]
    findings = [d for d in [*ledger, *analyze(store)]
                if all_ns or _resource_namespace(d) in (namespace, "")] + pods_missing_proxy
    target = "all namespaces" if all_ns else f"namespace: {namespace}"
    if not findings:
        _err(f"\u2714 No validation issues found when analyzing {target}.")
        return 0
    _out("".join(_finding(d) + "\n" for d in findings))
    if any(d.severity == "Error" for d in findings):
        _err(f"Error: Analyzers found issues when analyzing {target}.\n{ANALYSIS_DOCS}")
        return ANALYZER_FOUND_ISSUES
    return 0


# --- the rest --------------------------------------------------------------------------------


def cmd_wait(p: Parsed) -> int:
    if len(p.args) != 2:
        raise UsageError("wait requires a resource type and name, e.g. "
                         "`istioctl x wait virtualservice bookinfo.default`")
    wanted = str(p.get("for") or "distribution")
    if wanted not in ("distribution", "delete"):
        raise UsageError(f'--for must be "distribution" or "delete", not "{wanted}"')
    kind = resolve(p.args[0])
    name, namespace = _pod_and_namespace(p, p.args[1])
    mesh = connect()
    present = any(i["metadata"]["name"] == name for i in mesh.get(
        kind.kind, namespace=namespace if kind.namespaced else None))
    if present != (wanted == "distribution"):
        state = "does not exist" if wanted == "distribution" else "still exists"
        raise Failure(f"Error: {kind.word}/{name}.{namespace} {state}")
    # `kubectl apply` on the local mesh returns only when every proxy ACKed: nothing to wait for.
    proxies = sum(1 for row in mesh.proxy_status() if not str(row["proxy"]).startswith("kube~"))
    verb = "present on" if wanted == "distribution" else "removed from"
    _out(f"{kind.singular} {name}.{namespace} {verb} {proxies} out of {proxies} sidecars\n")
    return 0


def cmd_describe(p: Parsed) -> int:
    from .istioctl_debug import describe_pod, describe_service

    if len(p.args) != 2 or p.args[0] not in ("pod", "po", "service", "svc"):
        raise UsageError("expecting pod or service name: istioctl x describe pod|svc NAME[.NS]")
    name, namespace = _pod_and_namespace(p, p.args[1])
    describe = describe_pod if p.args[0] in ("pod", "po") else describe_service
    _out(describe(connect(), name, namespace))
    return 0


def cmd_precheck(p: Parsed) -> int:
    from .istioctl_debug import precheck

    ok, text = precheck()
    if ok:
        _out(text)
        return 0
    _err(text.rstrip("\n"))
    return 1


def cmd_experimental(p: Parsed) -> int:
    commands = {"wait": cmd_wait, "describe": cmd_describe, "precheck": cmd_precheck}
    if not p.args or p.args[0] not in commands:
        what = p.args[0] if p.args else ""
        raise UsageError(f'unknown command "{what}" for "istioctl experimental" (the local '
                         f"mesh has: {', '.join(commands)})")
    return commands[p.args[0]](Parsed(p.args[1:], p.values, p.command, p.given))


def cmd_version(p: Parsed) -> int:
    _out(f"client version: {ISTIO_VERSION}\n")
    if str(p.get("remote") or "true").lower() == "false" or p.get("short"):
        return 0
    mesh = connect()
    proxies = sum(1 for row in mesh.proxy_status() if not str(row["proxy"]).startswith("kube~"))
    _out(f"control plane version: {ISTIO_VERSION}\n")
    _out(f"data plane version: {ISTIO_VERSION} ({proxies} proxies)\n")
    return 0


def cmd_dashboard(p: Parsed) -> int:
    if not p.args:
        raise UsageError("requires a dashboard: envoy POD[.NS], or one of "
                         + ", ".join(DASHBOARDS))
    name = p.args[0]
    if name == "envoy":
        if len(p.args) != 2:
            raise UsageError("specify a pod: istioctl dashboard envoy POD[.NS]")
        pod, namespace = _pod_and_namespace(p, p.args[1])
        info = connect().pod_info(pod, namespace)
        if not info.get("admin_socket"):
            raise Failure(f"Error: pod {pod} in {namespace} has no istio-proxy")
        # The local mesh keeps Envoy's admin API on a Unix socket only its owner can open.
        _out(f"curl --unix-socket {info['admin_socket']} http://localhost/\n")
        return 0
    if name in DASHBOARDS:
        port = p.get("port")
        return addons.dashboard(name, connect, p.get("address"),
                                int(port) if port is not None else None,
                                str(p.get("namespace") or "istio-system"))
    raise UsageError(f'unknown command "{name}" for "istioctl dashboard"')


# --- kube-inject ---------------------------------------------------------------------------------

INJECTED_STATUS = json.dumps({
    "initContainers": ["istio-init"], "containers": ["istio-proxy"],
    "volumes": ["workload-socket", "credential-socket", "workload-certs", "istio-envoy",
                "istio-data", "istio-podinfo", "istio-token", "istiod-ca-cert"],
    "imagePullSecrets": None, "revision": "default"}, separators=(",", ":"))
POD_TEMPLATE_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job")


def _sidecar() -> dict[str, Any]:
    return {
        "name": "istio-proxy", "image": PROXY_IMAGE,
        "args": ["proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local",
                 "--proxyLogLevel=warning", "--proxyComponentLogLevel=misc:error",
                 "--log_output_level=default:info"],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_NAMESPACE",
                 "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "ISTIO_META_CLUSTER_ID", "value": "Kubernetes"}],
        "ports": [{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021},
                           "periodSeconds": 15, "timeoutSeconds": 3, "failureThreshold": 4},
        "securityContext": {"runAsUser": 1337, "runAsGroup": 1337, "runAsNonRoot": True,
                            "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False},
        "volumeMounts": [{"name": n, "mountPath": m} for n, m in (
            ("workload-socket", "/var/run/secrets/workload-spiffe-uds"),
            ("credential-socket", "/var/run/secrets/credential-uds"),
            ("workload-certs", "/var/run/secrets/workload-spiffe-credentials"),
            ("istiod-ca-cert", "/var/run/secrets/istio"), ("istio-data", "/var/lib/istio/data"),
            ("istio-envoy", "/etc/istio/proxy"), ("istio-token", "/var/run/secrets/tokens"),
            ("istio-podinfo", "/etc/istio/pod"))],
    }


def _init_container() -> dict[str, Any]:
    return {"name": "istio-init", "image": PROXY_IMAGE,
            "args": ["istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m",
                     "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020",
                     "--log_output_level=default:info"],
            "securityContext": {"capabilities": {"add": ["NET_ADMIN", "NET_RAW"],
                                                 "drop": ["ALL"]},
                                "runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False}}


def _volumes() -> list[dict[str, Any]]:
    empty: list[dict[str, Any]] = [{"name": n, "emptyDir": {}} for n in
             ("workload-socket", "credential-socket", "workload-certs", "istio-data")]
    return [*empty, {"name": "istio-envoy", "emptyDir": {"medium": "Memory"}},
            {"name": "istio-podinfo", "downwardAPI": {"items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}}]}},
            {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken": {
                "audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}}]}},
            {"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}}]


def _inject_template(template: dict[str, Any]) -> None:
    meta = template.setdefault("metadata", {})
    spec = template.setdefault("spec", {})
    containers = spec.setdefault("containers", [])
    if any(c.get("name") == "istio-proxy" for c in containers):
        return  # already injected
    labels = meta.setdefault("labels", {})
    first = containers[0]["name"] if containers else ""
    meta.setdefault("annotations", {}).update({
        "kubectl.kubernetes.io/default-container": first,
        "kubectl.kubernetes.io/default-logs-container": first,
        "prometheus.io/path": "/stats/prometheus", "prometheus.io/port": "15020",
        "prometheus.io/scrape": "true", "sidecar.istio.io/status": INJECTED_STATUS})
    labels.update({"security.istio.io/tlsMode": "istio",
                   "service.istio.io/canonical-name": str(labels.get("app", first)),
                   "service.istio.io/canonical-revision": str(labels.get("version", "latest"))})
    containers.append(_sidecar())
    spec.setdefault("initContainers", []).append(_init_container())
    spec.setdefault("volumes", []).extend(_volumes())


def kube_inject(text: str) -> str:
    """`istioctl kube-inject`: every pod template gets istio-init and istio-proxy."""
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        if doc.get("kind") in POD_TEMPLATE_KINDS:
            _inject_template(doc.setdefault("spec", {}).setdefault("template", {}))
        elif doc.get("kind") == "Pod":
            _inject_template(doc)
    return "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs)


def cmd_kube_inject(p: Parsed) -> int:
    name = p.get("filename")
    if not name:
        raise UsageError("filename not specified (see --filename or -f)")
    from .kubectl import _source

    source = _source(str(name))
    text = source if "\n" in source else Path(source).read_text()
    try:
        injected = kube_inject(text)
    except yaml.YAMLError as exc:
        raise Failure(f"Error: {name} is not valid YAML: {exc}") from None
    if p.get("output"):
        with open(str(p.get("output")), "w") as handle:
            handle.write(injected)
    else:
        _out(injected)
    return 0


# --- the command table ---------------------------------------------------------------------------

YES = Flag("skip-confirmation", "y", "bool")
OUTPUT = Flag("output", "o")
COMMANDS: dict[str, Command] = {
    "install": Command(cmd_install, [Flag("set", "s", "list"), YES, Flag("filename", "f", "list"),
                                     Flag("verify", kind="bool"), Flag("revision", "r")],
                       "istioctl install [--set profile=default|demo|minimal|empty] [-y] "
                       "[--set KEY=VALUE]"),
    "verify-install": Command(cmd_verify_install, [Flag("revision", "r"),
                                                   Flag("filename", "f", "list")],
                              "istioctl verify-install [--revision default]"),
    "uninstall": Command(cmd_uninstall, [Flag("purge", kind="bool"), YES, Flag("revision", "r"),
                                         Flag("filename", "f", "list")],
                         "istioctl uninstall --purge [-y]"),
    "proxy-config": Command(cmd_proxy_config, [OUTPUT, *[Flag(f) for f in FILTER_FLAGS],
                                               Flag("file"), Flag("level"),
                                               Flag("reset", kind="bool")],
                            "istioctl proxy-config listeners|routes|clusters|endpoints|secret|"
                            "log|bootstrap|all POD[.NS] [-o json] [--level LEVEL]"),
    "proxy-status": Command(cmd_proxy_status, [Flag("revision", "r")],
                            "istioctl proxy-status [POD[.NS]]"),
    "analyze": Command(cmd_analyze, [Flag("all-namespaces", "A", "bool"),
                                     Flag("filename", "f", "list"), Flag("use-kube", "k",
                                                                         optional="true"),
                                     Flag("recursive", "R", "bool"), OUTPUT],
                       "istioctl analyze [-n NS | -A] [FILE...] [--use-kube=false]"),
    "x": Command(cmd_experimental, [Flag("for"), Flag("timeout"), Flag("revision", "r"),
                                    Flag("resource-version"), Flag("threshold")],
                 "istioctl x wait [--for=distribution] KIND NAME[.NS] | x describe pod|svc "
                 "NAME[.NS] | x precheck"),
    "version": Command(cmd_version, [Flag("remote", optional="true"),
                                     Flag("short", "s", "bool"), OUTPUT],
                       "istioctl version [--remote=false]"),
    "dashboard": Command(cmd_dashboard, [Flag("address"), Flag("port", "p"),
                                         Flag("browser", optional="true")],
                         "istioctl dashboard envoy POD[.NS] | prometheus | grafana | kiali"),
    "kube-inject": Command(cmd_kube_inject, [Flag("filename", "f"), OUTPUT,
                                             Flag("meshConfigFile"), Flag("injectConfigFile"),
                                             Flag("valuesFile"), Flag("revision", "r")],
                           "istioctl kube-inject -f FILE [-o OUT]"),
}
ALIASES = {"pc": "proxy-config", "ps": "proxy-status", "experimental": "x", "exp": "x",
           "dash": "dashboard", "d": "dashboard", "manifest-install": "install"}


TOOL = Tool("istioctl", GLOBAL, COMMANDS, error_word="Error", verb_hint=False,
            unknown_hint="Run 'istioctl --help' for usage.", aliases=ALIASES)


def istioctl_main(argv: Sequence[str] | None = None) -> int:
    """`istioctl ARGS...` on the local mesh (the real istioctl on the kubernetes backend)."""
    return TOOL.main(argv)
