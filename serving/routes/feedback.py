"""``/feedback``: a user's label for a digit, stored as training data for the next run."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, Response, request

from components.feedback import FeedbackItem, FeedbackStore
from serving import protocol
from serving.protocol import ApiError
from serving.routes import json_object, json_response, server
from serving.routes.images import decode_uploads

log = logging.getLogger(__name__)

blueprint = Blueprint("feedback", __name__)


@blueprint.post("/feedback")
def feedback() -> Response:
    """Store one digit with the label a user gave it, for the next training run.

    JSON (``pixels``: the canonical image, ``label``, optional ``predicted``
    and ``model_version``) or the page's form (an ``image`` file plus the
    same fields). Each item is its own object in the registry's bucket,
    so concurrent posts never overwrite one another. Rate-limited per client
    (``DIGITS_FEEDBACK_RATE_LIMIT``).
    """
    srv = server()
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("image")
        if upload is None:
            raise ApiError(400, "the form needs an 'image' file field (the drawing)")
        image = decode_uploads([upload.read()], ["image"])
        fields: Mapping[str, Any] = {
            name: _form_int(name) for name in ("label", "predicted")
            if request.form.get(name, "") != ""}
        fields = {**fields, "model_version": request.form.get("model_version") or None}
        source = "page"
    elif request.mimetype == "application/json":
        body = json_object()
        if "pixels" not in body or "label" not in body:
            raise ApiError(400, "feedback needs 'pixels' (784 values or 28x28, 0..255) "
                                "and 'label' (0..9)")
        image = protocol.pixels_from(body["pixels"], "'pixels'", max_batch=1)
        fields = {name: body.get(name) for name in ("label", "predicted", "model_version")}
        source = "api"
    else:
        raise ApiError(415, "send feedback as application/json or multipart/form-data "
                            f"(got {request.content_type or 'no Content-Type'!r})")
    if "label" not in fields:
        raise ApiError(400, "feedback needs a 'label' (0..9)")
    try:
        item = FeedbackItem.create(image, fields["label"], predicted=fields.get("predicted"),
                                   model_version=fields.get("model_version"),
                                   source=source, address=request.remote_addr)
    except ValueError as error:
        raise ApiError(400, str(error)) from error
    try:
        key = FeedbackStore(srv.model.registry).add(item)
    except Exception as error:  # the store is down: say so, keep serving
        log.warning("feedback not stored: %s", error)
        raise ApiError(503, "feedback cannot be stored right now (registry unreachable); "
                            "try again later") from error
    agreed = {None: "unknown", True: "no", False: "yes"}[item.disagreed]
    srv.metrics.feedback.labels(agreed).inc()
    return json_response({"id": key.rsplit("/", 1)[1].removesuffix(".json"),
                          "stored": key, "sha256": item.sha256, "label": item.label,
                          "predicted": item.predicted, "agreed": agreed}, 201)


def _form_int(name: str) -> int:
    raw = request.form[name]
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, f"'{name}' must be a whole number 0..9, got {raw!r}") from None
