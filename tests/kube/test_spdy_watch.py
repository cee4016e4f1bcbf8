"""The kube service's following of plain SPDY exec streams: frame boundaries, the error stream, bounded parsing."""

from __future__ import annotations

import json
import struct
import zlib

from devicetrust.agent.kube import spdy
from devicetrust.agent.kube.service import _spdy_exec_watch, _SpdyExecWatch

V4 = "v4.channel.k8s.io"
UPGRADED = (
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
    b"X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
)


def _client_streams(*types: str) -> bytes:
    client = spdy.Session()
    return b"".join(client.syn_stream(2 * i + 1, {"streamType": kind}) for i, kind in enumerate(types))


def test_frames_are_passed_on_whole_and_a_partial_one_is_held() -> None:
    boundary = spdy.FrameBoundary()
    first, second = spdy.Session.data(1, b"hello"), spdy.Session.data(3, b"x" * 1000)
    stream = first + second
    assert boundary.complete(stream[:3]) == b""
    assert boundary.complete(stream[3 : len(first) + 10]) == first
    assert boundary.complete(stream[len(first) + 10 :]) == second
    assert boundary.complete(b"") == b""


def test_the_error_stream_is_learned_and_a_lock_ends_it_with_a_status() -> None:
    watch = _SpdyExecWatch(V4)
    data = _client_streams("error", "stdout", "stdin")
    assert watch.from_client(data[:5]) == data[:5]  # passed on unchanged, however it arrives
    assert watch.from_client(data[5:]) == data[5:]
    assert watch.error_stream == 1
    frames = spdy.Session().feed(watch.ending("locked: stolen laptop"))
    assert [(f.kind, f.stream_id, f.flags) for f in frames] == [(spdy.DATA, 1, spdy.FLAG_FIN), (spdy.GOAWAY, 0, 0)]
    status = json.loads(frames[0].data)
    assert (status["kind"], status["status"], status["reason"]) == ("Status", "Failure", "Forbidden")
    assert status["message"] == "the kube service ended the session: locked: stolen laptop"


def test_older_protocols_get_the_bare_message() -> None:
    watch = _SpdyExecWatch("v3.channel.k8s.io")
    watch.from_client(_client_streams("stdout", "error"))
    assert watch.error_stream == 3
    (frame, _) = spdy.Session().feed(watch.ending("locked"))
    assert frame.data == b"the kube service ended the session: locked"


def test_client_bytes_that_cannot_be_followed_leave_a_plain_cut() -> None:
    garbled = _SpdyExecWatch(V4)
    header = struct.pack("!HHI", 0x8000 | spdy.VERSION, spdy.SYN_STREAM, 30)
    assert garbled.from_client(header + struct.pack("!IIH", 1, 0, 0) + b"not zlib at all!!!!!") != b""
    assert garbled.ending("locked") == b""
    bomb = _SpdyExecWatch(V4)
    block = zlib.compressobj(zdict=spdy.DICTIONARY)
    inflated = block.compress(b"\0" * (spdy.MAX_HEADER_BLOCK * 4)) + block.flush(zlib.Z_SYNC_FLUSH)
    body = struct.pack("!IIH", 1, 0, 0) + inflated
    bomb.from_client(struct.pack("!HHI", 0x8000 | spdy.VERSION, spdy.SYN_STREAM, len(body)) + body)
    assert bomb.ending("locked") == b""
    endless = _SpdyExecWatch(V4)
    endless.from_client(struct.pack("!II", 1, 0xFFFFFF) + b"x" * (_SpdyExecWatch.MAX_FOLLOWED + 1))
    assert endless.from_client(_client_streams("error")) and endless.error_stream is None


def test_only_plain_spdy_exec_and_attach_are_followed() -> None:
    assert _spdy_exec_watch(UPGRADED, "exec") is not None
    assert _spdy_exec_watch(UPGRADED, "attach") is not None
    assert _spdy_exec_watch(UPGRADED, "portforward") is None
    websocket = UPGRADED.replace(b"SPDY/3.1", b"websocket")
    assert _spdy_exec_watch(websocket, "exec") is None
