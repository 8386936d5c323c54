"""fortio: a stand-in for the fortio binary that Istio's fortio sample pod ships.

    python -m lablib.apps.fortio load -c 3 -qps 0 -n 30 -loglevel Warning http://httpbin:8000/get
    python -m lablib.apps.fortio curl http://httpbin:8000/get
    python -m lablib.apps.fortio server --port 8080

`load` and `curl` take fortio's flags the way Go parses them (`-c 3`, `--c=3`, flags before
the URL) and send through the `http_proxy` of the environment: that is how a command exec'd
"inside a pod" of the local mesh goes out through the pod's sidecar. `server` is what the
fortio container runs: an HTTP echo server answering 200 on any path.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from ._runtime import (
    AppHandler,
    AppServer,
    block_stop_signals,
    log,
    wait_for_stop_signal,
)

USER_AGENT = "lablib-fortio"
USAGE = """\
usage: fortio command [flags] target
where command is one of: load (load testing), curl (single request), server (echo server)
  fortio load [-c 8] [-qps 8] [-n 0 | -t 5s] [-H 'name: value']... [-timeout 3s]
              [-loglevel Info] [-p '50,75,90,99,99.9'] [-quiet] url
  fortio curl [-H 'name: value']... [-timeout 3s] [-loglevel Info] [-quiet] url
  fortio server [--port 8080]... [-http-port 8080]
"""
LOG_LEVELS = ("debug", "verbose", "info", "warning", "error", "critical", "fatal")


class UsageError(Exception):
    """Bad command-line flags: printed with the usage, exit status 2."""


# --- Go-style flags ------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                   "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a Go duration such as `5s`, `300ms`, `1m30s` (a bare `0` is zero)."""
    if text == "0":
        return 0.0
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"time: invalid duration {text!r}")
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)


def _parse_bool(text: str) -> bool:
    """Go's strconv.ParseBool."""
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if text in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise ValueError(f"invalid syntax {text!r}")


@dataclass(frozen=True)
class Flag:
    """One flag: how to convert its value, its default, whether it repeats."""

    convert: Callable[[str], Any]
    default: Any
    repeated: bool = False
    boolean: bool = False


@dataclass
class Parsed:
    """Flags after parsing (by name) and the arguments left after them."""

    values: dict[str, Any] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)


def parse_flags(spec: dict[str, Flag], argv: Sequence[str]) -> Parsed:
    """Parse flags as Go's flag package does: `-name value`, `-name=value`, `--name`, and
    stop at the first argument that is not a flag (or after `--`)."""
    parsed = Parsed({name: ([] if f.repeated else f.default) for name, f in spec.items()})
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name = arg[2:] if arg.startswith("--") else arg[1:]
        if not name or name.startswith("-") or name.startswith("="):
            raise UsageError(f"bad flag syntax: {arg}")
        name, has_value, value = name.partition("=")
        flag = spec.get(name)
        if flag is None:
            raise UsageError(f"flag provided but not defined: -{name}")
        i += 1
        if flag.boolean and not has_value:
            value = "true"
        elif not has_value:
            if i >= len(argv):
                raise UsageError(f"flag needs an argument: -{name}")
            value = argv[i]
            i += 1
        try:
            converted = flag.convert(value)
        except ValueError as exc:
            raise UsageError(f'invalid value "{value}" for flag -{name}: {exc}') from None
        if flag.repeated:
            parsed.values[name].append(converted)
        else:
            parsed.values[name] = converted
    parsed.args = list(argv[i:])
    return parsed


def _log_level(text: str) -> str:
    """One of fortio's log levels, any case."""
    if text.lower() not in LOG_LEVELS:
        raise ValueError(f"use one of {', '.join(level.title() for level in LOG_LEVELS)}")
    return text.lower()


def _header(text: str) -> tuple[str, str]:
    """`-H 'name: value'` as a (name, value) pair."""
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise ValueError("expected 'name: value'")
    return name.strip(), value.strip()


def _percentiles(text: str) -> list[float]:
    """`-p '50,99.9'` as a list of percentiles."""
    values = [float(p) for p in text.split(",") if p.strip()]
    if not values or any(not 0 < p <= 100 for p in values):
        raise ValueError("expected comma-separated percentiles in (0, 100]")
    return values


def _non_negative(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """`convert`, refusing negative values."""
    def check(text: str) -> Any:
        value = convert(text)
        if value < 0:
            raise ValueError("must not be negative")
        return value

    return check


COMMON = {
    "H": Flag(_header, None, repeated=True),
    "timeout": Flag(_non_negative(parse_duration), 3.0),
    "loglevel": Flag(_log_level, "info"),
    "quiet": Flag(_parse_bool, False, boolean=True),
}
LOAD_FLAGS = {
    **COMMON,
    "c": Flag(_non_negative(int), 8),
    "qps": Flag(_non_negative(float), 8.0),
    "n": Flag(_non_negative(int), 0),
    "t": Flag(_non_negative(parse_duration), 5.0),
    "p": Flag(_percentiles, [50.0, 75.0, 90.0, 99.0, 99.9]),
}
SERVER_FLAGS = {
    "port": Flag(int, None, repeated=True),
    # fortio's own flag: a port or host:port
    "http-port": Flag(lambda text: int(text.rsplit(":", 1)[-1]), None),
}


# --- load and curl -------------------------------------------------------------------------

def _target(args: list[str], command: str) -> str:
    """The one URL after the flags, with http:// added when it has no scheme (as fortio does)."""
    if len(args) != 1:
        got = "none" if not args else " ".join(args)
        raise UsageError(f"fortio {command} needs exactly one url after the flags (got {got})")
    url = args[0]
    return url if "://" in url else f"http://{url}"


def _proxy_for(url: str) -> str | None:
    """The proxy the environment names for this URL's scheme (lowercase first, like curl)."""
    scheme = "https" if url.startswith("https://") else "http"
    return os.environ.get(f"{scheme}_proxy") or os.environ.get(f"{scheme.upper()}_PROXY") or None


def _stamp(level: str, line: str) -> None:
    """A log line on stderr, fortio-style: time, level letter, text."""
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} {level[0].upper()} fortio> {line}\n")


