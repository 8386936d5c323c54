"""The sample apps, each run as a real process and spoken to over real HTTP and TCP."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest

from lablib.apps._runtime import AppHandler, AppServer
from lablib.apps.bookinfo import classify, productpage
from lablib.local.images import command_for

REPO = Path(__file__).resolve().parents[1]
PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY")
REVIEWS_UNAVAILABLE = "Sorry, product reviews are currently unavailable for this book."
DETAILS_UNAVAILABLE = "Sorry, product details are currently unavailable for this book."


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Response:
    """What a test request got back."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        """The body as text."""
        return self.body.decode()

    def json(self) -> object:
        """The body as JSON."""
        return json.loads(self.body)


def call(
    port: int,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 15.0,
) -> Response:
    """One request straight to 127.0.0.1:`port` (never through a proxy from the environment)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Response(response.status, response.headers, response.read())
    finally:
        connection.close()


@dataclass
class App:
    """A running app process."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def get(self, path: str, **kwargs: object) -> Response:
        """GET a path of this app."""
        return call(self.port, path, **kwargs)  # type: ignore[arg-type]

    def output(self) -> str:
        """Everything the process wrote so far."""
        return self.log.read_text()


def _http_ready(port: int) -> bool:
    """Whether an HTTP server answers /health on `port`."""
    try:
        return call(port, "/health", timeout=1.0).status == 200
    except OSError:
        return False


def _tcp_ready(port: int) -> bool:
    """Whether something accepts connections on `port`."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
        return True
    except OSError:
        return False


Spawn = Callable[..., App]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start app processes; every one is stopped (then killed if need be) after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(
        argv: list[str],
        *,
        port: int = 0,
        env: dict[str, str] | None = None,
        ready: Callable[[App], bool] | None = None,
    ) -> App:
        base = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
        base["PYTHONPATH"] = str(REPO)
        log = tmp_path / f"app-{len(started)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv, cwd=REPO, env={**base, **(env or {})}, stdout=out, stderr=subprocess.STDOUT
            )
        started.append(process)
        app = App(process, port, log)
        is_ready = ready or (lambda a: _http_ready(a.port))
        deadline = time.monotonic() + 15
        while not is_ready(app):
            if process.poll() is not None:
                pytest.fail(f"{argv} exited with {process.returncode}:\n{app.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{argv} not ready after 15 s:\n{app.output()}")
            time.sleep(0.05)
        return app

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def python_app(module: str, *args: str) -> tuple[list[str], int]:
    """The argv of one of lablib's apps on a fresh port, and that port."""
    port = free_port()
    return [sys.executable, "-m", f"lablib.apps.{module}", "--port", str(port), *args], port


Stub = Callable[[str, dict[str, str]], tuple[int, bytes]]


@dataclass
class Call:
    """One request the mesh proxy saw."""

    authority: str
    path: str
    headers: dict[str, str]


@dataclass
class Mesh:
    """Stands in for a sidecar's outbound listener: an HTTP forward proxy routing by authority.

    Apps get it as `http_proxy`, send `GET http://reviews:9080/...`, and the proxy passes the
    call to a local port or answers from a stub; unknown authorities get Envoy's 503.
    """

    port: int
    routes: dict[str, int | Stub] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """The environment that sends an app's outbound calls through this proxy."""
        return {"http_proxy": f"http://127.0.0.1:{self.port}"}

    def calls_to(self, authority: str) -> list[Call]:
        """The calls made to one authority, e.g. "reviews:9080"."""
        return [c for c in self.calls if c.authority == authority]


HOP_BY_HOP = {"connection", "proxy-connection", "keep-alive", "transfer-encoding"}


