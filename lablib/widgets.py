"""Interactive controls for the labs: sliders that apply Istio config and show what traffic did.

    panel = widgets.weights_slider(mesh)       # reviews v1/v2/v3 in bookinfo-test
    display(panel.widget)
    frame = panel.set_weights({"v1": 20, "v2": 0, "v3": 80})   # what moving the sliders does
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ipywidgets
import pandas as pd
import plotly.graph_objects as go

from . import charts, traffic
from .backend import Backend
from .errors import LabError
from .fortio import FortioReport

__all__ = ["ConcurrencyPanel", "WeightsPanel", "concurrency_slider", "configured_weights",
           "rebalance", "weighted_virtual_service", "weights_slider"]

Send = Callable[[int], pd.DataFrame]
VsBuilder = Callable[[dict[str, int]], dict[str, Any]]

STEP = 5
CHART_HEIGHT = 380


def rebalance(weights: Mapping[str, int], moved: str, value: int,
              step: int = STEP) -> dict[str, int]:
    """Weights summing to 100 after `moved` is set to `value`.

    The rule: the other subsets share the remaining 100 - value in proportion to their
    current weights (equally when they are all 0), in multiples of `step`; units left over by
    rounding down go to the largest remainders, ties to the subset listed first.
    """
    value = max(0, min(100, int(value)))
    others = [k for k in weights if k != moved]
    if not others:
        return {moved: 100}
    rest = 100 - value
    unit = step if rest % step == 0 else 1
    old = [max(0, int(weights[k])) for k in others]
    total = sum(old)
    ideal = [rest / unit * (w / total if total else 1 / len(others)) for w in old]
    units = [int(x) for x in ideal]
    by_remainder = sorted(range(len(others)), key=lambda i: (units[i] - ideal[i], i))
    for i in by_remainder[: rest // unit - sum(units)]:
        units[i] += 1
    new = {k: u * unit for k, u in zip(others, units, strict=True)}
    return {k: value if k == moved else new[k] for k in weights}


def weighted_virtual_service(host: str, namespace: str, weights: Mapping[str, int]
                             ) -> dict[str, Any]:
    """A VirtualService splitting HTTP traffic to `host` over its subsets by weight."""
    # Subsets at 0% are left out, as Istio's own samples do: a subset nobody is sent to
    # need not exist yet, and the route stays readable in `kubectl get -o yaml`.
    route = [{"destination": {"host": host, "subset": subset}, "weight": int(weight)}
             for subset, weight in weights.items() if weight]
    return {"apiVersion": "networking.istio.io/v1alpha3", "kind": "VirtualService",
            "metadata": {"name": host, "namespace": namespace},
            "spec": {"hosts": [host], "http": [{"route": route}]}}


def configured_weights(virtual_service: Mapping[str, Any],
                       subsets: Sequence[str]) -> dict[str, int] | None:
    """The weights per subset of a VirtualService's only (http or tcp) rule, if it has them."""
    spec = virtual_service.get("spec") or {}
    rules = spec.get("http") or spec.get("tcp") or []
    # A second rule means some requests (say jason's) go elsewhere: no slider can show that.
    if len(rules) != 1:
        return None
    route = rules[0].get("route") or []
    found = {str(d["destination"].get("subset")): int(d.get("weight", 100 if len(route) == 1
                                                                    else 0)) for d in route}
    if not set(found) <= set(subsets) or sum(found.values()) != 100:
        return None
    return {s: found.get(s, 0) for s in subsets}


def _describe(weights: Mapping[str, int]) -> str:
    return ", ".join(f"{k} {w}%" for k, w in weights.items())


