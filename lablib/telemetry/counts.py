"""What Istio counted since a moment: every counter now, minus its value then.

    since = mark(metrics)                        # waits until the last scrape saw everything
    frame = traffic.send(mesh, n=60)
    since.requests(by=("destination_version", "response_code"), reporter="destination",
                   destination_app="reviews", at_least=60)

A counter that did not exist at the mark counts from zero (the collector creates a series on
its first request), so new pods and new edges count in full. Unlike PromQL's `increase()`,
nothing is extrapolated: the numbers are whole requests.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from .metrics import MetricsSource

__all__ = ["COUNTERS", "Mark", "increase", "mark", "rate_window", "scrape_seconds", "settle",
           "snapshot"]

# The counters the graph and the checks read (histograms have their own `_count`).
COUNTERS = ("istio_requests_total", "istio_tcp_connections_opened_total",
            "istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total")
# A failed scrape (a busy machine) makes Prometheus mark a target's series stale, and an
# instant query then misses them; their last value within this window is still right.
LAST_VALUE_WINDOW = "15s"
# A scrape every second plus Envoy's 100 ms access-log flush: a total unchanged this long has
# seen every request that ended before it.
QUIET_S = 1.5
# How long a count waits for its `at_least` by default, with scrapes every second.
COUNT_TIMEOUT_S = 30.0


def scrape_seconds(metrics: MetricsSource) -> float:
    """How often the metrics are scraped: 1 s on the local mesh, 15 s with Istio's addon."""
    return float(getattr(metrics, "scrape_seconds", 1.0) or 1.0)


def last_value_window(metrics: MetricsSource) -> str:
    """`LAST_VALUE_WINDOW`, or four scrape intervals when scrapes are further apart."""
    return f"{max(15.0, 4 * scrape_seconds(metrics)):g}s"


def rate_window(metrics: MetricsSource) -> str:
    """The range of a `rate()`: four scrape intervals (Grafana's `$__rate_interval`), at
    least 10 s: 10s on the local mesh, 1m with Istio's addon scraping every 15 s."""
    return f"{max(10.0, 4 * scrape_seconds(metrics)):g}s"


def quiet_seconds(metrics: MetricsSource) -> float:
    """How long a total must stay put to have seen every finished request: one scrape
    interval and a half (at least `QUIET_S`)."""
    return max(QUIET_S, 1.5 * scrape_seconds(metrics))


def count_timeout(metrics: MetricsSource) -> float:
    """How long a count waits by default: `COUNT_TIMEOUT_S`, or four scrape intervals."""
    return max(COUNT_TIMEOUT_S, 4 * scrape_seconds(metrics))


def snapshot(metrics: MetricsSource, at: float | None = None) -> pd.DataFrame:
    """Every series of `COUNTERS` now (or at `at`): `__name__`, its labels, then `value`."""
    frames = []
    window = last_value_window(metrics)
    for name in COUNTERS:
        found = metrics.query(f"last_over_time({name}[{window}])", at=at)
        if not found.empty:
            frames.append(found.drop(columns="timestamp").assign(__name__=name))
    if not frames:
        return pd.DataFrame(columns=["__name__", "value"])
    out = pd.concat(frames, ignore_index=True)
    labels = [c for c in out.columns if c != "value"]
    return out.fillna({c: "" for c in labels})[[*labels, "value"]]


def _labels(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c != "value"]


