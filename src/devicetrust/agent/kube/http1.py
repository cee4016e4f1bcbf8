"""HTTP/1.1 framing for the kube service, without the standard library's e-mail header parser. Pure.

- :func:`head_end` finds the end of a request's head in the bytes read so far; :func:`parse_request_head` (with
  :func:`parse_request_line` and :func:`read_fields`) reads the head strictly and within bounds (line length,
  header count, head size); obs-fold, a bare CR, NUL or another control character, a space before a
  field's colon, a malformed or repeated Content-Length are refused (:class:`MalformedRequest`, with the HTTP
  status to answer). A bare LF ends a line as CRLF does (RFC 9112 §2.2). :class:`RequestHeads` reads a
  connection's heads in turn, each as :func:`parse_request_head` does, reusing the fields of header lines repeated
  from the head before. :func:`read_chunked_body`: a chunked
  request body, each chunk's size checked against the limit before it is read.
- :class:`Reply`: the API server's reply, parsed by llhttp (``httptools``) as its bytes arrive: the status, the
  header fields, the body (by Content-Length, chunked, or until the connection closes) taken piece by piece.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Iterator
from typing import Protocol

import httptools

__all__ = [
    "MAX_CHUNK_LINE",
    "MAX_HEADERS",
    "MAX_LINE",
    "MAX_REQUEST_HEAD",
    "Fields",
    "MalformedReply",
    "MalformedRequest",
    "Reply",
    "ReplyCutShort",
    "RequestHeads",
    "head_end",
    "parse_request_head",
    "parse_request_line",
    "read_chunked_body",
    "read_fields",
]

#: Longest request line or header line (as the standard library's server).
MAX_LINE = 65536
#: Most header fields in a request (as the standard library's server).
MAX_HEADERS = 100
#: Longest request head, request line included (as Go's net/http server, so the API server's).
MAX_REQUEST_HEAD = 1024 * 1024

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Control characters other than HTAB (NUL, CR, LF among them).
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_TARGET = re.compile(rb"[^\x00-\x20\x7f]+")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
#: A request line of HTTP/1.x, as :func:`parse_request_line` accepts it.
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([^\x00-\x20\x7f]+) (HTTP/1\.[0-9])")
#: A well-formed header line (its line end removed): the name, and the value without the spaces around it. A line
#: that does not match is read again by the checks that say what is wrong with it.
_FIELD_LINE = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*((?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)[ \t]*"
)


class MalformedRequest(Exception):
    """A request the service refuses to read: the HTTP status to answer and a short reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class MalformedReply(Exception):
    """The API server's reply is not HTTP/1.1 the service can relay."""


class ReplyCutShort(MalformedReply):
    """The API server's connection ended before its reply did."""


class LineReader(Protocol):
    def readline(self, size: int = -1, /) -> bytes: ...


class Fields:
    """A message's header fields in their order; names matched without regard to case."""

    __slots__ = ("_by_name", "_fields")

    def __init__(self) -> None:
        #: (lower-case name, name as sent, value)
        self._fields: list[tuple[str, str, str]] = []
        self._by_name: dict[str, list[str]] = {}

    def add(self, name: str, value: str) -> None:
        lowered = name.lower()
        self._fields.append((lowered, name, value))
        self._by_name.setdefault(lowered, []).append(value)

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self._by_name.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        return list(self._by_name.get(name.lower(), ()))

    def names(self) -> Iterable[str]:
        """The lower-case names, each once."""
        return self._by_name.keys()

    def items(self) -> list[tuple[str, str]]:
        return [(name, value) for _, name, value in self._fields]

    def lowered_items(self) -> list[tuple[str, str, str]]:
        """(lower-case name, name as sent, value) of each field."""
        return list(self._fields)

    def __iter__(self) -> Iterator[str]:
        return (name for _, name, _ in self._fields)

    def __len__(self) -> int:
        return len(self._fields)


def _line_content(line: bytes) -> bytes | None:
    """A line without its end (CRLF or a bare LF); None if it has none (the connection ended mid-line)."""
    if line.endswith(b"\r\n"):
        return line[:-2]
    if line.endswith(b"\n"):
        return line[:-1]
    return None


def parse_request_line(raw: bytes) -> tuple[str, str, str]:
    """(method, request target, version) of a request line as read (with its line end)."""
    content = _line_content(raw)
    if content is None:
        raise MalformedRequest(400, "the request line has no end")
    parts = content.split(b" ")
    if len(parts) != 3:
        raise MalformedRequest(400, "Bad request syntax")
    method, target, version = parts
    if not _TOKEN.fullmatch(method) or not _TARGET.fullmatch(target):
        raise MalformedRequest(400, "Bad request syntax")
    matched = _VERSION.fullmatch(version)
    if matched is None:
        raise MalformedRequest(400, "Bad request version")
    if matched.group(1) != b"1":
        raise MalformedRequest(505, "Invalid HTTP version")
    return method.decode("ascii"), target.decode("latin-1"), version.decode("ascii")


