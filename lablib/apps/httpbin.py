"""httpbin: psf/httpbin's app (the one in the httpbin images) under waitress, logging every
request in gunicorn's access-log format, as the image does under `gunicorn --access-logfile -`.

    python -m lablib.apps.httpbin --port 8080

`kubectl logs deploy/httpbin` then shows lines such as
`127.0.0.1 - - [04/Dec/2026:15:40:00 +0000] "GET /headers HTTP/1.1" 200 519 "-" "curl/8.5.0"`,
which is how Istio's mirroring task sees that a mirrored request arrived.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from ._runtime import log, port_parser

# Waitress's default 4 threads would queue concurrent /delay calls.
THREADS = 8

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def access_line(environ: dict[str, Any], status: str, size: int, when: float) -> str:
    """gunicorn's default access-log line: `%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s
    "%(f)s" "%(a)s"`."""
    target = environ.get("PATH_INFO", "")
    if environ.get("QUERY_STRING"):
        target += "?" + environ["QUERY_STRING"]
    request = f"{environ.get('REQUEST_METHOD', '-')} {target} {environ.get('SERVER_PROTOCOL')}"
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(when))
    return (f"{environ.get('REMOTE_ADDR', '-')} - - [{stamp}] \"{request}\" "
            f"{status.split(' ', 1)[0]} {size or '-'} \"{environ.get('HTTP_REFERER', '-')}\" "
            f"\"{environ.get('HTTP_USER_AGENT', '-')}\"")


def with_access_log(app: WsgiApp) -> WsgiApp:
    """Wrap a WSGI app so each finished request writes one access-log line to stdout."""

    def logged(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        started = time.time()
        seen: dict[str, str] = {}

        def start(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
            seen["status"] = status
            return start_response(status, headers, *args)

        size = 0
        try:
            for chunk in app(environ, start):
                size += len(chunk)
                yield chunk
        finally:
            log(access_line(environ, seen.get("status", "500"), size, started))

    return logged


def main(argv: list[str] | None = None) -> int:
    import waitress
    from httpbin import app

    args = port_parser("httpbin with gunicorn's access log").parse_args(argv)
    waitress.serve(with_access_log(app), host="127.0.0.1", port=args.port, threads=THREADS)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
