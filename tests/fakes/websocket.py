"""RFC 6455 WebSocket framing for the fakes and tests: the opening handshake's accept key, frames written and read.

A server writes unmasked frames and reads masked ones; a client the other way round (``mask``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from typing import BinaryIO

__all__ = ["BINARY", "CLOSE", "PING", "PONG", "TEXT", "accept_key", "frame", "read_frame"]

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` answer to a ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID, usedforsecurity=False).digest()).decode()


def frame(opcode: int, payload: bytes, *, mask: bool = False) -> bytes:
    """One final frame (clients mask theirs, servers never do)."""
    head = bytes([0x80 | opcode])
    mask_bit = 0x80 if mask else 0
    if len(payload) < 126:
        head += bytes([mask_bit | len(payload)])
    elif len(payload) < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", len(payload))
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", len(payload))
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))


def read_frame(reader: BinaryIO) -> tuple[int, bytes] | None:
    """(opcode, payload) of the next message, fragments joined; None at the end of the stream."""
    message = b""
    opcode = -1
    while True:
        head = reader.read(2)
        if len(head) < 2:
            return None
        fin, frame_opcode = head[0] & 0x80, head[0] & 0x0F
        length = head[1] & 0x7F
        if length == 126:
            length = struct.unpack("!H", reader.read(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", reader.read(8))[0]
        key = reader.read(4) if head[1] & 0x80 else b""
        payload = reader.read(length)
        if len(payload) < length:
            return None
        if key:
            payload = bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))
        if frame_opcode >= CLOSE:  # control frames come whole, even between fragments
            return frame_opcode, payload
        if frame_opcode != CONTINUATION:
            opcode = frame_opcode
        message += payload
        if fin:
            return opcode, message
