"""The per-user, per-mesh state folder: logs, Envoy bootstraps, certificates, pid and socket.

Layout of `<root>/<mesh>/` (mode 0700):

    logs/<process>.log   one file per supervised process (stdout and stderr)
    envoy/               bootstrap files
    certs/               keys and certificates (0700; files written 0600)
    meshd.pid            the daemon's pid
    meshd.sock           the daemon's Unix socket
    xds.sock             the control plane's xDS (gRPC ADS) socket
    admin/<n>.sock       each Envoy's admin API
    state.json           what the daemon wants to remember (written atomically)

`<root>` is `$LAB_STATE_DIR`, else `$XDG_RUNTIME_DIR/istio-lab-kit` when that (usually
small) tmpfs has `ROOM` free, else `~/.cache/istio-lab-kit/run`; `<mesh>` is `$LAB_MESH`
(default "default"), so several meshes of one user, and the meshes of different users, never
share a file. `lablib doctor` and `lablib status` report the free space where it lives.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import BackendError

__all__ = ["ROOM", "StateDir", "StateDirError", "default_root", "explained", "free_space",
           "mesh_name"]

MESH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107
FIX = (
    "set LAB_STATE_DIR to a folder you can write on a disk with room "
    "(e.g. /tmp/$USER-istio-lab) before starting the mesh"
)


# What one mesh's logs may reach at their cap (logcap: ~35 logs of at most 2 x 16 MiB).
ROOM = 1024**3


class StateDirError(BackendError):
    """The mesh state folder cannot be used (not writable, disk full, someone else's)."""


def default_root() -> Path:
    """Where every mesh of this user keeps its folder (see the module docstring)."""
    configured = os.environ.get("LAB_STATE_DIR")
    if configured:
        return Path(configured).expanduser()
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if (runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK | os.X_OK)
            and free_space(Path(runtime)) >= ROOM):
        return Path(runtime) / "istio-lab-kit"
    return Path.home() / ".cache" / "istio-lab-kit" / "run"


def free_space(path: Path) -> int:
    """Bytes free to this user on the disk that holds `path` (or would, once created)."""
    for folder in (path, *path.parents):
        try:
            stats = os.statvfs(folder)
        except OSError:
            continue
        return stats.f_bavail * stats.f_frsize
    return 0


def mesh_name() -> str:
    """The mesh this process works on: `$LAB_MESH`, else "default"."""
    return os.environ.get("LAB_MESH") or "default"


