"""nginx: the local stand-in for the `nginx` image, a static web server run from nginx.conf.

    python -m lablib.apps.nginx --port 8443

It reads the container's `/etc/nginx/nginx.conf` through the pod's mounted volumes (the env
variable LAB_MOUNTS maps each mountPath to a local folder; any absolute path under a mountPath
is read from that folder) and honours, per `server` block: `listen` (port, `ssl`,
`default_server`), `server_name`, `root`, `index`, `ssl_certificate`, `ssl_certificate_key`,
`ssl_client_certificate` and `ssl_verify_client on` (a request without a client certificate
gets nginx's 400 "No required SSL certificate was sent"; one from another CA fails the
handshake), and a server-level `return CODE;` (every request answered with that error status,
as a stand-in for a failing replica).
Other directives are accepted and ignored. Without a mounted nginx.conf it runs the image's
default configuration: plain HTTP, `root /usr/share/nginx/html`. A root folder that does not
exist here gets nginx's "Welcome to nginx!" page at `/`, as the image ships it.

`--port LOCAL` is the loopback port standing in for the container's port; `--port
CONTAINER=LOCAL` (repeatable) names which `listen` port each loopback port serves. TLS is
terminated here with the mounted certificate; with several `server_name`s on one port the
certificate is chosen by SNI, the server for a request by its Host header.
"""

from __future__ import annotations

import argparse
import email.utils
import json
import mimetypes
import os
import re
import socket
import ssl
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from ._runtime import (
    AppHandler,
    AppServer,
    block_stop_signals,
    log,
    wait_for_stop_signal,
)

CONFIG_PATH = "/etc/nginx/nginx.conf"
# Where nginx resolves relative paths (its --prefix in the official image).
PREFIX = PurePosixPath("/etc/nginx")
# The image's default server (/etc/nginx/conf.d/default.conf), used when no nginx.conf is mounted.
DEFAULT_CONFIG = """
events {}
http {
  server {
    listen 80;
    server_name localhost;
    root /usr/share/nginx/html;
    index index.html index.htm;
  }
}
"""
WELCOME_PAGE = """<!DOCTYPE html>
<html>
<head>
<title>Welcome to nginx!</title>
<style>
html { color-scheme: light dark; }
body { width: 35em; margin: 0 auto; font-family: Tahoma, Verdana, Arial, sans-serif; }
</style>
</head>
<body>
<h1>Welcome to nginx!</h1>
<p>If you see this page, the nginx web server is successfully installed and
working. Further configuration is required.</p>

<p>For online documentation and support please refer to
<a href="http://nginx.org/">nginx.org</a>.<br/>
Commercial support is available at
<a href="http://nginx.com/">nginx.com</a>.</p>

<p><em>Thank you for using nginx.</em></p>
</body>
</html>
"""
STATUS_TEXT = {400: "400 Bad Request", 403: "403 Forbidden", 404: "404 Not Found",
               405: "405 Not Allowed", 500: "500 Internal Server Error", 502: "502 Bad Gateway",
               503: "503 Service Temporarily Unavailable", 504: "504 Gateway Time-out"}
# Peers that connect and hang up without a handshake (readiness probes, port checks).
QUIET_HANDSHAKE_ERRORS = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError,
                          socket.timeout)


class NginxConfigError(Exception):
    """nginx.conf cannot be served as written; the message names the directive and path."""


# --- nginx.conf ------------------------------------------------------------------------------


@dataclass
class Directive:
    """One directive: its name, arguments, line, and the directives of its block if it has one."""

    name: str
    args: list[str]
    line: int
    block: list[Directive] | None = None

    def children(self, name: str) -> Iterator[Directive]:
        """The directives called `name` directly inside this one's block."""
        return (d for d in self.block or [] if d.name == name)


_TOKEN = re.compile(r"""\s+|\#[^\n]*                # blanks, comments
                        |"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'   # quoted strings
                        |([{};])|([^\s{};"'\#]+)""",    # punctuation, words
                    re.VERBOSE)


def _tokens(text: str, where: str) -> Iterator[tuple[str, int, bool]]:
    """(token, line, is_punctuation) for every token of nginx.conf, comments dropped."""
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            line = text.count("\n", 0, pos) + 1
            raise NginxConfigError(f"unexpected character in {where}:{line}")
        line = text.count("\n", 0, pos) + 1
        double, single, punct, word = match.groups()
        if punct is not None:
            yield punct, line, True
        elif word is not None:
            yield word, line, False
        elif double is not None or single is not None:
            yield re.sub(r"\\(.)", r"\1", double if double is not None else single), line, False
        pos = match.end()


