"""The Open Inference Protocol (KServe v2, Triton): health, metadata, inference."""

from __future__ import annotations

from flask import Blueprint, Response, request

from serving import protocol
from serving.app import SERVER_NAME, package_version
from serving.protocol import ApiError
from serving.routes import json_response, server

blueprint = Blueprint("v2", __name__, url_prefix="/v2")


@blueprint.get("")
def server_metadata() -> Response:
    return json_response({"name": SERVER_NAME, "version": package_version(),
                          "extensions": [protocol.BINARY_EXTENSION]})


@blueprint.get("/health/live")
def live() -> Response:
    return json_response({"live": True})


@blueprint.get("/health/ready")
def ready() -> Response:
    is_ready = server().model.ready
    return json_response({"ready": is_ready}, 200 if is_ready else 503)


@blueprint.get("/models/<model:name>")
@blueprint.get("/models/<model:name>/versions/<version>")
def model_metadata(name: str, version: str | None = None) -> Response:
    srv = server()
    srv.check_name(name)
    loaded = srv.model.current if version is None else srv.resolve(name, version)
    return json_response(srv.metadata(loaded))


@blueprint.get("/models/<model:name>/ready")
@blueprint.get("/models/<model:name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None) -> Response:
    srv = server()
    srv.check_name(name)
    loaded = srv.model.current
    is_ready = loaded is not None and version in (None, loaded.version)
    return json_response({"name": name, "ready": is_ready}, 200 if is_ready else 503)


@blueprint.post("/models/<model:name>/infer")
@blueprint.post("/models/<model:name>/versions/<version>/infer")
def infer(name: str, version: str | None = None) -> Response:
    """Parse, predict, answer in JSON or in the binary form the client asked for."""
    srv = server()
    loaded = srv.resolve(name, version)
    header, binary = _body()
    parsed = protocol.v2_request(protocol.loads(header, array_key="data"),
                                 max_batch=srv.settings.max_batch, binary=binary)
    prediction = srv.predict(parsed.images, loaded)
    answer, raw = protocol.v2_response(
        model_name=name, version=prediction.version, probabilities=prediction.probabilities,
        outputs=parsed.outputs, request_id=parsed.request_id)
    body = protocol.dumps(answer)
    if not raw:
        return Response(body, mimetype="application/json")
    response = Response(body + raw, mimetype="application/octet-stream")
    response.headers[protocol.BINARY_HEADER] = str(len(body))
    return response


def _body() -> tuple[bytes, bytes]:
    """The request's JSON part and the binary tensor bytes after it.

    Clients decide the form by ``Inference-Header-Content-Length``, not by
    Content-Type: Triton's client sends none at all, others send
    ``application/octet-stream`` for the binary form.
    """
    body = request.get_data(cache=False)
    length = request.headers.get(protocol.BINARY_HEADER)
    if length is not None:
        return protocol.split_binary(body, length)
    content_type = request.content_type or ""
    mimetype = request.mimetype
    if mimetype == "application/octet-stream":
        raise ApiError(400, f"a binary request needs the {protocol.BINARY_HEADER} header "
                            "(the length of its JSON part)")
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise ApiError(415, f"send application/json, or the binary tensor form with "
                            f"{protocol.BINARY_HEADER}; got {content_type!r}")
    return body, b""
