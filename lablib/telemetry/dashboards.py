"""Panels like Istio's Grafana service dashboard, as plotly figures, and a live grid of them.

    request_volume(metrics, "bookinfo-test").show()           # requests/s by service and version
    success_rate(metrics, "bookinfo-test").show()             # share not answered 5xx
    request_duration(metrics, "bookinfo-test").show()         # p50, p90, p99 (ms)
    tcp_bytes(metrics, "tcp-test").show()                     # bytes/s sent and received
    failures_by_flags(metrics, "bookinfo-test", since=m).show()   # FI, UO, UT... counted
    board = live_dashboard(metrics, "bookinfo-test"); display(board.widget); board.run(20)

Each time series is a PromQL range query over the last `minutes`, one point every `step`
seconds, with rates over `window`: by default `rate_window`, four scrape intervals as
Grafana's `$__rate_interval` (10 s on the local mesh, which scrapes every second; 1m with
Istio's addon, which scrapes every 15 s). Like Istio's service
dashboard, series are the server side's reports (`reporter="destination"`) unless asked
otherwise; requests that reached no server (fault injection, breaker) are only in the client
side's (`reporter="source"`), which is what `failures_by_flags` reads.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING

import ipywidgets
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative

from ..charts import show_in
from .counts import Mark, increase, rate_window, snapshot
from .live import refresh_for

if TYPE_CHECKING:
    from .metrics import MetricsSource

__all__ = ["FLAG_MEANINGS", "PANELS", "LiveDashboard", "failures_by_flags", "flag_counts",
           "live_dashboard", "request_duration", "request_volume", "success_rate", "tcp_bytes"]

GROUP = ("destination_service_name", "destination_version")
QUANTILES = (0.5, 0.9, 0.99)
DASHES = ("solid", "dash", "dot")
HEIGHT = 330
COLOURS = qualitative.Plotly
# Envoy's response flags (envoyproxy.io access-log docs), as Istio copies them into metrics.
FLAG_MEANINGS = {
    "FI": "fault injected: abort", "DI": "fault injected: delay", "UO": "upstream overflow "
    "(circuit breaker)", "UT": "upstream request timeout", "NR": "no route configured",
    "UF": "upstream connection failure", "UH": "no healthy upstream",
    "URX": "upstream retry limit exceeded", "UC": "upstream connection termination",
    "DC": "downstream connection termination", "LR": "local reset", "RL": "rate limited",
    "NC": "no cluster found", "DPE": "downstream protocol error",
    "UAEX": "unauthorized (external authorization)", "SI": "stream idle timeout",
}


def _selector(namespace: str | None, service: str | None, reporter: str,
              extra: str = "") -> str:
    matchers = [f'reporter="{reporter}"']
    if namespace:
        matchers.append(f'destination_service_namespace="{namespace}"')
    if service:
        matchers.append(f'destination_service_name="{service}"')
    if extra:
        matchers.append(extra)
    return "{" + ", ".join(matchers) + "}"


def _local_time(stamps: pd.Series) -> pd.Series:
    """UTC timestamps as this machine's wall clock, which is what a learner reads."""
    zone = datetime.now().astimezone().tzinfo
    return stamps.dt.tz_convert(zone).dt.tz_localize(None)


def _now(step: float) -> float:
    """Now, rounded down to a whole step: queries of one panel share their time grid."""
    return math.floor(time.time() / step) * step


def _range(metrics: MetricsSource, promql: str, minutes: float, step: float,
           end: float | None = None) -> pd.DataFrame:
    end = _now(step) if end is None else end
    found = metrics.query_range(promql, end - minutes * 60, end, step)
    if not found.empty:
        found["timestamp"] = _local_time(found["timestamp"])
    return found


def _name(row: pd.Series) -> str:
    service, version = row.get("destination_service_name", ""), row.get("destination_version", "")
    if version in ("", "unknown"):
        return f"{service} (no workload)"
    return f"{service} {version}"