def parse(text: str, where: str = CONFIG_PATH) -> list[Directive]:
    """nginx.conf as a tree of directives; raises NginxConfigError naming the line."""
    stack: list[list[Directive]] = [[]]
    words: list[str] = []
    start = 0
    line = 1
    for token, line, punct in _tokens(text, where):
        if not punct:
            if not words:
                start = line
            words.append(token)
        elif token == ";":
            if not words:
                raise NginxConfigError(f'unexpected ";" in {where}:{line}')
            stack[-1].append(Directive(words[0], words[1:], start))
            words = []
        elif token == "{":
            if not words:
                raise NginxConfigError(f'unexpected "{{" in {where}:{line}')
            block: list[Directive] = []
            stack[-1].append(Directive(words[0], words[1:], start, block))
            stack.append(block)
            words = []
        else:
            if words or len(stack) == 1:
                raise NginxConfigError(f'unexpected "}}" in {where}:{line}')
            stack.pop()
    if words or len(stack) > 1:
        raise NginxConfigError(f"unexpected end of file, expecting \";\" or \"}}\" in "
                               f"{where}:{line}")
    return stack[0]


# --- mounted volumes -------------------------------------------------------------------------


class Mounts:
    """The container's mounted volumes: absolute container paths to local files."""

    def __init__(self, mounts: Mapping[str, str]) -> None:
        # Longest mountPath first: /etc/nginx/certs wins over /etc/nginx.
        self.mounts = sorted(((PurePosixPath(m), Path(f)) for m, f in mounts.items()),
                             key=lambda item: len(item[0].parts), reverse=True)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Mounts:
        """The mounts the local mesh hands the app as LAB_MOUNTS (JSON {mountPath: folder})."""
        return cls(json.loads(environ.get("LAB_MOUNTS") or "{}"))

    def local(self, path: str | PurePosixPath) -> Path | None:
        """The local file for an absolute container path, or None when no volume holds it."""
        target = PurePosixPath(path)
        for mount, folder in self.mounts:
            if target == mount or mount in target.parents:
                return folder.joinpath(*target.relative_to(mount).parts)
        return None

    def describe(self) -> str:
        """The mountPaths, for messages."""
        return ", ".join(sorted(str(m) for m, _ in self.mounts)) or "none"


def _absolute(path: str) -> PurePosixPath:
    """A path from nginx.conf, relative ones taken from nginx's prefix, as nginx does."""
    pure = PurePosixPath(path)
    return pure if pure.is_absolute() else PREFIX / pure


# --- servers ---------------------------------------------------------------------------------


@dataclass
class Server:
    """One `server` block, its paths mapped to local files."""

    port: int
    ssl: bool
    default: bool
    names: list[str]
    root: PurePosixPath
    local_root: Path | None
    index: list[str]
    certificate: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None  # ssl_client_certificate, when ssl_verify_client is on
    context: ssl.SSLContext | None = field(default=None, repr=False)
    status: int | None = None  # a server-level `return CODE;`

    def matches(self, host: str) -> bool:
        """Does `host` match one of `server_name`'s names (exact, `*.suffix`, `.domain`)?"""
        host = host.lower().rstrip(".")
        for name in (n.lower() for n in self.names):
            if name == host:
                return True
            if name.startswith("*.") and host.endswith(name[1:]):
                return True
            if name.startswith(".") and (host == name[1:] or host.endswith(name)):
                return True
            if name.endswith(".*") and host.startswith(name[:-1]):
                return True
        return False


def _listen_port(directive: Directive, where: str) -> int:
    """The port of `listen [ADDRESS:]PORT ...` (nginx's default is 80)."""
    if not directive.args:
        raise NginxConfigError(f'invalid number of arguments in "listen" directive in '
                               f"{where}:{directive.line}")
    address = directive.args[0]
    port = address.rsplit(":", 1)[-1] if not address.startswith("unix:") else ""
    if port.isdigit():
        return int(port)
    if ":" not in address and "." in address:
        return 80  # `listen 127.0.0.1;` is that address on port 80
    raise NginxConfigError(f'the local stand-in cannot listen on "{address}" ("listen" in '
                           f"{where}:{directive.line}): use `listen PORT` or `listen PORT ssl`")


