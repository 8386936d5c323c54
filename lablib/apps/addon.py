"""The pod of one of Istio's addons (samples/addons/NAME.yaml) on the local mesh.

prometheus: every connection to the pod's port reaches the mesh's own Prometheus (the real
binary the telemetry service runs, started on first use), so `kubectl port-forward`,
`istioctl dashboard prometheus` and `curl prometheus.istio-system:9090/api/v1/query?...` all
meet a real Prometheus. grafana and kiali have no local binary: their port answers with where
the stand-in is (lab 14's dashboards, lab 13's live graph).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..kube.forward import PortForward
from ..shims.addons import STAND_IN_TEXTS, LoopbackStream, prometheus_port
from ._runtime import AppHandler, block_stop_signals, log, serve_http, wait_for_stop_signal


def _mesh_folder() -> Path:
    """The folder of the mesh this pod belongs to (the supervisor sets it for every child)."""
    return Path(os.environ["LAB_SUPERVISOR_DIR"])


def _explainer(text: str) -> type[AppHandler]:
    class Explain(AppHandler):
        def do_GET(self) -> None:
            self.send_text(200, text)

    return Explain


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", choices=["prometheus", *STAND_IN_TEXTS])
    parser.add_argument("--port", type=int, required=True, help="port to bind on 127.0.0.1")
    args = parser.parse_args(argv)
    if args.name != "prometheus":
        serve_http(_explainer(STAND_IN_TEXTS[args.name]), args.port, args.name)
        return
    block_stop_signals()
    folder = _mesh_folder()
    forward = PortForward(lambda: LoopbackStream(prometheus_port(folder)), 0, args.port)
    log(f"prometheus: 127.0.0.1:{args.port} forwards to the mesh's Prometheus")
    wait_for_stop_signal()
    forward.close()


if __name__ == "__main__":
    main()
