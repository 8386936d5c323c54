"""Envoy's admin API over its Unix socket (bootstrap.py says why it is no loopback port).

A stopped or overloaded Envoy still accepts the connection (the kernel queues it), so a proxy
that does not answer is told apart from one that is gone or that refused the request.
"""

from __future__ import annotations

import http.client
import socket

from ..errors import BackendError

ADMIN_TIMEOUT_S = 10.0
LIVE_TIMEOUT_S = 0.5


class ProxyUnansweredError(BackendError):
    """The proxy accepted the connection but sent no answer in time (frozen, overloaded)."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def admin_request(socket_path: str, path: str, method: str = "GET",
                  timeout: float = ADMIN_TIMEOUT_S, who: str = "the proxy") -> str:
    """The body Envoy's admin API answers to `method /path`; a BackendError that says whether
    the proxy is not running, did not answer, or refused."""
    conn = _UnixConnection(socket_path, timeout)
    try:
        conn.request(method, "/" + path.lstrip("/"))
        response = conn.getresponse()
        body = response.read().decode(errors="replace")
    except TimeoutError:
        raise ProxyUnansweredError(
            f"{who} did not answer within {timeout:g}s (its Envoy accepted the connection but "
            "sent nothing: stopped, e.g. by SIGSTOP, or overloaded); it did not refuse") from None
    except (FileNotFoundError, ConnectionRefusedError):
        raise BackendError(f"{who} is not running: its Envoy admin socket {socket_path} "
                           "accepts no connections") from None
    except (OSError, http.client.HTTPException) as exc:
        raise BackendError(f"{who}'s Envoy admin API failed: {exc}") from None
    finally:
        conn.close()
    if response.status >= 400:
        raise BackendError(f"Envoy refused {method} /{path.lstrip('/')} from {who}: "
                           f"{response.status} {body.strip()[:300]}")
    return body


def envoy_live(socket_path: str) -> bool:
    """Whether the Envoy behind `socket_path` answers `/ready` with LIVE."""
    try:
        return admin_request(socket_path, "ready", timeout=LIVE_TIMEOUT_S).strip() == "LIVE"
    except BackendError:
        return False
