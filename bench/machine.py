"""What machine the figures come from."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

from lablib.local.bootstrap import envoy_binary


def _cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, else platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> str:
    """Total RAM in GiB from /proc/meminfo."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _envoy_version() -> str:
    """The version line `envoy --version` prints."""
    out = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True,
                         timeout=30, check=False).stdout
    lines = [line.strip() for line in out.splitlines() if "version" in line]
    return lines[0].split("version:", 1)[-1].strip() if lines else "unknown"


def machine_info() -> dict[str, str]:
    """nproc, CPU model, RAM, Python and Envoy versions, OS."""
    return {
        "nproc": str(os.cpu_count()),
        "CPU": _cpu_model(),
        "RAM": _ram_gib(),
        "Python": platform.python_version(),
        "Envoy": _envoy_version(),
        "OS": platform.platform(),
    }
