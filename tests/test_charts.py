"""lablib.charts: figure structure (traces, titles, axes, error bars) from synthetic frames."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
import pytest

from lablib import charts, traffic


def burst(versions: list[str], step_s: float = 0.1) -> pd.DataFrame:
    """A frame shaped like `traffic.send`'s: one row per request, `step_s` apart."""
    return pd.DataFrame({"request": range(len(versions)),
                         "start": [i * step_s for i in range(len(versions))],
                         "status": 200, "latency_ms": 10.0, "version": versions, "error": ""})


def test_shares_chart_bars_observed_shares_and_marks_configured_weights():
    frame = burst(["v1"] * 30 + ["v3"] * 70)
    fig = charts.shares_chart(frame, {"v1": 0.2, "v2": 0.0, "v3": 0.8})

    assert isinstance(fig, go.Figure)
    observed, configured = fig.data
    assert (observed.type, configured.type) == ("bar", "scatter")
    assert configured.mode == "markers"
    assert list(observed.x) == ["v1", "v2", "v3"] == list(configured.x)
    assert list(observed.y) == pytest.approx([0.3, 0.0, 0.7])
    assert list(configured.y) == pytest.approx([0.2, 0.0, 0.8])
    assert "configured" in configured.name and "observed" in observed.name


def test_shares_chart_error_bars_are_the_tolerance_check_shares_allows():
    frame = burst(["v1"] * 45 + ["v2"] * 55)
    fig = charts.shares_chart(frame, {"v1": 0.5, "v2": 0.5}, z=3)
    bars = fig.data[0]
    bound = traffic.binomial_bound(0.5, 100, 3)

    assert bars.error_y.visible and bars.error_y.type == "data"
    assert list(bars.error_y.array) == list(bars.error_y.arrayminus) == pytest.approx([bound] * 2)
    assert list(bars.customdata) == pytest.approx([bound] * 2)
    table = traffic.check_shares(frame, {"v1": 0.5, "v2": 0.5}, z=3)
    assert list(table["tolerance"]) == pytest.approx(list(bars.customdata), abs=1e-3)


def test_shares_chart_error_bars_stop_at_0_and_100_percent():
    fig = charts.shares_chart(burst(["v3"] * 58 + ["v1"] * 2), {"v1": 0.2, "v3": 0.8})
    bars = fig.data[0]
    bound = traffic.binomial_bound(0.2, 60)

    assert bars.customdata[0] == pytest.approx(bound) and bound > 2 / 60
    assert bars.error_y.arrayminus[0] == pytest.approx(2 / 60)  # down to 0%, not below
    assert bars.error_y.array[1] == pytest.approx(2 / 60)  # up to 100%, not above


def test_shares_chart_shows_values_nobody_configured():
    fig = charts.shares_chart(burst(["v1"] * 9 + ["unavailable"]), {"v1": 1.0})
    observed, configured = fig.data

    assert list(observed.x) == ["unavailable", "v1"]
    assert list(configured.y) == [0.0, 1.0]
    # An unconfigured value may still show up once: the bound never drops below 1/n.
    assert observed.customdata[0] == pytest.approx(1 / 10)


def test_shares_chart_titles_and_percent_axis():
    fig = charts.shares_chart(burst(["v1", "v2"] * 10), {"v1": 0.5, "v2": 0.5})

    assert "20 requests" in fig.layout.title.text
    assert fig.layout.xaxis.title.text == "version"
    assert fig.layout.yaxis.title.text == "share of requests"
    assert fig.layout.yaxis.tickformat == ".0%"
    assert tuple(fig.layout.yaxis.range) == (0, 1.05)


def test_shares_chart_without_requests_shows_only_the_weights():
    fig = charts.shares_chart(burst([]), {"v1": 1.0, "v2": 0.0})

    assert "no requests" in fig.layout.title.text
    assert list(fig.data[1].y) == [1.0, 0.0]
    assert list(fig.data[0].y) == [0.0, 0.0]


def test_shares_chart_follows_the_column():
    frame = burst(["v1"] * 4).assign(backend=["a", "a", "b", "b"])
    fig = charts.shares_chart(frame, {"a": 0.5, "b": 0.5}, column="backend")

    assert list(fig.data[0].x) == ["a", "b"]
    assert fig.layout.xaxis.title.text == "backend"
    assert "per backend" in fig.layout.title.text


def test_share_timeline_one_line_per_value_with_shares_per_bin():
    # 0-1 s: all v1; 1-2 s: half v1, half v3; 2-3 s: all v3.
    versions = ["v1"] * 10 + ["v1", "v3"] * 5 + ["v3"] * 10
    fig = charts.share_timeline(burst(versions), bin_s=1.0)

    assert [t.name for t in fig.data] == ["v1", "v3"]
    v1, v3 = fig.data
    assert list(v1.x) == [0.0, 1.0, 2.0]
    assert list(v1.y) == pytest.approx([1.0, 0.5, 0.0])
    assert list(v3.y) == pytest.approx([0.0, 0.5, 1.0])
    assert all(t.mode == "lines+markers" for t in fig.data)
    assert fig.layout.xaxis.title.text == "time since the first request (s)"
    assert fig.layout.yaxis.title.text == "share of requests"
    assert "1 s bins" in fig.layout.title.text


def test_share_timeline_breaks_lines_between_bursts():
    first, second = burst(["v1"] * 5), burst(["v3"] * 5)
    frame = pd.concat([first, second.assign(start=second["start"] + 4.0)])
    fig = charts.share_timeline(frame, bin_s=1.0)
    v1 = fig.data[0]

    assert list(v1.x) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert v1.y[0] == 1.0 and v1.y[4] == 0.0
    assert all(math.isnan(y) for y in v1.y[1:4])
    assert v1.connectgaps is False


def test_share_timeline_bin_width():
    fig = charts.share_timeline(burst(["v1", "v2"] * 10, step_s=0.1), bin_s=0.5)

    assert list(fig.data[0].x) == [0.0, 0.5, 1.0, 1.5]
    assert "0.5 s bins" in fig.layout.title.text


def test_share_timeline_of_nothing_is_an_empty_chart():
    fig = charts.share_timeline(burst([]))

    assert fig.data == ()
    assert fig.layout.title.text


def test_latency_histogram_overlays_one_trace_per_frame_on_common_bins():
    before = burst(["v2"] * 10).assign(latency_ms=[2000.0 + i for i in range(10)])
    after = burst(["unavailable"] * 10).assign(latency_ms=[1000.0 + i for i in range(10)])
    fig = charts.latency_histogram({"before": before, "after": after})

    assert [t.type for t in fig.data] == ["histogram", "histogram"]
    assert fig.data[0].name.startswith("before") and "2,004 ms" in fig.data[0].name
    assert fig.data[1].name.startswith("after") and "1,004 ms" in fig.data[1].name
    assert fig.data[0].xbins == fig.data[1].xbins
    assert fig.data[0].xbins.start <= 1000 and fig.data[0].xbins.end >= 2009
    assert fig.layout.barmode == "overlay"
    assert fig.data[0].marker.color != fig.data[1].marker.color
    assert [s.line.color for s in fig.layout.shapes] == [t.marker.color for t in fig.data]
    # Ten requests share one bin: ticks in whole requests (2, 4, ...), never 0.5.
    assert fig.layout.yaxis.dtick == 2
    assert fig.layout.xaxis.title.text == "latency (ms)"
    assert fig.layout.yaxis.title.text == "requests"
    assert "20 requests" in fig.layout.title.text
    medians = sorted(shape.x0 for shape in fig.layout.shapes)
    assert medians == pytest.approx([1004.5, 2004.5])
