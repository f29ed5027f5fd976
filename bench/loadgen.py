"""A small closed-loop HTTP/1.1 load generator (asyncio on raw non-blocking sockets),
and its gRPC counterpart (:func:`run_grpc`).

Closed loop: ``concurrency`` connections each send a request, wait for the
answer, and send the next, for a fixed time (and at most a fixed count),
reconnecting when the server closes the connection. Raw sockets rather than
an HTTP library or asyncio streams because on a 2-core machine the client
competes with the server for CPU: this one costs a few tens of microseconds
per request, reconnects included, so it measures servers that keep
connections alive and servers that close them alike. Only 127.0.0.1 is ever
targeted.
"""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import dataclass, field

import numpy as np

LOCALHOST = "127.0.0.1"
CHUNK = 1 << 16


@dataclass
class Result:
    """Latencies (seconds) of the requests answered during the measured window."""

    latencies: list[float] = field(default_factory=list)
    #: Every answered request's latency, refusals (503) included.
    answered: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed: float = 0.0
    bodies: list[bytes] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def rps(self) -> float:
        return self.count / self.elapsed if self.elapsed else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")

    def record(self, status: int, latency: float, body: bytes, keep_body: bool) -> None:
        """One exchange in the measured window: ``status`` 0 when no answer came."""
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status:
            self.answered.append(latency)
        if status == 200:
            self.latencies.append(latency)
            if keep_body:
                self.bodies.append(body)
        else:
            self.errors += 1

    @property
    def done(self) -> int:
        """Exchanges recorded so far, answered or not."""
        return self.count + self.errors


def build_request(path: str, body: bytes, content_type: str = "application/json",
                  port: int = 80, headers: dict[str, str] | None = None) -> bytes:
    extra = "".join(f"{key}: {value}\r\n" for key, value in (headers or {}).items())
    head = (f"POST {path} HTTP/1.1\r\nHost: {LOCALHOST}:{port}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}\r\n")
    return head.encode() + body


