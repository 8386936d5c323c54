"""Keep the mesh's logs from filling the disk: each file is capped, one older copy kept.

Every writer of `<state>/logs/` (the supervised processes, Envoy's access logs, meshd)
appends through an O_APPEND descriptor it keeps open, so a log is rotated the way
logrotate's `copytruncate` does it: copy the file to `<name>.1` (replacing the previous
copy), then truncate it in place; the writers go on appending at its new end. Readers that
follow a log by offset (`telemetry.accesslog`) notice the truncation and start again from
the top. At ~4 KB of logs per Bookinfo page this bounds a mesh's logs to about twice
`LOG_CAP` per process instead of gigabytes an hour.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

__all__ = ["LOG_CAP", "LogCapper", "cap_logs"]

log = logging.getLogger(__name__)

LOG_CAP = 16 * 1024 * 1024  # bytes a log may reach before it is rotated
INTERVAL = 2.0  # seconds between two looks at the folder
ROTATED_SUFFIX = ".1"


def cap_logs(folder: Path, cap: int = LOG_CAP) -> list[Path]:
    """Rotate every log in `folder` larger than `cap`; returns the logs rotated."""
    rotated = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    for entry in entries:
        if entry.name.endswith(ROTATED_SUFFIX) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_size <= cap:
                continue
            path = Path(entry.path)
            shutil.copyfile(path, path.with_name(path.name + ROTATED_SUFFIX),
                            follow_symlinks=False)
            os.truncate(path, 0)
            rotated.append(path)
        except OSError as exc:  # a full disk must not stop the mesh: truncate at least
            log.warning("could not rotate %s: %s", entry.path, exc)
            try:
                os.truncate(entry.path, 0)
            except OSError:
                pass
    return rotated


class LogCapper:
    """A daemon thread that calls `cap_logs(folder)` every INTERVAL seconds until stopped."""

    def __init__(self, folder: Path, cap: int = LOG_CAP) -> None:
        self.folder = folder
        self.cap = cap
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-capper", daemon=True)

    def start(self) -> LogCapper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        while not self._stopped.wait(INTERVAL):
            try:
                cap_logs(self.folder, self.cap)
            except Exception:  # the capper must outlive any one odd file
                log.exception("log capping failed")
