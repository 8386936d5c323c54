"""Hand-written static Envoy configs and bare processes: the baselines the mesh is compared to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from lablib.local.admin import envoy_live
from lablib.local.bootstrap import envoy_argv, write_bootstrap
from lablib.local.ports import allocate_port, port_accepts

from .stats import wait_until

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3." \
      "HttpConnectionManager"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3."
                                    "Router"}}
ROUTE_CONFIG = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _admin(socket_path: str) -> dict[str, Any]:
    """An admin API on a Unix socket, as the mesh's proxies have."""
    return {"address": {"pipe": {"path": socket_path, "mode": 0o600}}}


def _listener(port: int, hcm_routes: dict[str, Any]) -> dict[str, Any]:
    """An HTTP listener on `port` whose HCM takes `route_config` or `rds` from `hcm_routes`."""
    return {"name": f"http_{port}", "address": _address(port), "filter_chains": [{"filters": [{
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {"@type": HCM, "stat_prefix": "http", "http_filters": [ROUTER],
                         **hcm_routes}}]}]}


def _cluster(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": _address(port)}}]}]}}


def minimal_config(admin_socket: str) -> dict[str, Any]:
    """The least an Envoy needs to reach LIVE: an admin socket, no listeners."""
    return {"admin": _admin(admin_socket)}


def proxy_config(admin_socket: str, listen_port: int, upstream_port: int) -> dict[str, Any]:
    """One static hop: listener on `listen_port` forwarding everything to `upstream_port`."""
    routes = {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}]}
    return {"admin": _admin(admin_socket),
            "static_resources": {"listeners": [_listener(listen_port, {"route_config": routes})],
                                 "clusters": [_cluster("upstream", upstream_port)]}}


def direct_routes(body: str) -> dict[str, Any]:
    """An RDS file whose one route answers 200 with `body`."""
    return {"resources": [{"@type": ROUTE_CONFIG, "name": "local", "virtual_hosts": [{
        "name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "direct_response": {
            "status": 200, "body": {"inline_string": body}}}]}]}]}


def file_rds_config(admin_socket: str, listen_port: int, watched: Path) -> dict[str, Any]:
    """A listener whose routes come from `watched/routes.json`, reloaded on rename."""
    rds = {"route_config_name": "local", "config_source": {
        "resource_api_version": "V3",
        "path_config_source": {"path": str(watched / "routes.json"),
                               "watched_directory": {"path": str(watched)}}}}
    # Envoy refuses a file-based xDS source unless the node has an id and a cluster.
    return {"node": {"id": "file-rds", "cluster": "bench"}, "admin": _admin(admin_socket),
            "static_resources": {"listeners": [_listener(listen_port, {"rds": rds})]}}


def write_routes(watched: Path, body: str) -> None:
    """Replace the watched route file atomically (Envoy ignores in-place writes)."""
    tmp = watched.parent / f"routes-{body}.json"
    tmp.write_text(json.dumps(direct_routes(body)))
    os.replace(tmp, watched / "routes.json")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate, then kill if it lingers."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@contextmanager
def process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run `argv` with output to `log`; stop it on exit, whatever happened."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        _stop(proc)


@contextmanager
def envoy(config: dict[str, Any], workdir: Path, name: str) -> Iterator[str]:
    """A static Envoy running `config` until the block ends; yields its admin socket."""
    admin_socket = str(config["admin"]["address"]["pipe"]["path"])
    path = write_bootstrap(workdir / f"{name}.json", config)
    with process(envoy_argv(path), workdir / f"{name}.log") as proc:
        wait_until(lambda: envoy_live(admin_socket) or proc.poll() is not None, 20,
                   f"Envoy {name} LIVE")
        if proc.poll() is not None:
            raise RuntimeError(f"Envoy {name} exited; see {workdir / name}.log")
        yield admin_socket


def envoy_start_seconds(workdir: Path, name: str) -> float:
    """Seconds from spawning a minimal-config Envoy to its /ready answering LIVE."""
    admin_socket = str(workdir / f"{name}.sock")
    path = write_bootstrap(workdir / f"{name}.json", minimal_config(admin_socket))
    start = time.perf_counter()
    with process(envoy_argv(path), workdir / f"{name}.log"):
        wait_until(lambda: envoy_live(admin_socket), 20, "bare Envoy LIVE", step=0.001)
        return time.perf_counter() - start


def app_start_seconds(workdir: Path, name: str) -> float:
    """Seconds from spawning Bookinfo's details app to its first accepted connection."""
    port = allocate_port()
    argv = [sys.executable, "-m", "lablib.apps.bookinfo.details", "--port", str(port)]
    start = time.perf_counter()
    with process(argv, workdir / f"{name}.log"):
        wait_until(lambda: port_accepts(port), 20, "bare details app listening", step=0.001)
        return time.perf_counter() - start


@contextmanager
def upstream(workdir: Path, name: str = "upstream") -> Iterator[int]:
    """A tiny httpbin under waitress (as the mesh runs it); yields its port."""
    port = allocate_port()
    argv = [sys.executable, "-m", "waitress", "--host", "127.0.0.1", "--port", str(port),
            "--threads", "4", "httpbin:app"]
    with process(argv, workdir / f"{name}.log"):
        wait_until(lambda: port_accepts(port), 30, "httpbin upstream listening", step=0.01)
        yield port


def file_reload_ms(workdir: Path, changes: int) -> list[float]:
    """Milliseconds from renaming a new RDS file into place to a request seeing it."""
    watched = workdir / "rds"
    watched.mkdir(parents=True, exist_ok=True)
    write_routes(watched, "b0")
    listen_port = allocate_port()
    config = file_rds_config(str(workdir / "file-rds.sock"), listen_port, watched)
    url = f"http://127.0.0.1:{listen_port}/"
    result = []
    with envoy(config, workdir, "file-rds"), httpx.Client(trust_env=False, timeout=5) as client:
        wait_until(lambda: client.get(url).text == "b0", 20, "file RDS first route")
        for i in range(1, changes + 1):
            body = f"b{i}"
            start = time.perf_counter()
            write_routes(watched, body)
            wait_until(lambda b=body: client.get(url).text == b, 10, "file RDS reload", step=0)
            result.append((time.perf_counter() - start) * 1000)
    return result
