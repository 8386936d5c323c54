"""Istio's diagnostic tools from a notebook, on either backend: `istioctl` and `kubectl logs`
run as commands (the local mesh's shims, or the real tools with LAB_BACKEND=kubernetes),
and their output read into DataFrames: analyze findings, access log lines, response flags.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd

from .backend import Backend

__all__ = ["RESPONSE_FLAGS", "Output", "access_log", "analyze", "istioctl", "kubectl",
           "response_flags"]

# Envoy's response flags (%RESPONSE_FLAGS%) and what each tells a troubleshooter.
RESPONSE_FLAGS = {
    "UH": "no healthy upstream: every endpoint is gone or ejected (subset without pods, "
          "outlier detection)",
    "UF": "upstream connection failure: nothing accepted the connection (wrong targetPort, "
          "pod down)",
    "UO": "upstream overflow: a circuit breaker (connectionPool limit) refused the request",
    "NR": "no route: no VirtualService route or virtual host matched (host or gateway "
          "mismatch)",
    "URX": "upstream retry limit exceeded: every retry failed too",
    "NC": "no cluster: the route names a cluster the proxy does not have",
    "UT": "upstream request timeout: the route's timeout fired",
    "UC": "upstream connection termination: the server closed the connection (often a TLS or "
          "mTLS mismatch)",
    "UR": "upstream remote reset: the server reset the stream",
    "LR": "local reset: this proxy reset the connection",
    "DC": "downstream connection termination: the client went away first",
    "DI": "delay injected by a VirtualService fault",
    "FI": "fault injected: an abort from a VirtualService fault",
    "RL": "rate limited",
    "UAEX": "unauthorized by an external authorization service",
    "DPE": "downstream protocol error",
    "UPE": "upstream protocol error",
    "SI": "stream idle timeout",
    "DT": "the request exceeded its max duration",
}

# Istio's default TEXT access log format (controlplane/accesslog.py), as a regex.
ISTIO_LINE = re.compile(
    r'^\[(?P<start_time>[^\]]+)\] "(?P<method>\S+) (?P<path>\S+) (?P<protocol>[^"]+)" '
    r"(?P<code>\d+) (?P<flags>\S+) (?P<details>\S+) (?P<termination>\S+) "
    r'"(?P<transport_failure>[^"]*)" (?P<bytes_received>\d+) (?P<bytes_sent>\d+) '
    r'(?P<duration_ms>\d+) (?P<upstream_service_time>\S+) "(?P<x_forwarded_for>[^"]*)" '
    r'"(?P<user_agent>[^"]*)" "(?P<request_id>[^"]*)" "(?P<authority>[^"]*)" '
    r'"(?P<upstream_host>[^"]*)" (?P<upstream_cluster>\S+) (?P<upstream_local>\S+) '
    r"(?P<downstream_local>\S+) (?P<downstream_remote>\S+) (?P<sni>\S+) (?P<route>\S+)")
FINDING = re.compile(r"^(Error|Warning|Info) \[(\w+)\] \(([^)]*)\) (.*)$")


@dataclass(frozen=True)
class Output:
    """What a command printed, shown in a notebook as the terminal would show it."""

    command: str
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return self.stdout + self.stderr

    def _repr_pretty_(self, printer, cycle) -> None:  # IPython's plain-text display
        printer.text(f"$ {self.command}\n{self}")


def _tool(tool: str, args: tuple[str, ...]) -> Output:
    done = subprocess.run([sys.executable, "-m", "lablib.shims", tool, *args],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=120, check=False)
    return Output(f"{tool} {' '.join(args)}", done.returncode, done.stdout, done.stderr)


def istioctl(*args: str) -> Output:
    """`istioctl ARGS...`, e.g. `istioctl("analyze", "-n", "bookinfo-test")`."""
    return _tool("istioctl", args)


def kubectl(*args: str) -> Output:
    """`kubectl ARGS...`."""
    return _tool("kubectl", args)


def analyze(*args: str) -> pd.DataFrame:
    """`istioctl analyze ARGS...` as one row per finding: severity, code, resource, message."""
    result = istioctl("analyze", *args)
    rows = [dict(zip(("severity", "code", "resource", "message"), m.groups(), strict=True))
            for m in map(FINDING.match, result.stdout.splitlines()) if m]
    return pd.DataFrame(rows, columns=["severity", "code", "resource", "message"])


def now() -> str:
    """This moment as the access log writes `start_time` (UTC, milliseconds): give it to
    `access_log(since=...)` to read only the requests that came after."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def access_log(mesh: Backend, app: str, namespace: str, tail: int = 200,
               since: str | None = None) -> pd.DataFrame:
    """`kubectl logs deploy/APP -c istio-proxy --tail N`: the access log lines (Istio's
    default TEXT format) of the app's first pod, one row each; Envoy's own messages skipped.
    With `since` (from `now()`), only requests that started then or later: a pod's log also
    holds what earlier labs sent."""
    pod = mesh.pod_name({"app": app}, namespace)
    text = kubectl("logs", pod, "-n", namespace, "-c", "istio-proxy", "--tail", str(tail)).stdout
    rows = [m.groupdict() for m in map(ISTIO_LINE.match, text.splitlines()) if m]
    frame = pd.DataFrame(rows, columns=list(ISTIO_LINE.groupindex))
    frame["code"] = pd.to_numeric(frame["code"])
    frame["duration_ms"] = pd.to_numeric(frame["duration_ms"])
    if since is not None:
        frame = frame[frame["start_time"] >= since].reset_index(drop=True)
    return frame


def response_flags(flags: pd.Series | None = None) -> pd.DataFrame:
    """The response flag guide: each flag and its meaning; with `flags` (an access log's
    `flags` column), only those seen, with how often."""
    guide = pd.DataFrame({"flag": list(RESPONSE_FLAGS), "meaning": list(RESPONSE_FLAGS.values())})
    if flags is None:
        return guide
    counts = flags[flags != "-"].str.split(",").explode().value_counts()
    seen = guide[guide["flag"].isin(counts.index)].copy()
    seen["count"] = seen["flag"].map(counts)
    return seen.reset_index(drop=True)
