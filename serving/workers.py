"""A gunicorn sync worker that sheds load instead of letting the queue grow,
and keeps a light client's connection open.

Sync workers answer one request at a time; the rest wait in the kernel's accept
queue. Under overload that queue — and so every client's latency — grows without
bound. This worker asks the kernel how long each request it takes has already
waited (``TCP_INFO``'s time since the connection last received data): past
``DIGITS_MAX_WAIT_MS`` it reads the request and answers ``503`` with
``Retry-After`` at once, without touching the model. A refusal costs
microseconds, so the queue drains of stale requests quickly, the worker keeps
serving at full speed, and what it serves has waited a bounded time.

Bounding the *wait* rather than the queue's length matters under a flood: clients
that retry at once keep any queue full, and a length limit would then refuse
nearly everything.
"""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

from gunicorn import http, util
from gunicorn.http import wsgi
from gunicorn.workers.sync import SyncWorker

from serving.settings import get_serve_settings

#: ``struct tcp_info``: eight one-byte fields, then u32s: ``tcpi_rto``, ``ato``,
#: ``snd_mss``, ``rcv_mss``, ``unacked`` (for a listening socket: the connections
#: waiting to be accepted), ``sacked``, ``lost``, ``retrans``, ``fackets``,
#: ``last_data_sent``, ``last_ack_sent``, ``last_data_recv`` (ms), ...
_TCP_INFO = struct.Struct("8B12I")
_UNACKED, _LAST_DATA_RECV = 12, 19
RETRY_AFTER_S = 1


def _tcp_info(sock) -> tuple | None:
    if not hasattr(socket, "TCP_INFO"):
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO.size)
    except OSError:
        return None
    return _TCP_INFO.unpack(raw) if len(raw) >= _TCP_INFO.size else None


def accept_queue_depth(listener) -> int | None:
    """Connections waiting in ``listener``'s accept queue, or None where unknown."""
    info = _tcp_info(listener)
    return None if info is None else info[_UNACKED]


def waited_ms(client) -> int | None:
    """Milliseconds since ``client``'s request bytes arrived, or None where unknown."""
    info = _tcp_info(client)
    return None if info is None else info[_LAST_DATA_RECV]


def overloaded_response(waited: int) -> bytes:
    body = json.dumps({"error": f"server overloaded (the request waited {waited} ms for "
                                f"a worker); retry in {RETRY_AFTER_S} s"}).encode()
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: {RETRY_AFTER_S}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode() + body


