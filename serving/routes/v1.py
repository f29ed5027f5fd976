"""The TF-Serving / KServe v1 API: ``{"instances": [...]}`` in, ``{"predictions": ...}`` out."""

from __future__ import annotations

from flask import Blueprint, Response

from serving import protocol
from serving.protocol import ApiError
from serving.routes import json_object, json_response, require_json, server

blueprint = Blueprint("v1", __name__, url_prefix="/v1")


@blueprint.get("/models/<model:name>")
def status(name: str) -> Response:
    srv = server()
    srv.check_name(name)
    is_ready = srv.model.ready
    return json_response({"name": name, "ready": is_ready}, 200 if is_ready else 503)


@blueprint.post("/models/<model:name>:predict")
def predict(name: str) -> Response:
    srv = server()
    loaded = srv.resolve(name)
    require_json()
    body = json_object()
    if "instances" not in body:
        raise ApiError(400, "the request needs 'instances': a list of images, each "
                            "784 pixels or 28 rows of 28")
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise ApiError(400, "'instances' must be a non-empty list of images")
    images = protocol.pixels_from(instances, "'instances'", max_batch=srv.settings.max_batch)
    prediction = srv.predict(images, loaded)
    return json_response({"predictions": protocol.predictions(prediction.probabilities),
                          "model_name": name, "model_version": prediction.version})
