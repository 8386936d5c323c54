"""Output in the real tools' shapes: kubectl's tables, -o yaml|json|name|jsonpath|custom-columns,
`kubectl describe` text, and the tab-aligned tables istioctl prints."""

from __future__ import annotations

import base64
import json
import time
from calendar import timegm
from datetime import datetime
from typing import Any

import yaml

from . import jsonpath
from .flags import UsageError
from .kinds import Kind

__all__ = ["custom_columns", "describe", "get_table", "as_list", "kube_yaml", "name_of",
           "output", "tabwrite"]

Item = dict[str, Any]
NONE = "<none>"
FORMATS = ("json", "yaml", "name", "wide", "jsonpath=…", "custom-columns=…")


# --- Go's text/tabwriter, which both tools use --------------------------------------------------


def tabwrite(text: str, minwidth: int = 0, padding: int = 1) -> str:
    """Align tab-separated cells as Go's tabwriter does: a column spans consecutive lines that
    have a cell in it; a line's last cell (no tab after it) is never padded."""
    lines = [line.split("\t") for line in text.split("\n")]
    out: list[list[str]] = [[] for _ in lines]

    def block(first: int, last: int, column: int) -> None:
        this = first
        while this < last:
            if column >= len(lines[this]) - 1:
                this += 1
                continue
            start, width = this, minwidth
            while this < last and column < len(lines[this]) - 1:
                width = max(width, len(lines[this][column]) + padding)
                this += 1
            for row in range(start, this):
                out[row].append(lines[row][column].ljust(width))
            block(start, this, column + 1)

    block(0, len(lines), 0)
    return "\n".join("".join(cells) + line[-1] for cells, line in zip(out, lines, strict=True))


def rows_text(rows: list[list[str]], minwidth: int, padding: int) -> str:
    return tabwrite("\n".join("\t".join(row) for row in rows), minwidth, padding)


# --- YAML as kubectl prints it (go-yaml) -----------------------------------------------------


