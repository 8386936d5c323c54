"""What meshd runs for observability: the metrics server always, Prometheus on first use.

    telemetry = MeshTelemetry(state.path / "telemetry", supervisor, ports,
                              lambda: topology_from_mesh(mesh))
    telemetry.endpoints()    # {"metrics": url, "prometheus": url or "", "note": why not}
    telemetry.close()

Prometheus starts the first time someone asks for the endpoints (the observability labs), so
the other labs never pay for it; from then on the supervisor runs it like every other process
of the mesh and it ends with the mesh.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..local.ports import PortAllocator, with_free_port
from ..local.supervisor import RUNNING
from .collector import Collector
from .prometheus import (
    INSTALL_HINT,
    find_prometheus,
    prometheus_argv,
    prometheus_ready,
    write_config,
)
from .server import ALL_PATH, TARGETS_PATH, MetricsServer
from .topology import Topology

if TYPE_CHECKING:
    from ..local.supervisor import Supervisor

__all__ = ["PROCESS_NAME", "MeshTelemetry"]

PROCESS_NAME = "istio-system.prometheus"


class MeshTelemetry:
    """The collector and its HTTP endpoint, plus a Prometheus scraping it."""

    def __init__(self, folder: Path, supervisor: Supervisor, ports: PortAllocator,
                 topology_source: Callable[[], Topology]):
        self.folder = folder
        self.supervisor = supervisor
        self.ports = ports
        self.collector = Collector(topology_source)
        _, self.server = with_free_port(lambda port: MetricsServer(self.collector, port), ports)
        self.server.start()
        self.prometheus_port = 0
        self._lock = threading.Lock()

    def endpoints(self, start_prometheus: bool = True) -> dict[str, Any]:
        """Where the metrics are: the collector's URL and Prometheus' (started if needed)."""
        with self._lock:
            note = ""
            if start_prometheus and not self.prometheus_port:
                note = self._start_prometheus()
            elif self.prometheus_port:
                note = self._prometheus_down()
            return {"metrics": self.server.url + ALL_PATH,
                    "prometheus": f"http://127.0.0.1:{self.prometheus_port}"
                    if self.prometheus_port and not note else "",
                    "note": note}

    def _prometheus_down(self) -> str:
        """Why the Prometheus this mesh started does not serve now, or "" when it does."""
        row = next((r for r in self.supervisor.status() if r["name"] == PROCESS_NAME), None)
        if row is None or (row["state"] == RUNNING and row["ready"]):
            return ""
        return (f"Prometheus is down ({row['state']}, {row['restarts']} restarts); the mesh "
                f"restarts it with back-off: see {row['log']}")

    def _start_prometheus(self) -> str:
        binary = find_prometheus()
        if binary is None:
            return f"no prometheus binary on PATH: {INSTALL_HINT}"
        config = write_config(self.folder, self.server.url + TARGETS_PATH)
        # A fresh database: series of an earlier mesh of the same name would mix with ours.
        shutil.rmtree(self.folder / "data", ignore_errors=True)

        def start(port: int) -> None:
            argv = prometheus_argv(binary, config, self.folder / "data", port)
            self.supervisor.start(PROCESS_NAME, argv, ready=prometheus_ready(port),
                                  ready_timeout=30)

        self.prometheus_port, _ = with_free_port(start, self.ports)
        return ""

    def close(self) -> None:
        """Stop serving metrics (the supervisor stops Prometheus with the other processes)."""
        self.server.close()
