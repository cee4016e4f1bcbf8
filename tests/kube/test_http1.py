"""The kube service's HTTP/1.1 framing: the client's request head read strictly and within bounds, the API server's
reply parsed however its bytes are split."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devicetrust.agent.kube.http1 import (
    MAX_HEADERS,
    MAX_LINE,
    Fields,
    MalformedReply,
    MalformedRequest,
    Reply,
    ReplyCutShort,
    RequestHeads,
    head_end,
    parse_request_head,
    parse_request_line,
    read_chunked_body,
    read_fields,
)


def _fields(head: bytes) -> Fields:
    return read_fields(io.BufferedReader(io.BytesIO(head)))


def _refused(head: bytes) -> MalformedRequest:
    with pytest.raises(MalformedRequest) as refused:
        _fields(head)
    return refused.value


# ---------------------------------------------------------------------------------------------- request line
def test_a_request_line_gives_method_target_and_version() -> None:
    assert parse_request_line(b"GET /kube/prod/api?watch=1 HTTP/1.1\r\n") == (
        "GET",
        "/kube/prod/api?watch=1",
        "HTTP/1.1",
    )
    assert parse_request_line(b"POST /x HTTP/1.0\n") == ("POST", "/x", "HTTP/1.0")  # a bare LF ends a line too


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"GET / HTTP/1.1", 400),  # no line end: the connection ended mid-line
        (b"GET /\r\n", 400),  # HTTP/0.9
        (b"GET  / HTTP/1.1\r\n", 400),
        (b"GET / HTTP/1.1 extra\r\n", 400),
        (b"GET\t/ HTTP/1.1\r\n", 400),
        (b"G(T / HTTP/1.1\r\n", 400),
        (b"GET /a\x00b HTTP/1.1\r\n", 400),
        (b"GET /a\rb HTTP/1.1\r\n", 400),
        (b"GET / HTTP/1.1\r\r\n", 400),  # a bare CR before the line end
        (b"GET / HTTPS/1.1\r\n", 400),
        (b"GET / HTTP/1.10\r\n", 400),
        (b"GET / http/1.1\r\n", 400),
        (b"GET / HTTP/2.0\r\n", 505),
        (b"\r\n", 400),
    ],
)
def test_a_malformed_request_line_is_refused(line: bytes, status: int) -> None:
    with pytest.raises(MalformedRequest) as refused:
        parse_request_line(line)
    assert refused.value.status == status


# ---------------------------------------------------------------------------------------------- headers
def test_fields_keep_their_order_and_match_names_without_case() -> None:
    fields = _fields(
        b"Host: example\r\nAccept:  application/json \t\r\nImpersonate-Group: a\r\nimpersonate-group:b\r\n"
        b"X-Tab: one\ttwo\r\n\r\nbody after the head"
    )
    assert fields.get("host") == "example" and fields.get("HOST") == "example"
    assert fields.get("Accept") == "application/json"  # whitespace around a value is not part of it
    assert fields.get_all("Impersonate-Group") == ["a", "b"]
    assert fields.get("X-Tab") == "one\ttwo"
    assert fields.get("Missing") is None and fields.get_all("Missing") == []
    assert list(fields) == ["Host", "Accept", "Impersonate-Group", "impersonate-group", "X-Tab"]
    assert fields.items()[2:4] == [("Impersonate-Group", "a"), ("impersonate-group", "b")]
    assert len(fields) == 5


def test_bare_lf_ends_header_lines_and_the_head() -> None:
    reader = io.BufferedReader(io.BytesIO(b"Host: x\nContent-Length: 4\n\nbody"))
    fields = read_fields(reader)
    assert (fields.get("Host"), fields.get("Content-Length")) == ("x", "4")
    assert reader.read() == b"body"  # the head's reading stops at its end


def test_latin1_values_pass_unchanged() -> None:
    assert _fields(b"X-Name: caf\xe9\r\n\r\n").get("X-Name") == "caf\xe9"


@pytest.mark.parametrize(
    "head",
    [
        b"Host: x\r\n folded: on\r\n\r\n",  # obs-fold
        b"Host: x\r\n\tfolded\r\n\r\n",
        b"Host : x\r\n\r\n",  # a space before the colon
        b"Host\t: x\r\n\r\n",
        b"no colon here\r\n\r\n",
        b": no name\r\n\r\n",
        b"Ho(st: x\r\n\r\n",
        b"Host: a\rb\r\n\r\n",  # a bare CR in a value
        b"Host: a\x00b\r\n\r\n",
        b"Host: a\x7fb\r\n\r\n",
        b"Host: a\x1bb\r\n\r\n",
        b"Host: x\r\r\n\r\n",
        b"Content-Length: 4\r\nContent-Length: 4\r\n\r\n",  # repeated, even with the same value
        b"Content-Length: 4\r\ncontent-length: 5\r\n\r\n",
        b"Content-Length: -1\r\n\r\n",
        b"Content-Length: +4\r\n\r\n",
        b"Content-Length: 4 4\r\n\r\n",
        b"Content-Length: \r\n\r\n",
        b"Host: x\r\n",  # cut short before the empty line
        b"Host: x",
    ],
)
def test_a_malformed_header_is_refused_with_400(head: bytes) -> None:
    assert _refused(head).status == 400


def test_an_overlong_header_line_is_refused_with_431() -> None:
    assert _refused(b"X-Big: " + b"a" * MAX_LINE + b"\r\n\r\n").status == 431
    assert _fields(b"X-Big: " + b"a" * (MAX_LINE - 9) + b"\r\n\r\n").get("X-Big") == "a" * (MAX_LINE - 9)


def test_too_many_headers_are_refused_with_431() -> None:
    fields = b"".join(b"X-%d: v\r\n" % n for n in range(MAX_HEADERS))
    assert len(_fields(fields + b"\r\n")) == MAX_HEADERS
    assert _refused(fields + b"X-One-More: v\r\n\r\n").status == 431


def test_an_oversize_head_is_refused_with_431() -> None:
    line = b"X-Big: " + b"a" * (MAX_LINE - 20) + b"\r\n"
    assert _refused(line * 17 + b"\r\n").status == 431  # each line within bounds, the whole over a MiB
    with pytest.raises(MalformedRequest) as refused:
        read_fields(io.BufferedReader(io.BytesIO(b"Host: x\r\n\r\n")), head_so_far=1024 * 1024)
    assert refused.value.status == 431


# ---------------------------------------------------------------------------------------------- whole heads
@pytest.mark.parametrize(
    ("data", "head"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\nnext", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        (b"GET / HTTP/1.1\nHost: x\n\nnext", b"GET / HTTP/1.1\nHost: x\n\n"),
        (b"GET / HTTP/1.1\r\nHost: x\n\r\nnext", b"GET / HTTP/1.1\r\nHost: x\n\r\n"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\nnext", b"GET / HTTP/1.1\r\nHost: x\r\n\n"),
        (b"\r\nGET / HTTP/1.1\r\n\r\n", b"\r\n"),  # an empty first line is no request line: refused alone
        (b"\nGET / HTTP/1.1\r\n\r\n", b"\n"),
    ],
)
def test_a_head_ends_at_its_first_empty_line(data: bytes, head: bytes) -> None:
    assert data[: head_end(data)] == head


def _first_empty_line_end(data: bytes) -> int:
    """Where the first empty line (CRLF or a bare LF) ends, read a line at a time; -1 without one."""
    start = 0
    while (end := data.find(b"\n", start)) >= 0:
        if data[start:end] in (b"", b"\r"):
            return end + 1
        start = end + 1
    return -1


@given(st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n"]), max_size=16))
def test_a_head_ends_at_its_first_empty_line_whatever_the_line_ends(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    assert head_end(data) == _first_empty_line_end(data)


@pytest.mark.parametrize("data", [b"", b"GET / HTTP/1.1\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n\r", b"GET / HTTP/1.1\r"])
def test_a_head_without_its_empty_line_has_not_ended(data: bytes) -> None:
    assert head_end(data) == -1


def _line_by_line(head: bytes) -> tuple[str, str, str, list[tuple[str, str]]] | int:
    """What reading ``head`` a line at a time gives: its parts, or the status it is refused with."""
    reader = io.BytesIO(head)
    try:
        method, target, version = parse_request_line(reader.readline(MAX_LINE + 1))
        return method, target, version, read_fields(reader).items()
    except MalformedRequest as refused:
        return refused.status


def _whole(head: bytes) -> tuple[str, str, str, list[tuple[str, str]]] | int:
    try:
        method, target, version, fields = parse_request_head(head)
        return method, target, version, fields.items()
    except MalformedRequest as refused:
        return refused.status


_HEAD_PIECES = [
    b"GET /kube/prod/api/v1/pods?limit=500 HTTP/1.1",
    b"POST / HTTP/1.0",
    b"GET / HTTP/2.0",
    b"Host: 127.0.0.1:443",
    b"Accept: application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
    b"Content-Length: 12",
    b"content-length: 1x",
    b"X-Spaces:   a b\t ",
    b"X-Empty:",
    b"X-Latin: caf\xe9",
    b" folded",
    b"Bad Name: v",
    b"X-Ctl: a\x01b",
    b"X-Cr: a\rb",
    b"X-Del: \x7f",
    b"",
]


@given(st.lists(st.sampled_from(_HEAD_PIECES), max_size=8), st.lists(st.sampled_from([b"\r\n", b"\n"]), min_size=10))
def test_a_whole_head_reads_as_line_by_line(pieces: list[bytes], ends: list[bytes]) -> None:
    head = b"".join(piece + end for piece, end in zip([*pieces, b""], ends, strict=False))
    assert _whole(head) == _line_by_line(head)


_REQUEST_LINES = [b"GET /kube/prod/api/v1/pods HTTP/1.1", b"POST / HTTP/1.0", b"GET / HTTP/2.0", b"Bad line"]


@given(
    st.lists(
        st.tuples(st.sampled_from(_REQUEST_LINES), st.sampled_from([0, 1, 2]), st.sampled_from([b"\r\n", b"\n"])),
        max_size=8,
    ),
    st.lists(st.lists(st.sampled_from(_HEAD_PIECES[3:]), max_size=5), min_size=3, max_size=3),
)
def test_heads_read_in_turn_read_as_each_alone(
    requests: list[tuple[bytes, int, bytes]], header_sets: list[list[bytes]]
) -> None:
    """A connection's heads, their header lines often repeated, read as each would be alone."""
    heads = RequestHeads()
    for request_line, which, end in requests:
        head = b"".join(line + end for line in [request_line, *header_sets[which], b""])
        try:
            method, target, version, fields = heads.parse(head)
            read: tuple[str, str, str, list[tuple[str, str]]] | int = (method, target, version, fields.items())
        except MalformedRequest as refused:
            read = refused.status
        assert read == _whole(head)