class WeightsPanel:
    """Sliders for route weights that apply a VirtualService and send a burst on every change.

    `widget` is the ipywidgets box to display. `set_weights` runs the very code a slider
    change runs, so tests and notebooks can drive the panel without a browser.
    """

    def __init__(self, mesh: Backend, *, host: str, namespace: str, subsets: Sequence[str],
                 burst: int, send: Send, vs_builder: VsBuilder, column: str = "version",
                 initial: Mapping[str, int] | None = None, z: float = 4.0) -> None:
        self.mesh, self.host, self.namespace = mesh, host, namespace
        self.subsets, self.burst, self.column, self.z = tuple(subsets), burst, column, z
        self.send, self.vs_builder = send, vs_builder
        self.applied: dict[str, int] | None = None
        self.message = ""
        self.last = pd.DataFrame()
        self._bursts: list[pd.DataFrame] = []
        self._first_burst: float | None = None
        self._syncing = False

        current = self._current()
        start = dict(initial or current or {s: 100 if i == 0 else 0
                                            for i, s in enumerate(self.subsets)})
        self._start = start
        self.sliders = {s: ipywidgets.IntSlider(value=start.get(s, 0), min=0, max=100, step=STEP,
                                                description=f"{s} (%)", continuous_update=False,
                                                style={"description_width": "initial"})
                        for s in self.subsets}
        for subset, slider in self.sliders.items():
            slider.observe(self._on_slider(subset), names="value")
        self.status = ipywidgets.HTML()
        # The charts as last drawn, and the outputs that show them.
        self.shares_figure, self.timeline_figure = go.Figure(), go.Figure()
        self.shares_view, self.timeline_view = ipywidgets.Output(), ipywidgets.Output()
        self._draw(start)
        now = (f"{self._name()} now splits {_describe(current)}." if current else
               f"{self._name()} is not a weight split over {', '.join(self.subsets)} yet.")
        self._say(f"{now} Move a slider to apply new weights; each change is applied, then "
                  f"{burst} requests are sent.")
        title = ipywidgets.HTML(f"<b>Weights of the {html.escape(host)} VirtualService "
                                "(they always sum to 100%)</b>")
        self.widget = ipywidgets.VBox([title, ipywidgets.HBox(list(self.sliders.values())),
                                       self.status, self.shares_view, self.timeline_view])

    # --- what a learner (or a test) does --------------------------------------------------
    def set_weights(self, weights: Mapping[str, int]) -> pd.DataFrame:
        """Move the sliders to `weights` (missing subsets 0) and apply them; the burst sent.

        Returns an empty frame when the mesh refused the config; `message` then says why.
        """
        unknown = set(weights) - set(self.subsets)
        if unknown:
            raise ValueError(f"no slider for {sorted(unknown)}; the sliders are {self.subsets}")
        wanted = {s: int(weights.get(s, 0)) for s in self.subsets}
        self._move_sliders(wanted)
        return self._apply(wanted)

    def weights(self) -> dict[str, int]:
        """What the sliders show now."""
        return {s: int(slider.value) for s, slider in self.sliders.items()}

    def expected_shares(self) -> dict[str, float]:
        """The applied weights as fractions, the form `traffic.check_shares` takes."""
        return {s: w / 100 for s, w in (self.applied or {}).items()}

    @property
    def history(self) -> pd.DataFrame:
        """Every burst so far, numbered in `burst`; `start` counts from the first request."""
        return pd.concat(self._bursts, ignore_index=True) if self._bursts else pd.DataFrame(
            columns=["burst", "start", self.column])

    def chart_data(self) -> dict[str, dict[str, float]]:
        """The shares chart's current y values: configured, observed and tolerance per subset."""
        observed, configured = self.shares_figure.data
        data: dict[str, dict[str, float]] = {
            "configured": dict(zip(configured.x, configured.y, strict=True)),
            "observed": dict(zip(observed.x, observed.y, strict=True)),
            "tolerance": dict(zip(observed.x, observed.customdata, strict=True)),
        }
        return data

    # --- the callback ---------------------------------------------------------------------
    def _on_slider(self, subset: str) -> Callable[[dict[str, Any]], None]:
        def changed(change: dict[str, Any]) -> None:
            if self._syncing:
                return
            before = {**self.weights(), subset: int(change["old"])}
            wanted = rebalance(before, subset, int(change["new"]))
            self._move_sliders(wanted)
            self._apply(wanted)
        return changed

    def _apply(self, weights: dict[str, int]) -> pd.DataFrame:
        """Apply the VirtualService for `weights`, send a burst, redraw; on refusal, roll back."""
        try:
            self.mesh.apply(self.vs_builder(weights), self.namespace)
        except LabError as exc:
            # The mesh kept its last good config: put the sliders back where they were.
            self._move_sliders(self.applied or self._start)
            self._say(f"Refused {_describe(weights)}: {exc}", error=True)
            return pd.DataFrame()
        self.applied = dict(weights)
        if self._first_burst is None:
            self._first_burst = time.monotonic()
        offset = time.monotonic() - self._first_burst
        frame = self.send(self.burst)
        self.last = frame
        self._bursts.append(frame.assign(burst=len(self._bursts), start=frame["start"] + offset))
        self._draw(weights)
        seen = traffic.shares(frame, self.column)
        self._say(f"Applied {self._name()}: {_describe(weights)}. Sent {len(frame)} requests: "
                  + ", ".join(f"{k} {v:.0%}" for k, v in seen.items()) + ".")
        return frame

    # --- helpers --------------------------------------------------------------------------
    def _name(self) -> str:
        return f"VirtualService {self.namespace}/{self.host}"

    def _current(self) -> dict[str, int] | None:
        """The weights the mesh holds now, if its VirtualService is a plain weight split."""
        found = self.mesh.get("virtualservice", self.host, self.namespace)
        return configured_weights(found[0], self.subsets) if found else None

    def _move_sliders(self, weights: Mapping[str, int]) -> None:
        self._syncing = True
        try:
            for subset, slider in self.sliders.items():
                slider.value = int(weights.get(subset, 0))
        finally:
            self._syncing = False

    def _draw(self, weights: Mapping[str, int]) -> None:
        expected = {s: w / 100 for s, w in weights.items()}
        self.shares_figure = charts.shares_chart(self.last, expected, self.column, self.z)
        self.timeline_figure = charts.share_timeline(self.history, self.column)
        _show(self.shares_view, self.shares_figure)
        _show(self.timeline_view, self.timeline_figure)

    def _say(self, text: str, error: bool = False) -> None:
        self.message = text
        self.status.value = _status_html(text, error)


