"""A gunicorn sync worker that sheds load instead of letting the queue grow.

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

import json
import socket
import struct

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
    """gunicorn's sync worker plus a bounded wait (fast 503s for requests past it)."""

    def init_process(self) -> None:
        self.max_wait_ms = get_serve_settings().max_wait_ms
        super().init_process()

    def handle_request(self, listener, req, client, addr) -> None:
        # Only work is shed (POST: predictions, feedback); probes, metadata and
        # /metrics are cheap and must keep answering under load, or an orchestrator
        # would restart a busy server.
        if req.method == "POST":
            waited = waited_ms(client)
            if waited is not None and waited > self.max_wait_ms:
                self.shed(req, client, waited)
                return
        super().handle_request(listener, req, client, addr)

    def shed(self, req, client, waited: int) -> None:
        """Read the request (closing on unread bytes would reset the connection), refuse it."""
        while req.body.read(65536):
            pass
        client.sendall(overloaded_response(waited))
        server = getattr(self.wsgi, "extensions", {}).get("digits")
        if server is not None:
            server.metrics.shed.inc()
