"""The fortio stand-in: Go-style flags, `load` and `curl` through http_proxy, `server`, and the
fortio image and sample that run it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from lablib.apps.fortio import Flag, UsageError, parse_duration, parse_flags
from lablib.local.images import ContainerSpecError, command_for, supported_images

KIT_ROOT = Path(__file__).resolve().parents[1]
SAMPLE = KIT_ROOT / "samples/httpbin/sample-client/fortio-deploy.yaml"


class Upstream(ThreadingHTTPServer):
    """A stub acting as the pod's sidecar: a forward proxy where every third request is 503."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), UpstreamHandler)
        self.lock = threading.Lock()
        self.count = 0
        self.requests: list[tuple[str, dict[str, str]]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class UpstreamHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: Upstream

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.count += 1
            busy = self.server.count % 3 == 0
            self.server.requests.append((self.path, {k.lower(): v for k, v in
                                                     self.headers.items()}))
        status, body = (503, b"upstream connect error") if busy else (200, b'{"url": "ok"}')
        if self.path.endswith("/status/503"):
            status, body = 503, b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def sidecar() -> Iterator[Upstream]:
    server = Upstream()
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def fortio(*args: str, proxy: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the stand-in as `mesh.exec` does: a process with the pod's sidecar as http_proxy."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "no_proxy")}
    if proxy:
        env["http_proxy"] = proxy
    return subprocess.run([sys.executable, "-m", "lablib.apps.fortio", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


# --- flags, as Go's flag package reads them ---------------------------------------------------

SPEC = {
    "c": Flag(int, 8),
    "qps": Flag(float, 8.0),
    "t": Flag(parse_duration, 5.0),
    "H": Flag(str, None, repeated=True),
    "quiet": Flag(lambda v: v == "true", False, boolean=True),
}


def test_flags_take_go_forms_and_stop_at_the_first_argument() -> None:
    parsed = parse_flags(SPEC, ["-c", "3", "--qps=0", "-quiet", "-H", "a: 1", "--H", "b: 2",
                                "http://httpbin:8000/get", "-c", "9"])
    assert parsed.values == {"c": 3, "qps": 0.0, "t": 5.0, "H": ["a: 1", "b: 2"], "quiet": True}
    assert parsed.args == ["http://httpbin:8000/get", "-c", "9"]


def test_defaults_apply_and_double_dash_ends_flags() -> None:
    parsed = parse_flags(SPEC, ["--", "-c"])
    assert parsed.values["c"] == 8 and parsed.values["H"] == []
    assert parsed.args == ["-c"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-x", "1"], "flag provided but not defined: -x"),
        (["-c"], "flag needs an argument: -c"),
        (["-c", "three"], 'invalid value "three" for flag -c'),
        (["-t", "5"], 'invalid value "5" for flag -t'),
        (["---c", "1"], "bad flag syntax: ---c"),
    ],
)
def test_bad_flags_name_the_flag(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        parse_flags(SPEC, argv)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5s", 5.0), ("300ms", 0.3), ("1m30s", 90.0), ("1.5h", 5400.0), ("0", 0.0), ("2us", 2e-6)],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


# --- fortio load ------------------------------------------------------------------------------


def test_load_as_the_walkthrough_types_it_prints_fortios_code_lines(sidecar: Upstream) -> None:
    done = fortio("load", "-c", "3", "-qps", "0", "-n", "30", "-loglevel", "Warning",
                  "http://httpbin:8000/get", proxy=sidecar.url)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # Every third request is a 503 at the stub: 20 and 10, the Istio task's two lines.
    assert lines[-3:-1] == ["Code 200 : 20 (66.7 %)", "Code 503 : 10 (33.3 %)"]
    assert "Sockets used: 3 (for perfect keepalive, would be 3)" in lines
    assert "Starting at max qps with 3 thread(s) for exactly 30 calls (10 per thread + 0)" in lines
    assert [line.split()[2] for line in lines if line.startswith("# target")] == [
        "50%", "75%", "90%", "99%", "99.9%"]
    assert lines[-1].startswith("All done 30 calls")
    # The requests went through http_proxy, for the Service name the learner typed.
    assert {path for path, _ in sidecar.requests} == {"http://httpbin:8000/get"}
    assert done.stderr.count("Non ok http code 503") == 10


def test_load_paces_with_qps_and_honours_percentile_and_header_flags(sidecar: Upstream) -> None:
    start = time.monotonic()
    done = fortio("load", "-c", "2", "-qps", "20", "-t", "1s", "-p", "50,99", "-H",
                  "x-lab: 07", "-loglevel", "Error", "httpbin:8000/get", proxy=sidecar.url)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - start >= 1.0
    assert len(sidecar.requests) == 20
    assert all(headers["x-lab"] == "07" for _, headers in sidecar.requests)
    assert [line for line in done.stdout.splitlines() if line.startswith("# target")][0].startswith(
        "# target 50% ")
    assert len([line for line in done.stdout.splitlines() if line.startswith("# target")]) == 2
    # -loglevel Error hides the per-request warnings.
    assert "Non ok" not in done.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["load", "-x", "1", "http://a/"], "flag provided but not defined: -x"),
        (["load", "-c", "3"], "needs exactly one url"),
        (["load", "-c", "0", "http://a/"], "-c must be at least 1"),
        (["load", "-t", "0", "http://a/"], "-t 0"),
        (["load", "-loglevel", "Loud", "http://a/"], 'invalid value "Loud" for flag -loglevel'),
        (["curl"], "needs exactly one url"),
        (["bench", "http://a/"], "unknown command 'bench'"),
        ([], "usage: fortio command"),
    ],
)
def test_bad_command_lines_exit_2_with_a_clear_message(argv: list[str], message: str) -> None:
    done = fortio(*argv)
    assert done.returncode == 2
    assert message in done.stderr + done.stdout


# --- fortio curl ------------------------------------------------------------------------------


def test_curl_prints_status_line_headers_and_body(sidecar: Upstream) -> None:
    done = fortio("curl", "-quiet", "http://httpbin:8000/get", proxy=sidecar.url)
    assert done.returncode == 0, done.stderr
    head, _, body = done.stdout.partition("\n\n")
    lines = head.split("\n")
    assert lines[0] == "HTTP/1.1 200 OK"
    assert "Content-Type: application/json" in lines
    assert body == '{"url": "ok"}'
    path, headers = sidecar.requests[0]
    assert path == "http://httpbin:8000/get"
    assert headers["user-agent"] == "lablib-fortio"
    assert "accept-encoding" not in headers


def test_curl_of_an_error_status_prints_it_and_exits_1(sidecar: Upstream) -> None:
    done = fortio("curl", "http://httpbin:8000/status/503", proxy=sidecar.url)
    assert done.returncode == 1
    assert done.stdout.startswith("HTTP/1.1 503 Service Unavailable\n")
    assert "Error status 503" in done.stderr


def test_curl_without_a_server_exits_1() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = fortio("curl", f"http://127.0.0.1:{port}/")
    assert done.returncode == 1
    assert "ConnectError" in done.stderr


# --- fortio server ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_echoes_on_every_port_and_stops_on_sigterm() -> None:
    ports = [free_port(), free_port()]
    argv = [sys.executable, "-m", "lablib.apps.fortio", "server", "--port", str(ports[0]),
            "-http-port", f":{ports[1]}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 15
        with httpx.Client(trust_env=False, timeout=2) as client:
            while True:
                try:
                    got = client.get(f"http://127.0.0.1:{ports[1]}/any/path?x=1")
                    break
                except httpx.ConnectError:
                    assert time.monotonic() < deadline, "fortio server never listened"
                    time.sleep(0.05)
            assert got.status_code == 200
            assert got.text == "fortio echo: GET /any/path?x=1\n"
            posted = client.post(f"http://127.0.0.1:{ports[0]}/echo", content=b"ping",
                                 headers={"content-type": "text/x-test"})
            assert (posted.status_code, posted.content) == (200, b"ping")
            assert posted.headers["content-type"] == "text/x-test"
            assert client.head(f"http://127.0.0.1:{ports[0]}/").status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stdout is not None and "stopped" in proc.stdout.read()


# --- the image and the sample -----------------------------------------------------------------


@pytest.mark.parametrize(
    "image", ["fortio/fortio", "fortio/fortio:latest_release", "docker.io/fortio/fortio:1.60.3"])
def test_the_fortio_image_runs_the_echo_server_on_each_declared_port(image: str) -> None:
    argv = command_for(image, port_map={8080: 21001, 8079: 21002}, env={})
    assert argv == [sys.executable, "-m", "lablib.apps.fortio", "server", "--port", "21001",
                    "--port", "21002"]
    assert "docker.io/fortio/fortio:*" in supported_images()


def test_the_fortio_image_needs_its_port_8080_declared() -> None:
    with pytest.raises(ContainerSpecError, match="containerPort: 8080"):
        command_for("fortio/fortio", port_map={81: 1, 82: 2}, env={})


def test_the_sample_has_the_shape_of_istios() -> None:
    service, deployment = yaml.safe_load_all(SAMPLE.read_text())
    assert (service["kind"], service["metadata"]["name"]) == ("Service", "fortio")
    assert service["spec"]["ports"][0]["port"] == 8080
    assert service["spec"]["selector"] == {"app": "fortio"}
    assert (deployment["kind"], deployment["metadata"]["name"]) == ("Deployment", "fortio-deploy")
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"] == {"app": "fortio"}
    config = yaml.safe_load(template["metadata"]["annotations"]["proxy.istio.io/config"])
    assert "cluster.outbound" in config["proxyStatsMatcher"]["inclusionPrefixes"]
    (container,) = template["spec"]["containers"]
    assert container["name"] == "fortio" and container["image"].startswith("fortio/fortio")
    ports = {p["containerPort"]: p["name"] for p in container["ports"]}
    assert ports == {8080: "http-fortio", 8079: "grpc-ping"}
    # The local backend can run it as written.
    command_for(container["image"], port_map={8080: 1, 8079: 2}, env={})
