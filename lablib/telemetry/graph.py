"""A service graph like Kiali's: who called whom, how often, how many failed, over mTLS or not.

    graph = graph_data(metrics, namespace="bookinfo-test", window=60)   # the last minute
    graph.edges                  # source, destination, protocol, requests, rate, error_rate, mtls
    figure(graph).show()
    live = LiveGraph(metrics, "bookinfo-test", window=30)
    display(live.widget); live.run(seconds=20)                          # redraws every 2 s

Nodes are workloads with their versions (Kiali's versioned app graph), the ingress gateway,
`unknown` for callers outside the mesh, and a Service or an external host for requests that
reached no workload (a fault-injected abort, a breaker overflow, no route). Edges come from
the server side's reports (`reporter="destination"`), as Kiali reads them, and from the
client side's for requests no server saw.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import plotly.graph_objects as go

from .counts import Mark, increase, settle, snapshot
from .live import LiveFigure

if TYPE_CHECKING:
    from .metrics import MetricsSource

__all__ = ["EDGE_COLUMNS", "NODE_COLUMNS", "GraphData", "LiveGraph", "edges_from_increase",
           "figure", "graph_data", "service_graph"]

UNKNOWN = "unknown"
EDGE_COLUMNS = ["source", "destination", "protocol", "requests", "rate", "errors", "error_rate",
                "mtls", "bytes", "codes", "flags"]
NODE_COLUMNS = ["id", "kind", "namespace", "workload", "app", "version", "label"]
# Kiali's default health thresholds for an edge's share of failed requests.
DEGRADED, FAILURE = 0.001, 0.20
COLOURS = {"ok": "#3f8f3f", "degraded": "#f0a30a", "failure": "#cc2b2b", "tcp": "#4575b4",
           "idle": "#b0b0b0"}
SYMBOLS = {"workload": "circle", "gateway": "diamond", "service": "triangle-up",
           "external": "square", "unknown": "square"}
NODE_COLOURS = ("#1f77b4", "#9467bd", "#8c564b", "#17becf", "#e377c2", "#7f7f7f", "#bcbd22",
                "#ff7f0e")


@dataclass(frozen=True)
class GraphData:
    """Nodes and edges over `seconds`: requests (connections for TCP) and their rates."""

    nodes: pd.DataFrame
    edges: pd.DataFrame
    seconds: float
    namespace: str | None = None
    since_mark: bool = False

    @property
    def span(self) -> str:
        """The time the graph covers, in words."""
        if self.since_mark:
            return f"since the mark ({self.seconds:.0f} s)"
        return f"in the last {self.seconds:.0f} s"

    def edge(self, source: str, destination: str, protocol: str = "http") -> pd.Series | None:
        """The edge between two node ids (`bookinfo-test/reviews-v3`), or None."""
        found = self.edges[(self.edges["source"] == source)
                           & (self.edges["destination"] == destination)
                           & (self.edges["protocol"] == protocol)]
        return found.iloc[0] if len(found) else None


# --- from counter increases to nodes and edges -------------------------------------------------
def _is_gateway(workload: str) -> bool:
    return workload.endswith("gateway")


def _source_node(row: pd.Series) -> dict[str, str]:
    workload, namespace = row["source_workload"], row["source_workload_namespace"]
    if workload == UNKNOWN:
        return {"id": UNKNOWN, "kind": "unknown", "namespace": "", "workload": UNKNOWN,
                "app": UNKNOWN, "version": "", "label": UNKNOWN}
    return _workload_node(workload, namespace, row["source_app"], row["source_version"])


def _destination_node(row: pd.Series) -> dict[str, str]:
    workload = row["destination_workload"]
    if workload != UNKNOWN:
        return _workload_node(workload, row["destination_workload_namespace"],
                              row["destination_app"], row["destination_version"])
    service, namespace = row["destination_service_name"], row["destination_service_namespace"]
    if namespace and namespace != UNKNOWN:  # a Service whose workloads the request never reached
        return {"id": f"{namespace}/{service} (service)", "kind": "service",
                "namespace": namespace, "workload": "", "app": service, "version": "",
                "label": f"{service} (service)"}
    host = service if service and service != UNKNOWN else UNKNOWN
    return {"id": f"external/{host}" if host != UNKNOWN else UNKNOWN,
            "kind": "external" if host != UNKNOWN else "unknown", "namespace": "",
            "workload": "", "app": host, "version": "", "label": host}


def _workload_node(workload: str, namespace: str, app: str, version: str) -> dict[str, str]:
    kind = "gateway" if _is_gateway(workload) else "workload"
    if kind == "gateway" or app in ("", UNKNOWN):
        label = workload
    else:
        label = f"{app} {version}" if version not in ("", UNKNOWN) else app
    return {"id": f"{namespace}/{workload}", "kind": kind, "namespace": namespace,
            "workload": workload, "app": app, "version": version, "label": label}


def _summary(counts: dict[str, float]) -> str:
    """`200×57 500×3`: how many of each, largest first."""
    items = sorted(((k, v) for k, v in counts.items() if v > 0), key=lambda kv: (-kv[1], kv[0]))
    return " ".join(f"{k}×{int(round(v))}" for k, v in items)


def _columns(frame: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    missing = {n: "" for n in names if n not in frame}
    return frame.assign(**missing) if missing else frame


def _reported(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One metric's series: the server side's, plus the client side's for requests that
    reached no server that reports (no workload, or a workload without a sidecar)."""
    rows = frame[(frame["__name__"] == metric) & (frame["value"] > 0)]
    server = rows[rows["reporter"] == "destination"]
    reached = set(zip(server["destination_workload_namespace"], server["destination_workload"],
                      strict=True))
    client = rows[rows["reporter"] == "source"]
    unseen = [w == UNKNOWN or (ns, w) not in reached for ns, w in zip(
        client["destination_workload_namespace"], client["destination_workload"], strict=True)]
    return pd.concat([server, client[unseen]], ignore_index=True)


