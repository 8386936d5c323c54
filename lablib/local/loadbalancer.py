"""The cloud load balancer in front of LoadBalancer Services (the ingress gateway's).

On a cloud, the load balancer gets an external address and forwards each Service port to the
nodes' node ports. Here it is a small Envoy of its own: TCP proxies from `ADDRESS:port` (80,
443, 31400, ...) to `127.0.0.1:nodePort`, where the gateway listens. `ADDRESS` is a loopback
address of this mesh alone (127.200.x.y, from a port only this mesh holds in the machine's
port registry), so meshes on one machine never meet. Ports below 1024 need the privilege to
bind them (root, CAP_NET_BIND_SERVICE, or net.ipv4.ip_unprivileged_port_start); without it the
Service stays `EXTERNAL-IP <pending>`, as on a cluster without a load-balancer controller, and
the node ports are the way in.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from pathlib import Path
from typing import Any

from ..config.store import ConfigStore
from .bootstrap import envoy_argv, write_bootstrap
from .ports import PortAllocator
from .supervisor import Supervisor

__all__ = ["PROCESS_NAME", "LoadBalancer", "address_of"]

log = logging.getLogger(__name__)
PROCESS_NAME = "kube-system.cloud-load-balancer"
TCP_PROXY = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"


def address_of(anchor: int) -> str:
    """The load balancer's address for a registry port this mesh holds: unique on the machine."""
    return f"127.200.{anchor >> 8}.{anchor & 255}"


def _can_bind(address: str, port: int) -> str:
    """"" if this process may listen on address:port, else why not."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return ""


def _accepts(address: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=0.3):
        return True
    return False


def lb_bootstrap(admin_port: int, address: str, forwards: dict[int, int]) -> dict[str, Any]:
    """Static Envoy config: one TCP proxy per Service port, to its node port."""
    listeners, clusters = [], []
    for port, node_port in sorted(forwards.items()):
        name = f"lb|{port}"
        listeners.append({
            "name": name,
            "address": {"socket_address": {"address": address, "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy",
                                            "typed_config": {"@type": TCP_PROXY,
                                                             "stat_prefix": name,
                                                             "cluster": name}}]}]})
        clusters.append({
            "name": name, "type": "STATIC", "connect_timeout": "5s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": node_port}}}}]}]}})
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1",
                                                     "port_value": admin_port}}},
            "static_resources": {"listeners": listeners, "clusters": clusters}}


class LoadBalancer:
    """Keeps the load balancer's Envoy in step with the LoadBalancer Services of a store."""

    def __init__(self, supervisor: Supervisor, ports: PortAllocator, folder: Path):
        self.supervisor = supervisor
        self.ports = ports
        self.folder = folder
        self.anchor = 0
        self.admin_port = 0
        self.address = ""
        self.served: dict[tuple[str, str], dict[int, int]] = {}
        self.note = ""

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        """A Service's `status.loadBalancer`: its address once the load balancer serves it."""
        if (namespace, name) in self.served:
            return {"ingress": [{"ip": self.address}]}
        return {}

    def sync(self, store: ConfigStore) -> None:
        """Serve every LoadBalancer Service's ports (the first Service to claim a port keeps
        it); stop when there is none."""
        wanted: dict[tuple[str, str], dict[int, int]] = {}
        claimed: set[int] = set()
        for svc in store.list("Service"):
            if svc.spec.get("type") != "LoadBalancer":
                continue
            ports = {int(p["port"]): int(p["nodePort"]) for p in svc.spec.get("ports") or []
                     if p.get("nodePort") and int(p["port"]) not in claimed}
            claimed |= set(ports)
            wanted[(svc.namespace, svc.name)] = ports
        if wanted == self.served:
            return
        if not wanted:
            self.close()
            return
        if not self.anchor:
            self.anchor = self.ports.allocate()
            self.admin_port = self.ports.allocate()
            self.address = address_of(self.anchor)
        forwards = {port: node for ports in wanted.values() for port, node in ports.items()}
        why = _can_bind(self.address, min(forwards))
        if why:
            if why != self.note:
                log.info("no external IP for LoadBalancer Services: %s on %s:%s", why,
                         self.address, min(forwards))
            self.note, self.served = why, {}
            return
        try:
            path = write_bootstrap(self.folder / "cloud-load-balancer.json",
                                   lb_bootstrap(self.admin_port, self.address, forwards))
            self.supervisor.start(PROCESS_NAME, envoy_argv(path),
                                  ready=lambda: all(_accepts(self.address, p)
                                                    for p in forwards))
        except Exception as exc:  # the mesh works without it: the node ports stay
            log.warning("the load balancer did not start: %s", exc)
            self.note, self.served = str(exc), {}
            return
        self.note, self.served = "", wanted

    def close(self) -> None:
        if self.served:
            self.supervisor.stop(PROCESS_NAME)
        self.served = {}
        for port in (self.anchor, self.admin_port):
            if port:
                self.ports.release(port)
        self.anchor = self.admin_port = 0
        self.address = ""