def test_repeated_header_lines_are_read_once() -> None:
    heads = RequestHeads()
    _, _, _, first = heads.parse(b"GET /a HTTP/1.1\r\nAccept: */*\r\n\r\n")
    method, target, _, again = heads.parse(b"DELETE /b?c=d HTTP/1.1\r\nAccept: */*\r\n\r\n")
    assert (method, target, again) == ("DELETE", "/b?c=d", first)
    _, _, _, other = heads.parse(b"GET /a HTTP/1.1\r\nAccept: text/plain\r\n\r\n")
    assert other is not first and other.get("Accept") == "text/plain"
    with pytest.raises(MalformedRequest):  # the same header lines do not make a malformed request line pass
        heads.parse(b"GET /a b HTTP/1.1\r\nAccept: text/plain\r\n\r\n")


def test_whole_heads_at_the_bounds_read_as_line_by_line() -> None:
    request = b"GET / HTTP/1.1\r\n"
    many = request + b"".join(b"X-%d: v\r\n" % n for n in range(MAX_HEADERS)) + b"\r\n"
    assert _whole(many) == _line_by_line(many) != 431
    too_many = request + b"".join(b"X-%d: v\r\n" % n for n in range(MAX_HEADERS + 1)) + b"\r\n"
    assert _whole(too_many) == _line_by_line(too_many) == 431
    long_line = request + b"X-Big: " + b"a" * MAX_LINE + b"\r\n\r\n"
    assert _whole(long_line) == _line_by_line(long_line) == 431
    long_target = b"GET /" + b"a" * MAX_LINE + b" HTTP/1.1\r\n\r\n"
    assert _whole(long_target) == 414


