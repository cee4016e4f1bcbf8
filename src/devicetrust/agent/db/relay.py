"""Relaying one database session, in one thread, between the client's TLS socket and the database's socket.

Why a thread with blocking-style sockets rather than asyncio: a query round trip crosses the relay twice, and the
asyncio streams and ``ssl`` protocol cost several times what ``poll`` plus the ``ssl`` module's C read and write
do (measured in ``benchmarks/bench_db.py``); a database session is long-lived, so a thread per session is cheap.
All I/O of a session happens in its own thread; other threads only ask it to end (:meth:`Relay.terminate`),
through a socket pair that wakes its ``poll``.

The server's stream is followed frame by frame (:class:`~.postgres.ServerStream`), so a session that must end (a
lock) gets the service's ErrorResponse between two of the server's messages, never inside one.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable

from devicetrust.agent.db.postgres import PostgresProtocolError, ServerStream

__all__ = ["RELAY_CHUNK_BYTES", "SEND_TIMEOUT_SECONDS", "Relay", "send_all"]

RELAY_CHUNK_BYTES = 64 * 1024
#: A peer that takes nothing for this long is gone: the session ends.
SEND_TIMEOUT_SECONDS = 60.0
#: A session told to end waits at most this long for the server to reach the end of a message.
TERMINATE_GRACE_SECONDS = 2.0

_READABLE = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR


class RelayClosed(Exception):
    """A peer closed its side or failed; the session is over."""


def send_all(sock: socket.socket, data: bytes | memoryview, timeout: float = SEND_TIMEOUT_SECONDS) -> None:
    """Send all of ``data`` on a non-blocking socket (plain or TLS), waiting for room at most ``timeout``
    seconds at a time. RelayClosed if the peer is gone or stalls."""
    view = memoryview(data)
    poller: select.poll | None = None
    while view:
        try:
            sent = sock.send(view)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            sent = 0
        except OSError as err:
            raise RelayClosed(str(err)) from None
        view = view[sent:]
        if view:
            if poller is None:
                poller = select.poll()
                poller.register(sock, select.POLLOUT)
            if not poller.poll(timeout * 1000):
                raise RelayClosed("the peer stopped reading")


def _receive_into(sock: socket.socket, buffer: bytearray) -> int | None:
    """Bytes read into ``buffer`` from a non-blocking socket; None if none yet; 0 at end of stream."""
    try:
        return sock.recv_into(buffer)
    except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return None
    except (ConnectionError, ssl.SSLError, OSError):
        return 0


def _pending(sock: socket.socket) -> bool:
    """Whether a TLS socket holds decrypted bytes that ``poll`` cannot see (a plain socket never does)."""
    return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0


class Relay:
    """Copies bytes both ways until either side closes or :meth:`terminate` is called.

    ``on_server_data`` runs after each chunk from the server was followed (``stream`` is up to date): the
    service uses it to see the startup end (success or the server's error) as it happens.
    """

    def __init__(
        self,
        client: socket.socket,
        server: socket.socket,
        stream: ServerStream | None,
        on_server_data: Callable[[ServerStream], None] | None = None,
    ) -> None:
        self.client = client
        self.server = server
        #: None: the server's frames are not followed (a relay that never ends a session itself)
        self.stream = stream
        self._on_server_data = on_server_data
        # one buffer per direction, reused for every chunk (send_all is done with it before the next read)
        self._from_server = bytearray(RELAY_CHUNK_BYTES)
        self._from_client = bytearray(RELAY_CHUNK_BYTES)
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._lock = threading.Lock()
        self._goodbye: bytes | None = None
        self._goodbye_deadline = 0.0
        #: why the relay ended: "client", "server", "terminated" or an error
        self.ended_by = ""

    def terminate(self, goodbye: bytes) -> None:
        """End the session: ``goodbye`` (an ErrorResponse) goes to the client at the next message boundary.
        Thread-safe; the first call wins."""
        with self._lock:
            if self._goodbye is not None:
                return
            self._goodbye = goodbye
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"x")

    def run(self) -> str:
        client, server = self.client, self.server
        client.setblocking(False)
        server.setblocking(False)
        poller = select.poll()
        client_fd, server_fd, wake_fd = client.fileno(), server.fileno(), self._wake_reader.fileno()
        for fd in (client_fd, server_fd, wake_fd):
            poller.register(fd, _READABLE)
        stream = self.stream
        try:
            while True:
                timeout = -1.0
                if self._goodbye is not None:
                    if stream is None or stream.at_boundary or time.monotonic() >= self._goodbye_deadline:
                        self._say_goodbye()
                        return self._end("terminated")
                    timeout = max(0.0, self._goodbye_deadline - time.monotonic()) * 1000
                for fd, _ in poller.poll(timeout):
                    if fd == server_fd:
                        self._pump_server()
                    elif fd == client_fd:
                        self._pump_client()
                    elif fd == wake_fd:
                        with contextlib.suppress(OSError):
                            self._wake_reader.recv(64)
                        self._goodbye_deadline = time.monotonic() + TERMINATE_GRACE_SECONDS
        except RelayClosed as closed:
            return self._end(str(closed))

    def _pump_server(self) -> None:
        server, stream, buffer = self.server, self.stream, self._from_server
        chunk = memoryview(buffer)
        while True:
            size = _receive_into(server, buffer)
            if size is None:
                return
            if not size:
                raise RelayClosed("server")
            if stream is not None:
                try:
                    stream.feed(chunk[:size])
                except PostgresProtocolError:
                    raise RelayClosed("the server's stream could not be followed") from None
            send_all(self.client, chunk[:size])
            if self._on_server_data is not None and stream is not None:
                self._on_server_data(stream)
                if not stream.startup:
                    self._on_server_data = None  # it watches the startup only
            if not _pending(server):  # a plain socket with more to read is readable again at the next poll
                return

    def _pump_client(self) -> None:
        client, buffer = self.client, self._from_client
        chunk = memoryview(buffer)
        while True:
            size = _receive_into(client, buffer)
            if size is None:
                return
            if not size:
                raise RelayClosed("client")
            send_all(self.server, chunk[:size])
            if not _pending(client):
                return

    def _say_goodbye(self) -> None:
        if self._goodbye is not None and self.stream is not None and self.stream.at_boundary:
            with contextlib.suppress(RelayClosed):
                send_all(self.client, self._goodbye, timeout=TERMINATE_GRACE_SECONDS)

    def _end(self, how: str) -> str:
        self.ended_by = how
        for sock in (self._wake_reader, self._wake_writer):
            sock.close()
        return how
