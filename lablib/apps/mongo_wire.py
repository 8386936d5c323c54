"""The part of MongoDB's wire protocol Bookinfo's ratings database needs: BSON documents (the
common types) and OP_MSG messages, plus the legacy OP_QUERY/OP_REPLY a driver's first
`isMaster` may use. Shared by the database stand-in (`mongodb`) and ratings v2, its client.

    send_msg(sock, {"find": "ratings", "$db": "test"}, request_id=1)
    reply = read_message(sock)       # Message(op, request_id, response_to, document)
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Any

__all__ = ["OP_MSG", "OP_QUERY", "OP_REPLY", "Message", "decode", "encode", "read_message",
           "send_msg", "send_reply"]

OP_REPLY, OP_QUERY, OP_MSG = 1, 2004, 2013
_HEADER = struct.Struct("<iiii")


def _cstring(text: str) -> bytes:
    return text.encode() + b"\x00"


def _element(key: str, value: Any) -> bytes:
    name = _cstring(key)
    if isinstance(value, bool):
        return b"\x08" + name + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return b"\x10" + name + struct.pack("<i", value)
        return b"\x12" + name + struct.pack("<q", value)
    if isinstance(value, float):
        return b"\x01" + name + struct.pack("<d", value)
    if isinstance(value, str):
        data = value.encode()
        return b"\x02" + name + struct.pack("<i", len(data) + 1) + data + b"\x00"
    if isinstance(value, dict):
        return b"\x03" + name + encode(value)
    if isinstance(value, (list, tuple)):
        return b"\x04" + name + encode({str(i): v for i, v in enumerate(value)})
    if value is None:
        return b"\x0a" + name
    raise TypeError(f"BSON: cannot encode {type(value).__name__}")


def encode(document: dict[str, Any]) -> bytes:
    body = b"".join(_element(k, v) for k, v in document.items()) + b"\x00"
    return struct.pack("<i", len(body) + 4) + body


def _decode_at(data: bytes, at: int) -> tuple[dict[str, Any], int]:
    (length,) = struct.unpack_from("<i", data, at)
    end, at, out = at + length - 1, at + 4, {}
    while at < end:
        kind = data[at]
        name_end = data.index(b"\x00", at + 1)
        key, at = data[at + 1:name_end].decode(), name_end + 1
        value: Any
        if kind == 0x01:
            (value,) = struct.unpack_from("<d", data, at)
            at += 8
        elif kind == 0x02:
            (size,) = struct.unpack_from("<i", data, at)
            value, at = data[at + 4:at + 3 + size].decode(), at + 4 + size
        elif kind in (0x03, 0x04):
            value, at = _decode_at(data, at)
            if kind == 0x04:
                value = list(value.values())
        elif kind == 0x07:
            value, at = data[at:at + 12].hex(), at + 12
        elif kind == 0x08:
            value, at = data[at] == 1, at + 1
        elif kind == 0x0A:
            value = None
        elif kind == 0x10:
            (value,) = struct.unpack_from("<i", data, at)
            at += 4
        elif kind in (0x12, 0x09, 0x11):
            (value,) = struct.unpack_from("<q", data, at)
            at += 8
        else:
            raise ValueError(f"BSON: type 0x{kind:02x} of {key!r} is not supported")
        out[key] = value
    return out, end + 1


def decode(data: bytes) -> dict[str, Any]:
    return _decode_at(data, 0)[0]


@dataclass(frozen=True)
class Message:
    op: int
    request_id: int
    response_to: int
    document: dict[str, Any]


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the peer closed the connection")
        data += chunk
    return data


def read_message(sock: socket.socket) -> Message:
    """One OP_MSG (its body section) or OP_QUERY (its query) or OP_REPLY (its first doc)."""
    length, request_id, response_to, op = _HEADER.unpack(_read_exactly(sock, 16))
    body = _read_exactly(sock, length - 16)
    if op == OP_MSG:
        at = 4  # flagBits; then sections, kind 0 holds the command
        while body[at] != 0:
            (size,) = struct.unpack_from("<i", body, at + 1)
            at += 1 + size
        return Message(op, request_id, response_to, _decode_at(body, at + 1)[0])
    if op == OP_QUERY:
        name_end = body.index(b"\x00", 4)
        return Message(op, request_id, response_to, _decode_at(body, name_end + 9)[0])
    if op == OP_REPLY:
        return Message(op, request_id, response_to, _decode_at(body, 20)[0])
    raise ValueError(f"MongoDB wire: opCode {op} is not supported")


def send_msg(sock: socket.socket, document: dict[str, Any], request_id: int,
             response_to: int = 0) -> None:
    payload = struct.pack("<I", 0) + b"\x00" + encode(document)
    sock.sendall(_HEADER.pack(16 + len(payload), request_id, response_to, OP_MSG) + payload)


def send_reply(sock: socket.socket, document: dict[str, Any], request_id: int,
               response_to: int) -> None:
    """OP_REPLY, the answer to a legacy OP_QUERY."""
    payload = struct.pack("<iqii", 0, 0, 0, 1) + encode(document)
    sock.sendall(_HEADER.pack(16 + len(payload), request_id, response_to, OP_REPLY) + payload)