class SheddingSyncWorker(SyncWorker):
    """gunicorn's sync worker, plus a bounded wait and keep-alive while nobody waits.

    **Bounded wait**: a request that waited past ``DIGITS_MAX_WAIT_MS`` gets a
    fast 503 (see the module's docstring).

    **Keep-alive when idle**: gunicorn's sync worker closes every connection
    after one response, so a client sending one image at a time pays a new
    TCP connection each time (connect, accept, every worker woken, close) —
    about a fifth of a single-image request. This worker keeps *one*
    connection open between requests (``keepalive`` seconds, gunicorn's
    setting) when no other connection is waiting in the accept queue at the
    moment it answers. Under load the queue is never empty, so every answer
    closes its connection and the kernel keeps spreading requests over the
    workers, exactly as before; a light client keeps its connection. While it
    holds a connection the worker still accepts new ones (answering them and
    closing), so no client waits for an idle one to time out.
    """

    #: Connections a worker keeps open between requests. One: a second would wait
    #: behind the first whenever both send at once, while another worker sits idle.
    MAX_KEPT = 1

    def init_process(self) -> None:
        self.max_wait_ms = get_serve_settings().max_wait_ms
        self.kept: dict[socket.socket, Kept] = {}
        super().init_process()

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        if len(self.sockets) != 1 or self.cfg.keepalive <= 0:
            super().run()  # several listeners or keep-alive off: gunicorn's own loop
            return
        listener = self.sockets[0]
        listener.setblocking(False)
        try:
            while self.alive:
                self.notify()
                for ready in self._wait(listener):
                    if ready is listener:
                        self._accept(listener)
                    elif ready in self.kept:
                        self._serve(listener, self.kept.pop(ready))
                self._expire()
                if not self.is_parent_alive():
                    return
        finally:
            for kept in list(self.kept.values()):
                util.close(kept.sock)
            self.kept.clear()

    def _wait(self, listener: socket.socket) -> list:
        deadline = min((kept.until for kept in self.kept.values()), default=None)
        timeout = max(0.0, min(self.timeout or 0.5,
                               (deadline - time.monotonic()) if deadline else 1e9))
        try:
            readable, _, _ = select.select([listener, self.PIPE[0], *self.kept], [], [], timeout)
        except OSError as error:
            if error.errno in (errno.EINTR, errno.EBADF):
                return []
            raise
        if self.PIPE[0] in readable:
            os.read(self.PIPE[0], 1)
        # Connections already held first: their clients are mid-conversation.
        return sorted((r for r in readable if r is not self.PIPE[0]),
                      key=lambda r: r is listener)

    def _accept(self, listener: socket.socket) -> None:
        try:
            client, addr = listener.accept()
        except OSError as error:  # another worker took it
            if error.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        client.setblocking(True)
        util.close_on_exec(client)
        self._serve(listener, Kept(client, addr, http.get_parser(self.cfg, client, addr)))

    def _expire(self) -> None:
        now = time.monotonic()
        for sock, kept in list(self.kept.items()):
            if kept.until <= now:
                del self.kept[sock]
                util.close(sock)

    # ------------------------------------------------------------------ one request

    def _serve(self, listener: socket.socket, conn: Kept) -> None:
        """Answer the next request on ``conn``; keep the connection or close it."""
        keep = False
        req = None
        try:
            req = next(conn.parser)
            if self._shed(req, conn.sock):
                return
            keep = self._handle(listener, req, conn, keep=self._may_keep(listener, req))
        except (StopIteration, http.errors.NoMoreData):
            pass  # the client closed the connection
        except OSError as error:
            if error.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
        except BaseException as error:  # as gunicorn's own handle(): it answers 400/500
            self.handle_error(req, conn.sock, conn.addr, error)
        finally:
            if keep:
                conn.until = time.monotonic() + self.cfg.keepalive
                self.kept[conn.sock] = conn
            else:
                util.close_graceful(conn.sock)

    def _may_keep(self, listener: socket.socket, req) -> bool:
        return (self.alive and len(self.kept) < self.MAX_KEPT and not req.should_close()
                and accept_queue_depth(listener) == 0)

    def _handle(self, listener: socket.socket, req, conn: Kept, *, keep: bool) -> bool:
        """Run the app for ``req``; True if the connection may serve another request."""
        self.cfg.pre_request(self, req)
        resp, environ = wsgi.create(req, conn.sock, conn.addr, listener.getsockname(), self.cfg)
        self.nr += 1
        if self.nr >= self.max_requests:
            self.log.info("Autorestarting worker after current request.")
            self.alive = False
        if not (keep and self.alive):
            resp.force_close()
        try:
            body = self.wsgi(environ, resp.start_response)
            try:
                for chunk in body:
                    resp.write(chunk)
                resp.close()
            finally:
                if hasattr(body, "close"):
                    body.close()
        finally:
            self.cfg.post_request(self, req, environ, resp)
        return not resp.should_close()

    # ------------------------------------------------------------------ shedding

    def handle_request(self, listener, req, client, addr) -> None:
        """gunicorn's own loop (keep-alive off): shed, or answer and close."""
        if not self._shed(req, client):
            super().handle_request(listener, req, client, addr)

    def _shed(self, req, client) -> bool:
        """Refuse ``req`` with a fast 503 if it waited too long; True if it was refused.

        Only work is shed (POST: predictions, feedback); probes, metadata and
        /metrics are cheap and must keep answering under load, or an
        orchestrator would restart a busy server.
        """
        if req.method != "POST":
            return False
        waited = waited_ms(client)
        if waited is None or waited <= self.max_wait_ms:
            return False
        # Read the request (closing on unread bytes would reset the connection), refuse it.
        while req.body.read(65536):
            pass
        client.sendall(overloaded_response(waited))
        server = getattr(self.wsgi, "extensions", {}).get("digits")
        if server is not None:
            server.metrics.shed.inc()
        return True


@dataclass
class Kept:
    """A client connection and its request parser, between requests."""

    sock: socket.socket
    addr: Any
    parser: Any
    until: float = 0.0
