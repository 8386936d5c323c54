"""The `lablib` command: see and stop local meshes from a terminal.

    lablib status          every local mesh of this user, and its processes
    lablib down [NAME]     stop one mesh (default: $LAB_MESH or "default")
    lablib down --all      stop every mesh of this user
"""

from __future__ import annotations

import argparse
import sys

from .errors import LabError
from .local.state import StateDir, default_root


def _meshes() -> list[str]:
    root = default_root()
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _backend(name: str):  # the client only: never starts a daemon
    from .local.client import LocalBackend

    backend = LocalBackend.__new__(LocalBackend)
    backend.state = StateDir(name)
    backend.owner = 0
    return backend


def down(names: list[str]) -> int:
    for name in names:
        backend = _backend(name)
        if backend._alive():
            backend.uninstall()
            print(f"mesh {name}: stopped")
        else:
            print(f"mesh {name}: not running")
    return 0


def status() -> int:
    for name in _meshes():
        backend = _backend(name)
        if not backend._alive():
            print(f"mesh {name}: not running")
            continue
        rows = backend.processes()
        print(f"mesh {name}: running, {len(rows)} processes")
        for row in rows:
            print(f"  {row['name']:<60} {row['state']:<18} pid {row.get('pid')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lablib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="list local meshes and their processes")
    stop = sub.add_parser("down", help="stop a local mesh and everything it runs")
    stop.add_argument("name", nargs="?", default=None)
    stop.add_argument("--all", action="store_true", help="every mesh of this user")
    args = parser.parse_args(argv)
    try:
        if args.command == "status":
            return status()
        names = _meshes() if args.all else [args.name or StateDir().mesh]
        return down(names)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
