"""Loopback TCP ports for mesh processes: free ones, distinct ones, and clear conflicts.

A port is free when `allocate_port` returns it, but another program may bind it before our
process does. Callers therefore retry with a fresh port on "address already in use"
(`with_free_port` does that) and report a port they cannot get with `PortInUseError`.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..errors import BackendError

__all__ = [
    "PortAllocator",
    "PortInUseError",
    "allocate_port",
    "is_address_in_use",
    "port_accepts",
    "port_in_use",
    "port_owner",
    "wait_for_port",
    "with_free_port",
]

T = TypeVar("T")
LISTEN = "0A"  # TCP state code in /proc/net/tcp


class PortInUseError(BackendError):
    """A port the mesh needs is held by another program."""

    def __init__(self, port: int, detail: str = ""):
        owner = port_owner(port)
        by = f" ({owner})" if owner else ""
        text = f"port {port} is already in use by another program{by}"
        if detail:
            text += f": {detail}"
        super().__init__(
            text + "\n    fix: stop that program, or let the mesh pick another port (reset the lab)"
        )
        self.port = port


def allocate_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing is bound to right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when a server could not bind `host:port` because something holds it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Servers (Envoy, http.server, waitress) set SO_REUSEADDR, so connections lingering
        # in TIME_WAIT do not stop them: do not count those as "in use" either.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
        return False


def port_accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on `host:port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


def wait_for_port(port: int, timeout: float, host: str = "127.0.0.1") -> bool:
    """Wait up to `timeout` seconds for `host:port` to accept connections."""
    deadline = time.monotonic() + timeout
    while True:
        if port_accepts(port, host):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _listening_socket(port: int) -> tuple[str, int] | None:
    """(inode, uid) of the socket listening on `port`, from /proc/net/tcp{,6}."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) <= 9 or fields[3] != LISTEN:
                continue
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                return fields[9], int(fields[7])
    return None


def port_owner(port: int) -> str:
    """Describe who listens on `port` ("pid 42 (envoy)"), as far as this user may see; else ""."""
    found = _listening_socket(port)
    if found is None:
        return ""
    inode, uid = found
    if uid != os.geteuid():
        return f"a program of user uid {uid}"
    target = f"socket:[{inode}]"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) == target:
                    name = (proc / "comm").read_text().strip()
                    return f"pid {proc.name} ({name})"
        except OSError:
            continue  # gone, or not ours to look at
    return ""


def is_address_in_use(exc: BaseException) -> bool:
    """True when `exc` means a port was taken (an OSError, or a process log saying so)."""
    if isinstance(exc, PortInUseError):
        return True
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return True
    return "address already in use" in str(exc).lower()


class PortAllocator:
    """Hands out distinct free loopback ports for one mesh until they are released."""

    def __init__(self, host: str = "127.0.0.1", attempts: int = 50):
        self.host = host
        self.attempts = attempts
        self._taken: set[int] = set()
        self._lock = threading.Lock()

    def allocate(self) -> int:
        """A free port this allocator has not handed out (or has had back)."""
        with self._lock:
            for _ in range(self.attempts):
                port = allocate_port(self.host)
                if port not in self._taken:
                    self._taken.add(port)
                    return port
        raise BackendError(
            f"no free loopback port found in {self.attempts} tries "
            f"({len(self._taken)} already held by this mesh)"
        )

    def release(self, port: int) -> None:
        """Give `port` back; releasing a port not held is harmless."""
        with self._lock:
            self._taken.discard(port)

    def allocated(self) -> set[int]:
        """The ports handed out and not yet released."""
        with self._lock:
            return set(self._taken)


def with_free_port(
    start: Callable[[int], T], allocator: PortAllocator, attempts: int = 5
) -> tuple[int, T]:
    """Call `start(port)` with a fresh port, retrying with another when a program took it.

    `start` signals a taken port by raising an OSError EADDRINUSE, a PortInUseError, or any
    error whose text says "address already in use" (e.g. a process start error quoting the
    log of an Envoy that could not bind). The port that worked stays allocated.
    """
    last: BaseException | None = None
    for _ in range(attempts):
        port = allocator.allocate()
        try:
            return port, start(port)
        except Exception as exc:
            allocator.release(port)
            if not is_address_in_use(exc):
                raise
            last = exc
    assert last is not None
    raise BackendError(
        f"{attempts} free ports in a row were taken by other programs before they could be "
        f"used; the last failure was:\n{last}"
    ) from last
