"""`kubectl get` as tables: the columns kubectl prints for each kind, from manifests.

    tables.table(mesh.get("pods", namespace="bookinfo-test"))       # one kind: a DataFrame
    tables.tables(svcs + pods)                # several kinds: {"service": ..., "pod": ...}
    print(tables.text(svcs + pods, wide=True))   # the text `kubectl get svc,pod -o wide` prints
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import pandas as pd

__all__ = ["age", "human_duration", "table", "tables", "text"]

Item = dict[str, Any]
Row = dict[str, str]

# kubectl pads every column with three spaces and makes none narrower than six
# (cli-runtime's tabwriter settings), so `AGE` over `5s` is still six wide.
PADDING = 3
MIN_WIDTH = 6
NONE = "<none>"


def human_duration(seconds: float) -> str:
    """A duration as kubectl's AGE column writes it: `45s`, `3m12s`, `75m`, `5h3m`, `2d`."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if hours < 24 * 365 * 2:
        return f"{days}d"
    years = days // 365
    if hours < 24 * 365 * 8:
        return f"{years}y{days % 365}d" if days % 365 else f"{years}y"
    return f"{years}y"


def age(item: Item, now: datetime | None = None) -> str:
    """The AGE column: time since metadata.creationTimestamp, `<unknown>` without one."""
    stamp = (item.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return "<unknown>"
    created = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    return human_duration(((now or datetime.now(UTC)) - created).total_seconds())


def _labels(selector: dict[str, str] | None) -> str:
    """`app=istiod,istio=pilot`, keys sorted as kubectl sorts them; `<none>` when empty."""
    if not selector:
        return NONE
    return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def _label_selector(selector: dict[str, Any] | None) -> str:
    """A Deployment's spec.selector (matchLabels and matchExpressions) as kubectl writes it."""
    selector = selector or {}
    parts = {k: f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()}
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], ",".join(sorted(expr.get("values", [])))
        parts[key] = {"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})",
                      "Exists": key, "DoesNotExist": f"!{key}"}[op]
    return ",".join(parts[k] for k in sorted(parts)) or NONE


def _json_column(value: Any) -> str:
    """A CRD printer column holding a list: kubectl prints it as compact JSON, or blank."""
    return json.dumps(value, separators=(",", ":")) if value else ""


# --- one function per kind, each returning (normal columns, wide-only columns) -----------------


def _pod(item: Item, now: datetime | None) -> tuple[Row, Row]:
    spec, status = item.get("spec") or {}, item.get("status") or {}
    statuses = status.get("containerStatuses") or []
    reason = status.get("reason") or status.get("phase") or "Unknown"
    ready, running = 0, False
    # kubectl walks the containers from the last one, so the first container's state wins.
    for c in reversed(statuses):
        state = c.get("state") or {}
        waiting, terminated = state.get("waiting"), state.get("terminated")
        if waiting and waiting.get("reason"):
            reason = waiting["reason"]
        elif terminated:
            reason = terminated.get("reason") or (
                f"Signal:{terminated['signal']}" if terminated.get("signal")
                else f"ExitCode:{terminated.get('exitCode', 0)}")
        elif c.get("ready") and "running" in state:
            ready, running = ready + 1, True
    if reason == "Completed" and running:
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        reason = "Running" if conditions.get("Ready") == "True" else "NotReady"
    if (item.get("metadata") or {}).get("deletionTimestamp"):
        reason = "Terminating"
    gates = spec.get("readinessGates") or []
    return {
        "READY": f"{ready}/{len(spec.get('containers') or [])}",
        "STATUS": reason,
        "RESTARTS": str(sum(int(c.get("restartCount", 0)) for c in statuses)),
        "AGE": age(item, now),
    }, {
        "IP": status.get("podIP") or NONE,
        "NODE": spec.get("nodeName") or NONE,
        "NOMINATED NODE": status.get("nominatedNodeName") or NONE,
        "READINESS GATES": f"0/{len(gates)}" if gates else NONE,
    }


def _external_ip(spec: dict[str, Any], status: dict[str, Any]) -> str:
    """EXTERNAL-IP: a LoadBalancer's ingress addresses, `<pending>` until it has one."""
    external = list(spec.get("externalIPs") or [])
    kind = spec.get("type") or "ClusterIP"
    if kind == "ExternalName":
        return str(spec.get("externalName") or NONE)
    if kind == "LoadBalancer":
        ingress = (status.get("loadBalancer") or {}).get("ingress") or []
        found = [i.get("ip") or i.get("hostname") for i in ingress if i.get("ip") or
                 i.get("hostname")] + external
        return ",".join(found) if found else "<pending>"
    return ",".join(external) if external else NONE


def _service(item: Item, now: datetime | None) -> tuple[Row, Row]:
    spec, status = item.get("spec") or {}, item.get("status") or {}
    ports = [f"{p['port']}:{p['nodePort']}/{p.get('protocol', 'TCP')}" if p.get("nodePort")
             else f"{p['port']}/{p.get('protocol', 'TCP')}" for p in spec.get("ports") or []]
    cluster_ips = spec.get("clusterIPs") or [spec.get("clusterIP")]
    return {
        "TYPE": spec.get("type") or "ClusterIP",
        "CLUSTER-IP": cluster_ips[0] or NONE,
        "EXTERNAL-IP": _external_ip(spec, status),
        "PORT(S)": ",".join(ports) or NONE,
        "AGE": age(item, now),
    }, {"SELECTOR": _labels(spec.get("selector"))}