def _status_html(text: str, error: bool = False) -> str:
    """A status line: monospace, red for an error, line breaks kept."""
    body = html.escape(text).replace("\n", "<br>")
    colour = "#b00020" if error else "inherit"
    return (f'<div style="color: {colour}; white-space: pre-wrap; font-family: monospace">'
            f"{body}</div>")


def _show(view: ipywidgets.Output, figure: go.Figure) -> None:
    """Show `figure` in `view` at the panels' height."""
    figure.update_layout(height=CHART_HEIGHT)
    charts.show_in(view, figure)


def weights_slider(mesh: Backend, *, host: str = "reviews", namespace: str = "bookinfo-test",
                   subsets: Sequence[str] = ("v1", "v2", "v3"), burst: int = 60,
                   path: str = "/productpage", send: Send | None = None,
                   column: str = "version", vs_builder: VsBuilder | None = None) -> WeightsPanel:
    """A panel of weight sliders for `host`'s subsets (Bookinfo's reviews by default).

    On each change it applies the VirtualService `vs_builder` makes (a weighted HTTP route by
    default), sends `burst` requests with `send` (GETs of `path` through the ingress gateway
    by default) and charts the observed shares of `column` against the weights.
    """
    def send_http(n: int) -> pd.DataFrame:
        return traffic.send(mesh, path, n=n)

    def build(weights: dict[str, int]) -> dict[str, Any]:
        return weighted_virtual_service(host, namespace, weights)

    return WeightsPanel(mesh, host=host, namespace=namespace, subsets=subsets, burst=burst,
                        send=send or send_http, vs_builder=vs_builder or build, column=column)