def _error(exc: OSError, path: Path, doing: str) -> StateDirError:
    """Turn an OSError into a message that says what happened and what to do."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        why = "the disk is full"
        fix = "free some space, or " + FIX
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "the folder is not writable"
        fix = FIX
    else:
        why = exc.strerror or str(exc)
        fix = FIX
    detail = f" ({exc.strerror})" if exc.strerror and exc.strerror != why else ""
    return StateDirError(f"cannot {doing} in {path}: {why}{detail}\n    fix: {fix}")


@contextmanager
def explained(path: Path, doing: str) -> Iterator[None]:
    """Re-raise any OSError inside the block as a StateDirError about `path`."""
    try:
        yield
    except OSError as exc:
        raise _error(exc, path, doing) from exc


class StateDir:
    """One mesh's private folder; creating the object creates the folder and its layout."""

    def __init__(self, mesh: str | None = None, root: str | os.PathLike[str] | None = None):
        self.mesh = mesh if mesh is not None else mesh_name()
        if not MESH_NAME.fullmatch(self.mesh):
            raise StateDirError(
                f"{self.mesh!r} is not a valid mesh name (LAB_MESH)\n"
                "    fix: use up to 63 letters, digits, '-', '_' or '.', starting with a "
                "letter or digit"
            )
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.path = self.root / self.mesh
        self.ensure()

    def __repr__(self) -> str:
        return f"StateDir({str(self.path)!r})"

    @property
    def logs(self) -> Path:
        """Folder with one log file per process."""
        return self.path / "logs"

    @property
    def envoy(self) -> Path:
        """Folder with the Envoy bootstrap files."""
        return self.path / "envoy"

    @property
    def certs(self) -> Path:
        """Folder with keys and certificates (0700)."""
        return self.path / "certs"

    @property
    def pid_path(self) -> Path:
        """File holding the pid of this mesh's meshd."""
        return self.path / "meshd.pid"

    @property
    def socket_path(self) -> Path:
        """The Unix socket meshd listens on; refuses paths too long for a socket."""
        return self.unix_socket("meshd.sock")

    @property
    def xds_socket(self) -> Path:
        """The Unix socket the control plane serves xDS on (only this user can open it)."""
        return self.unix_socket("xds.sock")

    def admin_socket(self, serial: int) -> Path:
        """The Unix socket of one Envoy's admin API: named by a number, not the pod, so that
        it fits a socket path whatever the pod is called."""
        return self.unix_socket(f"admin/{serial}.sock")

    def unix_socket(self, name: str) -> Path:
        """`name` in this folder, refused when too long for a Unix socket path."""
        path = self.path / name
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise StateDirError(
                f"the mesh socket path {path} is longer than the {MAX_SOCKET_PATH} bytes a "
                "Unix socket allows\n    fix: set LAB_STATE_DIR to a shorter folder, "
                "e.g. /tmp/$USER-istio-lab"
            )
        return path

    @property
    def state_file(self) -> Path:
        """The JSON file read and written by `read_json` / `write_json`."""
        return self.path / "state.json"

    def log_path(self, name: str) -> Path:
        """The log file of the process called `name`."""
        return self.logs / f"{name}.log"

    def ensure(self) -> StateDir:
        """Create the folder and its layout (0700) if missing; check it is ours."""
        with explained(self.path, "create the mesh state folder"):
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.path.mkdir(mode=0o700, exist_ok=True)
            info = self.path.lstat()
            if not self.path.is_dir() or self.path.is_symlink():
                raise StateDirError(
                    f"{self.path} exists but is not a folder\n    fix: remove it, or {FIX}"
                )
            if info.st_uid != os.geteuid():
                raise StateDirError(
                    f"{self.path} belongs to another user (uid {info.st_uid}): two users "
                    f"share LAB_STATE_DIR={self.root}\n    fix: {FIX}"
                )
            # mkdir's mode is filtered by the umask, and an older folder may be looser.
            if info.st_mode & 0o777 != 0o700:
                self.path.chmod(0o700)
            for folder in (self.logs, self.envoy, self.certs, self.path / "admin"):
                folder.mkdir(mode=0o700, exist_ok=True)
            self.certs.chmod(0o700)
        return self

    def write_private(self, path: str | os.PathLike[str], data: str | bytes) -> Path:
        """Write `data` to `path` (relative to this folder, or absolute) atomically, mode 0600."""
        target = Path(path) if Path(path).is_absolute() else self.path / path
        payload = data.encode() if isinstance(data, str) else data
        with explained(target.parent, f"write {target.name}"):
            if not target.parent.is_dir():
                self.ensure()
                target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # mkstemp creates the file 0600 whatever the umask; the rename makes it appear
            # whole, which is also the only change Envoy's file watchers notice.
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(payload)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return target

    def read_json(self) -> dict[str, Any]:
        """The content of state.json, or {} when there is none yet."""
        try:
            text = self.state_file.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise _error(exc, self.path, "read state.json") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StateDirError(
                f"{self.state_file} is not valid JSON ({exc})\n"
                "    fix: reset the mesh (this removes the file)"
            ) from exc
        if not isinstance(data, dict):
            raise StateDirError(f"{self.state_file} does not hold a JSON object")
        return data

    def write_json(self, data: dict[str, Any]) -> None:
        """Replace state.json with `data` atomically (a reader sees the old or the new file)."""
        self.write_private(self.state_file, json.dumps(data, indent=2, default=str) + "\n")

    def read_pid(self) -> int | None:
        """The pid recorded in meshd.pid, or None when missing or unreadable."""
        try:
            return int(self.pid_path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def clear(self, keep_logs: bool = False) -> None:
        """Remove everything this mesh left behind (all but logs/ when `keep_logs`)."""
        if not self.path.exists():
            return
        with explained(self.path, "remove the mesh state"):
            if not keep_logs:
                shutil.rmtree(self.path)
                return
            for entry in self.path.iterdir():
                if entry == self.logs:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