def _proxy_handler(mesh: Mesh) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to `mesh`."""

    class Handler(BaseHTTPRequestHandler):
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: object) -> None:
            """Stay quiet."""

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            headers = {k.lower(): v for k, v in self.headers.items()}
            mesh.calls.append(Call(url.netloc, url.path, headers))
            route = mesh.routes.get(url.netloc)
            if route is None:
                status, body = 503, b"no healthy upstream"
            elif isinstance(route, int):
                kept = {k: v for k, v in headers.items() if k not in HOP_BY_HOP}
                answer = call(route, url.path, headers=kept)
                status, body = answer.status, answer.body
            else:
                status, body = route(url.path, headers)
            try:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the app gave up waiting (timeout tests)

    return Handler


@pytest.fixture
def mesh() -> Iterator[Mesh]:
    """A running mesh proxy, shut down after the test."""
    port = free_port()
    instance = Mesh(port)
    server = ThreadingHTTPServer(("127.0.0.1", port), _proxy_handler(instance))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield instance
    server.shutdown()
    server.server_close()


def json_stub(payload: object, status: int = 200) -> Stub:
    """A stub upstream answering `payload` as JSON."""
    return lambda path, headers: (status, json.dumps(payload).encode())


def start_bookinfo_app(spawn: Spawn, mesh: Mesh, module: str, *args: str) -> App:
    """Start a Bookinfo app with its outbound calls going through `mesh`."""
    argv, port = python_app(f"bookinfo.{module}", *args)
    return spawn(argv, port=port, env={**mesh.env, "POD_NAME": f"{module}-pod"})


# --- details and ratings ---------------------------------------------------------------------


def test_details_returns_the_books_details(spawn: Spawn) -> None:
    argv, port = python_app("bookinfo.details")
    details = spawn(argv, port=port)
    answer = details.get("/details/0")
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.json() == {
        "id": 0,
        "author": "William Shakespeare",
        "year": 1595,
        "type": "paperback",
        "pages": 200,
        "publisher": "PublisherA",
        "language": "English",
        "ISBN-10": "1234567890",
        "ISBN-13": "123-1234567890",
    }
    refused = details.get("/details/abc")
    assert refused.status == 400
    assert refused.json() == {"error": "please provide numeric product id"}


def test_ratings_returns_each_reviewers_stars(spawn: Spawn) -> None:
    argv, port = python_app("bookinfo.ratings")
    ratings = spawn(argv, port=port)
    assert ratings.get("/ratings/7").json() == {
        "id": 7,
        "ratings": {"Reviewer1": 5, "Reviewer2": 4},
    }
    assert ratings.get("/ratings/seven").status == 400
    assert ratings.get("/health").json() == {"status": "Ratings is healthy"}


# --- reviews ---------------------------------------------------------------------------------


def test_reviews_v1_shows_no_stars_and_never_calls_ratings(spawn: Spawn, mesh: Mesh) -> None:
    reviews = start_bookinfo_app(spawn, mesh, "reviews", "--version", "v1")
    payload = reviews.get("/reviews/0").json()
    assert isinstance(payload, dict)
    assert payload["id"] == "0"
    assert payload["podname"] == "reviews-pod"
    assert payload["clustername"] == "null"
    assert payload["version"] == "v1"
    assert [r["reviewer"] for r in payload["reviews"]] == ["Reviewer1", "Reviewer2"]
    assert payload["reviews"][0]["text"].startswith("An extremely entertaining play")
    assert all("rating" not in r for r in payload["reviews"])
    assert mesh.calls_to("ratings:9080") == []


@pytest.mark.parametrize(("version", "color"), [("v2", "black"), ("v3", "red")])
def test_reviews_v2_v3_show_ratings_stars(
    spawn: Spawn, mesh: Mesh, version: str, color: str
) -> None:
    ratings = start_bookinfo_app(spawn, mesh, "ratings")
    mesh.routes["ratings:9080"] = ratings.port
    reviews = start_bookinfo_app(spawn, mesh, "reviews", "--version", version)
    sent = {"end-user": "jason", "x-request-id": "req-1", "x-b3-traceid": "abc", "b3": "abc-1"}
    payload = reviews.get("/reviews/0", headers=sent).json()
    assert isinstance(payload, dict)
    assert [r["rating"] for r in payload["reviews"]] == [
        {"stars": 5, "color": color},
        {"stars": 4, "color": color},
    ]
    (ratings_call,) = mesh.calls_to("ratings:9080")
    assert ratings_call.path == "/ratings/0"
    assert {k: ratings_call.headers.get(k) for k in sent} == sent


@pytest.mark.parametrize(
    "ratings_route",
    [json_stub({"error": "fault filter abort"}, status=500), None],
    ids=["ratings-aborts-500", "ratings-has-no-endpoint"],
)
def test_reviews_v2_reports_ratings_unavailable(
    spawn: Spawn, mesh: Mesh, ratings_route: Stub | None
) -> None:
    if ratings_route is not None:
        mesh.routes["ratings:9080"] = ratings_route
    reviews = start_bookinfo_app(spawn, mesh, "reviews", "--version", "v2")
    answer = reviews.get("/reviews/0")
    assert answer.status == 200
    payload = answer.json()
    assert isinstance(payload, dict)
    assert [r["rating"] for r in payload["reviews"]] == [
        {"error": "Ratings service is currently unavailable"}
    ] * 2


# --- productpage -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_productpage_shows_what_each_reviews_version_serves(
    spawn: Spawn, mesh: Mesh, version: str
) -> None:
    for module in ("details", "ratings"):
        mesh.routes[f"{module}:9080"] = start_bookinfo_app(spawn, mesh, module).port
    reviews = start_bookinfo_app(spawn, mesh, "reviews", "--version", version)
    mesh.routes["reviews:9080"] = reviews.port
    page = start_bookinfo_app(spawn, mesh, "productpage").get("/productpage")
    assert page.status == 200
    assert page.text.count("The Comedy of Errors") >= 1
    assert "<dt>Publisher:</dt>PublisherA" in page.text
    assert "<dt>ISBN-13:</dt>123-1234567890" in page.text
    assert "Reviews served by:" in page.text and "<u>reviews-pod</u>" in page.text
    assert f"<!-- reviews-version: {version} -->" in page.text
    assert classify(page.text) == version
    stars = {"v1": 0, "v2": 9, "v3": 9}[version]  # 5 + 4 full stars
    assert page.text.count('class="glyphicon glyphicon-star"') == stars


def test_productpage_login_sends_end_user_until_logout(spawn: Spawn, mesh: Mesh) -> None:
    mesh.routes["details:9080"] = json_stub({"type": "paperback"})
    mesh.routes["reviews:9080"] = json_stub({"podname": "p", "reviews": [], "version": "v1"})
    page = start_bookinfo_app(spawn, mesh, "productpage")

    login = page.get(
        "/login",
        method="POST",
        body=urlencode({"username": "jason", "passwd": "x"}).encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert login.status == 302
    assert login.headers["location"] == "/productpage"
    cookie = login.headers["set-cookie"].split(";")[0]
    assert cookie == "session=jason"

    signed_in = page.get("/productpage", headers={"cookie": cookie})
    assert "jason" in signed_in.text and "sign out" in signed_in.text
    for authority in ("details:9080", "reviews:9080"):
        (seen,) = mesh.calls_to(authority)
        assert seen.headers["end-user"] == "jason"
        assert seen.headers["cookie"] == cookie

    logout = page.get("/logout", headers={"cookie": cookie})
    assert logout.status == 302
    assert "max-age=0" in logout.headers["set-cookie"].lower()
    mesh.calls.clear()
    page.get("/productpage")
    assert "end-user" not in mesh.calls_to("reviews:9080")[0].headers


def test_productpage_propagates_tracing_headers(spawn: Spawn, mesh: Mesh) -> None:
    mesh.routes["details:9080"] = json_stub({"type": "paperback"})
    mesh.routes["reviews:9080"] = json_stub({"podname": "p", "reviews": []})
    page = start_bookinfo_app(spawn, mesh, "productpage")
    # Lowercase names, as Envoy forwards them.
    sent = {
        "x-request-id": "7f6c",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "x-b3-traceid": "80f198ee56343ba8",
        "x-b3-spanid": "e457b5a2e4d86bd1",
        "x-b3-sampled": "1",
        "user-agent": "lab-test",
    }
    page.get("/productpage", headers=sent)
    for authority in ("details:9080", "reviews:9080"):
        (seen,) = mesh.calls_to(authority)
        assert {k: seen.headers.get(k) for k in sent} == sent


def test_productpage_gives_up_on_slow_reviews_after_two_attempts(spawn: Spawn, mesh: Mesh) -> None:
    # A deliberately slow stub: it holds each reviews call until the test ends (at most 5 s).
    # The per-attempt timeout is shortened to 0.5 s through BOOKINFO_REVIEWS_TIMEOUT, a knob
    # that exists for this test only; the real value (3.0 s) is checked below.
    released = threading.Event()

    def slow_reviews(path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        released.wait(5)
        return 200, b'{"reviews": []}'

    mesh.routes["details:9080"] = json_stub({"type": "paperback"})
    mesh.routes["reviews:9080"] = slow_reviews
    argv, port = python_app("bookinfo.productpage")
    page = spawn(argv, port=port, env={**mesh.env, "BOOKINFO_REVIEWS_TIMEOUT": "0.5"})
    try:
        started = time.monotonic()
        answer = page.get("/productpage")
        elapsed = time.monotonic() - started
    finally:
        released.set()
    assert answer.status == 200
    assert REVIEWS_UNAVAILABLE in answer.text
    assert classify(answer.text) == "unavailable"
    assert len(mesh.calls_to("reviews:9080")) == 2
    assert 1.0 <= elapsed < 2.0, f"two 0.5 s attempts took {elapsed:.2f} s"


def test_productpage_reviews_timeout_is_three_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BOOKINFO_REVIEWS_TIMEOUT", raising=False)
    assert productpage.reviews_timeout() == 3.0


def test_productpage_without_details_shows_the_originals_error(spawn: Spawn, mesh: Mesh) -> None:
    mesh.routes["reviews:9080"] = json_stub({"podname": "p", "reviews": [], "version": "v1"})
    page = start_bookinfo_app(spawn, mesh, "productpage").get("/productpage")
    assert "Error fetching product details!" in page.text
    assert DETAILS_UNAVAILABLE in page.text
    assert len(mesh.calls_to("details:9080")) == 1


def test_productpage_api(spawn: Spawn, mesh: Mesh) -> None:
    for module in ("details", "ratings"):
        mesh.routes[f"{module}:9080"] = start_bookinfo_app(spawn, mesh, module).port
    mesh.routes["reviews:9080"] = json_stub({"id": "0", "reviews": [], "version": "v1"})
    page = start_bookinfo_app(spawn, mesh, "productpage")
    products = page.get("/api/v1/products").json()
    assert isinstance(products, list) and products[0]["title"] == "The Comedy of Errors"
    details = page.get("/api/v1/products/0").json()
    assert isinstance(details, dict) and details["publisher"] == "PublisherA"
    assert page.get("/api/v1/products/0/reviews").json() == {
        "id": "0",
        "reviews": [],
        "version": "v1",
    }
    assert page.get("/api/v1/products/0/ratings").json() == {
        "id": 0,
        "ratings": {"Reviewer1": 5, "Reviewer2": 4},
    }
    mesh.routes.pop("ratings:9080")
    down = page.get("/api/v1/products/0/ratings")
    assert down.status == 503
    assert down.json() == {
        "error": "Sorry, product ratings are currently unavailable for this book."
    }


def test_productpage_serves_index_and_stylesheet(spawn: Spawn, mesh: Mesh) -> None:
    page = start_bookinfo_app(spawn, mesh, "productpage")
    index = page.get("/")
    assert index.status == 200 and "Normal user" in index.text
    css = page.get("/static/bookinfo.css")
    assert css.status == 200
    assert css.headers["content-type"] == "text/css"
    assert b".glyphicon-star" in css.body
    assert page.get("/static/../productpage.py").status == 404


# --- classify --------------------------------------------------------------------------------


def _page(reviews: dict[str, object], status: int = 200) -> str:
    """A product page rendered around one reviews answer."""
    return productpage.render_product_page("", 200, {}, status, reviews)


def _review(rating: Mapping[str, object] | None) -> dict[str, object]:
    """A reviews JSON with two reviews carrying `rating`."""
    item: dict[str, object] = {"reviewer": "Reviewer1", "text": "t"}
    if rating is not None:
        item["rating"] = rating
    return {"podname": "p", "reviews": [item, dict(item)]}


def test_classify_reads_the_stars_not_the_marker() -> None:
    red = _page(_review({"stars": 5, "color": "red"}))
    assert classify(red) == "v3"
    assert classify(red.replace("reviews-version: v3", "reviews-version: v1")) == "v3"
    assert classify(_page(_review({"stars": 4, "color": "black"}))) == "v2"
    assert classify(_page(_review(None))) == "v1"
    assert classify(_page({"error": REVIEWS_UNAVAILABLE}, status=503)) == "unavailable"


def test_classify_needs_the_marker_when_ratings_failed() -> None:
    failed = {"error": "Ratings service is currently unavailable"}
    assert classify(_page({**_review(failed), "version": "v3"})) == "v3"
    without_marker = _page(_review(failed)).replace("<!-- reviews-version: v1 -->", "")
    assert classify(without_marker) == "error"


@pytest.mark.parametrize("body", ["fault filter abort", "no healthy upstream", ""])
def test_classify_calls_anything_else_an_error(body: str) -> None:
    assert classify(body) == "error"


# --- tcp-echo, sleep, httpbin ----------------------------------------------------------------


def _echo(port: int, lines: list[bytes]) -> bytes:
    """Send `lines` on one connection, close the sending side, return all that came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for line in lines:
            sock.sendall(line)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    return received


