"""Istio's addons and what stands in for each on the local mesh: the kit's samples/addons/
(prometheus, grafana, kiali) are Deployments whose pods reach the mesh's own Prometheus, or
say where lab 14's dashboards (Grafana) and lab 13's live service graph (Kiali) are.
`kubectl apply -f` Istio's addon URL applies the kit's file; `istioctl dashboard NAME`
forwards localhost:9090 / 3000 / 20001 to the addon's pod until interrupted."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from ..kube.forward import PortForward
from ..local.client import LocalBackend
from ..local.state import StateDir
from .session import Failure

__all__ = ["ADDONS_URL", "DASHBOARD_PORTS", "STAND_IN_TEXTS", "LoopbackStream", "addon_of",
           "dashboard", "local_file", "prometheus_note", "prometheus_port", "skipped"]

ADDONS_URL = re.compile(
    r"https://raw\.githubusercontent\.com/istio/istio/[^/]+/samples/addons/"
    r"(prometheus|kiali|grafana|jaeger|loki|extras/zipkin)\.yaml$")
LABS = Path(__file__).resolve().parents[2] / "labs"
ADDONS_DIR = Path(__file__).resolve().parents[2] / "samples" / "addons"
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
STAND_IN_TEXTS = {"kiali": KIALI, "grafana": GRAFANA}
ADDON_NOTES = {"prometheus": "the mesh's own Prometheus, scraping every proxy",
               "grafana": "a page naming lab 14's dashboards", "kiali": "a page naming lab "
               "13's live service graph"}
# The ports `istioctl dashboard NAME` listens on by default, as istioctl's.
DASHBOARD_PORTS = {"prometheus": 9090, "grafana": 3000, "kiali": 20001}


def addon_of(url: str) -> str | None:
    """`prometheus` for Istio's .../samples/addons/prometheus.yaml; None for any other URL."""
    match = ADDONS_URL.match(url)
    return match[1].rsplit("/", 1)[-1] if match else None


class LoopbackStream:
    """A TCP connection to 127.0.0.1:`port`, in the shape PortForward's streams have."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.settimeout(None)

    def socket(self, port_number: int) -> socket.socket:
        return self.sock

    def close(self) -> None:
        self.sock.close()


def prometheus_port(mesh_folder: Path) -> int:
    """The port of the mesh's own Prometheus (started on first use), for the mesh whose state
    folder is `mesh_folder`; what the prometheus addon's pod forwards to."""
    mesh = LocalBackend.attach(StateDir(mesh_folder.name, mesh_folder.parent))
    if mesh is None:
        raise Failure(f"the local mesh in {mesh_folder} is not running")
    url = _telemetry(mesh)["prometheus"]
    if not url:
        raise Failure(f"no Prometheus binary here ({PROMETHEUS_HINT})")
    return int(url.rstrip("/").rsplit(":", 1)[1])


def _telemetry(mesh: LocalBackend) -> dict[str, str]:
    """The mesh's metrics URL and its Prometheus URL ("" without the binary), starting it."""
    return {k: str(v) for k, v in dict(mesh.call("telemetry")).items()}


def local_file(name: str) -> Path | None:
    """The kit's samples/addons/NAME.yaml standing in for Istio's, if there is one."""
    path = ADDONS_DIR / f"{name}.yaml"
    return path if path.is_file() else None


def skipped(name: str) -> str:
    """What `kubectl apply -f .../samples/addons/NAME.yaml` says for an addon the local mesh
    has no equivalent of."""
    return (f"addon/{name} skipped (no local equivalent: the local mesh has no tracing or log "
            f"backend)\n")


def prometheus_note() -> str:
    """A warning for the prometheus addon when this machine has no Prometheus to run."""
    if shutil.which("prometheus") is None:
        return (f"Warning: the prometheus addon's pod has no Prometheus to reach here ("
                f"{PROMETHEUS_HINT}); the proxies' own metrics answer instead")
    return ""


TITLES = {"prometheus": "Prometheus", "grafana": "Grafana", "kiali": "Kiali"}


def dashboard(name: str, connect: Callable[[], LocalBackend], address: str | None,
              port: int | None, namespace: str) -> int:
    """`istioctl dashboard NAME`: forward localhost:PORT (9090, 3000, 20001) to the addon's
    pod (samples/addons/NAME.yaml) until interrupted, as istioctl's port-forward does."""
    if name not in TITLES:
        raise Failure(f"Error: the {name} dashboard is not part of the local mesh; what it "
                      f"measures is in the metrics: istioctl dashboard prometheus")
    mesh = connect()
    pods = mesh.get("pods", namespace=namespace, selector={"app": name})
    if not pods:
        raise Failure(f"Error: no {TITLES[name]} pods found\n    fix: kubectl apply -f "
                      f"samples/addons/{name}.yaml (the local {name}: {ADDON_NOTES[name]})")
    info = mesh.pod_info(str(pods[0]["metadata"]["name"]), namespace)
    target = int(info["ports"][str(DASHBOARD_PORTS[name])])
    if address not in (None, "localhost", "127.0.0.1"):
        print(f"The local mesh listens on 127.0.0.1 only, not on {address}.", file=sys.stderr)
    local = DASHBOARD_PORTS[name] if port is None else port
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        forward = PortForward(lambda: LoopbackStream(target), 0, local)
    except OSError as exc:
        raise Failure(f"Error: failure running port forward process: unable to listen on "
                      f"port {local}: {exc.strerror}") from None
    print(f"http://localhost:{forward.port}", flush=True)
    signal.sigwait({signal.SIGINT, signal.SIGTERM})
    forward.close()
    return 0
