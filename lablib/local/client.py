"""The local backend as a lab sees it: a client of this user's meshd daemon."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
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
from ..progress import Progress
from . import podnet
from .admin import admin_request
from .state import StateDir

# Tools a sample image ships that this machine lacks, run by their local equivalents.
EMULATED_TOOLS = {"fortio": [sys.executable, "-m", "lablib.apps.fortio"]}

# Requests that change the mesh: shown with a progress bar, and undone when interrupted.
CHANGES = {"install": "istio install", "apply": "apply", "delete": "delete"}
CANCEL_WAIT_S = 120.0  # how long an interrupted change may take to roll back
TICK_S = 0.25  # how often a waiting client asks for progress

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
        elif self.owner:
            # Another process started the mesh: this one holds it too, so the mesh lives
            # while either does (a terminal beside the notebook).
            self.call("attach", pid=self.owner)

    def holders(self) -> list[dict[str, Any]]:
        """The processes that keep the mesh alive (pid and command); none: it lives until
        stopped."""
        return list(self.call("holders"))

    @classmethod
    def attach(cls, state: StateDir | None = None) -> LocalBackend | None:
        """A client of the mesh if it is running; None otherwise (never starts one)."""
        backend = cls.__new__(cls)
        backend.state = state or StateDir()
        backend.owner = 0
        return backend if backend._alive() else None

    # --- talking to meshd ---------------------------------------------------------------------
    def call(self, method: str, timeout: float = 300.0, **params: Any) -> Any:
        if method in CHANGES:
            return self._change(method, timeout, params)
        with self._connect(timeout) as s:
            self._send(s, method, params)
            return self._answer(self._receive(s, timeout))

    def _change(self, method: str, timeout: float, params: dict[str, Any]) -> Any:
        """A request that changes the mesh, with a progress bar; an interrupt (Kernel ▸
        Interrupt, Ctrl-C) asks meshd to undo it and waits until it has, then re-raises."""
        op = uuid.uuid4().hex
        with Progress(CHANGES[method]) as bar, self._connect(timeout) as s:
            try:
                self._send(s, method, {**params, "op": op})
                reply = self._receive(s, timeout, self._progress_reader(op, bar))
            except KeyboardInterrupt as interrupt:
                interrupt.add_note(self._undo(s, op))
                raise
            return self._answer(reply)

    def _progress_reader(self, op: str, bar: Progress) -> Callable[[], None]:
        """Called while waiting: updates the bar. Waiting in short ticks also lets an
        interrupt that is not a real signal (`_thread.interrupt_main`) land at once."""

        def read() -> None:
            if bar.mode == "off":
                return
            try:
                progress = self.call("progress", timeout=2, op=op)
            except BackendError:
                return
            if progress:
                bar.update(progress["done"], progress["total"], progress["step"])

        return read

    def _undo(self, s: socket.socket, op: str) -> str:
        """Cancel operation `op` and wait for meshd's answer on `s`; says what became of it."""
        try:
            self.call("cancel", timeout=5, op=op)
        except BackendError:
            return "the mesh did not answer the interrupt; run lablib.connect() to check it"
        try:
            s.shutdown(socket.SHUT_WR)  # a request cut short ends here, so meshd answers
        except OSError:
            pass
        try:
            reply = self._receive(s, CANCEL_WAIT_S)
        except BackendError:  # the reply had been read when the interrupt came
            return ("interrupted as the change ended: check the mesh with mesh.get(...), "
                    "and apply again if needed")
        if "error" in reply:
            return "interrupted: the mesh kept its last good configuration"
        return "interrupted too late: the change had been fully applied"

    def _connect(self, timeout: float) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(str(self.state.socket_path))
        except OSError as exc:
            s.close()
            raise BackendError(f"the local mesh is not running ({exc}); "
                               "run lablib.connect() again to start it") from None
        return s

    def _send(self, s: socket.socket, method: str, params: dict[str, Any]) -> None:
        try:
            s.sendall(json.dumps({"method": method, "params": params}).encode() + b"\n")
        except OSError as exc:
            raise self._stopped(exc) from None

    def _receive(self, s: socket.socket, timeout: float,
                 waiting: Callable[[], None] | None = None) -> dict[str, Any]:
        """meshd's reply; `waiting()` is called every TICK_S while there is none yet."""
        deadline = time.monotonic() + timeout
        data = b""
        try:
            while not data.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no answer in time")
                s.settimeout(min(left, TICK_S) if waiting else left)
                try:
                    chunk = s.recv(1 << 16)
                except TimeoutError:
                    if waiting is not None and time.monotonic() < deadline:
                        waiting()
                        continue
                    raise
                if not chunk:
                    break
                data += chunk
            return dict(json.loads(data))
        except (OSError, ValueError) as exc:
            raise self._stopped(exc) from None

    def _stopped(self, exc: Exception) -> BackendError:
        return BackendError(f"the local mesh stopped answering ({type(exc).__name__}); "
                            f"see {self.state.logs / 'meshd.log'}, then run "
                            "lablib.connect() again")

    def _answer(self, reply: dict[str, Any]) -> Any:
        """The result of a reply, or its error raised as the matching lablib error."""
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
                self._check_state_writable()
                raise BackendError(f"meshd exited with code {daemon.returncode} while starting"
                                   f"{self._log_tail()}")
            time.sleep(0.05)
        self._check_state_writable()
        raise BackendError(f"meshd did not start in {timeout:.0f}s{self._log_tail()}")

    def _check_state_writable(self) -> None:
        """Raise the StateDirError (disk full, not writable...) that kept meshd from starting,
        if that is what happened: meshd cannot even log it then."""
        probe = self.state.write_private(".probe", b"lablib")
        probe.unlink(missing_ok=True)

    def _log_tail(self, lines: int = 8) -> str:
        """meshd.log's last lines, to show with an error, and where to read the rest."""
        path = self.state.logs / "meshd.log"
        try:
            tail = path.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            tail = []
        shown = "".join(f"\n    {line}" for line in tail)
        return f"; meshd.log ends:{shown}\n    (all of it: {path})" if tail else f"; see {path}"

    # --- Backend -------------------------------------------------------------------------------
    def install(self, profile: str = "demo", values: dict[str, str] | None = None) -> list[str]:
        return list(self.call("install", values=values or {}, profile=profile))

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
        text = manifest_text(source, check_fields=False, verb="delete")
        return list(self.call("delete", text=text,
                              namespace=namespace,
                              ignore_missing=ignore_missing))

    def get(self, kind: str, name: str | None = None, namespace: str | None = None,
            selector: dict[str, str] | None = None) -> list[dict[str, Any]]:
        return list(self.call("get", kind=kind, name=name, namespace=namespace,
                              selector=selector))

    def ingress_address(self, port_name: str = "http2") -> tuple[str, int]:
        """The gateway's node port on 127.0.0.1: always there, and one hop shorter than the
        load balancer's address (which needs the privilege to bind ports below 1024)."""
        svc = self.get("service", "istio-ingressgateway", "istio-system")[0]
        ports = {p.get("name"): p for p in svc["spec"]["ports"]}
        if port_name not in ports:
            raise NotFoundError(f'the ingress gateway Service has no port named "{port_name}" '
                                f"(it has {', '.join(sorted(map(str, ports)))})")
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
        if bypasses_sidecar and podnet.is_curl(argv):
            argv = podnet.direct_curl(argv, lambda host, port: self._endpoint(
                host, port, namespace), info.get("app_ports") or {})
        if argv[:2] == ["openssl", "s_client"] and "-proxy" not in argv and bypasses_sidecar \
                and info.get("direct_proxy"):
            # openssl reads no proxy variables; cluster DNS would give it the service's
            # endpoints directly, which is what the kube-proxy stand-in's CONNECT does.
            argv = [*argv[:2], "-proxy", info["direct_proxy"], *argv[2:]]
        env = dict(os.environ)
        if container == "istio-proxy":
            env = podnet.without_proxies(env)  # the app's http_proxy is not the proxy's
        else:
            env.update(info["env"])
            own = info.get("container_env") or {}
            env.update(own.get(container or info["containers"][0]) or {})
        # Like `kubectl exec` without -i: the command gets no standard input.
        return subprocess.run(argv, env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=timeout, check=False)

    def service_endpoints(self, service: dict[str, Any]) -> dict[str, list[int]]:
        """targetPort -> the loopback port of every pod behind a Service (each pod's own port,
        where its sidecar's inbound listener or the app itself answers)."""
        selector = (service.get("spec") or {}).get("selector") or {}
        if not selector:
            return {}
        ns = service["metadata"]["namespace"]
        out: dict[str, list[int]] = {}
        for pod in self.get("pods", namespace=ns, selector=selector):
            info = self.pod_info(pod["metadata"]["name"], ns)
            for container_port, port in (info.get("ports") or {}).items():
                out.setdefault(str(container_port), []).append(int(port))
        return out

    def _endpoint(self, host: str, port: int, namespace: str) -> int | None:
        """One endpoint's loopback port for `host:port` as cluster DNS and kube-proxy lead a
        pod in `namespace` there; None when `host` is no Service with that port."""
        by_ip = [s for s in self.get("service")
                 if (s.get("spec") or {}).get("clusterIP") == host]
        found = podnet.service_of(host, namespace)
        if by_ip:
            service = by_ip[0]
        elif found is None:
            return None
        else:
            try:
                service = self.get("service", found[0], found[1])[0]
            except (NotFoundError, IndexError):
                return None
        for p in (service.get("spec") or {}).get("ports") or []:
            if int(p["port"]) == port:
                ports = self.service_endpoints(service).get(str(p.get("targetPort", port)))
                return random.choice(ports) if ports else None
        return None

    def logs(self, pod: str, namespace: str = "default", container: str | None = None) -> str:
        info = self.pod_info(pod, namespace)
        container = container or info["containers"][0]
        if container not in info["containers"]:
            raise BackendError(f"error: container {container} is not valid for pod {pod}")
        path = self.state.log_path(f"{namespace}.{pod}.{container}")
        return path.read_text(errors="replace") if path.exists() else ""

    def proxy_admin(self, pod: str, namespace: str, path: str, method: str = "GET") -> str:
        info = self.pod_info(pod, namespace)
        if not info["admin_socket"]:
            raise BackendError(f"pod {pod} in {namespace} has no istio-proxy container")
        return admin_request(info["admin_socket"], path, method,
                             who=f"the istio-proxy of {pod}.{namespace}")

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