# ---------------------------------------------------------------------------------------------- replies
def _feed(reply: Reply, data: bytes, cuts: list[int]) -> bytes:
    """Feed ``data`` split at ``cuts``; the body as taken piece by piece."""
    body = b""
    start = 0
    for end in [*sorted(set(cuts)), len(data)]:
        reply.feed(data[start:end])
        body += reply.take_body()
        start = end
    return body


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'7\r\n{"a":1}\r\n1a;ext=1\r\n' + b"b" * 26 + b"\r\n0\r\nTrailer-Field: t\r\n\r\n"
)
CHUNKED_BODY = b'{"a":1}' + b"b" * 26


@pytest.mark.parametrize("cut", range(1, len(CHUNKED)))
def test_a_chunked_reply_split_at_any_byte_reads_the_same(cut: int) -> None:
    reply = Reply()
    assert _feed(reply, CHUNKED, [cut]) == CHUNKED_BODY
    assert (reply.status, reply.reason, reply.complete, reply.reusable) == (200, b"OK", True, True)
    assert reply.fields == [(b"Content-Type", b"application/json"), (b"Transfer-Encoding", b"chunked")]
    assert not reply.has_length and not reply.until_close


@given(st.lists(st.integers(min_value=1, max_value=len(CHUNKED) - 1), max_size=12))
def test_a_chunked_reply_split_anywhere_reads_the_same(cuts: list[int]) -> None:
    reply = Reply()
    assert _feed(reply, CHUNKED, cuts) == CHUNKED_BODY
    assert reply.complete and reply.reusable