@pytest.mark.parametrize("prefix", ["one", "two"])
def test_tcp_echo_prefixes_every_line_on_every_port(spawn: Spawn, prefix: str) -> None:
    ports = [free_port(), free_port()]
    argv = [sys.executable, "-m", "lablib.apps.tcp_echo", "--prefix", prefix]
    for port in ports:
        argv += ["--port", str(port)]
    spawn(argv, ready=lambda app: all(_tcp_ready(p) for p in ports))
    for port in ports:
        answer = _echo(port, [b"Tue Mar  5 12:13:48 UTC 2024\n", b"bye\n", b"partial"])
        assert answer == f"{prefix} Tue Mar  5 12:13:48 UTC 2024\n{prefix} bye\n".encode()


def test_httpbin_image_serves_status_418(spawn: Spawn) -> None:
    port = free_port()
    argv = command_for("docker.io/kong/httpbin", port_map={80: port}, env={})
    httpbin = spawn(argv, ready=lambda app: _http_ready_at(port, "/status/200"))
    answer = call(port, "/status/418")
    assert answer.status == 418
    assert b"teapot" in answer.body
    assert httpbin.process.poll() is None


def test_httpbin_logs_each_request_as_gunicorn_does(spawn: Spawn) -> None:
    # Istio's mirroring task reads `kubectl logs` of httpbin for `GET /headers` lines.
    port = free_port()
    argv = command_for("docker.io/kennethreitz/httpbin", port_map={80: port}, env={})
    httpbin = spawn(argv, ready=lambda app: _http_ready_at(port, "/status/200"))
    assert call(port, "/headers?a=1").status == 200
    # The server writes its log line after the response, so the client may see it first.
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in httpbin.output().splitlines() if "/headers" in line]
        if lines or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(lines) == 1, httpbin.output()
    assert re.fullmatch(r'127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] '
                        r'"GET /headers\?a=1 HTTP/1\.1" 200 \d+ "-" "[^"]*"', lines[0]), lines