class Connection:
    """One keep-alive connection; reopened transparently when the server closes it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, port: int) -> None:
        self.loop = loop
        self.port = port
        self.sock: socket.socket | None = None
        self.buffer = b""

    async def open(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await self.loop.sock_connect(sock, (LOCALHOST, self.port))
        self.sock, self.buffer = sock, b""

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    async def _more(self) -> None:
        data = await self.loop.sock_recv(self.sock, CHUNK)
        if not data:
            raise ConnectionResetError("server closed the connection")
        self.buffer += data

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        """Send one request, read one response (status, body)."""
        if self.sock is None:
            await self.open()
        await self.loop.sock_sendall(self.sock, request)
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            await self._more()
        head, self.buffer = self.buffer[:end].lower(), self.buffer[end + 4:]
        status = int(head[9:12])
        # At a line start: "inference-header-content-length:" must not match.
        index = head.find(b"\r\ncontent-length:")
        if index < 0:
            raise ConnectionError("response without Content-Length")
        line_end = head.find(b"\r\n", index + 2)
        length = int(head[index + 17:line_end if line_end >= 0 else len(head)])
        while len(self.buffer) < length:
            await self._more()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        if b"connection: close" in head or not head.startswith(b"http/1.1"):
            self.close()
        return status, body


async def _client(port: int, requests: list[bytes], offset: int, start: float, stop: float,
                  max_requests: int, result: Result, keep_bodies: bool) -> None:
    connection = Connection(asyncio.get_running_loop(), port)
    index = offset
    try:
        while time.perf_counter() < stop and result.done < max_requests:
            request = requests[index % len(requests)]
            index += 1
            sent = time.perf_counter()
            try:
                status, body = await connection.exchange(request)
            except OSError:
                connection.close()
                status, body = 0, b""
            if sent >= start:  # warm-up requests are not counted
                result.record(status, time.perf_counter() - sent, body, keep_bodies)
    finally:
        connection.close()


async def _drive(client, target, requests: list[bytes], concurrency: int, duration: float,
                 warmup: float, max_requests: int, keep_bodies: bool) -> Result:
    """``concurrency`` copies of ``client`` on ``target`` for ``warmup`` + ``duration`` s."""
    result = Result()
    begin = time.perf_counter()
    start, stop = begin + warmup, begin + warmup + duration
    await asyncio.gather(*(
        client(target, requests, i * 7, start, stop, max_requests, result, keep_bodies)
        for i in range(concurrency)))
    result.elapsed = min(time.perf_counter(), stop) - start
    return result


def run(port: int, requests: list[bytes], *, concurrency: int, duration: float = 3.0,
        warmup: float = 0.5, max_requests: int = 200_000, keep_bodies: bool = False) -> Result:
    """Drive ``127.0.0.1:port`` with pre-built raw requests; return what was measured.

    Latency is measured from sending the request to having the whole response,
    so a reconnect (when the server closed the previous connection) counts in it.
    """
    return asyncio.run(_drive(_client, port, requests, concurrency, duration, warmup,
                              max_requests, keep_bodies))


# --------------------------------------------------------------------------- gRPC

#: The Open Inference Protocol's inference call, as gRPC names it.
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"
#: gRPC status codes → the HTTP status the same refusal gets, for :attr:`Result.statuses`.
_GRPC_STATUS = {"OK": 200, "INVALID_ARGUMENT": 400, "NOT_FOUND": 404,
                "RESOURCE_EXHAUSTED": 413, "UNAVAILABLE": 503}


async def _grpc_client(port: int, requests: list[bytes], offset: int, start: float,
                       stop: float, max_requests: int, result: Result,
                       keep_bodies: bool) -> None:
    import grpc

    # A connection of its own per client, as the HTTP clients have: channels with the
    # same target and options would otherwise share one (and so reach one worker).
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1),
               ("grpc.max_send_message_length", -1)]
    async with grpc.aio.insecure_channel(f"{LOCALHOST}:{port}", options=options) as channel:
        await channel.channel_ready()
        # No serializers: the requests are serialized once, up front; answers stay bytes.
        infer = channel.unary_unary(GRPC_INFER)
        index = offset
        while time.perf_counter() < stop and result.done < max_requests:
            request = requests[index % len(requests)]
            index += 1
            sent = time.perf_counter()
            body = b""
            try:
                body = await infer(request)
                status = 200
            except grpc.aio.AioRpcError as error:
                status = _GRPC_STATUS.get(error.code().name, 0)
            if sent >= start:
                result.record(status, time.perf_counter() - sent, body, keep_bodies)


def run_grpc(port: int, requests: list[bytes], *, concurrency: int, duration: float = 3.0,
             warmup: float = 0.5, max_requests: int = 200_000,
             keep_bodies: bool = False) -> Result:
    """:func:`run` over gRPC: ``concurrency`` clients, each on a connection of its own,
    call ``ModelInfer`` on ``127.0.0.1:port`` with pre-serialized ``ModelInferRequest``
    bytes (grpc.aio, closed loop); refusals are counted under their HTTP status."""
    return asyncio.run(_drive(_grpc_client, port, requests, concurrency, duration, warmup,
                              max_requests, keep_bodies))


# --------------------------------------------------------------------------- hostile clients

#: How the slow clients behave, in turn: trickle a request's headers, trickle its body,
#: or connect and say nothing.
SLOW_KINDS = ("headers", "body", "idle")


@dataclass
class Hostile:
    """What a well-behaved client got while slow clients held connections."""

    slow_clients: int
    sent: int = 0
    latencies: list[float] = field(default_factory=list)

    @property
    def answered(self) -> int:
        return len(self.latencies)

    @property
    def share(self) -> float:
        return self.answered / self.sent if self.sent else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")


async def _slow_client(port: int, kind: str, interval: float, stop: float) -> None:
    """One client that holds a connection and sends a byte every ``interval`` seconds."""
    loop = asyncio.get_running_loop()
    head = f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: {LOCALHOST}\r\n".encode()
    # What is sent at once, then what is trickled a byte at a time (nothing: idle).
    prefix, trickle = {
        "headers": (b"", head + b"X-Slow: " + b"a" * 4096),
        "body": (head + b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n",
                 b" " * 100000),
        "idle": (b"", b""),
    }[kind]
    while time.monotonic() < stop:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (LOCALHOST, port))
            if prefix:
                await loop.sock_sendall(sock, prefix)
            index = 0
            while time.monotonic() < stop:
                if index < len(trickle):
                    await loop.sock_sendall(sock, trickle[index:index + 1])
                    index += 1
                await asyncio.sleep(interval)
        except OSError:  # the server closed it (a timeout): come back, as an attacker would
            await asyncio.sleep(0.1)
        finally:
            sock.close()


async def _good_client(port: int, requests: list[bytes], timeout: float, pause: float,
                       stop: float, result: Hostile) -> None:
    loop = asyncio.get_running_loop()
    while time.monotonic() < stop:
        for request in requests:
            connection = Connection(loop, port)
            result.sent += 1
            sent = time.perf_counter()
            try:
                status, _ = await asyncio.wait_for(connection.exchange(request), timeout)
                if status < 500:
                    result.latencies.append(time.perf_counter() - sent)
            except (OSError, TimeoutError):
                pass
            finally:
                connection.close()
            await asyncio.sleep(pause)


async def _hostile(port: int, requests: list[bytes], slow_clients: int, duration: float,
                   interval: float, timeout: float, pause: float) -> Hostile:
    result = Hostile(slow_clients)
    stop = time.monotonic() + duration + 1.0
    slow = [asyncio.create_task(_slow_client(port, SLOW_KINDS[i % len(SLOW_KINDS)],
                                             interval, stop))
            for i in range(slow_clients)]
    await asyncio.sleep(1.0)  # let them take their connections first
    await _good_client(port, requests, timeout, pause, stop, result)
    for task in slow:
        task.cancel()
    await asyncio.gather(*slow, return_exceptions=True)
    return result


def hostile(port: int, requests: list[bytes], *, slow_clients: int, duration: float = 10.0,
            interval: float = 2.0, timeout: float = 2.0, pause: float = 0.1) -> Hostile:
    """A well-behaved client's requests, each on a new connection, while ``slow_clients``
    connections trickle headers or a body a byte every ``interval`` s, or sit idle.

    A request counts as answered when a non-5xx answer arrives within ``timeout``.
    """
    return asyncio.run(_hostile(port, requests, slow_clients, duration, interval, timeout,
                                pause))


def get_request(path: str, port: int = 80) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {LOCALHOST}:{port}\r\n\r\n".encode()