def _with_labels(frame: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """`frame` with every one of `labels` as text: a label it lacks is empty, as Prometheus
    treats a missing label."""
    out = frame.reindex(columns=[*labels, "value"])
    out[labels] = out[labels].astype(object).where(out[labels].notna(), "")
    return out


def increase(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    """What each series of `after` gained since `before`: missing then counts from zero, and a
    series that went down was reset (its pod restarted), so all of it is new."""
    if after.empty:
        return after.assign(value=pd.Series(dtype=float))
    labels = sorted(set(_labels(before)) | set(_labels(after)))
    before, after = _with_labels(before, labels), _with_labels(after, labels)
    merged = after.merge(before, on=labels, how="left", suffixes=("", "_before"))
    then = merged["value_before"].fillna(0.0)
    merged["value"] = merged["value"].where(merged["value"] < then,
                                            merged["value"] - then)
    return merged.drop(columns="value_before")


def settle(metrics: MetricsSource, timeout: float | None = None) -> bool:
    """Wait until Prometheus scrapes every proxy (new pods take up to 5 s to be found), then
    until the request total stays put for `quiet_seconds` (every finished request scraped);
    False when that took longer than `timeout` seconds (10 s, or 3 scrape intervals)."""
    if timeout is None:
        timeout = max(10.0, 3 * scrape_seconds(metrics))
    quiet, window = quiet_seconds(metrics), last_value_window(metrics)
    deadline = time.monotonic() + timeout
    wait_for_targets = getattr(metrics, "wait_for_targets", None)
    if wait_for_targets is not None and not wait_for_targets(timeout):
        return False
    last, since = None, time.monotonic()
    while True:
        found = metrics.query(f"sum(last_over_time(istio_requests_total[{window}]))")
        value = float(found["value"].sum()) if not found.empty else 0.0
        now = time.monotonic()
        if value != last:
            last, since = value, now
        elif now - since >= quiet:
            return True
        if now > deadline:
            return False
        time.sleep(0.25)


def _select(frame: pd.DataFrame, labels: dict[str, str]) -> pd.DataFrame:
    for name, want in labels.items():
        if name not in frame:
            return frame.iloc[0:0]
        frame = frame[frame[name] == want]
    return frame


@dataclass
class Mark:
    """Counters at one moment, to count what happens after it."""

    metrics: MetricsSource
    time: float
    baseline: pd.DataFrame

    def increase(self) -> pd.DataFrame:
        """Every counter series with what it gained since the mark (`value`)."""
        return increase(self.baseline, snapshot(self.metrics))

    def count(self, metric: str = "istio_requests_total", by: Sequence[str] = (),
              at_least: float | None = None, timeout: float | None = None,
              **labels: str) -> pd.DataFrame:
        """`metric`'s gain since the mark, summed by `by`, for series with these label values.

        With `at_least`, waits (up to `timeout` s; by default `count_timeout`) until the total
        gain reaches it: metrics arrive a scrape after the traffic, and for Prometheus a
        discovery round after a new pod.
        """
        deadline = time.monotonic() + (count_timeout(self.metrics) if timeout is None
                                       else timeout)
        while True:
            gained = _select(self.increase(), {"__name__": metric, **labels})
            total = float(gained["value"].sum()) if not gained.empty else 0.0
            if at_least is None or total >= at_least or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        columns = list(by)
        if gained.empty:
            return pd.DataFrame(columns=[*columns, "value"])
        missing = [c for c in columns if c not in gained]
        gained = gained.assign(**{c: "" for c in missing})
        if not columns:
            return pd.DataFrame({"value": [total]})
        out = gained.groupby(columns, as_index=False)["value"].sum()
        return out[out["value"] > 0].sort_values(columns).reset_index(drop=True)

    def requests(self, by: Sequence[str] = ("destination_version", "response_code"),
                 at_least: float | None = None, timeout: float | None = None,
                 **labels: str) -> pd.DataFrame:
        """`istio_requests_total`'s gain since the mark by `by`, in a `requests` column."""
        found = self.count("istio_requests_total", by, at_least, timeout, **labels)
        return found.rename(columns={"value": "requests"}).astype({"requests": int})


def mark(metrics: MetricsSource, wait: bool = True) -> Mark:
    """Remember every counter now; with `wait`, first let the last requests reach the metrics
    (bounded: under steady load it marks after 10 s anyway)."""
    if wait:
        settle(metrics)
    return Mark(metrics, time.time(), snapshot(metrics))
