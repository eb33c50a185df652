"""gunicorn's gthread worker, but a connection gets a thread only once its request has arrived (slow clients).

Stock gthread hands a connection to a thread as soon as its first byte arrives, and the thread then reads
the headers and body itself: a client that trickles them holds the thread for as long as it likes, so a
few such clients stall every check-in and probe. Here the worker's event loop reads a request's headers,
and its body when that is small (a check-in, a JSON call), without a thread; the thread gets the
connection with the bytes already in the parser's buffer and answers at once. A request that is not in
after REQUEST_READ_TIMEOUT_SECONDS (30) is answered 408 and closed. Large bodies (artifact uploads) still stream
through a thread as they arrive: the app hashes and stores them chunk by chunk, after authenticating; an
upload the app refuses without reading it (no token, throttled) frees its thread at once.

Used by `runstack` (`-k hotswap.gunicorn_worker.BufferedThreadWorker`); behind nginx
(deploy/nginx/hotswap.conf) it does no harm and nginx does the same job first.
"""

from __future__ import annotations

import contextlib
import re
import selectors
import socket
import time
from functools import partial

from gunicorn import http
from gunicorn.workers.gthread import ThreadWorker

from hotswap.settings.env import env

# A client gets this long to send a request's head and small body (nginx's client_header_timeout is 10 s).
READ_TIMEOUT_SECONDS = env.float("REQUEST_READ_TIMEOUT_SECONDS", default=30.0)
# Bodies up to this size are read before a thread is used: a check-in's cap (CHECKIN_MAX_BODY_BYTES).
BUFFERED_BODY_BYTES = 256 * 1024
# Request heads are far smaller; one that is not complete by then is refused (431), not handed to a thread.
HEAD_LIMIT_BYTES = 64 * 1024
# A closed connection's lingering read (gunicorn's close_graceful: 2 s, 64 KiB), in the event loop here.
LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 64 * 1024
# How long a thread waits for the rest of a body the app did not read, before closing the connection.
UNREAD_BODY_DRAIN_SECONDS = 0.05
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*(\d+)[ \t]*(?=\r\n|$)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding[ \t]*:", re.IGNORECASE)
_REFUSALS = {
    408: b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    431: b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
}


def request_ready(data: bytes) -> bool | None:
    """True when `data` holds a whole request head (and its body, if small and of known length); None: refuse."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None if len(data) >= HEAD_LIMIT_BYTES else False
    head = data[:end + 2]
    lengths = _CONTENT_LENGTH.findall(head)
    if _CHUNKED.search(head) or len(lengths) != 1:
        # No body, a chunked one, or a head gunicorn's parser will refuse: it is the parser's to read.
        return True
    length = int(lengths[0])
    return length > BUFFERED_BODY_BYTES or len(data) >= end + 4 + length


class BufferedThreadWorker(ThreadWorker):
    """gthread whose event loop reads each request (headers and a small body) before a thread handles it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reading: dict[object, tuple[float, bytearray]] = {}  # connection -> (deadline, bytes so far)
        self.lingering: dict[object, tuple[float, int]] = {}  # closing connection -> (deadline, bytes drained)

    def enqueue_req(self, conn) -> None:
        # Every road to the thread pool passes here: a new connection, a kept-alive one with a new request,
        # and a pipelined request already in the parser's buffer.
        if self.cfg.is_ssl or getattr(conn, "hotswap_request_in", False):
            conn.hotswap_request_in = False
            super().enqueue_req(conn)
            return
        buffered = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        conn.sock.setblocking(False)
        self.reading[conn] = (time.monotonic() + READ_TIMEOUT_SECONDS, bytearray(buffered))
        if buffered and self._progress(conn):
            return
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    @staticmethod
    def _receive(conn) -> bytes | None:
        """What the client sent (b"" once it is gone), or None when nothing has come after all."""
        try:
            return conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return b""

    def _on_readable(self, conn, _sock) -> None:
        data = self._receive(conn)
        if data is None:
            return
        if not data:
            self._drop(conn)
            return
        self.reading[conn][1].extend(data)
        self._progress(conn, registered=True)

    def _progress(self, conn, registered: bool = False) -> bool:
        """Hands the connection to a thread, or refuses it, once its request says so; False: keep reading."""
        ready = request_ready(bytes(self.reading[conn][1]))
        if ready is False:
            return False
        if registered:
            self.poller.unregister(conn.sock)
        if ready is None:
            self._drop(conn, refuse=431, registered=False)
            return True
        _deadline, data = self.reading.pop(conn)
        if conn.parser is None:
            # What TConn.init() would do in the thread, minus TLS and HTTP/2 (not used with this worker).
            conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
            conn.initialized = True
        conn.parser.unreader.unread(bytes(data))
        conn.data_ready = True
        conn.hotswap_request_in = True
        self.enqueue_req(conn)
        return True

    def _drop(self, conn, *, refuse: int | None = None, registered: bool = True) -> None:
        self.reading.pop(conn, None)
        if registered:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.poller.unregister(conn.sock)
        if refuse:
            with contextlib.suppress(OSError):
                conn.sock.send(_REFUSALS[refuse])
        self.nr_conns -= 1
        conn.close()

    def finish_request(self, conn, fs) -> None:
        # A connection that is done is closed "gracefully" (RFC 9112 9.6: FIN, then read until the client
        # closes, so the answer is not cut by a reset). gthread does that read in this event loop, blocking, for
        # up to 2 s: a slow client stalls every other connection of the worker meanwhile. Here it is one more
        # socket in the poller.
        if fs.cancelled() or fs.exception() is not None or fs.result():
            super().finish_request(conn, fs)
            return
        self.nr_conns -= 1
        try:
            conn.sock.shutdown(socket.SHUT_WR)
            conn.sock.setblocking(False)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_lingering, conn))
        except (OSError, ValueError, KeyError):
            conn.close()
            return
        self.lingering[conn] = (time.monotonic() + LINGER_SECONDS, 0)

    def _on_lingering(self, conn, _sock) -> None:
        deadline, drained = self.lingering[conn]
        data = self._receive(conn)
        if data is None:
            return
        if data and drained + len(data) < LINGER_MAX_BYTES:
            self.lingering[conn] = (deadline, drained + len(data))
            return
        self._unlinger(conn)

    def _unlinger(self, conn) -> None:
        self.lingering.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)
        conn.close()

    def _keepalive_after(self, conn, keepalive: bool) -> bool:
        # gthread drains a body the app left unread (a refused upload) for up to 5 s before reusing the
        # connection: a client trickling that body would hold the thread all along. A body already in is
        # drained; one still coming closes the connection instead (the client has its answer).
        return keepalive and bool(conn.parser.finish_body(deadline=time.monotonic() + UNREAD_BODY_DRAIN_SECONDS))

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        for conn, (deadline, _drained) in list(self.lingering.items()):
            if deadline <= now or not self.alive:
                self._unlinger(conn)
        for conn, (deadline, _data) in list(self.reading.items()):
            if deadline <= now:
                self._drop(conn, refuse=408)
            elif not self.alive:
                self._drop(conn)  # stopping: a request not yet in is not worth waiting for

