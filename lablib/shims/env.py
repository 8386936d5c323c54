"""Putting the shims first on PATH: `lablib env`, `lablib shell`, and the notebook kernel.

The shim folder holds two small executable scripts, `kubectl` and `istioctl`, that run
`python -m lablib.shims TOOL "$@"` with this interpreter. It lives in the per-user cache
(`$XDG_CACHE_HOME/istio-lab-kit/shims/<interpreter>/`), so it outlives any one mesh.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from .session import OWNER_ENV

__all__ = ["env_main", "install_in_kernel", "is_shim", "shell_main", "shim_dir"]

TOOLS = ("kubectl", "istioctl")
MARKER = "# lablib-shim"
KIT_ROOT = Path(__file__).resolve().parents[2]
PASSED_ON = ("LAB_MESH", "LAB_STATE_DIR", "LAB_BACKEND")


def _script(tool: str) -> str:
    python = shlex.quote(sys.executable)
    root = shlex.quote(str(KIT_ROOT))
    return (f"#!/bin/sh\n{MARKER}: {tool} for the Istio Lab Kit's local mesh (see docs/shims.md)"
            f"\nPYTHONPATH={root}${{PYTHONPATH:+:$PYTHONPATH}}\nexport PYTHONPATH\n"
            f'exec {python} -m lablib.shims {tool} "$@"\n')


def _cache_root() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "istio-lab-kit" / "shims"


def shim_dir() -> Path:
    """The folder with executable `kubectl` and `istioctl` shims for this interpreter,
    (re)written if missing or stale."""
    tag = hashlib.sha256(f"{sys.executable}\0{KIT_ROOT}".encode()).hexdigest()[:12]
    folder = _cache_root() / tag
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)
    for tool in TOOLS:
        write_script(folder / tool, _script(tool))
    return folder


def write_script(path: Path, text: str) -> None:
    """An executable script at `path`, replaced atomically unless it already says `text`."""
    if not path.is_file() or path.read_text() != text:
        temporary = path.with_suffix(".tmp")
        temporary.write_text(text)
        os.chmod(temporary, 0o755)
        os.replace(temporary, path)


def is_shim(path: Path) -> bool:
    """Whether `path` is one of these shims (so passthrough never calls itself)."""
    try:
        with open(path, "rb") as handle:
            return MARKER.encode() in handle.read(256)
    except OSError:
        return False


def _path_with(folder: Path, path: str) -> str:
    kept = [p for p in path.split(os.pathsep) if p and Path(p) != folder]
    return os.pathsep.join([str(folder), *kept])


def shim_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this process's environment) with the shims first on PATH."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = _path_with(shim_dir(), env.get("PATH", ""))
    return env


def env_main(argv: Sequence[str] | None = None) -> int:
    """`lablib env`: the exports that put the shims first; use `eval "$(lablib env)"`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv:
        print(f"error: lablib env takes no arguments (got {' '.join(argv)})", file=sys.stderr)
        return 1
    env = shim_env()
    print(f"export PATH={shlex.quote(env['PATH'])}")
    for name in PASSED_ON:
        if os.environ.get(name):
            print(f"export {name}={shlex.quote(os.environ[name])}")
    print(f"# kubectl and istioctl now drive the local mesh; undo with: "
          f"export PATH={shlex.quote(os.environ.get('PATH', ''))}")
    return 0


def shell_main(argv: Sequence[str] | None = None) -> int:
    """`lablib shell [ARGS...]`: $SHELL with the shims first on PATH; leaving it restores the
    real tools, and stops a mesh that was started inside it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    env = shim_env()
    # A mesh started from this shell ends with it, as one started from a notebook ends with
    # its kernel; a mesh that was already running is left alone.
    env.setdefault(OWNER_ENV, str(os.getpid()))
    shell = os.environ.get("SHELL") or "/bin/sh"
    mesh = os.environ.get("LAB_MESH") or "default"
    if not argv:
        print(f'kubectl and istioctl now drive the local mesh "{mesh}". Type exit to leave; '
              f"a mesh started in this shell stops when you leave.", file=sys.stderr)
    try:
        return subprocess.call([shell, *argv], env=env)
    except KeyboardInterrupt:
        return 130


def install_in_kernel() -> Path:
    """Put the shims first on this process's PATH, so a notebook's `!kubectl get pods`
    reaches the local mesh; a mesh they start ends with this kernel."""
    folder = shim_dir()
    os.environ["PATH"] = _path_with(folder, os.environ.get("PATH", ""))
    os.environ.setdefault(OWNER_ENV, str(os.getpid()))
    return folder
