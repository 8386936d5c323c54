"""istioctl, when it is on PATH, and readers for what it (or istiod) prints."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import BackendError

DOWNLOAD = "https://istio.io/latest/docs/setup/getting-started/#download"
ISTIO_VERSION = "1.20"
_MARKS = "✔✘✗"
_VERIFY_LINE = re.compile(rf"^(?P<mark>[{_MARKS}])\s+(?P<kind>[A-Za-z]+): (?P<rest>.+)$")
_CHECKED = " checked successfully"


def missing_message(what: str) -> str:
    """What to do when istioctl is needed and absent."""
    return (f"{what} needs istioctl, which is not on PATH. Download Istio {ISTIO_VERSION} "
            f"({DOWNLOAD}), e.g. `curl -L https://istio.io/downloadIstio | "
            f"ISTIO_VERSION={ISTIO_VERSION}.3 sh -`, and put its bin/ folder on PATH; "
            "then restart the kernel")


class Istioctl:
    """Runs istioctl against the same cluster as the backend (same kubeconfig and context)."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None) -> None:
        self.flags: list[str] = []
        if kubeconfig:
            self.flags += ["--kubeconfig", kubeconfig]
        if context:
            self.flags += ["--context", context]

    @property
    def path(self) -> str | None:
        """The real istioctl on PATH (looked up at each use, so installing it needs no
        reconnect), skipping lablib's own `istioctl` for the local mesh."""
        for folder in os.environ.get("PATH", "").split(os.pathsep):
            candidate = shutil.which("istioctl", path=folder or ".")
            if candidate and not _is_lablib_script(Path(candidate)):
                return candidate
        return None

    def run(self, args: Sequence[str], timeout: float = 600.0,
            needed_for: str | None = None) -> subprocess.CompletedProcess:
        """`istioctl ARGS`; BackendError naming `needed_for` if istioctl is missing."""
        path = self.path
        if path is None:
            raise BackendError(missing_message(needed_for or f"`istioctl {' '.join(args)}`"))
        argv = [path, *args, *self.flags]
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                  check=False, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise BackendError(f"`istioctl {' '.join(args)}` did not finish in "
                               f"{timeout:.0f}s") from None


def _is_lablib_script(path: Path) -> bool:
    """Whether `path` is a Python entry point into lablib (the local mesh's istioctl)."""
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"#!") and b"lablib" in head


def install_lines(output: str) -> list[str]:
    """`✔ Istiod installed` lines without the mark; every non-empty line if there are none."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    marked = [line.lstrip(_MARKS).strip() for line in lines if line[0] in _MARKS]
    return marked or lines


def verify_rows(output: str) -> list[dict[str, Any]]:
    """`istioctl verify-install` lines as rows: component, kind, name, ok, detail."""
    rows = []
    for line in output.splitlines():
        match = _VERIFY_LINE.match(line.strip())
        if not match:
            continue
        rest = match["rest"]
        if rest.endswith(_CHECKED):
            name, detail = rest[: -len(_CHECKED)], "checked successfully"
        else:
            name, _, detail = rest.partition(": ")
        rows.append({"component": name.removesuffix(".istio-system"), "kind": match["kind"],
                     "name": name, "ok": match["mark"] == "✔", "detail": detail})
    return rows


def table_rows(output: str) -> list[dict[str, str]]:
    """A tabwriter table (columns two or more spaces apart) as rows keyed by its header."""
    lines = [line for line in output.splitlines() if line.strip()]
    if not lines:
        return []
    header = re.split(r"\s{2,}", lines[0].strip())
    return [dict(zip(header, re.split(r"\s{2,}", line.strip()), strict=False))
            for line in lines[1:]]


def proxy_status_rows(output: str) -> list[dict[str, Any]]:
    """`istioctl proxy-status` as rows shaped like the local mesh's: proxy, CDS, LDS..."""
    rows = []
    for row in table_rows(output):
        if "NAME" not in row:
            continue
        out: dict[str, Any] = {"proxy": row.pop("NAME"), "connected": True}
        for key, value in row.items():
            out[key if key.isupper() and key.endswith("DS") else key.lower()] = value
        rows.append(out)
    return rows


def _sync_word(sent: str | None, acked: str | None) -> str:
    """istioctl's rule: nothing sent is NOT SENT, the last sent nonce ACKed is SYNCED."""
    if not sent:
        return "NOT SENT"
    return "SYNCED" if sent == acked else "STALE"


def syncz_rows(output: str) -> list[dict[str, Any]]:
    """istiod's /debug/syncz JSON (what proxy-status reads) as proxy-status rows."""
    rows = []
    for status in json.loads(output or "[]") or []:
        rows.append({
            "proxy": status.get("proxy", ""), "connected": True,
            "cluster": status.get("cluster_id", ""),
            "CDS": _sync_word(status.get("cluster_sent"), status.get("cluster_acked")),
            "LDS": _sync_word(status.get("listener_sent"), status.get("listener_acked")),
            "EDS": _sync_word(status.get("endpoint_sent"), status.get("endpoint_acked")),
            "RDS": _sync_word(status.get("route_sent"), status.get("route_acked")),
            "ECDS": _sync_word(status.get("extensionconfig_sent"),
                               status.get("extensionconfig_acked")),
            "version": status.get("istio_version") or status.get("proxy_version", ""),
        })
    return sorted(rows, key=lambda r: str(r["proxy"]))
