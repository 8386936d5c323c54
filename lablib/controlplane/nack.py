"""Envoy's reason for a NACK, short enough to read: the cause first, the config dump left out.

When a pushed resource breaks one of its proto constraints, Envoy's `error_detail` holds the
whole resource as protobuf text (kilobytes: every route of every virtual host) and, after it
or before it depending on the version, `Proto constraint validation failed (A: ... | caused by
B: ... | caused by C.Key: value does not match ...)`. The learner needs the last cause and the
field it sits at; the full message stays in meshd.log (ads logs every NACK whole).
"""

from __future__ import annotations

import re

__all__ = ["dumped_name", "readable_reason", "states_its_reason"]

_CONSTRAINT = "Proto constraint validation failed ("
# Protobuf opens a DebugString with a link whose tail it varies on purpose (debugstr,
# debugproto, debugonly...), so that nobody parses the dump.
_DUMP_MARKER = re.compile(r"goo\.gle/debug\w*")
_CAUSE = re.compile(r"(?:^|\| caused by )\w+ValidationError\.([\w\[\]]+): ")
MAX_CHARS = 600


def _balanced(text: str, start: int) -> str:
    """The text from `start` to the parenthesis closing the one just before it."""
    depth = 1
    for index in range(start, len(text)):
        if text[index] == "(":
            depth += 1
        elif text[index] == ")":
            depth -= 1
            if depth == 0:
                return text[start:index]
    return text[start:]


def _prefix(message: str, end: int) -> str:
    """What Envoy said before the dump or the constraint ("Error adding/updating ...: ")."""
    head = message[:end]
    marker = _DUMP_MARKER.search(head)
    for stop in (marker.start() if marker else -1, head.find("\n")):
        if stop >= 0:
            head = head[:stop]
    return head.strip().rstrip(":").strip()


_DUMPED_NAME = re.compile(r'^name: "([^"]*)"', re.MULTILINE)


def dumped_name(message: str) -> str:
    """The name of the resource Envoy dumped in its message ("" if none)."""
    match = _DUMPED_NAME.search(message)
    return match.group(1) if match else ""


def states_its_reason(message: str) -> bool:
    """False when Envoy's message is a config dump cut short (at 4 KB) before its reason."""
    return _CONSTRAINT in message or not _DUMP_MARKER.search(message)


def readable_reason(message: str) -> str:
    """`message` (Envoy's error_detail) with the failed constraint first and no config dump."""
    at = message.find(_CONSTRAINT)
    if at >= 0:
        chain = _balanced(message, at + len(_CONSTRAINT))
        fields = _CAUSE.findall(chain)
        cause = chain.rsplit("| caused by ", 1)[-1]
        cause = cause.split(": ", 1)[1] if ": " in cause else cause
        where = f" at {'.'.join(fields)}" if fields else ""
        prefix = _prefix(message, at)
        text = f"{prefix + ': ' if prefix else ''}invalid value{where}: {cause}"
    elif _DUMP_MARKER.search(message):
        resource = dumped_name(message)
        text = (f"{_prefix(message, len(message)) or 'Envoy refused'}"
                f"{f' {resource}' if resource else ''}, but cut its reason off after a dump "
                "of the config")
    else:
        text = _prefix(message, len(message)) or message.strip()
    if len(text) > MAX_CHARS:
        text = text[:MAX_CHARS] + "..."
    if text != message.strip():
        text += " (Envoy's full message is in meshd.log)"
    return text