def test_a_chunked_reply_byte_by_byte_has_its_headers_before_its_body() -> None:
    reply = Reply()
    end_of_head = CHUNKED.index(b"\r\n\r\n") + 4
    for index in range(len(CHUNKED)):
        reply.feed(CHUNKED[index : index + 1])
        assert reply.headers_complete == (index + 1 >= end_of_head)
        assert reply.complete == (index + 1 == len(CHUNKED))


LENGTH = b"HTTP/1.1 404 Not Found\r\nContent-Length: 11\r\n\r\nnot found\r\n"


@given(st.lists(st.integers(min_value=1, max_value=len(LENGTH) - 1), max_size=8))
def test_a_content_length_reply_split_anywhere_reads_the_same(cuts: list[int]) -> None:
    reply = Reply()
    assert _feed(reply, LENGTH, cuts) == b"not found\r\n"
    assert (reply.status, reply.complete, reply.reusable, reply.has_length) == (404, True, True, True)


def test_a_reply_until_close_ends_with_the_connection_and_is_not_reused() -> None:
    reply = Reply()
    assert _feed(reply, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nline 1\n", [20]) == b"line 1\n"
    assert reply.until_close and not reply.complete
    reply.end_of_input()
    assert reply.complete and not reply.reusable


@pytest.mark.parametrize(
    "cut_short",
    [
        b"",
        b"HTTP/1.1 200 OK\r\nContent-Le",
        LENGTH[:-1],
        CHUNKED[: CHUNKED.index(b"0\r\n")],
        CHUNKED[:-2],
    ],
)
def test_a_reply_cut_short_upstream_is_told(cut_short: bytes) -> None:
    reply = Reply()
    reply.feed(cut_short)
    with pytest.raises(ReplyCutShort):
        reply.end_of_input()
    assert not reply.complete and not reply.reusable


def test_a_reply_that_asks_to_close_is_not_reused() -> None:
    for head in (b"HTTP/1.1 200 OK\r\nConnection: close\r\n", b"HTTP/1.0 200 OK\r\n"):
        reply = Reply()
        reply.feed(head + b"Content-Length: 2\r\n\r\nok")
        assert reply.complete and not reply.reusable


def test_interim_replies_are_skipped() -> None:
    reply = Reply()
    reply.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
    assert (reply.status, reply.reason, reply.fields, reply.take_body()) == (
        201,
        b"Created",
        [(b"Content-Length", b"2")],
        b"ok",
    )
    assert reply.complete and reply.reusable


def test_the_reply_to_head_ends_with_its_headers() -> None:
    reply = Reply(head_request=True)
    reply.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
    assert reply.complete and reply.reusable and reply.has_length and reply.take_body() == b""
    reply.feed(b"unexpected")  # bytes after it: the connection is not reused
    assert not reply.reusable


def test_no_body_replies_have_a_known_length() -> None:
    for status in (b"204 No Content", b"304 Not Modified"):
        reply = Reply()
        reply.feed(b"HTTP/1.1 " + status + b"\r\nETag: x\r\n\r\n")
        assert reply.complete and reply.has_length and reply.reusable


@pytest.mark.parametrize(
    "malformed",
    [
        b"HTTP/1.1 OK\r\n\r\n",
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
    ],
)
def test_a_malformed_reply_is_refused(malformed: bytes) -> None:
    with pytest.raises(MalformedReply):
        Reply().feed(malformed)


# -- chunked request bodies ----------------------------------------------------------------------------------


def _chunked(raw: bytes, limit: int = 1024) -> bytes:
    return read_chunked_body(io.BytesIO(raw), limit)


def test_a_chunked_body_is_joined_and_its_trailers_skipped() -> None:
    raw = b"3\r\nabc\r\n2;name=value\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n"
    assert _chunked(raw) == b"abcde"
    assert _chunked(b"0\r\n\r\n") == b""
    assert _chunked(b"400\r\n" + b"x" * 1024 + b"\r\n0\r\n\r\n", limit=1024) == b"x" * 1024  # exactly the limit
    assert _chunked(b"A\n0123456789\n0\n\n") == b"0123456789"  # bare LF line ends, as for heads


def test_a_chunked_body_reads_only_what_it_consumed() -> None:
    stream = io.BytesIO(b"1\r\nx\r\n0\r\n\r\nGET /next HTTP/1.1\r\n")
    assert read_chunked_body(stream, 10) == b"x"
    assert stream.read() == b"GET /next HTTP/1.1\r\n"  # the kept-alive connection's next request


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"ffffffffffffffff\r\n", 413),  # refused before any of it is read
        (b"401\r\n", 413),  # 1025 bytes: one past the limit
        (b"200\r\n" + b"x" * 0x200 + b"\r\n201\r\n", 413),
        (b"zz\r\n", 400),
        (b"-1\r\n", 400),
        (b"0x10\r\n", 400),
        (b"\r\n", 400),
        (b"1ffffffffffffffff\r\n", 400),  # more than 16 hex digits
        (b"3\r\nabc", 400),  # no line end after the data
        (b"3\r\nabcX\r\n", 400),
        (b"5\r\nabc", 400),  # cut short
        (b"3", 400),
        (b"1;" + b"e" * 2000 + b"\r\n", 400),  # an endless chunk extension
        (b"0\r\nX-Trailer: 1\r\n", 400),  # trailers cut short
        (b"0\r\n" + b"X: 1\r\n" * 200 + b"\r\n", 431),
    ],
)
def test_a_malformed_or_oversize_chunked_body_is_refused(raw: bytes, status: int) -> None:
    with pytest.raises(MalformedRequest) as refused:
        _chunked(raw, limit=1024)
    assert refused.value.status == status


@given(st.lists(st.binary(max_size=40), max_size=8))
def test_any_chunks_within_the_limit_read_back(chunks: list[bytes]) -> None:
    raw = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks if chunk) + b"0\r\n\r\n"
    assert _chunked(raw) == b"".join(chunks)
