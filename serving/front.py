"""The transport in front of the Flask app: no client can hold a thread others need.

A WSGI server hands each connection to a thread (or a process) that reads the
request from the socket: a client that trickles its headers or body, or
connects and says nothing, keeps that thread for as long as it likes, and a
handful of them stop a server (gunicorn's sync workers say as much: they need
a buffering proxy in front). Here granian's event loop (Rust, one per worker
process) reads headers and bodies; this callable awaits the body as a
coroutine, so a slow client costs a coroutine and a socket, never a thread.
Only a request that is complete — headers and the whole body in memory — is
handed to a thread that runs the Flask app, with the body as a ``BytesIO``;
the answer comes back whole (the app never streams) and granian writes it.

Where a complete request runs (:meth:`Front.place`) is chosen for what it
costs and what may wait behind it:

* **on the event loop itself**: probes (``PROBES``), always, since they read a
  flag and must never wait behind work; and, while no thread of the worker is
  busy, reads and inference on a body of at most ``INLINE_MAX_BODY`` bytes (one
  image as JSON, a few in binary). No thread hop and no contention for the GIL,
  so a worker answers a stream of single images in order, as MLServer's single
  loop does (measured: ~2x the single-image throughput at 8 and 32 clients, and
  a lower p99, than with every request on a thread);
* **on the lane**, one thread: inference on larger bodies (batches), and any
  inference while the worker's threads are busy, one after another in arrival
  order, as the loop would run them — but off the loop, which keeps reading
  bodies and answering probes. A request that waited its turn there longer
  than ``DIGITS_MAX_WAIT_MS`` is shed when its turn comes, as one that waited
  that long for a work slot. While something runs on the loop nothing else
  of the worker moves: when batches of up to 256 KB ran there, a probe waited
  behind every one of them, 3-4 s behind 32 clients sending 300 digits each to
  the CNN (the test that guards it). On the pool's threads instead, 64-image
  batches at 32 clients had 2.6x the p99 and some were shed (``make bench``);
* **on the pool** (``DIGITS_THREADS``): everything else (image uploads,
  feedback, reads while the worker is busy), side by side.

It speaks RSGI, granian's own interface: measured here it costs about half
of what ASGI does per request (no message dicts, headers as a mapping, the
body read in Rust).

Limits on the transport are enforced here while reading, but never answered
here: a body over ``DIGITS_MAX_BODY_BYTES`` or slower than
``DIGITS_BODY_TIMEOUT_S`` is flagged in the WSGI environ (``digits.refused``)
and the app answers it like any other refusal, so every answer goes through
one error mapping, one access log and one set of counters
(:mod:`serving.hooks`). The arrival time (``digits.arrived``) lets the app
shed requests that waited too long for a work slot.

Per worker process, ``__rsgi_init__`` starts the model poller and the
worker's gRPC server (:mod:`serving.grpc_server`, same model) and moves the
objects alive after start-up out of the garbage collector's sight;
``__rsgi_del__`` stops them and marks the worker's metric files dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import os
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flask import Flask

from serving.metrics import multiprocess_dir

#: What a thread brings back: status, headers, body.
Answer = tuple[int, list[tuple[str, str]], bytes]

#: WSGI environ keys the front sets for the app.
ARRIVED = "digits.arrived"
REFUSED = "digits.refused"
#: Set when the request waited its turn behind another on the lane: that wait counts
#: toward ``DIGITS_MAX_WAIT_MS`` (:class:`serving.hooks.Admission`).
QUEUED = "digits.queued"
#: Headers WSGI names without the HTTP_ prefix.
_UNPREFIXED = {"content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}


class Front:
    """RSGI → WSGI: read each request completely, then run ``app`` on a thread."""

    def __init__(self, app: Flask) -> None:
        from serving.app import EXTENSION

        self.app = app
        self.server = app.extensions[EXTENSION]
        settings = self.server.settings
        self.max_body = settings.max_body_bytes
        self.body_timeout_s = settings.body_timeout_s
        self.pool = ThreadPoolExecutor(settings.threads, thread_name_prefix="digits-http")
        #: Inference off the loop, one request at a time, in arrival order.
        self.lane = ThreadPoolExecutor(1, thread_name_prefix="digits-lane")
        #: Requests on the lane or the pool now; while there are none, cheap ones run inline.
        self.pooled = 0
        #: Requests on the lane now, the one running included.
        self.laned = 0
        #: This worker's gRPC server (serving.grpc_server), answering from the same model.
        self.grpc: Any = None

    # ------------------------------------------------------------------ requests

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":
            return  # websockets are not served
        arrived = time.monotonic()
        body, refused = await self._read_body(scope, protocol)
        if body is None:
            return  # the client went away
        environ = self._environ(scope, body)
        environ[ARRIVED] = arrived
        if refused is not None:
            environ[REFUSED] = refused
        executor = self.place(scope, body)
        if executor is None:
            status, headers, payload = self._call(environ)
        else:
            lane = executor is self.lane
            if lane and self.laned:
                environ[QUEUED] = True
            self.pooled += 1
            self.laned += lane
            try:
                loop = asyncio.get_running_loop()
                status, headers, payload = await loop.run_in_executor(executor, self._call,
                                                                      environ)
            finally:
                self.pooled -= 1
                self.laned -= lane
        if refused is not None:  # unread bytes may still arrive: this connection ends here
            headers.append(("connection", "close"))
        protocol.response_bytes(status, headers, payload)

    def place(self, scope: Any, body: bytes) -> ThreadPoolExecutor | None:
        """Where a complete request runs: ``None`` for the event loop, else the lane or
        the pool (see the module's docstring)."""
        idle = self.pooled == 0
        if scope.method == "GET":
            return None if idle or scope.path in PROBES else self.pool
        if not _inference(scope):
            return self.pool
        return None if idle and len(body) <= INLINE_MAX_BODY else self.lane

    async def _read_body(self, scope: Any, protocol: Any
                         ) -> tuple[bytes | None, tuple[int, str] | None]:
        """The whole body, or what was read and why the rest was refused.

        ``(None, None)`` when the client disconnected before finishing.
        """
        declared = scope.headers.get("content-length")
        if declared is None and "transfer-encoding" not in scope.headers:
            return b"", None  # no body (RFC 9112 §6.3): a GET, a probe
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            return b"", (413, self.server.too_large())
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout_s):
                if declared is not None and declared.isdigit():
                    # A length within the limit: granian reads it whole, in Rust (~0.1 ms
                    # less per request than taking it chunk by chunk).
                    return await protocol(), None
                async for chunk in protocol:  # chunked: counted as it arrives
                    size += len(chunk)
                    if size > self.max_body:
                        return b"", (413, self.server.too_large())
                    chunks.append(chunk)
        except TimeoutError:
            return b"", (408, f"the request body did not arrive within "
                              f"{self.body_timeout_s:g} s (DIGITS_BODY_TIMEOUT_S)")
        except Exception:  # granian's RSGIProtocolClosed: the client is gone
            return None, None
        return b"".join(chunks), None

    @staticmethod
    def _environ(scope: Any, body: bytes) -> dict[str, Any]:
        """The WSGI environ (PEP 3333) of a complete request."""
        host, _, port = scope.server.rpartition(":")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": scope.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": scope.path.encode().decode("latin-1"),
            "QUERY_STRING": scope.query_string,
            "SERVER_NAME": host,
            "SERVER_PORT": port,
            "SERVER_PROTOCOL": f"HTTP/{scope.http_version}",
            "REMOTE_ADDR": scope.client.rpartition(":")[0],
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": scope.scheme,
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        for name, value in scope.headers.items():
            key = _UNPREFIXED.get(name) or "HTTP_" + name.upper().replace("-", "_")
            environ[key] = f"{environ[key]},{value}" if key in environ else value
        # The body is whole: say how long it is, whatever framing the client used.
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        return environ

    def _call(self, environ: dict[str, Any]) -> Answer:
        """Run the WSGI app on this thread and collect its whole answer."""
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Callable[[bytes], None]:
            started[:] = [int(status[:3]), list(headers)]
            return _no_write

        result: Iterable[bytes] = self.app(environ, start_response)
        try:
            payload = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, headers = started
        return status, headers, payload

    # ------------------------------------------------------------------ worker life

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.server.model.start()  # begin loading the production model now
        if self.server.settings.grpc_port:
            from serving import grpc_server  # imports grpc: only here, after the fork

            self.grpc = grpc_server.start(self.server)
        gc.collect()
        gc.freeze()  # start-up objects leave the collector's scans: fewer long pauses

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.grpc is not None:
            from serving import grpc_server

            grpc_server.stop(self.grpc)
        self.server.model.stop()
        for executor in (self.lane, self.pool):
            executor.shutdown(wait=False, cancel_futures=True)
        if multiprocess_dir():
            from prometheus_client import multiprocess

            with contextlib.suppress(OSError):
                multiprocess.mark_process_dead(os.getpid())


#: Inference bodies up to this size may be answered on the event loop: one image as
#: JSON (at most ~3.5 KB) or up to ten in binary, a few milliseconds at most even
#: for the CNN. Whatever runs there delays every request of the worker by its cost.
INLINE_MAX_BODY = 8 * 1024
#: The orchestrator's probes: answered on the loop even while every thread is busy.
PROBES = frozenset({"/v2/health/live", "/v2/health/ready"})


def _inference(scope: Any) -> bool:
    """Inference on the models' APIs: bounded work, no image decoding, no store write."""
    return scope.method == "POST" and scope.path.startswith(("/v2/models/", "/v1/models/"))


def _no_write(_data: bytes) -> None:
    raise RuntimeError("the app must return its body, not write() it")


def create_front() -> Front:
    """The RSGI app granian runs in each worker (``factory=True``): a fresh Flask app."""
    from serving.app import create_app

    return Front(create_app())
