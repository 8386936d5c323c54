"""Loopback TCP ports for mesh processes: free ones, distinct ones, and clear conflicts.

A port is free when `allocate_port` returns it, but another program may bind it before our
process does. Two defences:

* Every `PortAllocator` records the ports it holds in a registry folder shared by all meshes
  on the machine (`registry_dir()`: `$LAB_PORTS_DIR`, else `<tmp>/istio-lab-kit-ports`), one
  file per allocator, under an flock. An allocator never hands out a port another live
  allocator holds, so meshes started together never pick the same port. A file whose process
  is dead counts for nothing (and its owner's next allocation removes it).
* Other programs are not in the registry: callers retry with a fresh port on "address already
  in use" (`with_free_port` does that) and report a port they cannot get with `PortInUseError`.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import random
import socket
import stat
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from ..errors import BackendError
from .supervisor import pid_alive

__all__ = [
    "PortAllocator",
    "PortInUseError",
    "PortRegistry",
    "allocate_port",
    "is_address_in_use",
    "port_accepts",
    "port_in_use",
    "port_owner",
    "private_registry_dir",
    "registry_dir",
    "wait_for_port",
    "with_free_port",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
LISTEN = "0A"  # TCP state code in /proc/net/tcp
REGISTRY_ENV = "LAB_PORTS_DIR"
LOCK_WAIT_S = 5.0  # a registry lock held longer than this: turn the registry off
# A mesh holds a few ports per pod; a claim far beyond that is a mistake or an attack.
MAX_CLAIM = 512
MAX_CLAIM_PER_USER = 1024


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


def _free_port_within(bounds: tuple[int, int], host: str) -> int:
    """A random port in `bounds` that nothing is bound to right now, or 0."""
    port = random.randint(*bounds)
    return 0 if port_in_use(port, host) else port


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


def registry_dir() -> Path:
    """The folder where every allocator on this machine records its ports."""
    configured = os.environ.get(REGISTRY_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path(tempfile.gettempdir()) / "istio-lab-kit-ports"


def private_registry_dir() -> Path:
    """This user's own registry, used when the machine-wide one cannot be: it still keeps
    this user's meshes apart (other users' sockets cannot share a port with ours anyway,
    as the kernel allows SO_REUSEPORT only within one user)."""
    return Path.home() / ".cache" / "istio-lab-kit" / "ports"


class PortRegistry:
    """The machine-wide record of held ports: one `<uid>-<pid>-<random>.ports` file per
    allocator.

    The folder is world-writable with the sticky bit (as /tmp), so students on one server
    share it while nobody can remove or rewrite another's file. Other users may plant files
    there, so a file counts only when it is a regular file owned by the uid its name claims,
    that uid also runs the live pid it names, and it claims at most `MAX_CLAIM` ports (all of
    one user's files together `MAX_CLAIM_PER_USER`). A folder owned by another user (who
    could delete our files or hold the lock) is refused; a shared folder must be ours or
    root's with the sticky bit. Any trouble turns the registry off for this allocator, with
    a warning: allocation then relies on retries, never fails because of the registry.
    """

    def __init__(self, folder: Path | None = None):
        self.folder = folder if folder is not None else registry_dir()
        self.file = self.folder / "unused.ports"
        self.usable = self._prepare()
        if not self.usable and folder is None:
            self.folder = private_registry_dir()
            self.usable = self._prepare(mode=0o700)
            if self.usable:
                log.warning("port registry: using this user's own %s instead", self.folder)

    def _prepare(self, mode: int = 0o1777) -> bool:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            info = self.folder.lstat()
            if not stat.S_ISDIR(info.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a folder")
            if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) != mode:
                self.folder.chmod(mode)  # mkdir's mode is filtered by the umask
            elif info.st_uid not in (os.geteuid(), 0) or (
                    info.st_uid == 0 and not info.st_mode & stat.S_ISVTX):
                raise PermissionError(
                    errno.EPERM, f"owned by uid {info.st_uid}, who could remove or rewrite "
                    "this user's entries (a shared folder must be root's, with the sticky "
                    "bit, as /tmp)")
            if not os.access(self.folder, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "not a folder this user can write")
            # mkstemp: a fresh, unpredictable name created O_EXCL|O_NOFOLLOW, so nothing
            # planted at a guessable name is ever written; 0644 so other meshes can read it.
            fd, name = tempfile.mkstemp(dir=self.folder,
                                        prefix=f"{os.geteuid()}-{os.getpid()}-",
                                        suffix=".ports")
            os.fchmod(fd, 0o644)
            os.close(fd)
            self.file = Path(name)
        except OSError as exc:
            self._turn_off(f"unusable ({exc})")
            return False
        return True

    def _turn_off(self, why: str) -> None:
        log.warning("port registry %s %s: ports are not reserved across meshes (each mesh "
                    "still retries a port another program took)", self.folder, why)
        self.usable = False

    @contextmanager
    def locked(self) -> Iterator[set[int]]:
        """Hold the registry lock; yields the ports every other live allocator holds."""
        if not self.usable:
            yield set()
            return
        try:
            fd = os.open(self.folder / "lock",
                         os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o444)
        except OSError as exc:
            self._turn_off(f"lock cannot be opened ({exc})")
            yield set()
            return
        try:
            deadline = time.monotonic() + LOCK_WAIT_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        # Someone holds it for ever (a bug, or another user on purpose):
                        # waiting at every allocation would stall the mesh.
                        self._turn_off(f"lock busy for {LOCK_WAIT_S:.0f} s")
                        break
                    time.sleep(0.01)
            yield self._held_by_others() if self.usable else set()
        finally:
            os.close(fd)  # also drops the flock

    def _held_by_others(self) -> set[int]:
        """Ports recorded by live allocators other than this one that can be trusted;
        removes the files our own dead allocators left."""
        claims: dict[int, set[int]] = {}
        try:
            entries = list(self.folder.glob("*.ports"))
        except OSError as exc:
            self._turn_off(f"cannot be listed ({exc})")
            return set()
        for entry in entries:
            if entry == self.file:
                continue
            try:
                uid, pid = (int(part) for part in entry.name.split("-")[:2])
            except ValueError:
                continue
            if not pid_alive(pid):
                if uid == os.geteuid():
                    _remove_own(entry)
                continue
            ports = _trusted_claim(entry, uid, pid)
            if ports:
                claims.setdefault(uid, set()).update(ports)
        held: set[int] = set()
        for uid, ports in claims.items():
            if len(ports) > MAX_CLAIM_PER_USER:
                log.warning("port registry: uid %d claims %d ports (more than %d): ignored",
                            uid, len(ports), MAX_CLAIM_PER_USER)
                continue
            held |= ports
        return held

    def record(self, ports: set[int]) -> None:
        """Replace this allocator's file with `ports` (atomically: readers see old or new)."""
        if not self.usable:
            return
        try:
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".tmp")
            try:
                os.fchmod(fd, 0o644)
                with os.fdopen(fd, "w") as f:
                    f.write(" ".join(str(p) for p in sorted(ports)))
                os.replace(tmp, self.file)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            self._turn_off(f"cannot record held ports ({exc})")

    def forget(self) -> None:
        """Remove this allocator's file: its ports are free for every mesh again."""
        if self.usable:
            _remove_own(self.file)


