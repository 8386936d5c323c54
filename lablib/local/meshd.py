"""meshd: the per-user daemon that hosts one LocalMesh and answers requests on a Unix socket.

Started by `lablib.connect()`; it owns every mesh process through the Supervisor, so they
all end with it. When started from a notebook it watches the kernel that started it, and
every later process that attaches to the same mesh (a terminal beside the notebook with the
same LAB_MESH): it tears the mesh down when the last of them dies, even by kill -9.

Protocol: one JSON request per connection, `{"method": ..., "params": {...}}`, answered by
`{"result": ...}` or `{"error": {"type": ..., "message": ..., "diagnostics": [...]}}`.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import fcntl
import json
import logging
import os
import signal
import socketserver
import sys
import threading
from collections.abc import Callable
from typing import Any

from ..config.loader import load
from ..errors import ConfigError, LabError
from .logcap import LogCapper
from .mesh import LocalMesh
from .state import StateDir
from .supervisor import Supervisor, command_line, kill_stale
from .views import MeshViews

log = logging.getLogger("meshd")
CHANGES = ("install", "apply", "delete")  # requests a client may interrupt


class Handler(socketserver.StreamRequestHandler):
    server: MeshServer

    def handle(self) -> None:
        line = self.rfile.readline()
        try:
            request = json.loads(line)
            result = self.server.dispatch(request["method"], request.get("params") or {})
            reply: dict[str, Any] = {"result": result}
        except ConfigError as exc:
            reply = {"error": {"type": "ConfigError", "message": str(exc),
                               "diagnostics": [dataclasses.asdict(d) for d in exc.diagnostics]}}
        except LabError as exc:
            reply = {"error": {"type": type(exc).__name__, "message": str(exc)}}
        except Exception as exc:  # reported to the caller, never kills the daemon
            log.exception("request failed")
            reply = {"error": {"type": "BackendError", "message": f"{type(exc).__name__}: {exc}"}}
        self.wfile.write(json.dumps(reply, default=str).encode() + b"\n")


class Owners:
    """The processes that hold the mesh (reference counts by pid): when the last one ends,
    the mesh ends. A mesh started by no process (`--owner 0`) lives until it is stopped."""

    def __init__(self, supervisor: Supervisor, on_last_gone: Callable[[], None]):
        self._supervisor = supervisor
        self._on_last_gone = on_last_gone
        self._pids: set[int] = set()
        self._lock = threading.Lock()

    def add(self, pid: int) -> None:
        """Hold the mesh for `pid`, a live process of this user."""
        try:
            if os.stat(f"/proc/{pid}").st_uid != os.geteuid():
                raise LabError(f"process {pid} belongs to another user: it cannot hold the mesh")
        except FileNotFoundError:
            raise LabError(f"process {pid} is not running: it cannot hold the mesh") from None
        with self._lock:
            if pid in self._pids:
                return
            self._pids.add(pid)
        log.info("process %d holds the mesh", pid)
        self._supervisor.watch_owner(pid, lambda: self._gone(pid))

    def _gone(self, pid: int) -> None:
        with self._lock:
            self._pids.discard(pid)
            last = not self._pids
        log.info("holder %d ended; %s", pid, "no holder left: stopping" if last
                 else "the mesh stays up for its other holders")
        if last:
            self._on_last_gone()

    def rows(self) -> list[dict[str, Any]]:
        """Who holds the mesh: pid and command line."""
        with self._lock:
            pids = sorted(self._pids)
        return [{"pid": pid, "command": " ".join((command_line(pid) or "?").split())[:120]}
                for pid in pids]

    @property
    def held(self) -> bool:
        with self._lock:
            return bool(self._pids)


class MeshServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, state: StateDir, mesh: LocalMesh):
        self.state = state
        self.mesh = mesh
        self.views = MeshViews(mesh)
        self.stopping = threading.Event()
        self.owners = Owners(mesh.supervisor, self.stop)
        super().__init__(str(state.socket_path), Handler)

    def dispatch(self, method: str, params: dict[str, Any]) -> Any:
        if method == "ping":
            return {"pid": os.getpid(), "installed": self.mesh.installed}
        if method == "attach":
            # A mesh nobody held (started from a terminal) stays unheld: it lives until down.
            if self.owners.held:
                self.owners.add(int(params["pid"]))
            return self.owners.rows()
        if method == "holders":
            return self.owners.rows()
        if method in CHANGES:
            # `op` names the call so that the client can interrupt it (see `cancel`).
            with self.mesh.operation(params.pop("op", None)):
                return self.serve(method, params)
        if method == "cancel":
            self.mesh.cancel(str(params["op"]))
            return "cancelled"
        if method == "progress":
            progress = self.mesh.progress
            return progress if progress.get("op") == params.get("op") else {}
        return self.serve(method, params)

    def serve(self, method: str, params: dict[str, Any]) -> Any:
        """Every request but ping, cancel and progress."""
        if method == "install":
            return self.mesh.install(params.get("values"), params.get("profile") or "demo")
        if method == "apply":
            docs = load(params["text"], namespace=params.get("namespace"), verb="apply",
                        read_files=False)
            return self.mesh.apply(docs, params.get("namespace"))
        if method == "delete":
            docs = load(params["text"], namespace=params.get("namespace"), check_fields=False,
                        verb="delete", read_files=False)
            try:
                return self.mesh.delete(docs, params.get("namespace"),
                                        bool(params.get("ignore_missing")))
            finally:
                del docs
                _give_back_freed_memory()
        if method == "rotate_certificates":
            self.mesh.rotate_certificates()
            return "rotated"
        if method == "shutdown":
            threading.Thread(target=self.stop, daemon=True).start()
            return "shutting down"
        view = getattr(self.views, method, None)
        if view is None or method.startswith("_"):
            raise LabError(f"unknown request {method!r}")
        return view(**params)

    def stop(self) -> None:
        if self.stopping.is_set():
            return
        self.stopping.set()
        self.mesh.shutdown()
        self.shutdown()


def _give_back_freed_memory() -> None:
    """Return the heap that deleted objects freed to the system (glibc keeps it otherwise)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: its allocator decides
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshd")
    parser.add_argument("--owner", type=int, default=0,
                        help="pid whose death ends the mesh (the notebook kernel); 0 = none")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    state = StateDir()
    lock = open(state.path / "meshd.lock", "w")  # held for meshd's life; the OS drops it on exit
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.info("another meshd serves mesh %s; leaving it be", state.mesh)
        return 0
    live = kill_stale(state)  # processes and files a killed meshd left behind
    if live is not None:
        log.info("meshd %d already serves mesh %s", live, state.mesh)
        return 0
    state.socket_path.unlink(missing_ok=True)
    supervisor = Supervisor(state)
    capper = LogCapper(state.logs).start()
    mesh = LocalMesh(state, supervisor)
    server = MeshServer(state, mesh)
    os.chmod(state.socket_path, 0o600)
    try:
        state.write_private(state.pid_path, str(os.getpid()))
    except LabError as exc:  # a full disk or a read-only folder: say so in meshd.log
        log.error("%s", exc)
        mesh.shutdown()
        server.server_close()
        state.socket_path.unlink(missing_ok=True)
        return 1
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: threading.Thread(target=server.stop, daemon=True).start())
    if args.owner:
        try:
            server.owners.add(args.owner)
        except LabError as exc:  # the process that started meshd is gone already
            log.info("%s: stopping", exc)
            threading.Thread(target=server.stop, daemon=True).start()
    log.info("meshd %d serving on %s (xDS on %s)", os.getpid(), state.socket_path,
             mesh.xds_socket)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        capper.stop()
        server.stop() if not server.stopping.is_set() else None
        server.server_close()
        state.clear(keep_logs=True)  # nothing but the logs outlives the mesh
    return 0


if __name__ == "__main__":
    sys.exit(main())