def head_end(data: bytes) -> int:
    """Where the request head at the start of ``data`` ends (after its empty line); -1 if it has not ended yet. An
    empty first line ends there: it is no request line."""
    if data[:1] == b"\n":
        return 1
    if data[:2] == b"\r\n":
        return 2
    crlf = data.find(b"\n\r\n")
    # an empty line ended by a bare LF that ends before that one (none can start where it starts)
    lf = data.find(b"\n\n", 0, crlf + 1 if crlf >= 0 else len(data))
    if lf >= 0:
        return lf + 2
    return crlf + 3 if crlf >= 0 else -1


def parse_request_head(head: bytes) -> tuple[str, str, str, Fields]:
    """(method, request target, version, header fields) of a request head as read: up to its empty line, or cut
    short where the connection ended or a bound was passed (MalformedRequest then)."""
    fast = _parse_plain_head(head)
    return fast if fast is not None else _parse_line_by_line(head)


def _parse_line_by_line(head: bytes) -> tuple[str, str, str, Fields]:
    reader = io.BytesIO(head)
    line = reader.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise MalformedRequest(414, "Request-URI Too Long")
    method, target, version = parse_request_line(line)
    return method, target, version, read_fields(reader, head_so_far=len(line))


def _parse_plain_head(head: bytes) -> tuple[str, str, str, Fields] | None:
    """A head of the common kind (CRLF line ends, well within the bounds, each line well-formed) read in one pass;
    None for any other, which the line by line reading then accepts or refuses, saying why."""
    if len(head) > MAX_LINE or not head.endswith(b"\r\n\r\n"):
        return None
    lines = head[:-4].split(b"\r\n")
    if len(lines) > MAX_HEADERS + 1:
        return None
    request_line = _REQUEST_LINE.fullmatch(lines[0])
    if request_line is None:
        return None
    fields = Fields()
    for index in range(1, len(lines)):
        field = _FIELD_LINE.fullmatch(lines[index])
        if field is None:
            return None
        name, value = field.group(1, 2)
        if name.lower() == b"content-length" and (fields.get("Content-Length") is not None or not value.isdigit()):
            return None
        fields.add(name.decode("ascii"), value.decode("latin-1"))
    method, target, version = request_line.group(1, 2, 3)
    return method.decode("ascii"), target.decode("latin-1"), version.decode("ascii"), fields


class RequestHeads:
    """A connection's request heads, parsed in turn as :func:`parse_request_head` parses each. A client repeats its
    header lines from one request to the next on a kept-alive connection: a head whose header lines are the bytes
    of the last head read in one pass has only its request line read, and shares that head's fields (which are
    never changed once read)."""

    __slots__ = ("_fields", "_lines")

    def __init__(self) -> None:
        #: the header lines (from the request line's end to the head's) of the last head read in one pass
        self._lines = b""
        self._fields: Fields | None = None

    def parse(self, head: bytes) -> tuple[str, str, str, Fields]:
        line_end = head.find(b"\r\n")
        fields = self._fields
        # the same header lines after a request line of the common kind: the head reads in one pass, to these
        if (
            fields is not None
            and line_end > 0
            and len(head) <= MAX_LINE
            and len(head) - line_end == len(self._lines)
            and head.startswith(self._lines, line_end)
        ):
            request_line = _REQUEST_LINE.fullmatch(head, 0, line_end)
            if request_line is not None:
                method, target, version = request_line.group(1, 2, 3)
                return method.decode("ascii"), target.decode("latin-1"), version.decode("ascii"), fields
        plain = _parse_plain_head(head)
        if plain is None:
            return _parse_line_by_line(head)
        self._lines, self._fields = head[line_end:], plain[3]
        return plain


def read_fields(reader: LineReader, *, head_so_far: int = 0) -> Fields:
    """The header fields up to the empty line that ends a request's head."""
    fields = Fields()
    size = head_so_far
    while True:
        line = reader.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise MalformedRequest(431, "Line too long")
        size += len(line)
        if size > MAX_REQUEST_HEAD:
            raise MalformedRequest(431, "the request's headers are too large")
        content = _line_content(line)
        if content is None:
            raise MalformedRequest(400, "the request's headers were cut short")
        if not content:
            return fields
        if len(fields) == MAX_HEADERS:
            raise MalformedRequest(431, "Too many headers")
        matched = _FIELD_LINE.fullmatch(content)
        if matched is not None:
            name, value = matched.group(1, 2)
            if name.lower() == b"content-length" and (fields.get("Content-Length") is not None or not value.isdigit()):
                raise MalformedRequest(400, "Content-Length is malformed or repeated")
            fields.add(name.decode("ascii"), value.decode("latin-1"))
            continue
        if content[:1] in (b" ", b"\t"):
            raise MalformedRequest(400, "a header line is folded (obs-fold)")
        name, colon, value = content.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise MalformedRequest(400, "a header line is malformed")
        value = value.strip(b" \t")
        if _CONTROL.search(value):
            raise MalformedRequest(400, "a header value holds a control character")
        key = name.decode("ascii")
        if key.lower() == "content-length" and (fields.get(key) is not None or not value.isdigit()):
            raise MalformedRequest(400, "Content-Length is malformed or repeated")
        fields.add(key, value.decode("latin-1"))


