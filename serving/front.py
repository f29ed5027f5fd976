"""The transport in front of the Flask app: no client can hold a thread others need.

A WSGI server hands each connection to a thread (or a process) that reads the
request from the socket: a client that trickles its headers or body, or
connects and says nothing, keeps that thread for as long as it likes, and a
handful of them stop a server (gunicorn's sync workers say as much: they need
a buffering proxy in front). Here granian's event loop (Rust, one per worker
process) reads headers, and this ASGI callable reads the body as a coroutine,
so a slow client costs a coroutine and a socket, never a thread. Only a
request that is complete — headers and the whole body in memory — is handed to
a thread that runs the Flask app, with the body as a ``BytesIO``; the answer
comes back whole (the app never streams) and is written by the event loop.

Limits on the transport are enforced here while reading, but never answered
here: a body over ``DIGITS_MAX_BODY_BYTES`` or slower than
``DIGITS_BODY_TIMEOUT_S`` is flagged in the WSGI environ (``digits.refused``)
and the app answers it like any other refusal, so every answer goes through
one error mapping, one access log and one set of counters
(:mod:`serving.hooks`). The arrival time (``digits.arrived``) lets the app
shed requests that waited too long for a thread.

The ASGI lifespan runs per worker process: it starts the model poller and
freezes the objects alive after start-up out of the garbage collector's sight;
at shutdown the worker's metric files are marked dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from a2wsgi.wsgi import build_environ
from flask import Flask

from serving.metrics import multiprocess_dir

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
#: What a thread brings back: status, headers (ASGI form), body.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]

#: WSGI environ keys the front sets for the app.
ARRIVED = "digits.arrived"
REFUSED = "digits.refused"


class Front:
    """ASGI → WSGI: buffer each request completely, then run ``app`` on a thread."""

    def __init__(self, app: Flask) -> None:
        from serving.app import EXTENSION

        self.app = app
        self.server = app.extensions[EXTENSION]
        settings = self.server.settings
        self.max_body = settings.max_body_bytes
        self.body_timeout_s = settings.body_timeout_s
        self.pool = ThreadPoolExecutor(settings.threads, thread_name_prefix="digits-http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        # websockets: not served; returning closes the connection.

    # ------------------------------------------------------------------ requests

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        arrived = time.monotonic()
        body, refused = await self._read_body(scope, receive)
        if body is None:
            return  # the client went away
        environ = build_environ(scope, io.BytesIO(body))
        # The body is whole: say how long it is, whatever framing the client used.
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        environ[ARRIVED] = arrived
        if refused is not None:
            environ[REFUSED] = refused
        loop = asyncio.get_running_loop()
        status, headers, payload = await loop.run_in_executor(self.pool, self._call, environ)
        if refused is not None:  # unread bytes may still arrive: this connection ends here
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _read_body(self, scope: Scope, receive: Receive
                         ) -> tuple[bytes | None, tuple[int, str] | None]:
        """The whole body, or as much as was read and why the rest was refused.

        ``(None, None)`` when the client disconnected before finishing.
        """
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_body:
            return b"", (413, self.server.too_large())
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None, None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_body:
                        return b"", (413, self.server.too_large())
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks), None
        except TimeoutError:
            return b"", (408, f"the request body did not arrive within "
                              f"{self.body_timeout_s:g} s (DIGITS_BODY_TIMEOUT_S)")

    def _call(self, environ: dict[str, Any]) -> Answer:
        """Run the WSGI app on this thread and collect its whole answer."""
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]],
                           exc_info: Any = None) -> Callable[[bytes], None]:
            started[:] = [int(status[:3]), [(name.lower().encode("latin-1"),
                                             value.encode("latin-1"))
                                            for name, value in headers]]
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

    # ------------------------------------------------------------------ lifespan

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.server.model.start()  # begin loading the production model now
                gc.collect()
                gc.freeze()  # start-up objects leave the collector's scans: fewer long pauses
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.server.model.stop()
                self.pool.shutdown(wait=False, cancel_futures=True)
                if multiprocess_dir():
                    from prometheus_client import multiprocess

                    with contextlib.suppress(OSError):
                        multiprocess.mark_process_dead(os.getpid())
                await send({"type": "lifespan.shutdown.complete"})
                return


def _no_write(_data: bytes) -> None:
    raise RuntimeError("the app must return its body, not write() it")


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def create_front() -> Front:
    """The ASGI app granian runs in each worker (``factory=True``): a fresh Flask app."""
    from serving.app import create_app

    return Front(create_app())
