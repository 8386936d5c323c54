"""Reading the proxies' JSON access logs incrementally, as `tail -F` does."""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["LogTail", "parse_line"]


class LogTail:
    """New complete lines of one file since the last read.

    Remembers the offset of the last newline read; starts again from the top when the file
    was replaced (another inode) or truncated (shorter than the offset).
    """

    def __init__(self, path: str):
        self.path = path
        self.offset = 0
        self.inode: int | None = None

    def read(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                stat = os.fstat(f.fileno())
                if stat.st_ino != self.inode or stat.st_size < self.offset:
                    self.inode, self.offset = stat.st_ino, 0
                if stat.st_size == self.offset:
                    return []
                f.seek(self.offset)
                data = f.read(stat.st_size - self.offset)
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:  # a line still being written: wait for its newline
            return []
        self.offset += end + 1
        return data[:end].decode("utf-8", errors="replace").splitlines()


def parse_line(line: str) -> dict[str, Any] | None:
    """One JSON access-log entry, or None for a line that is not one."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None
