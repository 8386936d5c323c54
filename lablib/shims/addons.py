"""Istio's addons (`samples/addons/*.yaml`) and what stands in for each on the local mesh:
the mesh's own Prometheus, lab 13's live service graph for Kiali, lab 14's dashboards for
Grafana. `kubectl apply -f URL` says which; `istioctl dashboard NAME` says where it is."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from ..local.client import LocalBackend
from ..local.state import StateDir
from .session import Failure

__all__ = ["ADDONS_URL", "addon_of", "applied", "dashboard"]

ADDONS_URL = re.compile(
    r"https://raw\.githubusercontent\.com/istio/istio/[^/]+/samples/addons/"
    r"(prometheus|kiali|grafana|jaeger|loki|extras/zipkin)\.yaml$")
LABS = Path(__file__).resolve().parents[2] / "labs"
PROMETHEUS_HINT = "install Debian's prometheus package (apt-get install prometheus)"

KIALI = f"""\
The local mesh has no Kiali: its service graph is lab 13's live graph
(open {LABS / "13_observing_traffic.ipynb"} in JupyterLab). In a notebook cell:
    import lablib
    from lablib import telemetry
    live = telemetry.LiveGraph(telemetry.connect(lablib.connect()), "bookinfo-test")
    display(live.widget); live.run(seconds=30)
"""
GRAFANA = f"""\
The local mesh has no Grafana: Istio's service dashboard is lab 14's live panels
(open {LABS / "14_metrics_dashboards.ipynb"} in JupyterLab). In a notebook cell:
    import lablib
    from lablib import telemetry
    from lablib.telemetry import dashboards
    board = dashboards.live_dashboard(telemetry.connect(lablib.connect()), "bookinfo-test",
                                      "reviews")
    display(board.widget); board.run(seconds=30)
"""
STAND_INS = {
    "kiali": "lab 13's live service graph, lablib.telemetry.LiveGraph",
    "grafana": "lab 14's dashboards, lablib.telemetry.dashboards",
}


def addon_of(url: str) -> str | None:
    """`prometheus` for Istio's .../samples/addons/prometheus.yaml; None for any other URL."""
    match = ADDONS_URL.match(url)
    return match[1].rsplit("/", 1)[-1] if match else None


def _running_mesh() -> LocalBackend | None:
    return LocalBackend.attach(StateDir())


def _telemetry(mesh: LocalBackend) -> dict[str, str]:
    """The mesh's metrics URL and its Prometheus URL ("" without the binary), starting it."""
    return {k: str(v) for k, v in dict(mesh.call("telemetry")).items()}


def applied(name: str) -> str:
    """What `kubectl apply -f .../samples/addons/NAME.yaml` prints on the local mesh."""
    if name in STAND_INS:
        return (f"addon/{name} configured (local equivalent: {STAND_INS[name]}; see "
                f"istioctl dashboard {name})\n")
    if name != "prometheus":
        return (f"addon/{name} skipped (no local equivalent: the local mesh has no "
                f"tracing or log backend)\n")
    if shutil.which("prometheus") is None:
        return (f"addon/prometheus configured (local equivalent: none yet, no prometheus "
                f"binary on PATH; the proxies' own metrics answer instead. To get the real "
                f"one: {PROMETHEUS_HINT})\n")
    mesh = _running_mesh()
    if mesh is None:
        return ("addon/prometheus configured (local equivalent: the mesh's own Prometheus, "
                "started with the mesh's telemetry; see istioctl dashboard prometheus)\n")
    url = _telemetry(mesh)["prometheus"]
    return (f"addon/prometheus configured (local equivalent: the mesh's own Prometheus at "
            f"{url}, scraping every proxy)\n")


def dashboard(name: str, mesh: LocalBackend | None, address: str | None) -> str:
    """What `istioctl dashboard NAME` prints: Prometheus' address, or where the stand-in is."""
    if name == "kiali":
        return KIALI
    if name == "grafana":
        return GRAFANA
    if name != "prometheus":
        raise Failure(f"Error: the {name} dashboard is not part of the local mesh; what it "
                      f"measures is in the metrics: istioctl dashboard prometheus")
    if mesh is None:
        raise Failure("Error: the local mesh is not running: run istioctl install --set "
                      "profile=demo -y first")
    found = _telemetry(mesh)
    if not found["prometheus"]:
        raise Failure(f"Error: no Prometheus here ({found.get('note') or PROMETHEUS_HINT}). "
                      f"The proxies' own metrics, in Prometheus' text format: "
                      f"{found['metrics']}")
    if address not in (None, "localhost", "127.0.0.1"):
        print(f"The local mesh listens on 127.0.0.1 only, not on {address}.", file=sys.stderr)
    return found["prometheus"] + "\n"