def _enabled(threshold: str, level: str) -> bool:
    """Whether messages of `level` show at log level `threshold`."""
    return LOG_LEVELS.index(level) >= LOG_LEVELS.index(threshold)


def run_load(argv: Sequence[str]) -> int:
    """`fortio load`: run the load through the environment's proxy, print fortio's report."""
    from lablib.load import load

    parsed = parse_flags(LOAD_FLAGS, argv)
    flags, url = parsed.values, _target(parsed.args, "load")
    if flags["c"] < 1:
        raise UsageError("-c must be at least 1")
    if not flags["n"] and not flags["t"]:
        raise UsageError("-t 0 (run until interrupted) is not supported here; give -n or -t")
    level = flags["loglevel"]
    count = flags["n"] or None
    connections = flags["c"]
    if not flags["quiet"]:
        what = f"for {count} calls" if count else f"for {flags['t']:g}s"
        rate = f"{flags['qps']:g} queries per second" if flags["qps"] else "max qps"
        print(f"lablib fortio (a local stand-in for Fortio) running at {rate}, {what}: {url}")
        if count:
            per, extra = divmod(count, connections)
            print(f"Starting at {rate} with {connections} thread(s) for exactly {count} calls "
                  f"({per} per thread + {extra})")
        sys.stdout.flush()
    headers = {"User-Agent": USER_AGENT, **dict(flags["H"])}
    result = load(url, connections=connections, qps=flags["qps"], n=count,
                  duration=None if count else flags["t"], headers=headers,
                  proxy=_proxy_for(url), timeout=flags["timeout"] or 30.0)
    if _enabled(level, "warning") and not flags["quiet"]:
        for row in result.frame.itertuples():
            if row.status == 0:
                _stamp("warning", f"[{row.worker}] Error: {row.error}")
            elif row.status != 200:
                _stamp("warning", f"[{row.worker}] Non ok http code {row.status}")
    print(result.report(flags["p"]))
    return 0


def run_curl(argv: Sequence[str]) -> int:
    """`fortio curl`: one GET through the environment's proxy; status line, headers, body."""
    parsed = parse_flags(COMMON, argv)
    flags, url = parsed.values, _target(parsed.args, "curl")
    headers = {"User-Agent": USER_AGENT, **dict(flags["H"])}
    try:
        with httpx.Client(proxy=_proxy_for(url), trust_env=False,
                          timeout=flags["timeout"] or 30.0) as client:
            # Only what fortio sends: Host, User-Agent, Accept, and the -H headers.
            del client.headers["Accept-Encoding"], client.headers["Connection"]
            response = client.get(url, headers=headers)
    except httpx.HTTPError as exc:
        _stamp("error", f"Error fetching {url}: {type(exc).__name__}: {exc}")
        return 1
    out = sys.stdout.buffer
    out.write(f"{response.http_version} {response.status_code} {response.reason_phrase}\n"
              .encode())
    for name, value in response.headers.raw:
        out.write(name + b": " + value + b"\n")
    out.write(b"\n" + response.content)
    out.flush()
    if not response.is_success:
        _stamp("error", f"Error status {response.status_code} for {url}")
        return 1
    return 0


# --- server --------------------------------------------------------------------------------

class EchoHandler(AppHandler):
    """Answers 200 on any path: the request body back, or one line naming the request."""

    def _echo(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if not body:
            body = f"fortio echo: {self.command} {self.path}\n".encode()
        content_type = self.headers.get("Content-Type") or "text/plain; charset=utf-8"
        self.send_body(200, body, content_type)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _echo

    def do_HEAD(self) -> None:
        """Headers only."""
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: a load test would write a line per request."""


def run_server(argv: Sequence[str]) -> int:
    """`fortio server`: HTTP echo on every port given, until SIGTERM."""
    parsed = parse_flags(SERVER_FLAGS, argv)
    if parsed.args:
        raise UsageError(f"fortio server takes no arguments (got {' '.join(parsed.args)})")
    ports = list(parsed.values["port"])
    if parsed.values["http-port"] is not None:
        ports.append(parsed.values["http-port"])
    ports = ports or [8080]
    block_stop_signals()
    servers = [AppServer(("127.0.0.1", port), EchoHandler) for port in ports]
    for server in servers:
        threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()
    log(f"fortio echo server listening on 127.0.0.1:{', '.join(map(str, ports))}")
    wait_for_stop_signal()
    for server in servers:
        server.shutdown()
        server.server_close()
    log("fortio echo server stopped")
    return 0


COMMANDS = {"load": run_load, "curl": run_curl, "server": run_server}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one fortio command; 2 with the usage on bad flags."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("help", "-h", "--help", "-help"):
        sys.stdout.write(USAGE)
        return 0 if args else 2
    command = COMMANDS.get(args[0])
    try:
        if command is None:
            raise UsageError(f"unknown command {args[0]!r}")
        return command(args[1:])
    except UsageError as exc:
        sys.stderr.write(f"fortio: {exc}\n{USAGE}")
        return 2
    except ValueError as exc:
        sys.stderr.write(f"fortio: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