class _KubeDumper(yaml.SafeDumper):
    """go-yaml's choices, which kubectl's -o yaml shows: a string that would read back as
    something else (a timestamp, a number, `true`, empty) in double quotes, a multi-line
    string as a literal block, keys sorted."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = None
    if "\n" in value:
        style = "|"
    elif value == "" or dumper.resolve(yaml.ScalarNode, value, (True, False)) != \
            "tag:yaml.org,2002:str":
        style = '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_KubeDumper.add_representer(str, _represent_str)


def kube_yaml(data: Any) -> str:
    """`data` as `kubectl get -o yaml` prints it."""
    return yaml.dump(data, Dumper=_KubeDumper, sort_keys=True, default_flow_style=False,
                     allow_unicode=True, width=float("inf"))


# --- kubectl get ----------------------------------------------------------------------------------


def _json_column(value: Any) -> str:
    return json.dumps(value, separators=(",", ":")) if value else ""


def _extra_columns(kind: str, item: Item) -> dict[str, str]:
    """Columns kubectl prints for kinds lablib.tables shows only with NAME and AGE."""
    spec = item.get("spec") or {}
    if kind == "Secret":
        data = {**(item.get("data") or {}), **(item.get("stringData") or {})}
        return {"TYPE": str(item.get("type") or "Opaque"), "DATA": str(len(data))}
    if kind == "ConfigMap":
        return {"DATA": str(len(item.get("data") or {}) + len(item.get("binaryData") or {}))}
    if kind == "ServiceAccount":
        return {"SECRETS": str(len(item.get("secrets") or []))}
    if kind == "ServiceEntry":
        return {"HOSTS": _json_column(spec.get("hosts")),
                "LOCATION": str(spec.get("location") or ""),
                "RESOLUTION": str(spec.get("resolution") or "")}
    if kind == "IstioOperator":  # the CRD's printer columns: Revision, Status, Age
        return {"REVISION": str(spec.get("revision") or ""),
                "STATUS": str((item.get("status") or {}).get("status") or "")}
    if kind == "PeerAuthentication":
        return {"MODE": str((spec.get("mtls") or {}).get("mode") or "")}
    if kind == "AuthorizationPolicy":  # the CRD's printer column
        return {"ACTION": str(spec.get("action") or "ALLOW")}
    return {}


def get_table(items: list[Item], wide: bool = False, all_namespaces: bool = False,
              show_labels: bool = False, headers: bool = True,
              now: datetime | None = None) -> str:
    """`kubectl get` text: one block per kind, `kind/` before names when there are several."""
    from .. import tables  # pandas: imported only when a table is printed

    blocks = []
    frames = tables.tables(items, wide, now)
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(tables.resource_name(item), []).append(item)
    for kind_name, frame in frames.items():
        group = groups[kind_name]
        kind = str(group[0].get("kind", ""))
        extra = [_extra_columns(kind, item) for item in group]
        if extra and extra[0]:
            at = list(frame.columns).index("AGE")
            for offset, column in enumerate(extra[0]):
                frame.insert(at + offset, column, [row[column] for row in extra])
        namespaced = bool((group[0].get("metadata") or {}).get("namespace"))
        if all_namespaces and namespaced and "NAMESPACE" not in frame.columns:
            frame.insert(0, "NAMESPACE", [i["metadata"].get("namespace", "") for i in group])
        if show_labels:
            frame["LABELS"] = [",".join(f"{k}={v}" for k, v in sorted(
                ((i.get("metadata") or {}).get("labels") or {}).items())) or NONE
                for i in group]
        rows = frame.astype(str).values.tolist()
        if headers:
            rows.insert(0, list(frame.columns))
        blocks.append(rows_text(rows, tables.MIN_WIDTH, tables.PADDING))
    return "\n\n".join(blocks)


def as_list(items: list[Item]) -> Item:
    """Several objects as kubectl wraps them for -o json|yaml|jsonpath."""
    return {"apiVersion": "v1", "items": items, "kind": "List",
            "metadata": {"resourceVersion": ""}}


def name_of(item: Item, kind: Kind | None = None) -> str:
    """`service/details`, `deployment.apps/reviews-v1`, as -o name prints it."""
    group = str(item.get("apiVersion", "v1")).rpartition("/")[0]
    word = kind.word if kind else ".".join(filter(None, [str(item.get("kind", "")).lower(),
                                                          group]))
    return f"{word}/{item['metadata']['name']}"


def custom_columns(spec: str, items: list[Item], headers: bool) -> str:
    columns = []
    for part in spec.split(","):
        header, colon, path = part.partition(":")
        if not colon or not header:
            raise UsageError(f'unexpected custom-columns spec: {part}, expected <header>:'
                             f'<json-path-expr>')
        columns.append((header, path))
    rows = [[h for h, _ in columns]] if headers else []
    for item in items:
        row = []
        for _, path in columns:
            found = jsonpath.values(path, item)
            row.append(",".join(jsonpath.text_of(v) for v in found) if found else NONE)
        rows.append(row)
    return rows_text(rows, 0, 3)


def output(fmt: str, items: list[Item], single: bool) -> str:
    """-o yaml|json|name|jsonpath=…|custom-columns=…; `single` when one object was named."""
    data: Any = items[0] if single and len(items) == 1 else as_list(items)
    if fmt == "json":
        return json.dumps(data, indent=4, sort_keys=True, ensure_ascii=False) + "\n"
    if fmt == "yaml":
        return kube_yaml(data)
    if fmt == "name":
        return "".join(name_of(i) + "\n" for i in items)
    kind, _, template = fmt.partition("=")
    if kind == "jsonpath" and template:
        try:
            return jsonpath.render(template, data)
        except jsonpath.JSONPathError as exc:
            raise UsageError(str(exc)) from None
    if kind == "custom-columns" and template:
        return custom_columns(template, items, True) + "\n"
    raise UsageError(f'unable to match a printer suitable for the output format "{fmt}", '
                     f"allowed formats are: {','.join(FORMATS)}")


# --- kubectl describe -----------------------------------------------------------------------------


def _when(stamp: str | None) -> str:
    """RFC 3339 as describe prints it, in local time: `Tue, 05 Mar 2024 11:37:41 +0800`."""
    if not stamp:
        return NONE
    seconds = timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
    return time.strftime("%a, %d %b %Y %H:%M:%S %z", time.localtime(seconds))


def _map_lines(title: str, values: dict[str, Any] | None, sep: str = "=") -> list[str]:
    if not values:
        return [f"{title}:\t{NONE}"]
    lines = []
    for i, (k, v) in enumerate(sorted(values.items())):
        lines.append(f"{title + ':' if i == 0 else ''}\t{k}{sep}{v}")
    return lines


def _describe_pod(item: Item) -> list[str]:
    meta, spec, status = item["metadata"], item.get("spec") or {}, item.get("status") or {}
    statuses = {c["name"]: c for c in status.get("containerStatuses") or []}
    name = meta["name"]
    lines = [
        f"Name:\t{name}", f"Namespace:\t{meta.get('namespace', '')}", "Priority:\t0",
        f"Service Account:\t{spec.get('serviceAccountName') or 'default'}",
        f"Node:\t{spec.get('nodeName', NONE)}/{status.get('hostIP', '')}",
        f"Start Time:\t{_when(status.get('startTime'))}",
        *_map_lines("Labels", meta.get("labels")),
        *_map_lines("Annotations", meta.get("annotations"), ": "),
        f"Status:\t{status.get('phase', 'Unknown')}",
        f"IP:\t{status.get('podIP', '')}",
        "IPs:",
        f"  IP:\t{status.get('podIP', '')}",
        f"Controlled By:\tReplicaSet/{name.rsplit('-', 1)[0]}",
        "Containers:",
    ]
    for c in spec.get("containers") or []:
        state = statuses.get(c["name"], {})
        running = "running" in (state.get("state") or {})
        ports = ", ".join(f"{p['containerPort']}/{p.get('protocol', 'TCP')}"
                          for p in c.get("ports") or [])
        lines += [f"  {c['name']}:", f"    Image:\t{c.get('image', '')}"]
        if ports:
            lines.append(f"    Ports:\t{ports}")
        if c.get("args"):
            lines += ["    Args:", *(f"      {a}" for a in c["args"])]
        lines += [
            f"    State:\t{'Running' if running else 'Waiting'}",
            f"    Ready:\t{'True' if state.get('ready') else 'False'}",
            f"    Restart Count:\t{state.get('restartCount', 0)}",
        ]
        env = c.get("env") or []
        if env:
            lines.append("    Environment:")
            lines += [f"      {e['name']}:\t{e.get('value', '')}" for e in env]
        else:
            lines.append(f"    Environment:\t{NONE}")
    ready = "True" if status.get("phase") == "Running" else "False"
    lines += ["Conditions:", "  Type\tStatus", "  Initialized \tTrue ", f"  Ready \t{ready} ",
              f"  ContainersReady \t{ready} ", "  PodScheduled \tTrue ",
              f"Volumes:\t{NONE}", "QoS Class:\tBestEffort", f"Node-Selectors:\t{NONE}",
              f"Tolerations:\t{NONE}", f"Events:\t{NONE}"]
    return lines


def _describe_service(item: Item, endpoints: dict[str, list[str]]) -> list[str]:
    meta, spec = item["metadata"], item.get("spec") or {}
    status = item.get("status") or {}
    selector = spec.get("selector") or {}
    ip = spec.get("clusterIP") or NONE
    lines = [
        f"Name:\t{meta['name']}", f"Namespace:\t{meta.get('namespace', '')}",
        *_map_lines("Labels", meta.get("labels")),
        *_map_lines("Annotations", meta.get("annotations"), ": "),
        f"Selector:\t{','.join(f'{k}={v}' for k, v in sorted(selector.items())) or NONE}",
        f"Type:\t{spec.get('type') or 'ClusterIP'}",
        "IP Family Policy:\tSingleStack", "IP Families:\tIPv4", f"IP:\t{ip}", f"IPs:\t{ip}",
    ]
    ingress = (status.get("loadBalancer") or {}).get("ingress") or []
    if ingress:
        lines.append("LoadBalancer Ingress:\t" + ", ".join(
            str(i.get("ip") or i.get("hostname")) for i in ingress))
    for p in spec.get("ports") or []:
        name = p.get("name") or "<unset>"
        protocol = p.get("protocol", "TCP")
        target = p.get("targetPort", p["port"])
        lines += [f"Port:\t{name}\t{p['port']}/{protocol}",
                  f"TargetPort:\t{target}/{protocol}"]
        if p.get("nodePort"):
            lines.append(f"NodePort:\t{name}\t{p['nodePort']}/{protocol}")
        lines.append(f"Endpoints:\t{','.join(endpoints.get(str(target), [])) or NONE}")
    lines += ["Session Affinity:\tNone"]
    if spec.get("type") in ("LoadBalancer", "NodePort"):
        lines.append("External Traffic Policy:\tCluster")
    lines.append(f"Events:\t{NONE}")
    return lines


def _describe_namespace(item: Item) -> list[str]:
    meta = item["metadata"]
    labels = {"kubernetes.io/metadata.name": meta["name"], **(meta.get("labels") or {})}
    return [f"Name:\t{meta['name']}", *_map_lines("Labels", labels),
            *_map_lines("Annotations", meta.get("annotations"), ": "),
            f"Status:\t{(item.get('status') or {}).get('phase', 'Active')}", "",
            "No resource quota.", "", "No LimitRange resource."]


def _title(key: str) -> str:
    """`creationTimestamp` as describe titles it: `Creation Timestamp`."""
    words, current = [], ""
    for ch in key:
        if ch.isupper() and current and not current[-1].isupper():
            words.append(current)
            current = ch
        else:
            current += ch
    words.append(current)
    return " ".join(w[:1].upper() + w[1:] for w in words if w)


def _nested(value: Any, indent: int) -> list[str]:
    """Any value as kubectl's generic describer nests it (title-cased keys, two spaces)."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for k, v in sorted(value.items()):
            if isinstance(v, (dict, list)):
                lines.append(f"{pad}{_title(str(k))}:")
                lines += _nested(v, indent + 1)
            else:
                lines.append(f"{pad}{_title(str(k))}:\t{_scalar(v)}")
    elif isinstance(value, list):
        for v in value:
            if isinstance(v, dict):
                lines += _nested(v, indent)
            else:
                lines.append(f"{pad}{_scalar(v)}")
    return lines


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _heading(item: Item) -> list[str]:
    meta = item["metadata"]
    lines = [f"Name:\t{meta['name']}"]
    if meta.get("namespace"):
        lines.append(f"Namespace:\t{meta['namespace']}")
    return [*lines, *_map_lines("Labels", meta.get("labels")),
            *_map_lines("Annotations", meta.get("annotations"), ": ")]