def _deployment(item: Item, now: datetime | None) -> tuple[Row, Row]:
    spec, status = item.get("spec") or {}, item.get("status") or {}
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
    return {
        "READY": f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 1)}",
        "UP-TO-DATE": str(status.get("updatedReplicas", 0)),
        "AVAILABLE": str(status.get("availableReplicas", 0)),
        "AGE": age(item, now),
    }, {
        "CONTAINERS": ",".join(c["name"] for c in containers),
        "IMAGES": ",".join(c.get("image", "") for c in containers),
        "SELECTOR": _label_selector(spec.get("selector")),
    }


def _namespace(item: Item, now: datetime | None) -> tuple[Row, Row]:
    return {"STATUS": (item.get("status") or {}).get("phase", "Active"),
            "AGE": age(item, now)}, {}


def _virtual_service(item: Item, now: datetime | None) -> tuple[Row, Row]:
    spec = item.get("spec") or {}
    return {"GATEWAYS": _json_column(spec.get("gateways")),
            "HOSTS": _json_column(spec.get("hosts")), "AGE": age(item, now)}, {}


def _destination_rule(item: Item, now: datetime | None) -> tuple[Row, Row]:
    return {"HOST": str((item.get("spec") or {}).get("host", "")), "AGE": age(item, now)}, {}


def _other(item: Item, now: datetime | None) -> tuple[Row, Row]:
    return {"AGE": age(item, now)}, {}


Columns = Callable[[Item, datetime | None], tuple[Row, Row]]
# Keyed by `kind.group`, the name kubectl prints before each NAME when it lists several kinds.
COLUMNS: dict[str, Columns] = {
    "pod": _pod,
    "service": _service,
    "deployment.apps": _deployment,
    "namespace": _namespace,
    "virtualservice.networking.istio.io": _virtual_service,
    "destinationrule.networking.istio.io": _destination_rule,
}
HEADERS: dict[str, tuple[list[str], list[str]]] = {
    "pod": (["READY", "STATUS", "RESTARTS", "AGE"],
            ["IP", "NODE", "NOMINATED NODE", "READINESS GATES"]),
    "service": (["TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"], ["SELECTOR"]),
    "deployment.apps": (["READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
                        ["CONTAINERS", "IMAGES", "SELECTOR"]),
    "namespace": (["STATUS", "AGE"], []),
    "virtualservice.networking.istio.io": (["GATEWAYS", "HOSTS", "AGE"], []),
    "destinationrule.networking.istio.io": (["HOST", "AGE"], []),
}


def resource_name(item: Item) -> str:
    """`pod`, `deployment.apps`, `gateway.networking.istio.io`: kind plus API group."""
    group = str(item.get("apiVersion", "v1")).rpartition("/")[0]
    kind = str(item.get("kind", "")).lower()
    return f"{kind}.{group}" if group else kind


def _frame(items: list[Item], wide: bool, now: datetime | None, prefix: str = "") -> pd.DataFrame:
    """One kind's rows; NAMESPACE first when the items span namespaces, as `-A` shows it."""
    kind = resource_name(items[0]) if items else ""
    normal, extra = HEADERS.get(kind, (["AGE"], []))
    columns = ["NAME", *normal, *(extra if wide else [])]
    namespaces = {(i.get("metadata") or {}).get("namespace", "") for i in items}
    if len(namespaces) > 1:
        columns.insert(0, "NAMESPACE")
    rows = []
    for item in items:
        meta = item.get("metadata") or {}
        cells, wide_cells = COLUMNS.get(kind, _other)(item, now)
        rows.append({"NAMESPACE": meta.get("namespace", ""), "NAME": prefix + meta["name"],
                     **cells, **wide_cells})
    return pd.DataFrame(rows, columns=columns)


def _by_kind(items: Iterable[Item]) -> dict[str, list[Item]]:
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(resource_name(item), []).append(item)
    return groups


def table(items: list[Item], wide: bool = False, now: datetime | None = None) -> pd.DataFrame:
    """`kubectl get KIND [-o wide]` for items of one kind, as a DataFrame of strings."""
    groups = _by_kind(items)
    if len(groups) > 1:
        raise ValueError(f"these items hold several kinds ({', '.join(groups)}): use "
                         "tables.tables(items), one table per kind as `kubectl get svc,pod` prints")
    return _frame(items, wide, now)


def tables(items: list[Item], wide: bool = False,
           now: datetime | None = None) -> dict[str, pd.DataFrame]:
    """`kubectl get svc,pod,deploy`: one table per kind, names prefixed `service/` etc. when
    there are several kinds."""
    groups = _by_kind(items)
    several = len(groups) > 1
    return {kind: _frame(group, wide, now, f"{kind}/" if several else "")
            for kind, group in groups.items()}


def _aligned(frame: pd.DataFrame) -> str:
    """Columns padded as kubectl's tabwriter pads them; the last column is never padded."""
    rows = [list(frame.columns), *frame.astype(str).values.tolist()]
    widths = [max(MIN_WIDTH, max(len(row[i]) for row in rows) + PADDING)
              for i in range(len(frame.columns) - 1)]
    return "\n".join("".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
                     + row[-1] for row in rows)


def text(items: list[Item], wide: bool = False, now: datetime | None = None) -> str:
    """The text `kubectl get` prints: one block per kind, blank lines between blocks."""
    if not items:
        return "No resources found."
    return "\n\n".join(_aligned(frame) for frame in tables(items, wide, now).values())