def _remove_own(path: Path) -> None:
    """Remove `path` if it is a file of this user (never another's, nor through a link)."""
    try:
        info = path.lstat()
        if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid():
            path.unlink()
    except OSError:
        pass


def _trusted_claim(entry: Path, uid: int, pid: int) -> set[int]:
    """The ports a registry file claims, or nothing when it cannot be trusted: not a regular
    file owned by `uid`, `pid` not run by `uid`, or more than MAX_CLAIM ports."""
    try:
        if os.stat(f"/proc/{pid}").st_uid != uid:
            return set()
        fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_uid != uid:
                return set()
            words = f.read(MAX_CLAIM * 6 + 1).split()
    except OSError:
        return set()
    if len(words) > MAX_CLAIM:
        log.warning("port registry: %s claims more than %d ports: ignored", entry.name, MAX_CLAIM)
        return set()
    try:
        return {port for word in words if 0 < (port := int(word)) < 65536}
    except ValueError:
        return set()


class PortAllocator:
    """Hands out distinct free loopback ports for one mesh until they are released.

    Ports are reserved in the machine-wide `PortRegistry` (folder `registry`, default
    `registry_dir()`) until released or `close()`d; `shared=False` keeps them private.
    """

    def __init__(self, host: str = "127.0.0.1", attempts: int = 50,
                 registry: Path | None = None, shared: bool = True):
        self.host = host
        self.attempts = attempts
        self._taken: set[int] = set()
        self._lock = threading.Lock()
        self.registry = PortRegistry(registry) if shared else None
        if self.registry is not None:
            # A mesh that is never closed still frees its ports when collected or at exit.
            weakref.finalize(self, self.registry.forget)

    def allocate(self, within: tuple[int, int] | None = None) -> int:
        """A free port neither this allocator nor another mesh's holds (`within`: a port
        range, as the node port range, instead of the kernel's choice)."""
        with self._lock, self._reserving() as elsewhere:
            for _ in range(self.attempts):
                port = (allocate_port(self.host) if within is None
                        else _free_port_within(within, self.host))
                if port and port not in self._taken and port not in elsewhere:
                    self._taken.add(port)
                    if self.registry is not None:
                        self.registry.record(self._taken)
                    return port
        raise BackendError(
            f"no free loopback port found in {self.attempts} tries "
            f"({len(self._taken)} already held by this mesh)"
        )

    def claim(self, port: int) -> str:
        """Hold `port`, which a manifest chose (a nodePort), unless another mesh holds it or a
        program listens on it; returns "" when held, else who has it."""
        with self._lock, self._reserving() as elsewhere:
            if port in self._taken:
                return ""
            if port in elsewhere:
                return "another mesh on this machine holds it"
            if port_in_use(port, self.host):
                return f"{port_owner(port) or 'another program'} listens on it"
            self._taken.add(port)
            if self.registry is not None:
                self.registry.record(self._taken)
            return ""

    @contextmanager
    def _reserving(self) -> Iterator[set[int]]:
        """Hold the registry lock (if shared); yields the ports other meshes hold."""
        if self.registry is None:
            yield set()
        else:
            with self.registry.locked() as elsewhere:
                yield elsewhere

    def release(self, port: int) -> None:
        """Give `port` back; releasing a port not held is harmless."""
        with self._lock:
            if port in self._taken:
                self._taken.discard(port)
                if self.registry is not None:
                    self.registry.record(self._taken)

    def allocated(self) -> set[int]:
        """The ports handed out and not yet released."""
        with self._lock:
            return set(self._taken)

    def close(self) -> None:
        """Release every port and leave the registry (the mesh is going down)."""
        with self._lock:
            self._taken.clear()
            if self.registry is not None:
                self.registry.forget()


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
