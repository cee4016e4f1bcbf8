"""The PostgreSQL wire protocol, as far as the database service reads it. Pure: bytes in, values out.

The service reads the client's first packets itself (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage:
"Message Formats" in the PostgreSQL manual), answers with ErrorResponses of its own, and then relays. Of the
server's messages it reads only their frames (a type byte and a length), so it knows where one ends and can end a
session between two messages, plus the few it needs during startup: AuthenticationOk, BackendKeyData (for cancel
requests), ReadyForQuery and ErrorResponse.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from devicetrust.errors import ValidationError

__all__ = [
    "CANCEL_REQUEST_CODE",
    "GSSENC_REQUEST_CODE",
    "MAX_STARTUP_PACKET_LENGTH",
    "PROTOCOL_3_0",
    "SQLSTATE_ADMIN_SHUTDOWN",
    "SQLSTATE_CONNECTION_FAILURE",
    "SQLSTATE_INVALID_AUTHORIZATION",
    "SQLSTATE_PROTOCOL_VIOLATION",
    "SQLSTATE_TOO_MANY_CONNECTIONS",
    "SSL_REQUEST_CODE",
    "BackendKey",
    "CancelRequest",
    "GSSEncRequest",
    "PostgresProtocolError",
    "SSLRequest",
    "ServerStream",
    "StartupMessage",
    "error_fields",
    "error_response",
    "packet_length",
    "parse_startup_packet",
]

SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102
#: Protocol 3.0, the only one PostgreSQL 7.4 and later speak (minor versions are negotiated by the server).
PROTOCOL_3_0 = 3 << 16
#: PostgreSQL's own limit on a startup packet (MAX_STARTUP_PACKET_LENGTH in libpq/pqcomm.h).
MAX_STARTUP_PACKET_LENGTH = 10_000
#: Startup packets have a length and a code at least; a cancel request's secret is 4 bytes (up to 256 from 18).
MIN_STARTUP_PACKET_LENGTH = 8
MAX_CANCEL_KEY_BYTES = 256
#: Server messages read whole during startup are small; anything larger is only framed.
MAX_STARTUP_MESSAGE_BYTES = 64 * 1024

# SQLSTATE codes (Appendix A of the PostgreSQL manual).
SQLSTATE_INVALID_AUTHORIZATION = "28000"
SQLSTATE_PROTOCOL_VIOLATION = "08P01"
SQLSTATE_CONNECTION_FAILURE = "08006"
SQLSTATE_ADMIN_SHUTDOWN = "57P01"
SQLSTATE_TOO_MANY_CONNECTIONS = "53300"

_INT32 = struct.Struct("!i")
_HEADER = struct.Struct("!ci")
_CANCEL = struct.Struct("!iii")


class PostgresProtocolError(ValidationError):
    """The client sent something that is not the PostgreSQL protocol (the message is sent back to it)."""


@dataclass(frozen=True)
class SSLRequest:
    pass


@dataclass(frozen=True)
class GSSEncRequest:
    pass


@dataclass(frozen=True)
class BackendKey:
    """What identifies a backend to cancel: its process id and secret key (BackendKeyData)."""

    process_id: int
    secret_key: bytes


@dataclass(frozen=True)
class CancelRequest:
    key: BackendKey
    raw: bytes


@dataclass(frozen=True)
class StartupMessage:
    """A protocol 3.0 StartupMessage: its parameters, and the packet itself to forward unchanged."""

    parameters: Mapping[str, str]
    raw: bytes

    @property
    def user(self) -> str:
        return self.parameters.get("user", "")

    @property
    def database(self) -> str:
        """The database name; PostgreSQL defaults it to the user name."""
        return self.parameters.get("database") or self.user


Startup = SSLRequest | GSSEncRequest | CancelRequest | StartupMessage


def packet_length(header: bytes) -> int:
    """The length (itself included) a startup packet announces in its first 4 bytes, if it is plausible."""
    if len(header) != _INT32.size:
        raise PostgresProtocolError("incomplete startup packet")
    length = int(_INT32.unpack(header)[0])
    if not MIN_STARTUP_PACKET_LENGTH <= length <= MAX_STARTUP_PACKET_LENGTH:
        raise PostgresProtocolError("invalid length of startup packet")
    return length


def parse_startup_packet(packet: bytes) -> Startup:
    """One whole startup packet (length included). PostgresProtocolError names what is wrong, in PostgreSQL's
    words where it has them."""
    length = packet_length(packet[:4])
    if len(packet) != length:
        raise PostgresProtocolError("incomplete startup packet")
    (code,) = _INT32.unpack_from(packet, 4)
    if code == SSL_REQUEST_CODE and length == MIN_STARTUP_PACKET_LENGTH:
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE and length == MIN_STARTUP_PACKET_LENGTH:
        return GSSEncRequest()
    if code == CANCEL_REQUEST_CODE:
        if not 12 < length <= 12 + MAX_CANCEL_KEY_BYTES:
            raise PostgresProtocolError("invalid length of cancel request")
        _, _, process_id = _CANCEL.unpack_from(packet)
        return CancelRequest(BackendKey(process_id, packet[12:]), packet)
    if code >> 16 != 3:
        raise PostgresProtocolError(
            f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: server supports 3.0 to 3.0"
        )
    return StartupMessage(_startup_parameters(packet[8:]), packet)


def _startup_parameters(body: bytes) -> Mapping[str, str]:
    """name\\0value\\0 ... \\0, as UTF-8; each name once."""
    if not body.endswith(b"\0"):
        raise PostgresProtocolError("invalid startup packet layout: expected terminator as last byte")
    pairs = body[:-1]
    if pairs and not pairs.endswith(b"\0"):
        raise PostgresProtocolError("invalid startup packet layout: expected terminator as last byte")
    parts = pairs[:-1].split(b"\0") if pairs else []
    if len(parts) % 2:
        raise PostgresProtocolError("invalid startup packet layout: a parameter has no value")
    parameters: dict[str, str] = {}
    for index in range(0, len(parts), 2):
        try:
            name, value = parts[index].decode(), parts[index + 1].decode()
        except UnicodeDecodeError:
            raise PostgresProtocolError("invalid startup packet: parameters must be UTF-8") from None
        if not name or name in parameters:
            raise PostgresProtocolError("invalid startup packet layout: empty or repeated parameter name")
        parameters[name] = value
    return MappingProxyType(parameters)


def error_response(message: str, code: str, severity: str = "FATAL") -> bytes:
    """An ErrorResponse: severity (localized and not), SQLSTATE and message, as PostgreSQL sends them."""
    body = b"".join(
        tag + value.encode() + b"\0"
        for tag, value in ((b"S", severity), (b"V", severity), (b"C", code), (b"M", message.replace("\0", "")))
    )
    body += b"\0"
    return b"E" + _INT32.pack(len(body) + 4) + body


def error_fields(body: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse or NoticeResponse body (type byte and length removed), by their tag."""
    fields: dict[str, str] = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return fields