def _frame(title: str, yaxis: dict[str, object], empty: bool, minutes: float,
           step: float) -> go.Figure:
    """An empty panel whose time axis spans the whole window, however little is in it."""
    end = _now(step)
    fig = go.Figure()
    fig.update_layout(title=title, height=HEIGHT, yaxis=yaxis, margin={"t": 50, "b": 40},
                      legend={"font": {"size": 10}}, xaxis={"range": [
                          datetime.fromtimestamp(end - minutes * 60), datetime.fromtimestamp(end)]})
    if empty:
        fig.add_annotation(text="no traffic in this window yet", showarrow=False,
                           xref="paper", yref="paper", x=0.5, y=0.5)
    return fig


def _by(groups: Sequence[str]) -> str:
    return ", ".join(groups)


def request_volume(metrics: MetricsSource, namespace: str | None = None,
                   service: str | None = None, *, minutes: float = 2.0, step: float = 2.0,
                   window: str | None = None, reporter: str = "destination") -> go.Figure:
    """Requests per second by destination service and version (Istio's "Request Volume")."""
    window = window or rate_window(metrics)
    found = _range(metrics, f"sum by ({_by(GROUP)}) (rate(istio_requests_total"
                            f"{_selector(namespace, service, reporter)}[{window}]))",
                   minutes, step)
    fig = _frame(f"Request volume (ops/s, {reporter} reporter)",
                 {"title": "requests / s", "rangemode": "tozero"}, found.empty, minutes, step)
    if found.empty:
        return fig
    for i, (_, part) in enumerate(found.groupby(list(GROUP), sort=True)):
        fig.add_scatter(x=part["timestamp"], y=part["value"], mode="lines",
                        name=_name(part.iloc[0]), line={"color": COLOURS[i % len(COLOURS)]})
    return fig


def success_rate(metrics: MetricsSource, namespace: str | None = None,
                 service: str | None = None, *, minutes: float = 2.0, step: float = 2.0,
                 window: str | None = None, reporter: str = "destination") -> go.Figure:
    """The share of requests not answered 5xx, by destination service and version (Istio's
    "Success Rate (non-5xx responses)")."""
    window = window or rate_window(metrics)
    query = (f"sum by ({_by(GROUP)}) (rate(istio_requests_total"
             "{selector}" f"[{window}]))")
    end = _now(step)
    everything = _range(metrics, query.format(selector=_selector(namespace, service, reporter)),
                        minutes, step, end)
    good = _range(metrics, query.format(selector=_selector(
        namespace, service, reporter, 'response_code!~"5.."')), minutes, step, end)
    keys = [*GROUP, "timestamp"]
    fig = _frame(f"Success rate (non-5xx responses, {reporter} reporter)",
                 {"title": "success", "tickformat": ".0%", "range": [0, 1.05]},
                 everything.empty, minutes, step)
    if everything.empty:
        return fig
    merged = everything.merge(good if not good.empty else pd.DataFrame(columns=[*keys, "value"]),
                              on=keys, how="left", suffixes=("", "_ok"))
    merged = merged[merged["value"] > 0]
    merged["success"] = merged["value_ok"].astype(float).fillna(0.0) / merged["value"]
    for i, (_, part) in enumerate(merged.groupby(list(GROUP), sort=True)):
        fig.add_scatter(x=part["timestamp"], y=part["success"], mode="lines+markers",
                        marker={"size": 4}, name=_name(part.iloc[0]),
                        line={"color": COLOURS[i % len(COLOURS)]})
    return fig