LABELS = ("__name__", "reporter", "source_workload", "source_workload_namespace", "source_app",
          "source_version", "destination_workload", "destination_workload_namespace",
          "destination_app", "destination_version", "destination_service_name",
          "destination_service_namespace", "response_code", "response_flags",
          "connection_security_policy")


def edges_from_increase(gained: pd.DataFrame, seconds: float, namespace: str | None = None,
                        since_mark: bool = False) -> GraphData:
    """Nodes and edges from what each counter series gained over `seconds` (`counts.increase`).

    An HTTP edge's errors are requests answered 4xx, 5xx or not at all (Kiali's reading); a TCP
    edge's are connections with a response flag. `mtls` is the share of requests the server
    saw over mutual TLS (NaN when no server reported them).
    """
    if gained.empty:
        return GraphData(pd.DataFrame(columns=NODE_COLUMNS), pd.DataFrame(columns=EDGE_COLUMNS),
                         seconds, namespace, since_mark)
    frame = _columns(gained, LABELS)
    http = _reported(frame, "istio_requests_total")
    tcp = _reported(frame, "istio_tcp_connections_opened_total")
    tcp_bytes = pd.concat([_reported(frame, m) for m in (
        "istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total")], ignore_index=True)
    nodes: dict[str, dict[str, str]] = {}
    edges: dict[tuple[str, str, str], dict[str, Any]] = {}

    def edge_of(row: pd.Series, protocol: str) -> dict[str, Any] | None:
        source, destination = _source_node(row), _destination_node(row)
        if namespace is not None and namespace not in (source["namespace"],
                                                      destination["namespace"]):
            return None
        nodes.setdefault(source["id"], source)
        nodes.setdefault(destination["id"], destination)
        return edges.setdefault((source["id"], destination["id"], protocol), {
            "source": source["id"], "destination": destination["id"], "protocol": protocol,
            "requests": 0.0, "errors": 0.0, "secure": 0.0, "judged": 0.0, "bytes": 0.0,
            "codes": {}, "flags": {}})

    for _, row in http.iterrows():
        e = edge_of(row, "http")
        if e is None:
            continue
        n, code, flags = float(row["value"]), str(row["response_code"]), row["response_flags"]
        e["requests"] += n
        e["codes"][code] = e["codes"].get(code, 0.0) + n
        if flags not in ("", "-"):
            e["flags"][flags] = e["flags"].get(flags, 0.0) + n
        if not code.isdigit() or int(code) >= 400 or int(code) == 0:
            e["errors"] += n
        if row["reporter"] == "destination":
            e["judged"] += n
            e["secure"] += n if row["connection_security_policy"] == "mutual_tls" else 0.0
    for _, row in tcp.iterrows():
        e = edge_of(row, "tcp")
        if e is None:
            continue
        n, flags = float(row["value"]), row["response_flags"]
        e["requests"] += n
        if flags not in ("", "-"):
            e["flags"][flags] = e["flags"].get(flags, 0.0) + n
            e["errors"] += n
        if row["reporter"] == "destination":
            e["judged"] += n
            e["secure"] += n if row["connection_security_policy"] == "mutual_tls" else 0.0
    for _, row in tcp_bytes.iterrows():
        e = edge_of(row, "tcp")
        if e is not None:
            e["bytes"] += float(row["value"])

    rows = []
    for e in edges.values():
        requests = e["requests"]
        rows.append({
            "source": e["source"], "destination": e["destination"], "protocol": e["protocol"],
            "requests": int(round(requests)), "rate": requests / seconds if seconds else 0.0,
            "errors": int(round(e["errors"])),
            "error_rate": e["errors"] / requests if requests else 0.0,
            "mtls": e["secure"] / e["judged"] if e["judged"] else math.nan,
            "bytes": e["bytes"], "codes": _summary(e["codes"]), "flags": _summary(e["flags"])})
    edge_frame = pd.DataFrame(rows, columns=EDGE_COLUMNS)
    edge_frame = edge_frame[edge_frame["requests"] > 0].sort_values(
        ["source", "destination", "protocol"]).reset_index(drop=True)
    used = set(edge_frame["source"]) | set(edge_frame["destination"])
    node_frame = pd.DataFrame([n for i, n in nodes.items() if i in used], columns=NODE_COLUMNS)
    return GraphData(node_frame.sort_values("id").reset_index(drop=True), edge_frame, seconds,
                     namespace, since_mark)


