"""The outside world, locally: the public sites Istio's egress tasks call, in one process.

The local mesh has no internet, so meshd runs this stand-in for it. One loopback port takes
what a cluster would send out of the node: plain HTTP (the sites' port 80) and TLS (their
443), told apart by the first byte, each site picked by the Host header or the TLS SNI:

- `httpbin.org`: the real httpbin app (psf/httpbin), so `/headers`, `/status/418`,
  `/delay/5` answer as the site does;
- `edition.cnn.com`, `www.google.com`, `istio.io`, `*.wikipedia.org`: a page with a title;
  edition.cnn.com over plain HTTP redirects (301) to https, as the real site does (the TLS
  origination task starts from that redirect).

Certificates come from a "public" CA of this mesh, distinct from the mesh CA: `roots.pem`
(the OS trust store plus that CA) is what pods' curl and the proxies' system roots trust, so
origination and `curl https://...` verify real certificates, and a wrong SNI or name fails.
A name the stand-in does not serve fails as an unknown name would (a TLS alert, or a 502
saying which sites it serves). A second port resets every connection: the BlackHoleCluster's
endpoint, so TLS to a blocked host is reset as in Istio.
"""

from __future__ import annotations

import argparse
import io
import socket
import ssl
import struct
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from socketserver import ThreadingTCPServer
from typing import Any

from ..certs import RootCA, issue_server
from ..config.outside import REDIRECTS_TO_HTTPS, SITES, served_hosts, site_of
from ..controlplane.context import OutsideWorld
from .ports import PortAllocator, port_accepts
from .supervisor import Supervisor

TLS_HANDSHAKE = 0x16
PROCESS = "outside-world"
SYSTEM_ROOTS = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass(frozen=True)
class PublicPKI:
    """The public CA's folder: rootCA.pem, one certificate per site, and roots.pem."""

    folder: Path

    @property
    def roots(self) -> Path:
        """The OS trust store plus the public CA: what clients and proxies trust."""
        return self.folder / "roots.pem"

    @property
    def ca_cert(self) -> Path:
        return self.folder / "rootCA.pem"

    def site_files(self, site: str) -> tuple[Path, Path]:
        stem = site.replace("*", "_wildcard")
        return self.folder / f"{stem}.pem", self.folder / f"{stem}-key.pem"

    @property
    def curl_home(self) -> Path:
        """A CURL_HOME whose .curlrc hides the sidecar's CONNECT reply (curl -I would print
        it): without iptables the pod reaches the world through its proxy, but its curl
        should show what a pod on a cluster sees."""
        return self.folder / "curl"

    def ensure(self) -> PublicPKI:
        """Create the CA, the sites' certificates, roots.pem and the .curlrc where missing."""
        ca = RootCA.load_or_create(self.folder)
        self.curl_home.mkdir(exist_ok=True)
        (self.curl_home / ".curlrc").write_text("suppress-connect-headers\n")
        for site, (names, _) in SITES.items():
            cert, _key = self.site_files(site)
            if not cert.exists():
                issue_server(ca, names, self.folder, stem=cert.stem)
        system = SYSTEM_ROOTS.read_bytes() if SYSTEM_ROOTS.exists() else b""
        wanted = system.rstrip(b"\n") + b"\n" + ca.cert_pem
        if not self.roots.exists() or self.roots.read_bytes() != wanted:
            self.roots.write_bytes(wanted)
        return self


def server_context(pki: PublicPKI) -> ssl.SSLContext:
    """A TLS server context that picks each site's certificate by SNI and refuses others."""
    contexts = {}
    for site in SITES:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*map(str, pki.site_files(site)))
        contexts[site] = context
    default = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    default.load_cert_chain(*map(str, pki.site_files("httpbin.org")))

    def pick(sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: ssl.SSLContext
             ) -> int | None:
        site = site_of(name or "")
        if site is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sock.context = contexts[site]
        return None

    default.sni_callback = pick
    return default


class OutsideHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "outside-world"
    sys_version = ""
    httpbin: Any = None

    def log_message(self, format: str, *args: object) -> None:
        sys.stdout.write(f"{self.headers.get('Host', '-') if hasattr(self, 'headers') else '-'}"
                         f" {format % args}\n")
        sys.stdout.flush()

    def _serve(self) -> None:
        if self.path.startswith(("http://", "https://")):  # asked as a proxy is asked
            self.path = "/" + self.path.split("/", 3)[3] if self.path.count("/") > 2 else "/"
        host = self.headers.get("Host", "")
        site = site_of(host)
        tls = isinstance(self.connection, ssl.SSLSocket)
        if site is None:
            self._reply(502, "text/plain", (
                f"outside world (lablib): no site {host!r}; this stand-in serves "
                f"{', '.join(served_hosts())}\n").encode())
        elif site in REDIRECTS_TO_HTTPS and not tls:
            self._reply(301, "text/html", b"", {"Location": f"https://{host.rsplit(':', 1)[0]}"
                                                            f"{self.path}"})
        elif site == "httpbin.org":
            self._wsgi(tls)
        else:
            title = SITES[site][1]
            self._reply(200, "text/html; charset=utf-8",
                        f"<!doctype html><html><head><title>{title}</title></head>"
                        f"<body><h1>{title}</h1></body></html>\n".encode())

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _serve

    def _reply(self, status: int, content_type: str, body: bytes,
               headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _wsgi(self, tls: bool) -> None:
        """Run the request through the httpbin WSGI app."""
        length = int(self.headers.get("Content-Length") or 0)
        path, _, query = self.path.partition("?")
        environ = {
            "REQUEST_METHOD": self.command, "PATH_INFO": path, "QUERY_STRING": query,
            "SERVER_NAME": "httpbin.org", "SERVER_PORT": "443" if tls else "80",
            "SERVER_PROTOCOL": self.request_version, "REMOTE_ADDR": self.client_address[0],
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(length) if length else "",
            "wsgi.input": io.BytesIO(self.rfile.read(length)), "wsgi.errors": sys.stderr,
            "wsgi.url_scheme": "https" if tls else "http", "wsgi.version": (1, 0),
            "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
        }
        for name, value in self.headers.items():
            key = "HTTP_" + name.upper().replace("-", "_")
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None
                           ) -> Any:
            started[:] = [status, headers]
            return lambda data: None

        body = b"".join(type(self).httpbin(environ, start_response))
        status, headers = started
        self.send_response(int(status.split()[0]), status.partition(" ")[2])
        for name, value in headers:
            if name.lower() not in ("content-length", "connection"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class OutsideServer(ThreadingTCPServer):
    """Plain HTTP or TLS on one port: a connection starting with a TLS handshake is wrapped."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, context: ssl.SSLContext):
        self.context = context
        super().__init__(("127.0.0.1", port), OutsideHandler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(30)
        try:
            first = request.recv(1, socket.MSG_PEEK)
            if first and first[0] == TLS_HANDSHAKE:
                request = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return  # a refused SNI or a client that hung up: the handshake already failed
        request.settimeout(None)
        OutsideHandler(request, client_address, self)


def reset_on_first_bytes(conn: socket.socket) -> None:
    """Reset (SO_LINGER 0) once the client speaks: the proxy has then told its client the
    tunnel is open, so the client sees its TLS handshake reset, as behind a real black hole."""
    conn.settimeout(30)
    try:
        conn.recv(1)
    except OSError:
        pass
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def reset_forever(listener: socket.socket) -> None:
    """Envoy's BlackHoleCluster, locally: every connection is reset."""
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=reset_on_first_bytes, args=(conn,), daemon=True).start()


def start(supervisor: Supervisor, ports: PortAllocator, folder: Path) -> OutsideWorld:
    """Start the stand-in under meshd's supervisor on two fresh loopback ports."""
    pki = PublicPKI(folder).ensure()
    port, blackhole = ports.allocate(), ports.allocate()
    supervisor.start(PROCESS, [sys.executable, "-m", "lablib.local.outside", "--port",
                               str(port), "--blackhole-port", str(blackhole), "--certs",
                               str(folder)],
                     ready=lambda: port_accepts(port), ready_timeout=20)
    return OutsideWorld(port, blackhole, str(pki.roots), str(pki.curl_home))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--blackhole-port", type=int, required=True)
    parser.add_argument("--certs", type=Path, required=True)
    args = parser.parse_args()
    from httpbin import app as httpbin

    OutsideHandler.httpbin = httpbin
    blackhole = socket.create_server(("127.0.0.1", args.blackhole_port))
    threading.Thread(target=reset_forever, args=(blackhole,), daemon=True).start()
    server = OutsideServer(args.port, server_context(PublicPKI(args.certs).ensure()))
    server.serve_forever()


if __name__ == "__main__":
    main()
