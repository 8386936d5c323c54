"""What a learner did in practice and exams, one JSON line per event, and the instructor's
report over the records they may read.

Each learner's events go to `$XDG_DATA_HOME/istio-lab-kit/practice/<mesh>.jsonl` (default
`~/.local/share/…`): a folder of mode 0700, so nobody else reads it, that outlives the mesh
(a mesh's state folder goes when it stops) and stays out of the state root, whose folders
are meshes. In a classroom, `LAB_PRACTICE_DIR` names a shared
folder (e.g. group-owned, setgid, mode 2770) where each learner's events are also written as
`<user>.<mesh>.jsonl`, mode 0640: members of the folder's group (the instructors) can read
them, and the Unix permissions decide who sees what — the report never asks for more.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..local.state import mesh_name

__all__ = ["record", "records_dir", "report", "report_text"]


def records_dir() -> Path:
    """This user's own practice records (see the module docstring)."""
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "istio-lab-kit" / "practice"


def _files() -> list[Path]:
    own = records_dir()
    own.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = [own / f"{mesh_name()}.jsonl"]
    shared = os.environ.get("LAB_PRACTICE_DIR")
    if shared:
        files.append(Path(shared) / f"{getpass.getuser()}.{mesh_name()}.jsonl")
    return files


def record(scenario: str, event: str, **details: Any) -> None:
    """Append one event (start, hint, check, solution, exam) for this learner's mesh."""
    line = json.dumps({"time": time.time(), "user": getpass.getuser(), "mesh": mesh_name(),
                       "scenario": scenario, "event": event, **details})
    for path in _files():
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        with os.fdopen(descriptor, "a") as handle:
            handle.write(line + "\n")


def _readable(folders: Iterable[Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """Every event in the record files under `folders` this user may read, and the files
    that exist but may not be read."""
    events, refused = [], []
    for folder in folders:
        for path in sorted(folder.glob("*.jsonl")):
            try:
                text = path.read_text()
            except PermissionError:
                refused.append(str(path))
                continue
            events += [json.loads(line) for line in text.splitlines() if line.strip()]
    return events, refused


def report(folders: Iterable[str | os.PathLike[str]] | None = None):  # -> DataFrame
    """One row per learner, mesh and scenario: hints taken, checks, best outcome, solution
    seen. Reads `folders` (default: LAB_PRACTICE_DIR and this user's own records)."""
    import pandas as pd

    if folders is None:
        shared = os.environ.get("LAB_PRACTICE_DIR")
        folders = [p for p in (shared, records_dir()) if p]
    events, refused = _readable(Path(f) for f in folders)
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    seen: set[str] = set()
    for e in sorted(events, key=lambda e: e["time"]):
        key_text = json.dumps(e, sort_keys=True)
        if key_text in seen:  # the same event in the own folder and the shared one
            continue
        seen.add(key_text)
        key = (e["user"], e["mesh"], e["scenario"])
        row = rows.setdefault(key, {"user": e["user"], "mesh": e["mesh"],
                                    "scenario": e["scenario"], "hints": 0, "checks": 0,
                                    "outcome": "not checked", "solution seen": False,
                                    "last activity": ""})
        row["last activity"] = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["time"]))
        if e["event"] == "hint":
            row["hints"] = max(row["hints"], int(e.get("level", 0)))
        elif e["event"] in ("check", "exam"):
            row["checks"] += e["event"] == "check"
            if row["outcome"] != "passed":
                row["outcome"] = e.get("outcome", row["outcome"])
        elif e["event"] == "solution":
            row["solution seen"] = True
    frame = pd.DataFrame(list(rows.values()), columns=[
        "user", "mesh", "scenario", "hints", "checks", "outcome", "solution seen",
        "last activity"])
    frame.attrs["unreadable"] = refused
    return frame


def report_text(folders: list[str] | None = None) -> str:
    """`lablib practice report`: the table as text, and how many records were not readable."""
    frame = report(folders or None)
    text = frame.to_string(index=False) if len(frame) else "no practice recorded yet"
    refused = frame.attrs["unreadable"]
    if refused:
        text += (f"\n{len(refused)} record file(s) not readable with your permissions "
                 f"(skipped): {', '.join(refused)}")
    return text + "\n"
