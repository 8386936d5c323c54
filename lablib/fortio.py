"""Load from inside a pod with its `fortio` container, read back as numbers.

Istio's circuit-breaking task sends load with `kubectl exec FORTIO_POD -c fortio -- fortio
load ...`. `run` does exactly that through `mesh.exec`, on either backend (the local mesh runs
lablib's stand-in; a cluster runs the real fortio), and `parse_report` turns fortio's text
report into a `FortioReport`: counts per HTTP code, latency percentiles and histogram.

    report = fortio.run(mesh, pod, "circuit-breaking-test", "http://httpbin:8000/get",
                        connections=3, n=30)
    report.codes        # {200: 17, 503: 13}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pandas as pd
import plotly.graph_objects as go

from .backend import Backend
from .errors import LabError

__all__ = ["FortioError", "FortioReport", "latency_chart", "parse_report", "run"]

# "Code 200 : 17 (56.7 %)"; fortio writes a failed connection as "Code -1 : 3 (10.0 %)".
_CODE = re.compile(r"^Code (-?\d+)(?: \([^)]*\))? : (\d+)", re.MULTILINE)
# "# target 99.9% 0.0169" (seconds)
_TARGET = re.compile(r"^# target ([\d.]+)% ([-\d.e+]+)", re.MULTILINE)
# ">= 0.000438 <= 0.001 , 0.000719 , 20.00, 6" (seconds, seconds, seconds, cumulative %, count)
_BUCKET = re.compile(r"^>=? ([-\d.e+]+) <= ([-\d.e+]+) , [-\d.e+]+ , [\d.]+, (\d+)$",
                     re.MULTILINE)
_ENDED = re.compile(r"^Ended after ([\d.]+)(ms|s|µs|us|m) : (\d+) calls\. qps=([\d.e+]+)",
                    re.MULTILINE)
_SOCKETS = re.compile(r"^Sockets used: (\d+)", re.MULTILINE)
_UNIT_S = {"s": 1.0, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "m": 60.0}


class FortioError(LabError):
    """fortio failed or printed no report."""


@dataclass(frozen=True)
class FortioReport:
    """One `fortio load` run as numbers, and the text it printed."""

    codes: dict[int, int]
    percentiles_ms: dict[float, float] = field(default_factory=dict)
    histogram_ms: list[tuple[float, float, int]] = field(default_factory=list)
    calls: int = 0
    qps: float = 0.0
    duration_s: float = 0.0
    sockets: int = 0
    text: str = ""

    @property
    def requests(self) -> int:
        """Requests with an outcome (every code, -1 for a failed connection included)."""
        return sum(self.codes.values())

    def share(self, code: int) -> float:
        """The fraction of requests answered with `code`."""
        return self.codes.get(code, 0) / self.requests if self.requests else 0.0

    def summary(self) -> dict[str, object]:
        """One row for a table: requests, qps, p50/p90/p99 and the counts per code."""
        row: dict[str, object] = {"requests": self.requests, "qps": round(self.qps, 1)}
        for p in (50.0, 90.0, 99.0):
            if p in self.percentiles_ms:
                row[f"p{p:g}_ms"] = round(self.percentiles_ms[p], 3)
        row.update({str(code): count for code, count in sorted(self.codes.items())})
        return row


def parse_report(text: str) -> FortioReport:
    """A fortio load report (real fortio's or lablib's stand-in's) as a `FortioReport`."""
    codes = {int(code): int(count) for code, count in _CODE.findall(text)}
    if not codes:
        raise FortioError("fortio printed no 'Code NNN : count' lines: it ran no requests.\n"
                          + _tail(text))
    percentiles = {float(p): float(seconds) * 1000 for p, seconds in _TARGET.findall(text)}
    histogram = [(float(low) * 1000, float(high) * 1000, int(count))
                 for low, high, count in _BUCKET.findall(text)]
    ended = _ENDED.search(text)
    sockets = _SOCKETS.search(text)
    return FortioReport(
        codes=dict(sorted(codes.items())), percentiles_ms=percentiles, histogram_ms=histogram,
        calls=int(ended.group(3)) if ended else sum(codes.values()),
        qps=float(ended.group(4)) if ended else 0.0,
        duration_s=float(ended.group(1)) * _UNIT_S[ended.group(2)] if ended else 0.0,
        sockets=int(sockets.group(1)) if sockets else 0, text=text)


def run(mesh: Backend, pod: str, namespace: str, url: str, *, connections: int = 1,
        n: int = 30, qps: float = 0, headers: dict[str, str] | None = None,
        container: str = "fortio", timeout: float = 120.0) -> FortioReport:
    """`kubectl exec POD -c fortio -- fortio load -c C -qps Q -n N URL`, parsed.

    The load leaves through the pod's sidecar, so the pod's outbound config (a circuit
    breaker's limits, say) applies to it exactly as in Istio's task.
    """
    argv = ["fortio", "load", "-c", str(connections), "-qps", f"{qps:g}", "-n", str(n),
            "-loglevel", "Error"]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    done = mesh.exec(pod, argv, namespace, container=container, timeout=timeout)
    if done.returncode != 0:
        raise FortioError(f"fortio load in pod {namespace}/{pod} exited {done.returncode}:\n"
                          + _tail(done.stderr or done.stdout))
    # fortio writes its report on stdout and its log lines on stderr; accept either.
    return parse_report(f"{done.stdout}\n{done.stderr}")


def latency_chart(report: FortioReport, title: str = "Latency of the run") -> go.Figure:
    """fortio's latency histogram as bars (ms), its p50/p90/p99 as vertical lines."""
    frame = pd.DataFrame(report.histogram_ms, columns=["low_ms", "high_ms", "count"])
    fig = go.Figure(go.Bar(x=(frame["low_ms"] + frame["high_ms"]) / 2,
                           width=frame["high_ms"] - frame["low_ms"], y=frame["count"],
                           name="requests", hovertemplate="%{x:.2f} ms: %{y} requests"))
    for p in (50.0, 90.0, 99.0):
        if p in report.percentiles_ms:
            fig.add_vline(x=report.percentiles_ms[p], line_dash="dot",
                          annotation_text=f"p{p:g}")
    fig.update_layout(title=title, xaxis_title="latency (ms)", yaxis_title="requests",
                      bargap=0.05)
    return fig


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
