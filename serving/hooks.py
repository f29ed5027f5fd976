"""What every route gets, written once: limits, admission, errors, headers, accounting.

:func:`install` puts these on the Flask app as hooks and error handlers, so no
route (and no blueprint added later) can answer without them:

* **refusals from the transport** (:mod:`serving.front`): a body too large or
  too slow is answered 413 / 408 here, like any other error;
* **rate limits** per client on the routes that have one
  (:class:`serving.ratelimit.RateLimits`), counted before the request takes
  a work slot: ``429`` with ``Retry-After`` past the limit;
* **admission**: work (every POST) takes one of the worker's
  ``DIGITS_CONCURRENCY`` slots. A request that cannot get one before it has
  waited ``DIGITS_MAX_WAIT_MS`` since it arrived is answered ``503`` with
  ``Retry-After`` at once, without touching the model: under a flood stale
  requests drain in microseconds and what is served has waited a bounded
  time. Probes, metadata and the page are never shed — an orchestrator must
  not restart a busy but healthy server;
* **one error mapping**: every refusal is ``{"error": "..."}`` with its status;
  nothing unexpected escapes as anything but a logged 500;
* **security headers** on every answer (``nosniff``, a CSP that forbids
  framing and foreign scripts, no referrer);
* **accounting**: request counters, latency, the JSON access line and the
  ``X-Model-Version`` / ``X-Request-Id`` headers, for every answer, 4xx and
  503 included.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from serving.front import ARRIVED, QUEUED, REFUSED
from serving.model import ModelNotReady
from serving.protocol import ApiError
from serving.ratelimit import RateLimited
from serving.routes import json_response

log = logging.getLogger(__name__)

#: Seconds a shed client is told to wait before trying again.
RETRY_AFTER_S = 1
VERSION_HEADER = "X-Model-Version"
REQUEST_ID_HEADER = "X-Request-Id"
#: The page loads its own script and stylesheet and draws into a canvas; nothing
#: else may run, and no other site may frame it (clickjacking).
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data: blob:; "
                           "object-src 'none'; base-uri 'none'; form-action 'self'; "
                           "frame-ancestors 'none'")
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)


_CONVERTER = re.compile(r"<\w+:(\w+)>")


class Overloaded(Exception):
    """No work slot came free in time; the request is refused with 503 + Retry-After."""

    def __init__(self, waited_ms: float) -> None:
        super().__init__(f"server overloaded (the request waited {waited_ms:.0f} ms for a "
                         f"worker); retry in {RETRY_AFTER_S} s")


class Admission:
    """The worker's work slots, taken with a deadline counted from the request's arrival."""

    def __init__(self, slots: int, max_wait_ms: int) -> None:
        self._slots = threading.BoundedSemaphore(slots)
        self.max_wait_s = max_wait_ms / 1000

    def enter(self, arrived: float, *, queued: bool = False) -> None:
        """Take a slot, or raise :class:`Overloaded` once the request has waited too long.

        ``queued``: it already waited its turn behind others (the front's lane); past
        the deadline it is shed even if a slot is free now, or a backlog would be
        served in full, each request later than the last.
        """
        remaining = arrived + self.max_wait_s - time.monotonic()
        if (queued and remaining < 0) or not self._slots.acquire(timeout=max(0.0, remaining)):
            raise Overloaded((time.monotonic() - arrived) * 1000)

    def leave(self) -> None:
        self._slots.release()


@functools.cache
def route_label(rule: str) -> str:
    """A route as metrics and access lines name it: ``/v2/models/<name>/infer``."""
    return _CONVERTER.sub(r"<\1>", rule)


def error_response(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


def install(app: Flask, server) -> None:
    """Attach the hooks and error handlers to ``app`` (``server``: :class:`serving.app.Server`)."""
    admission = server.admission
    rate_limits = server.rate_limits

    # Each hook reads the request and ``g`` proxies once: every proxy access is a
    # context-variable lookup, and these run on every request.
    @app.before_request
    def _admit() -> None:
        req, state = request._get_current_object(), g._get_current_object()
        state.started = time.perf_counter()
        server.model.start()
        environ = req.environ
        refused = environ.get(REFUSED)
        if refused is not None:
            raise ApiError(*refused)
        state.rate_headers = rate_limits.hit(req.endpoint, req.remote_addr or "")
        if req.method == "POST":
            admission.enter(environ.get(ARRIVED, time.monotonic()),
                            queued=environ.get(QUEUED, False))
            state.admitted = True

    @app.teardown_request
    def _release(_error: BaseException | None) -> None:
        if g.pop("admitted", False):
            admission.leave()

    @app.after_request
    def _finish(response: Response) -> Response:
        req, state = request._get_current_object(), g._get_current_object()
        rule = req.url_rule
        headers = response.headers
        # Added, not set: no route sets these, and extending skips a search per header.
        headers.extend(SECURITY_HEADERS)
        headers.extend(state.get("rate_headers", ()))
        version = state.get("model_version")
        if version is not None:
            headers[VERSION_HEADER] = version
        request_id = req.headers.get(REQUEST_ID_HEADER)
        if request_id:
            headers[REQUEST_ID_HEADER] = request_id[:200]
        server.account(
            route=route_label(rule.rule) if rule is not None else "<unmatched>",
            method=req.method,
            path=req.path, status=response.status_code,
            started=state.get("started", time.perf_counter()), version=version,
            batch=state.get("batch"), remote=req.remote_addr,
            bytes_in=req.content_length, request_id=request_id)
        return response

    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> Response:
        return error_response(error.status, error.message)

    @app.errorhandler(ModelNotReady)
    def _not_ready(error: ModelNotReady) -> Response:
        return error_response(503, str(error))

    @app.errorhandler(Overloaded)
    def _overloaded(error: Overloaded) -> Response:
        server.metrics.shed.inc()
        response = error_response(503, str(error))
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response

    @app.errorhandler(RateLimited)
    def _rate_limited(error: RateLimited) -> Response:
        response = error_response(429, str(error))
        response.headers["Retry-After"] = str(error.retry_after_s)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        message = error.description or error.name
        if error.code == 404:
            message = f"no such endpoint: {request.method} {request.path}"
        elif error.code == 405:
            message = f"method {request.method} not allowed on {request.path}"
        elif error.code == 413:
            message = server.too_large()
        response = error_response(error.code or 500, message)
        for key, value in error.get_headers():  # e.g. Allow on a 405 (RFC 9110 §15.5.6)
            if key.lower() != "content-type":
                response.headers[key] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal server error")
