"""When a request reached the exchange: the kernel's receive time of its first byte.

KIS counts a request against the app key's budget when it *arrives* at its front end. The
exchange runs one event loop that also does the matching passes, so a request that arrived
while a pass was running is parsed and dispatched only after it: timed at dispatch, requests
sent evenly would look bunched, and the rate limit would refuse some that KIS would have
taken. So the REST server listens on an `ArrivalSocket`: every connection it accepts asks the
kernel to timestamp received data (``SO_TIMESTAMPNS``, Linux) and reads with ``recvmsg``,
keeping the receive time of the first bytes of the request being read. The middleware
(`arrival_middleware`) takes that time for the request and clears it when the answer is ready;
a connection carries one request at a time (no pipelining), so bytes read meanwhile belong to
the same request. Where the kernel gives no timestamp, the time of the read stands in.

Times are ``time.monotonic()`` seconds (the kernel's wall-clock stamp moved onto the monotonic
clock), the clock the rate limit keeps.
"""

from __future__ import annotations

import socket
import struct
import sys
import time
import weakref
from collections.abc import Awaitable, Callable

from aiohttp import web

#: SO_TIMESTAMPNS (= SCM_TIMESTAMPNS) on Linux; Python 3.11 does not export the constant.
SO_TIMESTAMPNS = int(getattr(socket, "SO_TIMESTAMPNS", 35))
_TIMESPEC = struct.Struct("@qq")  # struct timespec on 64-bit Linux
_CMSG_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)
ARRIVED_AT = web.RequestKey("arrived_at", float)  # the arrival (monotonic seconds)


class ArrivalSocket(socket.socket):
    """A listening socket whose accepted connections note when their data arrived."""

    pending: float | None = None  # arrival of the request being read (monotonic)
    stamped: bool = False  # the kernel timestamps this connection's data

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.accepted: weakref.WeakValueDictionary[int, ArrivalSocket] = (
            weakref.WeakValueDictionary()
        )

    @classmethod
    def listen_on(cls, host: str, port: int) -> ArrivalSocket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = cls(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
        return sock

    def accept(self) -> tuple[socket.socket, object]:
        fd, addr = self._accept()  # type: ignore[attr-defined]
        conn = ArrivalSocket(self.family, self.type, self.proto, fileno=fd)
        if sys.platform.startswith("linux"):
            try:
                conn.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                conn.stamped = True
            except OSError:
                pass
        self.accepted[conn.fileno()] = conn
        return conn, addr

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if not self.stamped:
            data = super().recv(bufsize, flags)
            self._note(None, bool(data))
            return data
        data, ancdata, _flags, _addr = self.recvmsg(bufsize, _CMSG_SPACE, flags)
        self._note(ancdata, bool(data))
        return data

    def recv_into(self, buffer: object, nbytes: int = 0, flags: int = 0) -> int:
        view = memoryview(buffer)  # type: ignore[arg-type]
        if nbytes:
            view = view[:nbytes]
        if not self.stamped:
            n = super().recv_into(view, 0, flags)
            self._note(None, n > 0)
            return n
        n, ancdata, _flags, _addr = self.recvmsg_into([view], _CMSG_SPACE, flags)
        self._note(ancdata, n > 0)
        return n

    def _note(self, ancdata: list[tuple[int, int, bytes]] | None, got: bool) -> None:
        if not got or self.pending is not None:
            return
        for level, kind, data in ancdata or ():
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
                sec, nsec = _TIMESPEC.unpack_from(data)
                # the kernel's wall-clock stamp, moved onto the monotonic clock
                self.pending = sec + nsec / 1e9 - (time.time() - time.monotonic())
                return
        self.pending = time.monotonic()

    def take(self) -> float | None:
        """The arrival of the request just read, and forget it."""
        at, self.pending = self.pending, None
        return at


def arrival_middleware(listener: ArrivalSocket) -> Callable[..., Awaitable[web.StreamResponse]]:
    """aiohttp middleware: ``request[ARRIVED_AT]`` = when the request's first byte arrived."""

    @web.middleware
    async def stamp(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        conn = _connection(listener, request)
        at = conn.take() if conn is not None else None
        request[ARRIVED_AT] = at if at is not None else time.monotonic()
        try:
            return await handler(request)
        finally:
            if conn is not None:
                conn.take()  # bytes read while answering were this request's

    return stamp


def _connection(listener: ArrivalSocket, request: web.Request) -> ArrivalSocket | None:
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return None
    try:
        return listener.accepted.get(sock.fileno())
    except OSError:
        return None
