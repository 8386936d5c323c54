"""Kernel ▸ Interrupt during install, apply and load runs leaves nothing half done.

An interrupt is SIGINT sent to the main thread, as Jupyter's Kernel ▸ Interrupt does.
After it: the mesh holds either the whole change or none of it, no process of the change
is left running, no load thread or request keeps going, and the next call works.
"""

from __future__ import annotations

import http.server
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import lablib
from lablib import traffic
from lablib.load import load

NS = "interrupted"
HTTPBIN_REPLICAS = 3  # enough pods that the interrupt lands while they start


def after(condition: Callable[[], bool], timeout: float = 60.0) -> threading.Thread:
    """Interrupt the main thread as soon as `condition()` holds (polled on a thread)."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if condition():
                    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
                    return
            except Exception:  # the mesh may be busy; ask again
                pass
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def mesh_pids(state_path: Path) -> set[int]:
    """Live processes the supervisor of the mesh in `state_path` started."""
    tag = f"LAB_SUPERVISOR_DIR={state_path}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if tag in environ and state != "Z":
            found.add(int(entry.name))
    return found


def running(mesh: Any, prefix: str) -> list[str]:
    return [row["name"] for row in mesh.processes()
            if row["name"].startswith(prefix) and row["pid"] is not None]


def names(mesh: Any, kind: str) -> set[str]:
    return {item["metadata"]["name"] for item in mesh.get(kind, namespace=NS)}


def httpbin(replicas: int) -> str:
    text = (Path(__file__).parent.parent / "samples/httpbin/httpbin.yaml").read_text()
    return text.replace("replicas: 1", f"replicas: {replicas}")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A fresh mesh of its own (not installed yet: the first test interrupts its install)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAB_STATE_DIR", str(tmp_path_factory.mktemp("interrupts")))
        patch.setenv("LAB_MESH", f"interrupts-{os.getpid()}")
        patch.setenv("LAB_PROGRESS", "off")
        backend = lablib.connect("local")
        try:
            yield backend
        finally:
            backend.uninstall()


def test_an_interrupted_install_leaves_no_gateway_and_installing_again_works(mesh):
    after(lambda: bool(running(mesh, "istio-system.")))
    with pytest.raises(KeyboardInterrupt) as interrupted:
        mesh.install()
    assert "kept its last good configuration" in " ".join(interrupted.value.__notes__)
    assert running(mesh, "istio-system.") == []
    assert mesh.get("deployment", namespace="istio-system") == []
    assert not mesh.call("ping")["installed"]

    mesh.install()
    names = {d["metadata"]["name"] for d in mesh.get("deployment", namespace="istio-system")}
    assert {"istiod", "istio-ingressgateway", "istio-egressgateway"} <= names
    assert len(running(mesh, "istio-system.")) == 2  # the two gateway Envoys


def test_an_interrupted_apply_is_undone_whole_and_the_next_apply_works(mesh):
    mesh.create_namespace(NS, {"istio-injection": "enabled"})
    mesh.apply("samples/sleep/sleep.yaml", namespace=NS)
    state_path = Path(os.environ["LAB_STATE_DIR"]) / os.environ["LAB_MESH"]
    pids_before = mesh_pids(state_path)
    ports_before = set(mesh.ports())

    after(lambda: bool(running(mesh, f"{NS}.httpbin-")))
    with pytest.raises(KeyboardInterrupt) as interrupted:
        mesh.apply(httpbin(HTTPBIN_REPLICAS), namespace=NS)
    assert "kept its last good configuration" in " ".join(interrupted.value.__notes__)
    # None of the change: no resource, no process, no port, and every proxy on its config.
    assert names(mesh, "deployment") == {"sleep"}
    assert names(mesh, "service") == {"sleep"}
    assert running(mesh, f"{NS}.httpbin-") == []
    assert mesh_pids(state_path) == pids_before
    assert set(mesh.ports()) == ports_before
    stale = [row for row in mesh.proxy_status() if "STALE" in str(row)]
    assert stale == []

    mesh.apply(httpbin(HTTPBIN_REPLICAS), namespace=NS)
    assert len(running(mesh, f"{NS}.httpbin-")) == 2 * HTTPBIN_REPLICAS  # app and sidecar
    sleep = mesh.pod_name({"app": "sleep"}, NS)
    sent = traffic.send(mesh, "http://httpbin:8000/get", n=10, from_pod=sleep, namespace=NS)
    assert (sent["status"] == 200).all(), sent


# --- load runs ---------------------------------------------------------------------------------


class SlowHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET after 50 ms and counts them."""

    protocol_version = "HTTP/1.1"
    served = 0

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        time.sleep(0.05)
        type(self).served += 1
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def slow_server() -> Iterator[http.server.ThreadingHTTPServer]:
    SlowHandler.served = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def requests_stop(server_counter: Callable[[], int], quiet: float = 0.5) -> bool:
    """True when the server saw no new request for `quiet` seconds (within 3 s)."""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        seen = server_counter()
        time.sleep(quiet)
        if server_counter() == seen:
            return True
    return False


def load_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("load-") and t.is_alive()]


def test_an_interrupted_load_run_stops_every_worker(slow_server):
    url = f"http://127.0.0.1:{slow_server.server_address[1]}/"
    after(lambda: SlowHandler.served >= 10)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        load(url, connections=4, n=100_000)
    assert time.monotonic() - started < 10
    assert load_threads() == []
    assert requests_stop(lambda: SlowHandler.served)
    assert SlowHandler.served < 1000
    result = load(url, connections=2, n=6)  # the next run is unaffected
    assert result.codes() == {200: 6}


def test_an_interrupted_load_run_with_a_rate_stops_too(slow_server):
    url = f"http://127.0.0.1:{slow_server.server_address[1]}/"
    after(lambda: SlowHandler.served >= 3)
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        load(url, connections=2, qps=20, duration=60)
    assert time.monotonic() - started < 10
    assert load_threads() == []
    assert requests_stop(lambda: SlowHandler.served)


class Gateway:
    """Just enough of a backend for `traffic.send`: the ingress address."""

    name = "fake"

    def __init__(self, port: int):
        self.port = port

    def ingress_address(self) -> tuple[str, int]:
        return "127.0.0.1", self.port


@pytest.mark.parametrize("concurrency", [1, 4])
def test_an_interrupted_send_stops_sending(slow_server, concurrency):
    gateway = Gateway(slow_server.server_address[1])
    after(lambda: SlowHandler.served >= 8)
    with pytest.raises(KeyboardInterrupt):
        traffic.send(gateway, "/", n=5000, concurrency=concurrency)  # type: ignore[arg-type]
    assert requests_stop(lambda: SlowHandler.served)
    assert SlowHandler.served < 1000
    again = traffic.send(gateway, "/", n=4, concurrency=concurrency)  # type: ignore[arg-type]
    assert (again["status"] == 200).all()
