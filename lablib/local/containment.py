"""What keeps a manifest inside its pod on the local mesh, where pods are processes of yours.

On a cluster a container's environment and files stay in the container. Here the app is a
process on this machine, started with the manifest's `env` and reading the Secret and
ConfigMap volumes the kit writes for it. So:

* environment variables that change how the machine runs a process (the dynamic loader's,
  the Python interpreter's, glibc's, OpenSSL's, a shell's, the kit's own plumbing) are
  refused, naming the resource and the field (`host_env_problems`);
* every file written for a pod is created through directory descriptors under the pod's
  folder, with O_NOFOLLOW at each step, so no name and no planted symlink leads outside
  it (`write_inside`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..config.model import Resource
from ..errors import Diagnostic, LabError

__all__ = ["HOST_ENV_CODE", "ContainmentError", "host_env_problem", "host_env_problems",
           "host_env_reason",
           "is_plain_name", "make_folder_inside", "write_inside"]

HOST_ENV_CODE = "LAB0107"

# Each entry: a name (or prefix ending in "*") and why it reaches beyond the process.
_HOST_ENV: tuple[tuple[str, str], ...] = (
    ("LD_*", "the dynamic loader reads it (LD_PRELOAD and LD_AUDIT load code into the "
             "process, LD_LIBRARY_PATH chooses its libraries)"),
    ("PYTHON*", "the Python interpreter reads it at start-up (PYTHONPATH and PYTHONSTARTUP "
                "run code from other folders, PYTHONHOME and PYTHONUSERBASE move its library)"),
    ("HOME", "Python imports the user site-packages under $HOME/.local at start-up, so it "
             "would run a sitecustomize.py found there"),
    ("PATH", "it chooses which programs run when the process starts another by name"),
    # glibc's own list of variables it ignores in privileged programs (unsecvars.h):
    # each loads files or code, or moves where the process reads or writes.
    ("GCONV_PATH", "glibc loads character-set converters (code) from it"),
    ("GETCONF_DIR", "glibc reads it (it is on glibc's list of unsafe variables)"),
    ("GLIBC_TUNABLES", "it changes glibc's allocator and loader"),
    ("MALLOC_*", "it changes glibc's allocator (MALLOC_TRACE writes a file anywhere)"),
    ("HOSTALIASES", "glibc's resolver reads host names from that file"),
    ("LOCALDOMAIN", "it changes how glibc's resolver completes names"),
    ("RES_OPTIONS", "it changes how glibc's resolver queries"),
    ("RESOLV_HOST_CONF", "glibc's resolver reads that file"),
    ("LOCPATH", "glibc loads locale data from it"),
    ("NLSPATH", "glibc loads message catalogues from it"),
    ("NIS_PATH", "glibc's NIS lookups read it"),
    ("TZDIR", "glibc reads time-zone files from it"),
    ("TMPDIR", "temporary files would be written outside the pod's folder"),
    ("OPENSSL_*", "OpenSSL loads its configuration, engines and providers (code) from it"),
    ("BASH_ENV", "every non-interactive bash the process starts runs that file"),
    ("ENV", "every sh the process starts runs that file"),
    ("SHELLOPTS", "it changes every bash the process starts"),
    ("BASHOPTS", "it changes every bash the process starts"),
    ("PS4", "with SHELLOPTS=xtrace a shell runs the commands it holds"),
    ("LAB_*", "the local mesh itself passes the app its mounts and its supervisor with it"),
    ("http_proxy", "the local mesh routes the app's calls through its sidecar with it"),
    ("https_proxy", "the local mesh routes the app's calls through its sidecar with it"),
    ("no_proxy", "the local mesh routes the app's calls through its sidecar with it"),
    ("all_proxy", "the local mesh routes the app's calls through its sidecar with it"),
)
_CASE_INSENSITIVE = frozenset({"http_proxy", "https_proxy", "no_proxy", "all_proxy"})


def host_env_reason(name: str) -> str | None:
    """Why `name` may not come from a manifest on the local mesh, or None if it may."""
    for pattern, reason in _HOST_ENV:
        if pattern.endswith("*"):
            if name.startswith(pattern[:-1]):
                return reason
        elif name == pattern or (pattern in _CASE_INSENSITIVE and name.lower() == pattern):
            return reason
    return None


def host_env_problems(deployment: Resource) -> Iterator[Diagnostic]:
    """LAB0107 for every container env variable that would reach beyond its process."""
    pod = ((deployment.spec.get("template") or {}).get("spec")) or {}
    for group in ("containers", "initContainers"):
        for i, container in enumerate(pod.get(group) or []):
            for j, variable in enumerate((container or {}).get("env") or []):
                found = host_env_problem(
                    deployment, str((variable or {}).get("name", "")), "",
                    f"spec.template.spec.{group}[{i}].env[{j}].name",
                    "remove it; on a cluster (LAB_BACKEND=kubernetes) it stays inside the "
                    "container")
                if found:
                    yield found


def host_env_problem(deployment: Resource, name: str, origin: str, field: str, fix: str
                     ) -> Diagnostic | None:
    """LAB0107 if the variable `name` (from `origin`, e.g. a ConfigMap's key) would reach
    beyond its process, else None."""
    reason = host_env_reason(name)
    if reason is None:
        return None
    return Diagnostic(HOST_ENV_CODE, "Error", deployment.ref,
                      f"environment variable {name}{origin} is not allowed on the local "
                      f"mesh: {reason}. Pods run as processes on this machine, so it would "
                      "act outside the pod", field, fix)


class ContainmentError(LabError):
    """A file for a pod would have been written outside the pod's folder."""


_PLAIN_PART = re.compile(r"[-._a-zA-Z0-9]+")


def is_plain_name(part: str) -> bool:
    """A file name write_inside takes: letters, digits, `-._`, and no way up (`..`)."""
    return bool(_PLAIN_PART.fullmatch(part)) and part != "." and not part.startswith("..")


def _checked(part: str) -> str:
    if not is_plain_name(part):
        raise ContainmentError(f"refusing to write {part!r}: not a plain file name")
    return part


def _open_folder(root: os.PathLike[str] | str, folders: Sequence[str]) -> int:
    """A descriptor of root/folders..., each created 0700 if missing and opened with
    O_NOFOLLOW relative to the one above it."""
    directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for folder in folders:
            try:
                os.mkdir(_checked(folder), 0o700, dir_fd=directory)
            except FileExistsError:
                pass
            inner = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                            dir_fd=directory)
            os.close(directory)
            directory = inner
    except BaseException:
        os.close(directory)
        raise
    return directory


def make_folder_inside(root: os.PathLike[str] | str, folders: Sequence[str]) -> Path:
    """Create root/folders... (plain names only, no symlink followed) and return its path."""
    os.close(_open_folder(root, folders))
    return Path(root).joinpath(*folders)


def write_inside(root: os.PathLike[str] | str, parts: Sequence[str], data: bytes,
                 mode: int = 0o644) -> None:
    """Write `data` to root/parts[0]/.../parts[-1], never leaving `root`.

    Each part must be a plain name (no "/", not ".."); folders are opened relative to the
    one above with O_NOFOLLOW, and so is the file, so a symlink planted anywhere on the way
    fails the write instead of redirecting it."""
    *folders, name = parts
    directory = _open_folder(root, folders)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(_checked(name), flags, mode, dir_fd=directory)
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)  # also when the file existed with other bits
            file.write(data)
    finally:
        os.close(directory)