class ByteReader(LineReader, Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


#: Longest chunk-size line of a chunked request body (the size, and any chunk extensions).
MAX_CHUNK_LINE = 1024
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")


def read_chunked_body(reader: ByteReader, limit: int) -> bytes:
    """A chunked request body (RFC 9112 §7.1) of at most ``limit`` bytes, trailers skipped. A chunk is never read
    before its size is known to fit: MalformedRequest(413) past the limit, (400) for a malformed or cut frame."""
    data = bytearray()
    while True:
        content = _line_content(reader.readline(MAX_CHUNK_LINE + 1))
        if content is None:
            raise MalformedRequest(400, "the request body's chunk size line is too long or cut short")
        size_text = content.split(b";", 1)[0].strip(b" \t")
        if not _CHUNK_SIZE.fullmatch(size_text):
            raise MalformedRequest(400, "the request body's chunk size is malformed")
        size = int(size_text, 16)
        if size == 0:
            break
        if len(data) + size > limit:
            raise MalformedRequest(413, "the request body is too large")
        chunk = reader.read(size)
        if len(chunk) != size or _line_content(reader.readline(3)) != b"":
            raise MalformedRequest(400, "the request body's chunk is cut short or not followed by a line end")
        data += chunk
    for _ in range(MAX_HEADERS + 1):  # the trailer section, up to its empty line
        line = reader.readline(MAX_LINE + 1)
        content = _line_content(line)
        if content is None:
            raise MalformedRequest(400, "the request body's trailers are too long or cut short")
        if not content:
            return bytes(data)
    raise MalformedRequest(431, "Too many trailer fields")


class Reply:
    """The API server's reply to one request, parsed as its bytes are fed. Interim (1xx) replies are skipped; the
    reply to a HEAD request ends with its headers."""

    def __init__(self, *, head_request: bool = False) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._head_request = head_request
        self._pending: list[bytes] = []
        self._chunked = False
        self._length = False
        self.status = 0
        self.reason = b""
        #: header fields as sent (names and values as bytes)
        self.fields: list[tuple[bytes, bytes]] = []
        #: the header fields' names in lower case, once the headers are complete
        self.lowered_names: list[bytes] = []
        self.headers_complete = False
        self.complete = False
        #: body bytes came after the reply to a HEAD request ended (the connection cannot be reused)
        self._extra = False
        #: the reply lets the connection carry another request (llhttp forgets it once the reply is complete)
        self._keep_alive = False
        #: a header value holds a line break: the reply is not relayed
        self._line_break = False

    # httptools callbacks ------------------------------------------------------------------------
    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.headers_complete:  # a chunked body's trailer fields are not relayed
            self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if 100 <= self.status < 200:
            return
        self.headers_complete = True
        self._keep_alive = self._parser.should_keep_alive()
        lowered = self.lowered_names = [name.lower() for name, _ in self.fields]
        self._chunked = b"transfer-encoding" in lowered
        self._length = b"content-length" in lowered
        values = b"".join([value for _, value in self.fields])
        self._line_break = b"\r" in values or b"\n" in values
        if self._head_request:
            self.complete = True

    def on_body(self, body: bytes) -> None:
        if self._head_request:
            self._extra = True
        else:
            self._pending.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:  # an interim reply: the real one follows
            self.status, self.reason, self.fields = 0, b"", []
            return
        self.complete = True

    # ------------------------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Parse bytes of the reply as they came."""
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as err:
            raise MalformedReply(f"malformed reply: {err}") from None
        if self._line_break:
            raise MalformedReply("malformed reply: a header value holds a line break")

    def end_of_input(self) -> None:
        """The connection ended: the end of a body read until then, else the reply was cut short."""
        if self.complete:
            return
        if not self.headers_complete or not self.until_close:
            raise ReplyCutShort("the reply ended early")
        self.complete = True

    def take_body(self) -> bytes:
        """The body bytes parsed since the last call (chunked framing removed)."""
        if not self._pending:
            return b""
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        return data

    @property
    def has_length(self) -> bool:
        """Its body's length is known before it arrives (Content-Length, or no body at all)."""
        return self._length or self._head_request or self.status in (204, 304)

    @property
    def until_close(self) -> bool:
        """Its body lasts until the connection closes."""
        return not self.has_length and not self._chunked

    @property
    def reusable(self) -> bool:
        """The connection may carry another request: this reply was read to its end and asked no close."""
        return self.complete and not self.until_close and not self._extra and self._keep_alive
