"""Bookinfo ratings: each reviewer's stars as JSON (Istio's Node.js app, rewritten).

v2 (`DB_TYPE=mongodb`, `MONGO_DB_URL=mongodb://mongodb:27017/test`) reads the stars from the
ratings database, over MongoDB's wire protocol, through the pod's sidecar (HTTP CONNECT)."""

from __future__ import annotations

import os
import re
import socket
from typing import Any
from urllib.parse import urlsplit

from .. import mongo_wire
from .._runtime import AppHandler, port_parser, serve_http

_RATINGS_PATH = re.compile(r"/ratings/([^/]*)")
_PRODUCT_ID = re.compile(r"[0-9]+")

RATINGS = {"Reviewer1": 5, "Reviewer2": 4}


class RatingsHandler(AppHandler):
    """Serves /health and /ratings/<id>."""

    def do_GET(self) -> None:
        """Answer a GET."""
        path = urlsplit(self.path).path
        match = _RATINGS_PATH.fullmatch(path)
        if path == "/health":
            self.send_json(200, {"status": "Ratings is healthy"})
        elif match is None:
            self.send_json(404, {"error": f"no such path: {path}"})
        elif _PRODUCT_ID.fullmatch(match.group(1)):
            try:
                ratings = _stars()
            except (OSError, ValueError, KeyError, IndexError) as exc:
                self.log_message("ratings database: %s", exc)
                self.send_json(500, {"error": "could not connect to ratings database"})
                return
            self.send_json(200, {"id": int(match.group(1)), "ratings": ratings})
        else:
            self.send_json(400, {"error": "please provide numeric product ID"})


def _connect(host: str, port: int) -> socket.socket:
    """A TCP connection to host:port, through the sidecar (HTTP CONNECT) when there is one."""
    proxy = os.environ.get("http_proxy", "")
    if not proxy:
        return socket.create_connection((host, port), timeout=5)
    where = urlsplit(proxy)
    sock = socket.create_connection((where.hostname or "127.0.0.1", where.port or 80),
                                    timeout=5)
    sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError(f"the sidecar closed the tunnel to {host}:{port}")
        head += chunk
    status = head.split(b" ", 2)[1]
    if status != b"200":
        sock.close()
        raise ConnectionError(f"the sidecar answered {status.decode()} to CONNECT {host}:{port}")
    return sock


def _stars() -> dict[str, Any]:
    """Reviewer -> stars: fixed in v1, the ratings collection's two documents in v2."""
    if os.environ.get("DB_TYPE") != "mongodb":
        return dict(RATINGS)
    url = urlsplit(os.environ.get("MONGO_DB_URL", "mongodb://mongodb:27017/test"))
    with _connect(url.hostname or "mongodb", url.port or 27017) as sock:
        mongo_wire.send_msg(sock, {"find": "ratings", "$db": url.path.strip("/") or "test"}, 1)
        docs = mongo_wire.read_message(sock).document["cursor"]["firstBatch"]
    return {"Reviewer1": docs[0]["rating"], "Reviewer2": docs[1]["rating"]}


def main(argv: list[str] | None = None) -> None:
    """Run the ratings service until SIGTERM."""
    args = port_parser(__doc__).parse_args(argv)
    serve_http(RatingsHandler, args.port, "ratings")


if __name__ == "__main__":
    main()