class ConcurrencyPanel:
    """A slider for the number of concurrent connections a load run uses, and what it got.

    Every change runs `run(connections)` (a `fortio load` from the client pod, say) and adds
    a bar: the share of requests refused with `code` at that concurrency, with its binomial
    standard error. `set_connections` runs the very code a slider change runs.
    """

    def __init__(self, run: Callable[[int], FortioReport], *, code: int = 503,
                 maximum: int = 8, initial: int = 1, what: str = "the circuit breaker") -> None:
        self.run_load, self.code = run, code
        self.runs: dict[int, FortioReport] = {}
        self.message = ""
        self.slider = ipywidgets.IntSlider(value=initial, min=1, max=maximum, step=1,
                                           description="concurrent connections",
                                           continuous_update=False,
                                           style={"description_width": "initial"})
        self.slider.observe(lambda change: self._run(int(change["new"])), names="value")
        self.status = ipywidgets.HTML()
        self.figure, self.view = go.Figure(), ipywidgets.Output()
        self._draw()
        self._say(f"Move the slider: each change sends a load run with that many connections "
                  f"at once and adds a bar for the share of {code}s ({what}).")
        title = ipywidgets.HTML(f"<b>Share of {code} responses by concurrency</b>")
        self.widget = ipywidgets.VBox([title, self.slider, self.status, self.view])

    def set_connections(self, connections: int) -> FortioReport:
        """Move the slider to `connections` and run the load (again, if it is already there)."""
        if self.slider.value == connections:
            return self._run(connections)
        self.slider.value = connections  # the observer runs the load
        return self.runs[connections]

    def table(self) -> pd.DataFrame:
        """One row per concurrency tried: requests, counts per code and the refused share."""
        seen = sorted({code for r in self.runs.values() for code in r.codes} | {self.code})
        rows = [{"connections": c, **r.summary(), **{str(code): r.codes.get(code, 0)
                                                     for code in seen},
                 f"share_{self.code}": r.share(self.code)}
                for c, r in sorted(self.runs.items())]
        return pd.DataFrame(rows)

    def chart_data(self) -> dict[int, float]:
        """The chart's bars: the share of `code` by concurrency."""
        bars = self.figure.data[0]
        return {int(x): float(y) for x, y in zip(bars.x, bars.y, strict=True)}

    def _run(self, connections: int) -> FortioReport:
        self._say(f"Sending with {connections} connection(s)...")
        try:
            report = self.run_load(connections)
        except LabError as exc:
            self._say(f"The load run failed: {exc}", error=True)
            raise
        self.runs[connections] = report
        self._draw()
        codes = ", ".join(f"{code}: {count}" for code, count in report.codes.items())
        self._say(f"{connections} connection(s): {report.requests} requests ({codes}); "
                  f"{report.share(self.code):.0%} answered {self.code}.")
        return report

    def _draw(self) -> None:
        tried = sorted(self.runs)
        shares = [self.runs[c].share(self.code) for c in tried]
        errors = [(s * (1 - s) / max(1, self.runs[c].requests)) ** 0.5
                  for c, s in zip(tried, shares, strict=True)]
        self.figure = go.Figure()
        self.figure.add_bar(x=tried, y=shares, name=f"share of {self.code}",
                            error_y={"type": "data", "array": errors},
                            hovertemplate="%{x} connections: %{y:.0%}")
        self.figure.update_layout(
            title=f"Requests answered {self.code}, by concurrent connections",
            xaxis={"title": "concurrent connections", "dtick": 1,
                   "range": [0.5, self.slider.max + 0.5]},
            yaxis={"title": f"share of {self.code}", "tickformat": ".0%", "range": [0, 1]})
        _show(self.view, self.figure)

    def _say(self, text: str, error: bool = False) -> None:
        self.message = text
        self.status.value = _status_html(text, error)


def concurrency_slider(run: Callable[[int], FortioReport], *, code: int = 503,
                       maximum: int = 8) -> ConcurrencyPanel:
    """A `ConcurrencyPanel`: a concurrency slider that runs `run(connections)` on each change."""
    return ConcurrencyPanel(run, code=code, maximum=maximum)
