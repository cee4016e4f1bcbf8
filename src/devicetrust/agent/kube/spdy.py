"""SPDY/3.1 framing, as much as Kubernetes' exec, attach and port-forward speak of it (what client-go's spdystream
sends and expects): the kube service follows it to end a stream with a Status, the tests' fake API server speaks it.

Frames: control ``|1|version 3|type|flags|length 24|data`` and data ``|0|stream id 31|flags|length 24|data``.
Header blocks (SYN_STREAM, SYN_REPLY) are zlib streams, one per direction for the whole connection, primed with
the dictionary of the SPDY/3 draft (section 2.6.10.1): the peer checks its Adler-32 in the zlib header.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

__all__ = [
    "DATA",
    "FLAG_FIN",
    "GOAWAY",
    "MAX_HEADER_BLOCK",
    "PING",
    "SYN_REPLY",
    "SYN_STREAM",
    "Frame",
    "FrameBoundary",
    "MalformedFrame",
    "Session",
]

SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
#: a data frame has no type; this stands for one in :class:`Frame`
DATA = 0
FLAG_FIN = 0x01
VERSION = 3
#: Largest name/value block taken from a peer once inflated (spdystream's own limit is far below)
MAX_HEADER_BLOCK = 64 * 1024
_FRAME_HEADER = 8


class MalformedFrame(ValueError):
    """A header block that does not inflate or parse, or is too large."""


_NAMES = [
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
]
_WORDS = [*_NAMES, "200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin"]
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized"
    "403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable"
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
DICTIONARY = b"".join(struct.pack("!I", len(word)) + word.encode() for word in _WORDS) + _TAIL.encode()


@dataclass(frozen=True)
class Frame:
    kind: int  # DATA or a control frame's type
    flags: int
    data: bytes
    stream_id: int = 0  # of a data frame, SYN_STREAM or SYN_REPLY


class Session:
    """One side's framing state: parse what arrives (``feed``), build what goes out."""

    def __init__(self) -> None:
        self._buffer = b""
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._deflate = zlib.compressobj(zdict=DICTIONARY)

    @property
    def buffered(self) -> int:
        """Bytes received that do not complete a frame yet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        """The frames now complete."""
        self._buffer += data
        frames = []
        while len(self._buffer) >= 8:
            first, flags_length = struct.unpack("!II", self._buffer[:8])
            length = flags_length & 0xFFFFFF
            if len(self._buffer) < 8 + length:
                break
            body, self._buffer = self._buffer[8 : 8 + length], self._buffer[8 + length :]
            flags = flags_length >> 24
            if not first & 0x80000000:
                frames.append(Frame(DATA, flags, body, first & 0x7FFFFFFF))
                continue
            kind = first & 0xFFFF
            stream_id = struct.unpack("!I", body[:4])[0] & 0x7FFFFFFF if kind in (SYN_STREAM, SYN_REPLY) else 0
            frames.append(Frame(kind, flags, body, stream_id))
        return frames

    def headers(self, frame: Frame) -> dict[str, str]:
        """The name/value block of a SYN_STREAM (after stream id, associated id, priority and slot); every
        SYN_STREAM of the connection must come here in order (the blocks share one zlib stream).
        MalformedFrame if it does not inflate or parse, or inflates beyond MAX_HEADER_BLOCK."""
        try:
            block = self._inflate.decompress(frame.data[10:], MAX_HEADER_BLOCK)
            if self._inflate.unconsumed_tail:
                raise MalformedFrame("SPDY header block too large")
            count = struct.unpack("!I", block[:4])[0]
            offset, headers = 4, {}
            for _ in range(count):
                (name_length,) = struct.unpack("!I", block[offset : offset + 4])
                name = block[offset + 4 : offset + 4 + name_length].decode()
                offset += 4 + name_length
                (value_length,) = struct.unpack("!I", block[offset : offset + 4])
                headers[name.lower()] = block[offset + 4 : offset + 4 + value_length].decode()
                offset += 4 + value_length
        except (zlib.error, struct.error, UnicodeDecodeError) as err:
            raise MalformedFrame(f"SPDY header block unreadable: {err}") from None
        return headers

    def syn_stream(self, stream_id: int, headers: dict[str, str]) -> bytes:
        """A SYN_STREAM opening ``stream_id`` (odd: the client's) with ``headers`` (a client's, in the tests)."""
        return _control(SYN_STREAM, 0, struct.pack("!IIH", stream_id, 0, 0) + self._header_block(headers))

    def syn_reply(self, stream_id: int) -> bytes:
        """A SYN_REPLY with no headers, accepting the stream."""
        return _control(SYN_REPLY, 0, struct.pack("!I", stream_id) + self._header_block({}))

    def _header_block(self, headers: dict[str, str]) -> bytes:
        block = struct.pack("!I", len(headers))
        for name, value in headers.items():
            block += struct.pack("!I", len(name)) + name.lower().encode()
            block += struct.pack("!I", len(value.encode())) + value.encode()
        return self._deflate.compress(block) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    @staticmethod
    def data(stream_id: int, payload: bytes, *, fin: bool = False) -> bytes:
        return struct.pack("!II", stream_id, (FLAG_FIN if fin else 0) << 24 | len(payload)) + payload

    @staticmethod
    def goaway(last_good_stream_id: int) -> bytes:
        """A GOAWAY with status OK: no new streams after ``last_good_stream_id`` (spdystream's ``Close``)."""
        return _control(GOAWAY, 0, struct.pack("!II", last_good_stream_id, 0))

    @staticmethod
    def echo(frame: Frame) -> bytes:
        """A control frame sent back as it came (a PING's answer)."""
        return _control(frame.kind, frame.flags, frame.data)


def _control(kind: int, flags: int, data: bytes) -> bytes:
    return struct.pack("!HHI", 0x8000 | VERSION, kind, flags << 24 | len(data)) + data


class FrameBoundary:
    """Splits a byte stream at frame boundaries: what :meth:`complete` returns ends with a whole frame, and the
    start of a frame still arriving is held (so that a frame of one's own can be put between two)."""

    def __init__(self) -> None:
        self._held = bytearray()

    def complete(self, data: bytes) -> bytes:
        """The bytes, with what was held before, up to the end of the last complete frame."""
        held = self._held
        held += data
        position = 0
        while len(held) >= position + _FRAME_HEADER:
            (flags_length,) = struct.unpack_from("!I", held, position + 4)
            end = position + _FRAME_HEADER + (flags_length & 0xFFFFFF)
            if end > len(held):
                break
            position = end
        ready = bytes(held[:position])
        del held[:position]
        return ready