def _directive_arg(block: Directive, name: str, default: str | None = None
                   ) -> tuple[str | None, int | None]:
    """(argument, line) of a one-argument directive in `block`, else (`default`, None)."""
    found = [d for d in block.children(name) if d.args]
    return (found[-1].args[0], found[-1].line) if found else (default, None)


def _mapped_file(directive: str, path: str, mounts: Mounts, where: str, line: int | None
                 ) -> Path:
    """The local file for a certificate or key path; NginxConfigError when none is mounted."""
    container = _absolute(path)
    at = f"{where}:{line}" if line else where
    local = mounts.local(container)
    if local is None:
        raise NginxConfigError(
            f'{directive} "{container}" ({at}) is not in any mounted volume (mounted: '
            f"{mounts.describe()})\n    fix: mount the Secret that holds it, e.g. a `secret` "
            f"volume with `mountPath: {container.parent}`")
    if not local.is_file():
        raise NginxConfigError(
            f'{directive} "{container}" ({at}): the volume mounted at its folder has no file '
            f'"{container.name}"\n    fix: create the Secret with that key (kubectl create '
            "secret tls NAME --cert=... --key=... writes tls.crt and tls.key)")
    return local


def load_servers(text: str, mounts: Mounts, where: str = CONFIG_PATH) -> list[Server]:
    """Every `server` of nginx.conf's `http` block, checked and with its paths mapped."""
    servers = []
    for http in (d for d in parse(text, where) if d.name == "http"):
        for block in http.children("server"):
            listens = list(block.children("listen")) or [Directive("listen", ["80"], block.line)]
            ssl_on = any(d.args[:1] == ["on"] for d in block.children("ssl"))
            root, _ = _directive_arg(block, "root", _directive_arg(http, "root", "html")[0])
            index = next((d.args for d in block.children("index")), None) or next(
                (d.args for d in http.children("index")), ["index.html"])
            names = [n for d in block.children("server_name") for n in d.args]
            container_root = _absolute(str(root))
            local_root = mounts.local(container_root)
            status = _return_status(block, where)
            for listen in listens:
                server = Server(_listen_port(listen, where), ssl_on or "ssl" in listen.args,
                                "default_server" in listen.args or "default" in listen.args,
                                names, container_root, local_root, list(index),
                                status=status)
                if server.ssl:
                    cert, cert_line = _directive_arg(block, "ssl_certificate",
                                                 _directive_arg(http, "ssl_certificate")[0])
                    key, key_line = _directive_arg(block, "ssl_certificate_key",
                                               _directive_arg(http, "ssl_certificate_key")[0])
                    if cert is None or key is None:
                        missing = "ssl_certificate" if cert is None else "ssl_certificate_key"
                        raise NginxConfigError(
                            f'no "{missing}" is defined for the "listen ... ssl" directive in '
                            f"{where}:{listen.line}")
                    server.certificate = _mapped_file("ssl_certificate", cert, mounts, where,
                                                      cert_line)
                    server.key = _mapped_file("ssl_certificate_key", key, mounts, where,
                                              key_line)
                    verify, _ = _directive_arg(block, "ssl_verify_client",
                                               _directive_arg(http, "ssl_verify_client")[0])
                    if verify == "on":
                        ca, ca_line = _directive_arg(
                            block, "ssl_client_certificate",
                            _directive_arg(http, "ssl_client_certificate")[0])
                        if ca is None:
                            raise NginxConfigError(
                                f'no ssl_client_certificate for ssl_verify_client in {where}:'
                                f"{block.line}")
                        server.client_ca = _mapped_file("ssl_client_certificate", ca, mounts,
                                                        where, ca_line)
                servers.append(server)
    if not servers:
        raise NginxConfigError(f"{where} has no `server` block inside `http {{ }}`: nothing "
                               "to serve")
    return servers


def _return_status(block: Directive, where: str) -> int | None:
    """The status of a server-level `return CODE;`, for the error codes the stand-in knows."""
    code, line = _directive_arg(block, "return")
    if code is None:
        return None
    if not code.isdigit() or int(code) not in STATUS_TEXT:
        raise NginxConfigError(
            f'the local stand-in supports `return CODE;` only for {sorted(STATUS_TEXT)} '
            f'("return {code}" in {where}:{line})')
    return int(code)