def graph_data(metrics: MetricsSource, namespace: str | None = None, *,
               since: Mark | None = None, window: float = 60.0, wait: bool = True) -> GraphData:
    """The graph of the traffic since `since` (a `counts.mark`), else of the last `window` s.

    `namespace` keeps the edges with an end in it (as Kiali's namespace graph does). Since a
    mark, with `wait`, it first lets the last requests reach the metrics: each proxy is
    scraped at its own moment, so one hop's reports can arrive a scrape after another's.
    """
    if since is not None:
        if wait:
            settle(metrics)
        return edges_from_increase(since.increase(), time.time() - since.time, namespace,
                                   since_mark=True)
    now = time.time()
    before = snapshot(metrics, at=now - window)
    return edges_from_increase(increase(before, snapshot(metrics)), window, namespace)


# --- drawing -----------------------------------------------------------------------------------
def _layout(nodes: pd.DataFrame, edges: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """Left to right in layers, as Kiali's dagre layout: each node one column right of its
    furthest caller; callers from outside the mesh first."""
    ids = list(nodes["id"])
    depth = {i: 0 for i in ids}
    links = [(s, d) for s, d in zip(edges["source"], edges["destination"], strict=True) if s != d]
    for _ in range(len(ids)):  # longest path; at most len(ids) rounds even with a cycle
        changed = False
        for s, d in links:
            if depth[d] < depth[s] + 1 and depth[s] + 1 < len(ids):
                depth[d], changed = depth[s] + 1, True
        if not changed:
            break
    kinds = dict(zip(nodes["id"], nodes["kind"], strict=True))
    labels = dict(zip(nodes["id"], nodes["label"], strict=True))
    order = {"unknown": 0, "gateway": 1, "workload": 2, "service": 3, "external": 4}
    columns: dict[int, list[str]] = {}
    for i in sorted(ids, key=lambda i: (order[kinds[i]], labels[i], i)):
        columns.setdefault(depth[i], []).append(i)
    where = {}
    for x, members in columns.items():
        for j, i in enumerate(members):
            where[i] = (float(x), (len(members) - 1) / 2 - j)
    return where


def _edge_colour(edge: pd.Series) -> str:
    if edge["protocol"] == "tcp" and edge["errors"] == 0:
        return COLOURS["tcp"]
    if edge["error_rate"] >= FAILURE:
        return COLOURS["failure"]
    return COLOURS["degraded"] if edge["error_rate"] > DEGRADED else COLOURS["ok"]


def _edge_text(edge: pd.Series) -> str:
    lock = " · mTLS" if edge["mtls"] >= 0.999 else ""  # NaN compares False: unknown
    if edge["protocol"] == "tcp":
        return f"tcp {edge['rate']:.2g} conn/s{lock}"
    errors = f" · {edge['error_rate']:.0%} err" if edge["errors"] else ""
    return f"{edge['rate']:.2g} rps{errors}{lock}"


def _edge_hover(edge: pd.Series) -> str:
    mtls = "unknown (no server reported)" if math.isnan(edge["mtls"]) else f"{edge['mtls']:.0%}"
    lines = [f"<b>{edge['source']} → {edge['destination']}</b> ({edge['protocol']})",
             f"{edge['requests']} {'connections' if edge['protocol'] == 'tcp' else 'requests'},"
             f" {edge['rate']:.3g}/s", f"errors: {edge['errors']} ({edge['error_rate']:.1%})",
             f"mTLS: {mtls}"]
    if edge["codes"]:
        lines.append(f"codes: {edge['codes']}")
    if edge["flags"]:
        lines.append(f"response_flags: {edge['flags']}")
    if edge["protocol"] == "tcp":
        lines.append(f"bytes: {edge['bytes']:.0f}")
    return "<br>".join(lines)


def _label(x: float, y: float, text: str, size: int, yshift: int = 0) -> dict[str, Any]:
    """Text on a white box, so arrows passing under it never cross the words."""
    return {"x": x, "y": y, "xref": "x", "yref": "y", "text": text, "showarrow": False,
            "font": {"size": size}, "bgcolor": "rgba(255,255,255,0.85)", "yshift": yshift}


def figure(graph: GraphData, title: str | None = None) -> go.Figure:
    """The graph as a plotly figure: arrows coloured by error rate (Kiali's thresholds), labelled
    with request rate, error share and `mTLS` when every request used it.

    Annotations come in three runs: one arrow per edge, one label per edge (same order as
    `graph.edges`), one label per node (same order as `graph.nodes`). Hovering an edge's label
    or a node shows its details.
    """
    nodes, edges = graph.nodes, graph.edges
    where = _layout(nodes, edges) if len(nodes) else {}
    fig = go.Figure()
    arrows, edge_labels, mid_x, mid_y, hovers = [], [], [], [], []
    biggest = max([1.0, *edges["rate"]]) if len(edges) else 1.0
    for _, e in edges.iterrows():
        (x0, y0), (x1, y1) = where[e["source"]], where[e["destination"]]
        width = 1.5 + 3.5 * math.log1p(e["rate"]) / math.log1p(biggest)
        arrows.append({"x": x1, "y": y1, "ax": x0, "ay": y0, "xref": "x", "yref": "y",
                       "axref": "x", "ayref": "y", "showarrow": True, "arrowhead": 2,
                       "arrowsize": 1, "arrowwidth": width, "arrowcolor": _edge_colour(e),
                       "standoff": 15, "startstandoff": 15, "text": ""})
        mid = (x0 + (x1 - x0) * 0.5, y0 + (y1 - y0) * 0.5)
        edge_labels.append(_label(*mid, _edge_text(e), 10))
        mid_x.append(mid[0])
        mid_y.append(mid[1])
        hovers.append(_edge_hover(e))
    node_labels = [_label(*where[i], label, 11, yshift=-22)
                   for i, label in zip(nodes["id"], nodes["label"], strict=True)]
    # Invisible markers under the edge labels carry the hover text.
    fig.add_scatter(x=mid_x, y=mid_y, hovertext=hovers, mode="markers", hoverinfo="text",
                    marker={"size": 18, "opacity": 0}, name="edges", showlegend=False)
    apps = sorted(set(nodes["app"])) if len(nodes) else []
    colour = {a: NODE_COLOURS[i % len(NODE_COLOURS)] for i, a in enumerate(apps)}
    fig.add_scatter(
        x=[where[i][0] for i in nodes["id"]], y=[where[i][1] for i in nodes["id"]],
        mode="markers", hoverinfo="text",
        hovertext=[f"{r.id}<br>{r.kind}" for r in nodes.itertuples()],
        marker={"size": 26, "symbol": [SYMBOLS[k] for k in nodes["kind"]],
                "color": [colour[a] if k == "workload" else "#555555"
                          for a, k in zip(nodes["app"], nodes["kind"], strict=True)],
                "line": {"width": 1, "color": "white"}},
        name="nodes", showlegend=False)
    where_text = f" of {graph.namespace}" if graph.namespace else ""
    heading = title or (f"Service graph{where_text}, {graph.span} (hover for details)"
                        if len(edges) else f"Service graph{where_text}: no traffic {graph.span}")
    xs = [p[0] for p in where.values()] or [0.0]
    ys = [p[1] for p in where.values()] or [0.0]
    fig.update_layout(
        title=heading, annotations=arrows + edge_labels + node_labels,
        height=max(320, 110 * (max(ys) - min(ys) + 2)), showlegend=False,
        plot_bgcolor="white", margin={"l": 20, "r": 20, "t": 60, "b": 20},
        xaxis={"visible": False, "range": [min(xs) - 0.5, max(xs) + 0.5]},
        yaxis={"visible": False, "range": [min(ys) - 0.7, max(ys) + 0.5]})
    return fig


def service_graph(metrics: MetricsSource, namespace: str | None = None, *,
                  since: Mark | None = None, window: float = 60.0) -> go.Figure:
    """`figure(graph_data(...))`: the graph since a mark or over the last `window` seconds."""
    return figure(graph_data(metrics, namespace, since=since, window=window))


class LiveGraph(LiveFigure):
    """A service graph in an output widget, redrawn over a sliding `window` of seconds.

    Each `refresh()` reads every counter once; the window's start is the counters' values
    from the refresh closest to `window` seconds ago (the first from the metrics' own past).
    """

    def __init__(self, metrics: MetricsSource, namespace: str | None = None,
                 window: float = 30.0):
        self.metrics, self.namespace, self.window = metrics, namespace, window
        start = time.time() - window
        self._snapshots: deque[tuple[float, pd.DataFrame]] = deque(
            [(start, snapshot(metrics, at=start))])
        self.data = GraphData(pd.DataFrame(columns=NODE_COLUMNS),
                              pd.DataFrame(columns=EDGE_COLUMNS), window, namespace)
        super().__init__()

    def build(self) -> go.Figure:
        now = time.time()
        current = snapshot(self.metrics)
        while len(self._snapshots) > 1 and self._snapshots[1][0] <= now - self.window:
            self._snapshots.popleft()
        then, before = self._snapshots[0]
        self._snapshots.append((now, current))
        self.data = edges_from_increase(increase(before, current), now - then, self.namespace)
        return figure(self.data)
