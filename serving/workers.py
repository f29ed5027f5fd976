"""A gunicorn sync worker that sheds load instead of letting the queue grow.

Sync workers answer one request at a time; the rest wait in the kernel's accept
queue. Under overload that queue — and so every client's latency — grows without
bound. This worker looks at the queue's depth (Linux reports it for a listening
socket in ``TCP_INFO``) whenever it takes a request: past ``DIGITS_MAX_QUEUE``
waiting connections it reads the request and answers ``503`` with ``Retry-After``
at once, without touching the model, so a flood costs each request microseconds
and the requests it does serve wait a bounded time.
"""

from __future__ import annotations

import json
import socket
import struct

from gunicorn.workers.sync import SyncWorker

from serving.settings import get_serve_settings

#: ``struct tcp_info``: eight one-byte fields, then ``tcpi_rto``, ``tcpi_ato``,
#: ``tcpi_snd_mss``, ``tcpi_rcv_mss``, ``tcpi_unacked`` (for a listening socket: the
#: connections waiting to be accepted) and ``tcpi_sacked`` (the backlog), all u32.
_TCP_INFO = struct.Struct("8B6I")
RETRY_AFTER_S = 1


def accept_queue_depth(listener) -> int | None:
    """Connections waiting in ``listener``'s accept queue, or None where unknown."""
    if not hasattr(socket, "TCP_INFO"):
        return None
    try:
        raw = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO.size)
    except OSError:
        return None
    if len(raw) < _TCP_INFO.size:
        return None
    return _TCP_INFO.unpack(raw)[12]


def overloaded_response(depth: int) -> bytes:
    body = json.dumps({"error": f"server overloaded ({depth} requests waiting); "
                                f"retry in {RETRY_AFTER_S} s"}).encode()
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: {RETRY_AFTER_S}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode() + body


class SheddingSyncWorker(SyncWorker):
    """gunicorn's sync worker plus a bounded accept queue (fast 503s beyond it)."""

    def init_process(self) -> None:
        self.max_queue = get_serve_settings().max_queue
        super().init_process()

    def handle_request(self, listener, req, client, addr) -> None:
        depth = accept_queue_depth(listener)
        if depth is not None and depth > self.max_queue:
            self.shed(req, client, depth)
            return
        super().handle_request(listener, req, client, addr)

    def shed(self, req, client, depth: int) -> None:
        """Read the request (closing on unread bytes would reset the connection), refuse it."""
        while req.body.read(65536):
            pass
        client.sendall(overloaded_response(depth))
        server = getattr(self.wsgi, "extensions", {}).get("digits")
        if server is not None:
            server.metrics.shed.inc()
