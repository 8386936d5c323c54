"""Commands as the sample images have them, for what `kubectl exec` runs on this machine.

The sleep sample's image has busybox `nc`, which hangs up once its input ends. Debian's
OpenBSD `nc` keeps the connection open until the server closes it, so the walkthrough's
`sh -c "(date; sleep 1) | nc HOST PORT"` would never return. The folder here, put first on
the exec'd command's PATH, holds an `nc` that gives OpenBSD's `-N` (hang up after the input).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

from .session import real_tool

__all__ = ["exec_path", "tools_dir"]


def _waits_after_input(nc: str) -> bool:
    """Whether `nc` is OpenBSD netcat (the others hang up when their input ends)."""
    try:
        result = subprocess.run([nc, "-h"], capture_output=True, text=True, timeout=5,
                                check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "OpenBSD netcat" in result.stdout + result.stderr


def tools_dir() -> Path | None:
    """The folder with the busybox-like `nc`, (re)written if stale; None when this machine's
    `nc` already hangs up after its input (or there is none)."""
    from .env import MARKER, shim_dir, write_script

    nc = real_tool("nc")
    if nc is None or not _waits_after_input(nc):
        return None
    folder = shim_dir() / "pod-tools"
    folder.mkdir(exist_ok=True)
    write_script(folder / "nc", f"#!/bin/sh\n{MARKER}: nc as busybox's, which hangs up when "
                               f'its input ends\nexec {shlex.quote(nc)} -N "$@"\n')
    return folder


def exec_path(command: Sequence[str], path: str) -> str:
    """PATH for an exec'd `command`: the pod tools first when it runs one of them."""
    if not re.search(r"(^|[\s|;&(/])nc(\s|$)", " ".join(command)):
        return path
    folder = tools_dir()
    if folder is None:
        return path
    kept = [p for p in path.split(os.pathsep) if p and Path(p) != folder]
    return os.pathsep.join([str(folder), *kept])

