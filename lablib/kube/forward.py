"""`kubectl port-forward` in-process: a local TCP port whose connections reach a pod's port."""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)
_CHUNK = 1 << 16


class Stream(Protocol):
    """What `kubernetes.stream.portforward` returns, as far as forwarding needs."""

    def socket(self, port_number: int) -> Any: ...

    def close(self) -> None: ...


# Opens one forwarding stream to (a current pod of) the target for one local connection.
Opener = Callable[[], Stream]


class PortForward:
    """Listens on 127.0.0.1:`local_port` (0: any free port); each connection gets its own
    stream from `open_stream`, so a restarted pod is picked up by the next connection."""

    def __init__(self, open_stream: Opener, remote_port: int, local_port: int = 0) -> None:
        self.open_stream = open_stream
        self.remote_port = remote_port
        self.server = socket.create_server(("127.0.0.1", local_port))
        self.port = int(self.server.getsockname()[1])
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=f"port-forward :{self.port}",
                                        daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True,
                             name=f"port-forward :{self.port} connection").start()

    def _serve(self, client: socket.socket) -> None:
        stream: Stream | None = None
        try:
            stream = self.open_stream()
            pump(client, stream.socket(self.remote_port))
        except Exception as exc:  # one failed connection must not stop the others
            log.warning("port-forward to port %s failed: %s", self.remote_port, exc)
        finally:
            client.close()
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.close()

    def close(self) -> None:
        """Stop listening; connections already open end with their streams."""
        self._closed.set()
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self._thread.join(timeout=2)


def pump(a: Any, b: Any) -> None:
    """Copy bytes both ways between two sockets until both sides have finished sending."""
    sel = selectors.DefaultSelector()
    peers = {a.fileno(): b, b.fileno(): a}
    sel.register(a.fileno(), selectors.EVENT_READ, a)
    sel.register(b.fileno(), selectors.EVENT_READ, b)
    open_reads = 2
    try:
        while open_reads:
            for key, _ in sel.select():
                source = key.data
                data = source.recv(_CHUNK)
                target = peers[key.fd]
                if data:
                    target.sendall(data)
                    continue
                sel.unregister(key.fd)
                open_reads -= 1
                # Half-close: the other side still may answer what it has been sent.
                with contextlib.suppress(OSError):
                    target.shutdown(socket.SHUT_WR)
    finally:
        sel.close()