def request_duration(metrics: MetricsSource, namespace: str | None = None,
                     service: str | None = None, *, minutes: float = 2.0, step: float = 2.0,
                     window: str | None = None, reporter: str = "destination",
                     quantiles: Sequence[float] = QUANTILES) -> go.Figure:
    """p50, p90 and p99 of request duration (ms) by destination service and version, from
    Istio's histogram (Istio's "Request Duration")."""
    window = window or rate_window(metrics)
    frames = []
    for q in quantiles:
        found = _range(metrics, f"histogram_quantile({q}, sum by (le, {_by(GROUP)}) "
                                f"(rate(istio_request_duration_milliseconds_bucket"
                                f"{_selector(namespace, service, reporter)}[{window}])))",
                       minutes, step)
        if not found.empty:
            frames.append(found.assign(quantile=q))
    found = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if not found.empty:
        found = found[found["value"].notna() & (found["value"] != float("inf"))]
    fig = _frame(f"Request duration (ms, {reporter} reporter): "
                 + ", ".join(f"{d} p{q * 100:g}" for q, d in zip(quantiles, DASHES, strict=False)),
                 {"title": "milliseconds", "rangemode": "tozero"}, found.empty, minutes, step)
    if found.empty:
        return fig
    names = sorted({_name(r) for _, r in found.iterrows()})
    colour = {n: COLOURS[i % len(COLOURS)] for i, n in enumerate(names)}
    found["series"] = [_name(r) for _, r in found.iterrows()]
    for (name, q), part in found.groupby(["series", "quantile"], sort=True):
        dash = DASHES[list(quantiles).index(q) % len(DASHES)]
        # One legend entry per service and version; the title says which dash is which.
        fig.add_scatter(x=part["timestamp"], y=part["value"], mode="lines", name=name,
                        legendgroup=name, showlegend=q == quantiles[0],
                        hovertemplate=f"{name} p{q * 100:g}: " + "%{y:.1f} ms<extra></extra>",
                        line={"color": colour[name], "dash": dash})
    return fig


def tcp_bytes(metrics: MetricsSource, namespace: str | None = None,
              service: str | None = None, *, minutes: float = 2.0, step: float = 2.0,
              window: str | None = None, reporter: str = "destination") -> go.Figure:
    """TCP bytes per second sent and received by destination service and version (Istio's
    "TCP Sent/Received Bytes")."""
    window = window or rate_window(metrics)
    fig = _frame(f"TCP bytes/s ({reporter} reporter): solid sent, dash received",
                 {"title": "bytes / s", "rangemode": "tozero"}, False, minutes, step)
    seen = False
    names: dict[str, str] = {}
    for metric, dash in (("istio_tcp_sent_bytes_total", "solid"),
                         ("istio_tcp_received_bytes_total", "dash")):
        found = _range(metrics, f"sum by ({_by(GROUP)}) (rate({metric}"
                                f"{_selector(namespace, service, reporter)}[{window}]))",
                       minutes, step)
        if found.empty:
            continue
        for _, part in found.groupby(list(GROUP), sort=True):
            seen = True
            name = _name(part.iloc[0])
            colour = names.setdefault(name, COLOURS[len(names) % len(COLOURS)])
            what = "sent" if dash == "solid" else "received"
            fig.add_scatter(x=part["timestamp"], y=part["value"], mode="lines", name=name,
                            legendgroup=name, showlegend=dash == "solid",
                            hovertemplate=f"{name} {what}: " + "%{y:.0f} B/s<extra></extra>",
                            line={"color": colour, "dash": dash})
    if not seen:
        fig.add_annotation(text="no TCP traffic in this window yet", showarrow=False,
                           xref="paper", yref="paper", x=0.5, y=0.5)
    return fig


def flag_counts(metrics: MetricsSource, namespace: str | None = None, *,
                since: Mark | None = None, window: float = 300.0) -> pd.DataFrame:
    """Requests with a response flag since `since` (else over the last `window` s), as the
    clients' sidecars and gateways reported them: flag, meaning, service, code, requests."""
    if since is not None:
        gained = since.increase()
    else:
        now = time.time()
        gained = increase(snapshot(metrics, at=now - window), snapshot(metrics))
    columns = ["response_flags", "meaning", "destination_service_name", "response_code",
               "requests"]
    if gained.empty or "response_flags" not in gained:
        return pd.DataFrame(columns=columns)
    rows = gained[(gained["__name__"] == "istio_requests_total")
                  & (gained["reporter"] == "source") & (gained["response_flags"] != "-")
                  & (gained["value"] > 0)]
    if namespace:
        rows = rows[rows["destination_service_namespace"] == namespace]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    out = rows.groupby(["response_flags", "destination_service_name", "response_code"],
                       as_index=False)["value"].sum().rename(columns={"value": "requests"})
    out["requests"] = out["requests"].round().astype(int)
    out["meaning"] = out["response_flags"].map(
        lambda f: ", ".join(FLAG_MEANINGS.get(p, p) for p in f.split(",")))
    return out[columns].sort_values(["response_flags", "destination_service_name",
                                     "response_code"]).reset_index(drop=True)