def pick_port(servers: list[Server], wanted: int | None) -> int:
    """The `listen` port a loopback port serves; `wanted` is its container port, if known."""
    # Without one: the config's only port, else its lowest TLS port, else its lowest port.
    ports = sorted({s.port for s in servers})
    if wanted is not None:
        if wanted not in ports:
            raise NginxConfigError(f"nginx.conf listens on {', '.join(map(str, ports))}, not on "
                                   f"the container port {wanted}")
        return wanted
    tls = sorted({s.port for s in servers if s.ssl})
    return (tls or ports)[0]


def tls_context(server: Server) -> ssl.SSLContext:
    """A server-side TLS context with the server's certificate; a clear error if unusable."""
    assert server.certificate is not None and server.key is not None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(server.certificate, server.key)
    except (ssl.SSLError, OSError) as exc:
        raise NginxConfigError(
            f'cannot load certificate "{server.certificate}" with key "{server.key}": {exc}\n'
            "    fix: the Secret's tls.crt and tls.key must be a PEM certificate and its key"
        ) from exc
    if server.client_ca is not None:
        # nginx asks for a certificate, refuses one it cannot verify, and answers a client
        # that sent none with a 400 (see NginxHandler._serve).
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_verify_locations(server.client_ca)
    return context


class PortServers:
    """The servers sharing one listen port: the default one and selection by name."""

    def __init__(self, servers: list[Server]) -> None:
        self.servers = servers
        self.default = next((s for s in servers if s.default), servers[0])

    def by_name(self, host: str | None) -> Server:
        """The server whose server_name matches `host` (no port), else the default server."""
        if host:
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            for server in self.servers:
                if server.matches(name):
                    return server
        return self.default

    def ssl_context(self) -> ssl.SSLContext:
        """The default server's context, switching to another server's certificate by SNI."""
        for server in self.servers:
            server.context = tls_context(server)
        base = self.default.context
        assert base is not None

        def choose(sock: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
            context = self.by_name(name).context
            if context is not None and context is not base:
                sock.context = context

        base.sni_callback = choose  # type: ignore[assignment]
        return base


# --- HTTP ------------------------------------------------------------------------------------


class NginxHandler(AppHandler):
    """GET and HEAD of static files from the root of the server the Host header names."""

    server: NginxServer

    def version_string(self) -> str:
        """`Server: nginx`, as with `server_tokens off`."""
        return "nginx"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        """Answer with the file, the index page, or nginx's error page."""
        self._serve(head=False)

    def do_HEAD(self) -> None:  # noqa: N802
        """GET without the body."""
        self._serve(head=True)

    def do_POST(self) -> None:  # noqa: N802
        """nginx answers 405 to a POST of a static file."""
        site = self.server.sites.by_name(self.headers.get("Host"))
        self._error(site.status or 405, head=False)

    def _serve(self, head: bool) -> None:
        site = self.server.sites.by_name(self.headers.get("Host"))
        if site.status is not None:
            self._error(site.status, head)
            return
        if site.client_ca is not None and isinstance(self.connection, ssl.SSLSocket) \
                and not self.connection.getpeercert():
            self._error(400, head, "No required SSL certificate was sent")
            return
        path = unquote(urlsplit(self.path).path) or "/"
        parts = [p for p in PurePosixPath(path).parts if p not in ("/", ".")]
        if ".." in parts:
            self._error(404, head)
            return
        if site.local_root is None or not site.local_root.is_dir():
            # The image's own html folder: its one page is the welcome page.
            if path in ("/", "/index.html"):
                self._send(200, WELCOME_PAGE.encode(), "text/html", head)
            else:
                self._error(404, head)
            return
        target = site.local_root.joinpath(*parts)
        if target.is_dir():
            index = next((target / name for name in site.index if (target / name).is_file()),
                         None)
            if index is None:
                self._error(403, head)
                return
            target = index
        if not target.is_file():
            self._error(404, head)
            return
        kind = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        modified = email.utils.formatdate(target.stat().st_mtime, usegmt=True)
        self._send(200, target.read_bytes(), kind, head, (("Last-Modified", modified),))

    def _send(self, status: int, body: bytes, kind: str, head: bool,
              extra: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, status: int, head: bool, detail: str = "") -> None:
        text = STATUS_TEXT[status]
        detail = f"<center>{detail}</center>\r\n" if detail else ""
        page = (f"<html>\r\n<head><title>{text}</title></head>\r\n<body>\r\n<center><h1>{text}"
                f"</h1></center>\r\n{detail}<hr><center>nginx</center>\r\n</body>\r\n"
                "</html>\r\n")
        self._send(status, page.encode(), "text/html", head)


class NginxServer(AppServer):
    """A threading HTTP server on one port, with the TLS handshake in each connection's thread."""

    # Handshaking in the accept loop would let one silent client hold up every other.

    daemon_threads = True

    def __init__(self, port: int, sites: PortServers, context: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", port), NginxHandler)
        self.sites = sites
        self.context = context

    def finish_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:
        """Handshake first when serving TLS, then answer HTTP on the connection."""
        if self.context is not None:
            request.settimeout(10)
            try:
                tls = self.context.wrap_socket(request, server_side=True)
            except QUIET_HANDSHAKE_ERRORS:
                return
            except (ssl.SSLError, OSError) as exc:
                log(f"{client_address[0]} - TLS handshake failed: {exc}")
                return
            tls.settimeout(None)
            try:
                super().finish_request(tls, client_address)  # type: ignore[arg-type]
            finally:
                # wrap_socket detached `request`: the TLS socket is the one to close.
                tls.close()
            return
        super().finish_request(request, client_address)  # type: ignore[arg-type]

    def handle_error(self, request: object, client_address: tuple[str, int]) -> None:
        """A client that drops the TLS connection mid-answer gets one log line."""
        error = sys.exc_info()[1]
        if isinstance(error, ssl.SSLError):
            log(f"{client_address[0]} - connection closed by client: {type(error).__name__}")
        else:
            super().handle_error(request, client_address)


# --- main ------------------------------------------------------------------------------------


def _ports(values: list[str]) -> dict[int | None, int]:
    """`--port LOCAL` or `--port CONTAINER=LOCAL` as {container port or None: local port}."""
    out: dict[int | None, int] = {}
    for value in values:
        container, _, local = value.rpartition("=")
        out[int(container) if container else None] = int(local)
    return out


def read_config(mounts: Mounts, path: str = CONFIG_PATH) -> tuple[str, str]:
    """(nginx.conf text, where it came from): the mounted file, else the image's default."""
    local = mounts.local(path)
    if local is None:
        return DEFAULT_CONFIG, "the image's default configuration"
    try:
        return local.read_text(), path
    except OSError as exc:
        raise NginxConfigError(f'open() "{path}" failed ({exc.strerror}): the volume mounted at '
                               f'{PurePosixPath(path).parent} has no "{PurePosixPath(path).name}"'
                               "\n    fix: create the ConfigMap with that key (kubectl create "
                               "configmap NAME --from-file=nginx.conf=./nginx.conf)") from exc


def build(ports: dict[int | None, int], mounts: Mounts) -> list[NginxServer]:
    """Check the configuration and bind every port; raises NginxConfigError."""
    text, where = read_config(mounts)
    servers = load_servers(text, mounts, where)
    built = []
    for container, local in ports.items():
        port = pick_port(servers, container)
        sites = PortServers([s for s in servers if s.port == port])
        context = sites.ssl_context() if sites.default.ssl else None
        built.append(NginxServer(local, sites, context))
        names = " ".join(sites.default.names) or '""'
        log(f"nginx: listen {port}{' ssl' if context else ''} (server_name {names}) on "
            f"127.0.0.1:{local}, config {where}")
    return built


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM; exit 1 with nginx-style `[emerg]` message on a bad configuration."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", action="append", required=True,
                        help="LOCAL or CONTAINER=LOCAL loopback port to bind (repeatable)")
    args = parser.parse_args(argv)
    block_stop_signals()
    try:
        servers = build(_ports(args.port), Mounts.from_env())
    except NginxConfigError as exc:
        print(f"nginx: [emerg] {exc}", file=sys.stderr, flush=True)
        return 1
    for server in servers:
        threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()
    wait_for_stop_signal()
    for server in servers:
        server.shutdown()
        server.server_close()
    log("nginx stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
