"""Plumbing shared by the sample apps: logging, SIGTERM handling, HTTP serving, upstream calls."""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import sys
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Headers the Bookinfo apps copy from an incoming request onto their upstream calls, as the
# originals do: tracing context (so Envoy can stitch spans), plus user and session headers.
PROPAGATED_HEADERS = (
    "x-request-id",
    "traceparent",
    "tracestate",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    "x-ot-span-context",
    "x-datadog-trace-id",
    "x-datadog-parent-id",
    "x-datadog-sampling-priority",
    "x-cloud-trace-context",
    "grpc-trace-bin",
    "sw8",
    "user-agent",
    "cookie",
    "authorization",
    "jwt",
)

_log_lock = threading.Lock()


def log(line: str) -> None:
    """Write one line to stdout and flush it, so log readers see it at once.

    A log that cannot be written (a full disk: ENOSPC) loses the line, never the request
    being logged."""
    with _log_lock:
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except OSError:
            pass


def port_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the `--port` option every app takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True, help="port to bind on 127.0.0.1")
    return parser


def block_stop_signals() -> None:
    """Block SIGTERM/SIGINT in this thread and in every thread started after it."""
    # Blocked signals stay pending until wait_for_stop_signal() collects them, so the serving
    # threads never get interrupted half-way through a request.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})


def wait_for_stop_signal() -> None:
    """Return once SIGTERM or SIGINT arrives (call block_stop_signals() first)."""
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


class AppHandler(BaseHTTPRequestHandler):
    """Base request handler: HTTP/1.1 keep-alive, TCP_NODELAY, one log line per request."""

    protocol_version = "HTTP/1.1"
    # Headers and body leave in separate writes; with Nagle on, Envoy waits ~40 ms for the
    # delayed ACK of the first write before the body arrives.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:
        """Log to stdout (the stdlib default is stderr)."""
        log(f"{self.address_string()} - {format % args}")

    def send_body(
        self,
        status: int,
        body: bytes,
        content_type: str,
        extra_headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """Send a complete response with a Content-Length, so the connection can be reused."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra_headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, payload: object) -> None:
        """Send `payload` as a JSON response."""
        self.send_body(status, json.dumps(payload).encode(), "application/json")

    def send_text(self, status: int, text: str, content_type: str = "text/plain") -> None:
        """Send a UTF-8 text response."""
        self.send_body(status, text.encode(), f"{content_type}; charset=utf-8")

    def forwarded_headers(self) -> dict[str, str]:
        """The incoming headers an app propagates upstream (names matched case-insensitively)."""
        # self.headers is an email.message.Message: get() ignores case, which matters because
        # Envoy forwards every header name lowercased.
        found = {name: self.headers.get(name) for name in PROPAGATED_HEADERS}
        return {name: value for name, value in found.items() if value is not None}


class QuietOnDisconnect:
    """Server mix-in: a client that hung up mid-answer gets one log line, not a traceback."""

    def handle_error(self, request: object, client_address: tuple[str, int]) -> None:
        """Log a dropped connection briefly; anything else with its traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            # Routine behind Envoy: the caller timed out (e.g. a 3 s productpage timeout
            # against a delayed ratings) and the proxy reset this upstream connection.
            log(f"{client_address[0]} - connection closed by client: {type(error).__name__}")
        else:
            super().handle_error(request, client_address)  # type: ignore[misc]


class AppServer(QuietOnDisconnect, ThreadingHTTPServer):
    """The HTTP server every app runs."""


def serve_http(handler: type[AppHandler], port: int, name: str) -> None:
    """Serve `handler` on 127.0.0.1:`port` until SIGTERM, then stop and return."""
    block_stop_signals()
    server = AppServer(("127.0.0.1", port), handler)
    # A short poll interval keeps shutdown() quick: it waits for the loop's next poll.
    thread = threading.Thread(
        target=server.serve_forever, args=(0.1,), name=f"{name}-http", daemon=True
    )
    thread.start()
    log(f"{name} listening on 127.0.0.1:{port}")
    wait_for_stop_signal()
    server.shutdown()
    server.server_close()
    log(f"{name} stopped")


@dataclass(frozen=True)
class Reply:
    """What an upstream call produced: the HTTP status (0 when no response came) and body."""

    status: int
    body: bytes
    error: str = ""

    def json(self) -> object | None:
        """The body parsed as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def http_get(url: str, headers: dict[str, str], timeout: float) -> Reply:
    """GET `url` through `http_proxy` if set; never raises, failures come back as a Reply."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, response.read())
    except urllib.error.HTTPError as err:
        try:
            body = err.read()
        except (OSError, http.client.HTTPException):
            body = b""
        return Reply(err.code, body, str(err))
    except (OSError, http.client.HTTPException) as err:
        # Timeouts, refused connections and unknown hosts all end here, as a status-less reply.
        return Reply(0, b"", f"{type(err).__name__}: {err}")
