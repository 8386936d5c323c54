"""The `lablib` command: check the machine, and see and stop local meshes from a terminal.

    lablib kubectl ARGS    kubectl's commands against the local mesh (the real one on a cluster)
    lablib istioctl ARGS   istioctl's commands, likewise
    lablib shell           a shell with kubectl and istioctl first on PATH
    lablib env             the exports that do the same: eval "$(lablib env)"
    lablib doctor          what the labs need, what is missing, and how to fix it
    lablib status          every local mesh of this user, and its processes
    lablib down [NAME]     stop one mesh (default: $LAB_MESH or "default")
    lablib down --all      stop every mesh of this user
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from .doctor import down_processes
from .errors import LabError
from .local.client import LocalBackend
from .local.state import StateDir, default_root


def attach(name: str) -> LocalBackend | None:
    """A client of mesh `name` if it is running; never starts one."""
    return LocalBackend.attach(StateDir(name))


def local_meshes() -> Iterator[tuple[str, LocalBackend | None]]:
    """Every mesh folder of this user, with a client where that mesh is running."""
    root = default_root()
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.is_dir() and not folder.name.startswith("."):  # not a mesh: .ports, ...
            yield folder.name, attach(folder.name)


def down(names: list[str]) -> int:
    for name in names:
        backend = attach(name)
        if backend is None:
            print(f"mesh {name}: not running")
            continue
        backend.uninstall()
        print(f"mesh {name}: stopped")
    return 0


def status() -> int:
    from .doctor import state_disk_row
    from .local.state import default_root

    disk = state_disk_row(default_root())
    print(f"state disk: {disk['detail']}" + (f"\n  fix: {disk['fix']}" if disk["fix"] else ""))
    for name, backend in local_meshes():
        if backend is None:
            print(f"mesh {name}: not running")
            continue
        rows = backend.processes()
        down = {row["name"] for row in down_processes(rows)}
        print(f"mesh {name}: running, {len(rows)} processes"
              + (f", {len(down)} DOWN (restarted with back-off)" if down else ""))
        holders = backend.holders()
        if not holders:
            print("  held by no process: it runs until `lablib down`")
        for holder in holders:
            print(f"  held by pid {holder['pid']}: {holder['command']}")
        for row in rows:
            mark = "DOWN" if row["name"] in down else ""
            print(f"  {row['name']:<60} {row['state']:<18} pid {row.get('pid')!s:<8} "
                  f"restarts {row['restarts']:<4} {mark}".rstrip())
    return 0


def doctor() -> int:
    from .doctor import checks, report

    rows = checks()
    print(report(rows))
    return 1 if any(row["ok"] is False for row in rows) else 0


def main(argv: list[str] | None = None) -> int:
    args_given = sys.argv[1:] if argv is None else argv
    if args_given and args_given[0] in ("kubectl", "istioctl", "shell", "env"):
        # Before argparse, which would take the tools' own flags (-n, -o) for its own.
        from . import shims

        tools = {"kubectl": shims.kubectl_main, "istioctl": shims.istioctl_main,
                 "shell": shims.shell_main, "env": shims.env_main}
        return int(tools[args_given[0]](args_given[1:]))
    parser = argparse.ArgumentParser(prog="lablib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="check tools, backend, state folder and running meshes")
    sub.add_parser("status", help="list local meshes and their processes")
    stop = sub.add_parser("down", help="stop a local mesh and everything it runs")
    stop.add_argument("name", nargs="?", default=None)
    stop.add_argument("--all", action="store_true", help="every mesh of this user")
    practice = sub.add_parser("practice", help="break-and-fix practice records")
    practice.add_argument("action", choices=["report"])
    practice.add_argument("--dir", action="append", default=None, metavar="FOLDER",
                          help="a folder of practice records (default: $LAB_PRACTICE_DIR and "
                               "your own meshes)")
    args = parser.parse_args(argv)
    try:
        if args.command == "doctor":
            return doctor()
        if args.command == "status":
            return status()
        if args.command == "practice":
            from .practice.progress import report_text

            print(report_text(args.dir), end="")
            return 0
        names = [name for name, _ in local_meshes()] if args.all else [
            args.name or StateDir().mesh]
        return down(names)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
