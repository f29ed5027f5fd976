"""The API's routes, one blueprint per API; shared behaviour lives in :mod:`serving.hooks`."""

from __future__ import annotations

from flask import Response, current_app, request

from serving import protocol
from serving.protocol import ApiError


def server():
    """The :class:`serving.app.Server` of the app answering this request."""
    from serving.app import server_of

    return server_of(current_app)


def json_response(body: object, status: int = 200) -> Response:
    return Response(protocol.dumps(body), status=status, mimetype="application/json")


def require_json() -> None:
    mimetype = request.mimetype
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise ApiError(415, f"Content-Type must be application/json, got "
                            f"{request.content_type or 'none'!r}")


def json_object() -> dict:
    """The request's body as a JSON object (fast for large pixel arrays)."""
    return protocol.as_object(protocol.loads(request.get_data(cache=False), array_key=None),
                              "the request")