def _http_ready_at(port: int, path: str) -> bool:
    """Whether `path` answers 200 on `port`."""
    try:
        return call(port, path, timeout=1.0).status == 200
    except OSError:
        return False


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("bookinfo.productpage", ()),
        ("bookinfo.details", ()),
        ("bookinfo.reviews", ("--version", "v2")),
        ("bookinfo.ratings", ()),
    ],
)
def test_http_apps_log_each_request_and_stop_on_sigterm(
    spawn: Spawn, module: str, args: tuple[str, ...]
) -> None:
    argv, port = python_app(module, *args)
    app = spawn(argv, port=port)
    app.get("/health")
    app.process.send_signal(signal.SIGTERM)
    assert app.process.wait(timeout=5) == 0
    assert '"GET /health HTTP/1.1" 200' in app.output()


def test_sleep_and_tcp_echo_stop_on_sigterm(spawn: Spawn) -> None:
    sleeper = spawn(
        [sys.executable, "-m", "lablib.apps.sleep"], ready=lambda app: "waiting" in app.output()
    )
    port = free_port()
    echo = spawn(
        [sys.executable, "-m", "lablib.apps.tcp_echo", "--port", str(port), "--prefix", "one"],
        ready=lambda app: _tcp_ready(port),
    )
    assert sleeper.process.poll() is None
    for app in (sleeper, echo):
        app.process.send_signal(signal.SIGTERM)
        assert app.process.wait(timeout=5) == 0


def test_a_client_hanging_up_is_logged_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    server = AppServer(("127.0.0.1", 0), AppHandler)
    try:
        for error in (BrokenPipeError(32, "Broken pipe"), ValueError("a real bug")):
            try:
                raise error
            except Exception:
                server.handle_error(None, ("127.0.0.1", 40000))
    finally:
        server.server_close()
    captured = capsys.readouterr()
    assert captured.out == "127.0.0.1 - connection closed by client: BrokenPipeError\n"
    assert "ValueError: a real bug" in captured.err and "BrokenPipe" not in captured.err