@dataclass
class ServerStream:
    """Follows the frames of the server's byte stream as it is relayed, chunk by chunk.

    ``at_boundary`` says whether everything fed so far ends between two messages (where the service may insert an
    ErrorResponse of its own). Until the startup is over (the first ReadyForQuery, or an ErrorResponse before
    it) small messages are also read: ``authenticated``, ``backend_key``, ``ready`` and ``startup_error``.
    """

    #: bytes of the current message still to come (0: between messages)
    remaining: int = 0
    header: bytearray = field(default_factory=bytearray)
    startup: bool = True
    authenticated: bool = False
    ready: bool = False
    backend_key: BackendKey | None = None
    startup_error: str = ""
    _message: bytearray = field(default_factory=bytearray)
    _message_type: bytes = b""

    @property
    def at_boundary(self) -> bool:
        return self.remaining == 0 and not self.header

    def feed(self, data: bytes | memoryview) -> None:
        """Account for ``data``, the next bytes the server sent. PostgresProtocolError if a frame is impossible
        (a length below 4): the stream cannot be followed any further."""
        if self.startup or self.header:
            self._feed_message_by_message(data)
            return
        # after the startup only the frames matter: hop from length to length (a query's reply is one chunk)
        size, position = len(data), self.remaining
        while position + _HEADER.size <= size:
            (length,) = _INT32.unpack_from(data, position + 1)
            if length < _INT32.size:
                raise PostgresProtocolError("the server sent a message with an invalid length")
            position += 1 + length
        if position >= size:
            self.remaining = position - size
        else:  # the chunk ends inside a message's header
            self.remaining = 0
            self.header += data[position:]

    def _feed_message_by_message(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        position, size = 0, len(view)
        while position < size:
            if self.remaining:
                take = min(self.remaining, size - position)
                if self.startup and self._message_type:
                    self._message += view[position : position + take]
                position += take
                self.remaining -= take
                if not self.remaining and self.startup and self._message_type:
                    self._startup_message(self._message_type, bytes(self._message))
                continue
            need = _HEADER.size - len(self.header)
            if not self.header and size - position >= _HEADER.size:
                message_type, length = _HEADER.unpack_from(view, position)
                position += _HEADER.size
            else:
                self.header += view[position : position + need]
                position += min(need, size - position)
                if len(self.header) < _HEADER.size:
                    return
                message_type, length = _HEADER.unpack(self.header)
                self.header.clear()
            if length < _INT32.size:
                raise PostgresProtocolError("the server sent a message with an invalid length")
            self.remaining = length - _INT32.size
            if self.startup:
                self._message_type = message_type if length <= MAX_STARTUP_MESSAGE_BYTES else b""
                self._message.clear()
                if not self.remaining and self._message_type:
                    self._startup_message(message_type, b"")

    def _startup_message(self, message_type: bytes, body: bytes) -> None:
        self._message_type = b""
        if message_type == b"R" and body[:4] == b"\0\0\0\0":
            self.authenticated = True
        elif message_type == b"K" and len(body) >= 8:
            (process_id,) = _INT32.unpack_from(body)
            self.backend_key = BackendKey(process_id, body[4:])
        elif message_type == b"Z":
            self.ready, self.startup = True, False
        elif message_type == b"E":
            fields = error_fields(body)
            self.startup_error = fields.get("M", "the database refused the connection")
            self.startup = False