def failures_by_flags(metrics: MetricsSource, namespace: str | None = None, *,
                      since: Mark | None = None, window: float = 300.0) -> go.Figure:
    """Bars of the requests Envoy flagged (FI, UO, UT, ...) by service, with their codes."""
    found = flag_counts(metrics, namespace, since=since, window=window)
    span = "since the mark" if since is not None else f"over the last {window:g} s"
    fig = go.Figure()
    services = sorted(set(found["destination_service_name"]))
    for i, svc in enumerate(services):
        part = found[found["destination_service_name"] == svc]
        fig.add_bar(x=part["response_flags"], y=part["requests"], name=svc,
                    text=[f"{c}" for c in part["response_code"]], textposition="auto",
                    customdata=part[["meaning", "response_code"]].to_numpy(),
                    hovertemplate="%{x} (%{customdata[0]}): %{y} requests answered "
                                  "%{customdata[1]}<extra>" + svc + "</extra>",
                    marker_color=COLOURS[i % len(COLOURS)])
    fig.update_layout(title=f"Failures by response_flags {span} (bar text: code)",
                      height=HEIGHT, barmode="stack",
                      xaxis_title="response_flags", yaxis_title="requests",
                      legend_title_text="destination service", margin={"t": 50, "b": 40})
    if found.empty:
        fig.add_annotation(text="no flagged responses", showarrow=False, xref="paper",
                           yref="paper", x=0.5, y=0.5)
    return fig


Panel = Callable[[], go.Figure]
PANELS = ("volume", "success", "duration", "tcp", "flags")


class LiveDashboard:
    """A grid of panels (two a row), each redrawn by `refresh()` in its own output;
    `figures` holds the figures drawn last, by panel."""

    def __init__(self, panels: dict[str, Panel]):
        self.panels = panels
        self.figures = {name: go.Figure() for name in panels}
        self.views = {name: ipywidgets.Output() for name in panels}
        boxes = list(self.views.values())
        rows = [ipywidgets.HBox([ipywidgets.Box([w], layout={"width": "50%"})
                                 for w in boxes[i:i + 2]]) for i in range(0, len(boxes), 2)]
        self.widget = ipywidgets.VBox(rows)
        self.refresh()

    def refresh(self) -> None:
        """Redraw every panel now."""
        for name, build in self.panels.items():
            self.figures[name] = build()
            show_in(self.views[name], self.figures[name])

    def run(self, seconds: float = 20.0, every: float = 2.0) -> int:
        """Redraw every `every` seconds for `seconds`; returns how many times it drew."""
        return refresh_for(self.refresh, seconds, every)


def live_dashboard(metrics: MetricsSource, namespace: str | None = None,
                   service: str | None = None, *, panels: Sequence[str] = PANELS,
                   minutes: float = 2.0, step: float = 2.0, window: str | None = None,
                   since: Mark | None = None) -> LiveDashboard:
    """Istio's service dashboard as live panels: any of `PANELS`, in that order."""
    unknown = set(panels) - set(PANELS)
    if unknown:
        raise ValueError(f"no panel {sorted(unknown)}; the panels are {list(PANELS)}")
    def series(panel: Callable[..., go.Figure]) -> Panel:
        return partial(panel, metrics, namespace, service, minutes=minutes, step=step,
                       window=window)

    builders: dict[str, Panel] = {
        "volume": series(request_volume), "success": series(success_rate),
        "duration": series(request_duration), "tcp": series(tcp_bytes),
        "flags": partial(failures_by_flags, metrics, namespace, since=since,
                         window=minutes * 60),
    }
    return LiveDashboard({name: builders[name] for name in panels})
