"""Plotly charts of what traffic did: shares against configured weights, shares over time,
latency distributions. Each returns a `plotly.graph_objects.Figure`; end a cell with
`fig.show()`, never with a bare figure."""

from __future__ import annotations

import math
from collections.abc import Mapping
from itertools import cycle

import ipywidgets
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative

from .traffic import binomial_bound, shares

__all__ = ["latency_histogram", "share_timeline", "shares_chart", "show_in"]

SHARE_AXIS = {"title": "share of requests", "tickformat": ".0%", "rangemode": "tozero"}
LEGEND_ON_TOP = {"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0}
HISTOGRAM_BINS = 40
COLOURS = qualitative.Plotly


def shares_chart(frame: pd.DataFrame, expected: Mapping[str, float], column: str = "version",
                 z: float = 4.0) -> go.Figure:
    """Observed share per value of `column` as bars, configured weights (fractions) as markers.

    Each error bar reaches `traffic.binomial_bound(weight, n, z)` either side of the observed
    share (the bars' `customdata` keeps that width): the tolerance `traffic.check_shares`
    allows, so the check passes exactly when every marker lies within its error bar.
    """
    n = len(frame)
    observed = shares(frame, column) if n else pd.Series(dtype=float)
    keys = sorted({str(k) for k in expected} | {str(k) for k in observed.index})
    want = [float(expected.get(k, 0.0)) for k in keys]
    got = [float(observed.get(k, 0.0)) for k in keys]
    tolerance = [binomial_bound(p, n, z) if n else 0.0 for p in want]
    # Cut at 0% and 100%: no share lies beyond them, and no marker either, so the reading
    # above still holds.
    above = [min(t, 1.0 - g) for g, t in zip(got, tolerance, strict=True)]
    below = [min(t, g) for g, t in zip(got, tolerance, strict=True)]
    fig = go.Figure()
    fig.add_bar(x=keys, y=got, name=f"observed share (± {z:g}σ tolerance)",
                error_y={"type": "data", "array": above, "arrayminus": below, "visible": True,
                         "symmetric": False},
                customdata=tolerance,
                hovertemplate="%{x}: %{y:.1%}, tolerance ± %{customdata:.1%}"
                              "<extra>observed</extra>")
    fig.add_scatter(x=keys, y=want, name="configured weight", mode="markers",
                    marker={"symbol": "line-ew-open", "size": 36, "line": {"width": 3}},
                    hovertemplate="%{x}: %{y:.0%}<extra>configured</extra>")
    title = (f"Share of {n} requests per {column}, against the configured weights" if n
             else f"Configured weights per {column} (no requests yet)")
    fig.update_layout(title=title, xaxis_title=column, legend=LEGEND_ON_TOP,
                      yaxis={**SHARE_AXIS, "range": [0, 1.05]})
    return fig


def share_timeline(frame: pd.DataFrame, column: str = "version", bin_s: float = 1.0) -> go.Figure:
    """Share per value of `column` in each `bin_s`-second bin of `frame["start"]`, one line each.

    Bins without any request stay empty, so the lines break between bursts instead of
    drawing a trend nobody measured.
    """
    fig = go.Figure()
    if len(frame):
        bins = (frame["start"] // bin_s).astype(int)
        counts = pd.crosstab(bins, frame[column].astype(str))
        share = counts.div(counts.sum(axis=1), axis=0)
        share = share.reindex(range(int(bins.min()), int(bins.max()) + 1))
        seconds = share.index.to_numpy() * bin_s
        for value in sorted(share.columns):
            fig.add_scatter(x=seconds, y=share[value], name=str(value), mode="lines+markers",
                            connectgaps=False,
                            hovertemplate=f"{value}: " + "%{y:.0%} at %{x:g} s<extra></extra>")
    fig.update_layout(title=f"Share of requests per {column}, in {bin_s:g} s bins",
                      xaxis_title="time since the first request (s)",
                      yaxis={**SHARE_AXIS, "range": [0, 1.05]}, legend_title_text=column)
    return fig


def latency_histogram(frames: Mapping[str, pd.DataFrame]) -> go.Figure:
    """Overlaid distributions of `latency_ms`, one per labelled frame, medians as dashed lines."""
    fig = go.Figure()
    values = np.concatenate([f["latency_ms"].to_numpy(float) for f in frames.values()] or [[]])
    # One set of bins for every trace, or plotly bins each its own way and the bars mislead.
    low, high = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    size = max((high - low) / HISTOGRAM_BINS, 0.1)
    edges = np.arange(low, high + 2 * size, size)
    tallest = 1
    for (label, frame), colour in zip(frames.items(), cycle(COLOURS), strict=False):
        latency = frame["latency_ms"].to_numpy(float)
        tallest = max(tallest, int(np.histogram(latency, edges)[0].max(initial=0)))
        median = float(np.median(latency)) if len(latency) else float("nan")
        fig.add_histogram(x=latency, name=f"{label} (median {median:,.0f} ms)", opacity=0.6,
                          xbins={"start": low, "end": high + size, "size": size},
                          marker_color=colour)
        if len(latency):
            fig.add_vline(x=median, line_dash="dash", line_color=colour)
    n = len(values)
    fig.update_layout(title=f"Latency of {n} requests (dashed: medians)", barmode="overlay",
                      xaxis={"title": "latency (ms)",
                             "range": [max(0.0, low - 4 * size), high + 5 * size]},
                      legend=LEGEND_ON_TOP,
                      yaxis={"title": "requests", "dtick": max(1, math.ceil(tallest / 6))})
    return fig


def show_in(view: ipywidgets.Output, figure: go.Figure) -> None:
    """Show `figure` in `view`, in place of whatever it showed: what the labs' live panels
    and sliders redraw with.

    A whole figure each time, not a plotly FigureWidget: that widget sends each change as a
    delta, and a browser that gets deltas before the widget's view is ready draws an empty
    chart for good (seen in JupyterLab 4 with plotly 6 and anywidget).
    """
    bundle = pio.renderers["plotly_mimetype"].to_mimebundle(figure.to_dict())
    title = figure.layout.title.text or "plotly"
    view.outputs = ({"output_type": "display_data", "metadata": {},
                     "data": {**bundle, "text/plain": f"<{title} chart>"}},)