def _describe_secret(item: Item) -> list[str]:
    """Secret data is shown by size only, as kubectl does."""
    data = item.get("data") or {}
    sizes = [f"{k}:\t{len(base64.b64decode(v))} bytes" for k, v in sorted(data.items())]
    return [*_heading(item), "", f"Type:\t{item.get('type') or 'Opaque'}", "", "Data",
            "====", *sizes]


def _describe_configmap(item: Item) -> list[str]:
    lines = [*_heading(item), "", "Data", "===="]
    for k, v in sorted((item.get("data") or {}).items()):
        lines += [f"{k}:", "----", *str(v).splitlines(), ""]
    return [*lines, "", "BinaryData", "====", "", f"Events:\t{NONE}"]


def _describe_generic(item: Item) -> list[str]:
    meta = item["metadata"]
    lines = _heading(item)
    lines += [f"API Version:\t{item.get('apiVersion', '')}", f"Kind:\t{item.get('kind', '')}",
              "Metadata:",
              *_nested({k: v for k, v in meta.items()
                        if k not in ("name", "namespace", "labels", "annotations")}, 1)]
    for key in ("spec", "data", "status"):
        if item.get(key):
            lines += [f"{_title(key)}:", *_nested(item[key], 1)]
    lines.append(f"Events:\t{NONE}")
    return lines


def describe(item: Item, endpoints: dict[str, list[str]] | None = None) -> str:
    """`kubectl describe` text for one object."""
    kind = item.get("kind")
    if kind == "Pod":
        lines = _describe_pod(item)
    elif kind == "Service":
        lines = _describe_service(item, endpoints or {})
    elif kind == "Namespace":
        lines = _describe_namespace(item)
    elif kind == "Secret":
        lines = _describe_secret(item)
    elif kind == "ConfigMap":
        lines = _describe_configmap(item)
    else:
        lines = _describe_generic(item)
    return tabwrite("\n".join(lines), 0, 2)
