"""The local backend as a lab sees it: a client of this user's meshd daemon."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

from ..backend import Backend, Source, manifest_text
from ..errors import (
    BackendError,
    ConfigError,
    Diagnostic,
    LabError,
    NotFoundError,
    ProxyRejectedError,
)
from .state import StateDir

# Tools a sample image ships that this machine lacks, run by their local equivalents.
EMULATED_TOOLS = {"fortio": [sys.executable, "-m", "lablib.apps.fortio"]}

ERRORS: dict[str, type[LabError]] = {
    "NotFoundError": NotFoundError, "ProxyRejectedError": ProxyRejectedError,
    "BackendError": BackendError,
}


def _running(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class LocalBackend(Backend):
    """A real Envoy mesh on 127.0.0.1, run by meshd for this user (and LAB_MESH name)."""

    name = "local"

    def __init__(self, state: StateDir | None = None, owner: int | None = None,
                 start_timeout: float = 20.0):
        self.state = state or StateDir()
        self.owner = os.getpid() if owner is None else owner
        if not self._alive():
            self._start_daemon(start_timeout)

    @classmethod
    def attach(cls, state: StateDir | None = None) -> LocalBackend | None:
        """A client of the mesh if it is running; None otherwise (never starts one)."""
        backend = cls.__new__(cls)
        backend.state = state or StateDir()
        backend.owner = 0
        return backend if backend._alive() else None

    # --- talking to meshd ---------------------------------------------------------------------
    def call(self, method: str, timeout: float = 300.0, **params: Any) -> Any:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            try:
                s.connect(str(self.state.socket_path))
            except OSError as exc:
                raise BackendError(f"the local mesh is not running ({exc}); "
                                   "run lablib.connect() again to start it") from None
            data = b""
            try:
                s.sendall(json.dumps({"method": method, "params": params}).encode() + b"\n")
                while not data.endswith(b"\n"):
                    chunk = s.recv(1 << 16)
                    if not chunk:
                        break
                    data += chunk
                reply = json.loads(data)
            except (OSError, ValueError) as exc:
                raise BackendError(f"the local mesh stopped answering ({type(exc).__name__}); "
                                   f"see {self.state.logs / 'meshd.log'}, then run "
                                   "lablib.connect() again") from None
        if "error" in reply:
            err = reply["error"]
            if err["type"] == "ConfigError":
                raise ConfigError([Diagnostic(**d) for d in err["diagnostics"]])
            raise ERRORS.get(err["type"], BackendError)(err["message"])
        return reply["result"]

    def _alive(self) -> bool:
        try:
            self.call("ping", timeout=2)
            return True
        except (BackendError, OSError, json.JSONDecodeError):
            return False

    def _start_daemon(self, timeout: float) -> None:
        log = open(self.state.logs / "meshd.log", "ab")
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "lablib.local.meshd", "--owner", str(self.owner)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env, close_fds=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._alive():
                return
            if daemon.poll() not in (None, 0):  # 0: another meshd serves this mesh
                raise BackendError(f"meshd exited with code {daemon.returncode} while starting; "
                                   f"see {self.state.logs / 'meshd.log'}")
            time.sleep(0.05)
        raise BackendError(f"meshd did not start in {timeout:.0f}s; see "
                           f"{self.state.logs / 'meshd.log'}")

    # --- Backend -------------------------------------------------------------------------------
    def install(self, profile: str = "demo", values: dict[str, str] | None = None) -> list[str]:
        if profile != "demo":
            raise BackendError(f'profile "{profile}" is not available locally; use "demo"')
        return list(self.call("install", values=values or {}))

    def verify_install(self) -> list[dict[str, Any]]:
        return list(self.call("verify"))

    def uninstall(self) -> None:
        """Stop the mesh; returns once meshd has exited (its processes and files are gone)."""
        daemon = int(self.call("ping")["pid"])
        self.call("shutdown")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _running(daemon):
            time.sleep(0.05)

    def apply(self, source: Source, namespace: str | None = None) -> list[str]:
        return list(self.call("apply", text=manifest_text(source), namespace=namespace))

    def delete(self, source: Source, namespace: str | None = None,
               ignore_missing: bool = True) -> list[str]:
        return list(self.call("delete", text=manifest_text(source, check_fields=False),
                              namespace=namespace,
                              ignore_missing=ignore_missing))

    def get(self, kind: str, name: str | None = None, namespace: str | None = None,
            selector: dict[str, str] | None = None) -> list[dict[str, Any]]:
        return list(self.call("get", kind=kind, name=name, namespace=namespace,
                              selector=selector))

    def ingress_address(self, port_name: str = "http2") -> tuple[str, int]:
        svc = self.get("service", "istio-ingressgateway", "istio-system")[0]
        ingress = (svc.get("status", {}).get("loadBalancer") or {}).get("ingress") or []
        ports = {p.get("name"): p for p in svc["spec"]["ports"]}
        if port_name not in ports:
            raise NotFoundError(f'the ingress gateway Service has no port named "{port_name}" '
                                f"(it has {', '.join(sorted(map(str, ports)))})")
        if ingress:
            return str(ingress[0].get("ip") or ingress[0].get("hostname")), int(
                ports[port_name]["port"])
        return "127.0.0.1", int(ports[port_name]["nodePort"])

    def pod_info(self, pod: str, namespace: str) -> dict[str, Any]:
        return dict(self.call("pod_info", namespace=namespace, name=pod))

    def exec(self, pod: str, command: Sequence[str], namespace: str = "default",
             container: str | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess:
        info = self.pod_info(pod, namespace)
        if container is not None and container not in info["containers"]:
            raise BackendError(f"error: container {container} is not valid for pod {pod}")
        argv = list(command)
        if container == "istio-proxy" and argv[:2] == ["pilot-agent", "request"]:
            path = argv[3] if len(argv) > 3 else ""
            out = self.proxy_admin(pod, namespace, path)
            return subprocess.CompletedProcess(argv, 0, out, "")
        tool = os.path.basename(argv[0]) if argv else ""
        if tool in EMULATED_TOOLS and shutil.which(argv[0]) is None:  # also /usr/bin/fortio
            argv = [*EMULATED_TOOLS[tool], *argv[1:]]
        bypasses_sidecar = container == "istio-proxy" or info["proxy"] != "sidecar"
        if argv[:2] == ["openssl", "s_client"] and "-proxy" not in argv and bypasses_sidecar \
                and info.get("direct_proxy"):
            # openssl reads no proxy variables; cluster DNS would give it the service's
            # endpoints directly, which is what the kube-proxy stand-in's CONNECT does.
            argv = [*argv[:2], "-proxy", info["direct_proxy"], *argv[2:]]
        env = dict(os.environ)
        env.update(info["env"])
        # Like `kubectl exec` without -i: the command gets no standard input.
        return subprocess.run(argv, env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=timeout, check=False)

    def proxy_admin(self, pod: str, namespace: str, path: str) -> str:
        info = self.pod_info(pod, namespace)
        if not info["admin_port"]:
            raise BackendError(f"pod {pod} in {namespace} has no istio-proxy container")
        url = f"http://127.0.0.1:{info['admin_port']}/{path.lstrip('/')}"
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read().decode()

    def proxy_url(self, pod: str, namespace: str) -> str | None:
        return self.pod_info(pod, namespace)["env"].get("http_proxy")

    def proxy_status(self) -> list[dict[str, Any]]:
        return list(self.call("proxy_status"))

    def telemetry_endpoints(self) -> dict[str, str]:
        """The mesh's metrics server, and its Prometheus (started on first ask) if any."""
        return {k: str(v) for k, v in dict(self.call("telemetry")).items()}

    def dashboard_url(self, name: str) -> str:
        """The local Prometheus UI; Grafana and Kiali have notebook stand-ins instead."""
        if name != "prometheus":
            raise BackendError(f"{name} is not part of the local mesh; the labs' service graph "
                               f"(lab 13) and dashboards (lab 14) stand in for it (on a "
                               f"cluster, `istioctl dashboard {name}` port-forwards to Istio's "
                               "addon)")
        found = self.telemetry_endpoints()
        if not found["prometheus"]:
            raise BackendError(f"this mesh runs no Prometheus: {found.get('note', '')}")
        return found["prometheus"]

    def snapshot(self, pod: str, namespace: str) -> dict[str, Any]:
        """The translated config the control plane holds for this pod's proxy."""
        return dict(self.call("snapshot", namespace=namespace, name=pod))

    def processes(self) -> list[dict[str, Any]]:
        return list(self.call("processes"))

    def ports(self) -> list[int]:
        """The loopback ports this mesh holds."""
        return [int(p) for p in self.call("ports")]
