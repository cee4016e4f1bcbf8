"""The PostgreSQL wire protocol as the database service reads it: startup packets and the server's frames."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devicetrust.agent.db.postgres import (
    BackendKey,
    CancelRequest,
    GSSEncRequest,
    PostgresProtocolError,
    ServerStream,
    SSLRequest,
    StartupMessage,
    error_fields,
    error_response,
    parse_startup_packet,
)


def packet(code: int, body: bytes = b"") -> bytes:
    return struct.pack("!ii", len(body) + 8, code) + body


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def test_negotiation_requests() -> None:
    assert parse_startup_packet(packet(80877103)) == SSLRequest()
    assert parse_startup_packet(packet(80877104)) == GSSEncRequest()
    cancel = parse_startup_packet(packet(80877102, struct.pack("!i", 4242) + b"\x01\x02\x03\x04"))
    assert isinstance(cancel, CancelRequest) and cancel.key == BackendKey(4242, b"\x01\x02\x03\x04")


def test_startup_message_parameters_and_defaults() -> None:
    startup = parse_startup_packet(packet(3 << 16, b"user\0alice\0database\0app\0application_name\0psql\0\0"))
    assert isinstance(startup, StartupMessage)
    assert (startup.user, startup.database, startup.parameters["application_name"]) == ("alice", "app", "psql")
    only_user = parse_startup_packet(packet(3 << 16, b"user\0alice\0\0"))
    assert isinstance(only_user, StartupMessage) and only_user.database == "alice"
    nobody = parse_startup_packet(packet(3 << 16, b"\0"))
    assert isinstance(nobody, StartupMessage) and nobody.user == ""


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (struct.pack("!ii", 7, 0), "invalid length"),
        (struct.pack("!ii", 10_001, 0) + b"\0" * 9_993, "invalid length"),
        (packet(3 << 16, b"user\0alice\0"), "terminator"),
        (packet(3 << 16, b"user\0\0"), "no value"),
        (packet(3 << 16, b"user\0a\0user\0b\0\0"), "repeated"),
        (packet(3 << 16, b"user\0\xff\0\0"), "UTF-8"),
        (packet(2 << 16, b"\0"), "unsupported frontend protocol 2.0"),
        (packet(80877102, b"\0\0\0\1"), "cancel request"),
        (struct.pack("!ii", 20, 3 << 16), "incomplete"),
    ],
)
def test_malformed_startup_packets(raw: bytes, problem: str) -> None:
    with pytest.raises(PostgresProtocolError, match=problem):
        parse_startup_packet(raw)


def test_error_response_is_what_libpq_reads() -> None:
    raw = error_response("access to resource requires a trusted device", "28000")
    assert raw[:1] == b"E" and struct.unpack("!i", raw[1:5])[0] == len(raw) - 1
    assert error_fields(raw[5:]) == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "28000",
        "M": "access to resource requires a trusted device",
    }


STARTUP_REPLY = (
    message(b"R", b"\0\0\0\0")
    + message(b"S", b"server_version\x0015\0")
    + message(b"K", struct.pack("!i", 77) + b"\xaa\xbb\xcc\xdd")
    + message(b"Z", b"I")
)
QUERY_REPLY = (
    message(b"T", b"\0\x01?column?\0" + b"\0" * 18) + message(b"D", b"\0\x01\0\0\0\x011") + message(b"Z", b"I")
)


@given(st.lists(st.integers(min_value=1, max_value=len(STARTUP_REPLY + QUERY_REPLY) - 1), max_size=12))
def test_frames_are_followed_however_the_stream_is_cut(cuts: list[int]) -> None:
    data = STARTUP_REPLY + QUERY_REPLY
    edges = [0, *sorted(set(cuts)), len(data)]
    stream = ServerStream()
    boundaries = {0}
    position = 0
    for raw in (STARTUP_REPLY, QUERY_REPLY):
        for frame_end in _frame_ends(raw):
            boundaries.add(position + frame_end)
        position += len(raw)
    for start, end in itertools.pairwise(edges):
        stream.feed(data[start:end])
        assert stream.at_boundary is (end in boundaries)
    assert stream.authenticated and stream.ready and not stream.startup and not stream.startup_error
    assert stream.backend_key == BackendKey(77, b"\xaa\xbb\xcc\xdd")


def _frame_ends(raw: bytes) -> list[int]:
    ends, position = [], 0
    while position < len(raw):
        (length,) = struct.unpack_from("!i", raw, position + 1)
        position += 1 + length
        ends.append(position)
    return ends


def test_a_startup_error_is_read() -> None:
    stream = ServerStream()
    stream.feed(error_response('role "nobody" does not exist', "28000"))
    assert (stream.startup, stream.ready, stream.startup_error) == (False, False, 'role "nobody" does not exist')


def test_an_impossible_frame_stops_the_stream() -> None:
    with pytest.raises(PostgresProtocolError):
        ServerStream().feed(b"Z\0\0\0\x02")
    started = ServerStream()
    started.feed(STARTUP_REPLY)
    with pytest.raises(PostgresProtocolError):
        started.feed(QUERY_REPLY + b"Z\0\0\0\x02")
