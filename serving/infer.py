"""``/v2/models/{name}[/versions/{version}]/infer``, answered in front of Flask.

This route is the server's hot path: every prediction a v2 client makes goes
through it, one image at a time for interactive clients. Through Flask a
single-image request spent more time in the framework (request context,
``LocalProxy`` lookups, URL matching, hooks, the ``Response`` object) than in
the model; as a plain WSGI callable wrapped around the Flask app
(``app.wsgi_app = InferRoute(...)``, Flask's middleware pattern) it costs a
fraction of that. Everything else the API serves stays in Flask.

What the route does is what every other route does, from the same pieces:
the request and its bytes are checked by :mod:`serving.protocol`, the model is
taken once from :class:`serving.app.Server`, errors are ``{"error": ...}``
with the same statuses, and the metrics, access log and ``X-Model-Version`` /
``X-Request-Id`` headers come from ``Server.account``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from serving import protocol
from serving.model import ModelNotReady
from serving.protocol import ApiError

if TYPE_CHECKING:
    from serving.app import Server

log = logging.getLogger(__name__)

#: The paths, and the route names metrics and access lines use for them (Flask's rule syntax).
PATH = re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")
ROUTE = "/v2/models/<name>/infer"
VERSIONED_ROUTE = "/v2/models/<name>/versions/<version>/infer"
ROUTES = (ROUTE, VERSIONED_ROUTE)
ALLOWED = "POST"
#: What ``Allow`` lists (RFC 9110 §10.2.1), on a 405 and in answer to OPTIONS.
ALLOW_HEADER = "OPTIONS, POST"

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass
class Outcome:
    """What a request came to: its status and body, and for the access line, who answered."""

    status: int = 200
    body: bytes = b""
    version: str | None = None
    batch: int | None = None


def _status_line(status: int) -> str:
    return f"{status} {HTTPStatus(status).phrase}"


class InferRoute:
    """WSGI middleware: the inference route itself, everything else to ``app``."""

    def __init__(self, app: WSGIApp, server: Server) -> None:
        self.app = app
        self.server = server
        self.max_body = server.settings.max_body_bytes

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        match = PATH.fullmatch(environ.get("PATH_INFO", ""))
        if match is None:
            return self.app(environ, start_response)
        started = time.perf_counter()
        self.server.model.start()
        method, version = environ["REQUEST_METHOD"], match["version"]
        headers: list[tuple[str, str]] = []
        outcome = Outcome()
        try:
            if method == ALLOWED:
                self._infer(environ, match["name"], version, headers, outcome)
            else:
                headers.append(("Allow", ALLOW_HEADER))
                if method != "OPTIONS":  # RFC 9110 §15.5.6
                    raise ApiError(405, f"method {method} not allowed on {environ['PATH_INFO']}")
        except ApiError as error:
            outcome.status, outcome.body = error.status, _error_body(error.message, headers)
        except ModelNotReady as error:
            outcome.status, outcome.body = 503, _error_body(str(error), headers)
        except Exception:
            log.exception("unhandled error on %s %s", method, environ["PATH_INFO"])
            outcome.status, outcome.body = 500, _error_body("internal server error", headers)
        headers.append(("Content-Length", str(len(outcome.body))))
        headers += self.server.account(
            route=VERSIONED_ROUTE if version is not None else ROUTE, method=method,
            path=environ["PATH_INFO"], status=outcome.status, started=started,
            version=outcome.version, batch=outcome.batch, remote=environ.get("REMOTE_ADDR"),
            bytes_in=_content_length(environ), request_id=environ.get("HTTP_X_REQUEST_ID"))
        start_response(_status_line(outcome.status), headers)
        return [outcome.body]

    def _infer(self, environ: dict[str, Any], name: str, version: str | None,
               headers: list[tuple[str, str]], outcome: Outcome) -> None:
        """Parse, predict, answer in JSON or in the binary form the client asked for."""
        server = self.server
        loaded = server.resolve(name, version)
        header, binary = self._body(environ)
        parsed = protocol.v2_request(protocol.loads(header, array_key="data"),
                                     max_batch=server.settings.max_batch, binary=binary)
        outcome.batch = len(parsed.images)
        prediction = server.predict(parsed.images, loaded)
        outcome.version = prediction.version
        answer, raw = protocol.v2_response(
            model_name=name, version=prediction.version,
            probabilities=prediction.probabilities, outputs=parsed.outputs,
            request_id=parsed.request_id)
        outcome.body = protocol.dumps(answer)
        if raw:
            headers += [("Content-Type", "application/octet-stream"),
                        (protocol.BINARY_HEADER, str(len(outcome.body)))]
            outcome.body += raw
        else:
            headers.append(("Content-Type", "application/json"))

    def _body(self, environ: dict[str, Any]) -> tuple[bytes, bytes]:
        """The request's JSON part and the binary tensor bytes after it.

        Clients decide the form by ``Inference-Header-Content-Length``, not by
        Content-Type: Triton's client sends none at all, others send
        ``application/octet-stream`` for the binary form.
        """
        body = self._read(environ)
        length = environ.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH")
        if length is not None:
            return protocol.split_binary(body, length)
        content_type = environ.get("CONTENT_TYPE", "")
        mimetype = content_type.split(";", 1)[0].strip().lower()
        if mimetype == "application/octet-stream":
            raise ApiError(400, f"a binary request needs the {protocol.BINARY_HEADER} header "
                                "(the length of its JSON part)")
        if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
            raise ApiError(415, f"send application/json, or the binary tensor form with "
                                f"{protocol.BINARY_HEADER}; got {content_type!r}")
        return body, b""

    def _read(self, environ: dict[str, Any]) -> bytes:
        """The whole body, refused past ``max_body_bytes`` (declared or, chunked, as read)."""
        declared = _content_length(environ)
        if declared is None and environ.get("CONTENT_LENGTH"):
            raise ApiError(400, f"invalid Content-Length {environ['CONTENT_LENGTH']!r}")
        if declared is not None and declared > self.max_body:
            raise ApiError(413, self.server.too_large())
        stream = environ["wsgi.input"]
        if declared is not None:
            return stream.read(declared)
        body = stream.read(self.max_body + 1)  # chunked: the server de-chunks for us
        if len(body) > self.max_body:
            raise ApiError(413, self.server.too_large())
        return body


def _content_length(environ: dict[str, Any]) -> int | None:
    """The declared body length; None when absent (chunked) or not a whole number."""
    raw = environ.get("CONTENT_LENGTH", "")
    return int(raw) if raw.isdigit() else None


def _error_body(message: str, headers: list[tuple[str, str]]) -> bytes:
    headers.append(("Content-Type", "application/json"))
    return protocol.dumps({"error": message})
