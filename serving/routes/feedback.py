"""``/feedback``: a user's label for a digit, stored as training data for the next run.

Feedback becomes training data, so this is the one route that must not be an
open door:

* **no cross-site posts**: only ``application/json`` is accepted (415 for
  anything else). An HTML form on another site can send only form encodings
  and ``text/plain``, and a cross-origin ``fetch`` of JSON (or with our
  ``X-Digits-Client`` header) needs a CORS preflight this server never grants.
  A browser request whose ``Origin`` is not allowed (``DIGITS_ALLOWED_ORIGINS``,
  by default the server's own) is refused with 403 all the same;
* **who may post**: the drawing page (an allowed ``Origin`` and
  ``X-Digits-Client: page``) always may; anything else is an API client, which
  must send ``Authorization: Bearer <DIGITS_FEEDBACK_TOKEN>`` when that is set
  (401 otherwise). The item records which it was (``source``);
* **no addresses kept**: the item stores a keyed hash of the client's address
  (:func:`components.feedback.client_id`), enough for the training merge to cap
  what one client may supply, not enough to recover the address.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import re
from typing import Any

import numpy as np
from flask import Blueprint, Response, request
from werkzeug.datastructures import WWWAuthenticate
from werkzeug.exceptions import Unauthorized

from components.feedback import FeedbackItem, FeedbackStore, address_key, client_id
from serving import protocol
from serving.protocol import ApiError
from serving.routes import json_object, json_response, server
from serving.routes.images import decode_uploads
from serving.settings import ServeSettings, normalize_origin

log = logging.getLogger(__name__)

blueprint = Blueprint("feedback", __name__)

#: The header the drawing page sends with its posts (a custom header: no other site's
#: page can add it to a request without a CORS preflight).
CLIENT_HEADER = "X-Digits-Client"
PAGE_CLIENT = "page"
#: What ``image`` may hold: a PNG or JPEG data URL (what ``canvas.toDataURL`` makes).
_DATA_URL = re.compile(r"data:image/(?:png|jpeg);base64,", re.IGNORECASE)


@blueprint.post("/feedback")
def feedback() -> Response:
    """Store one digit with the label a user gave it, for the next training run.

    JSON only: ``label`` with either ``pixels`` (the canonical image; API
    clients) or ``image`` (a base64 PNG/JPEG data URL, decoded like /predict's
    uploads; the page's drawing), plus optional ``predicted`` and
    ``model_version``. Each item is its own object in the registry's bucket,
    so concurrent posts never overwrite one another. Rate-limited per client
    (``DIGITS_FEEDBACK_RATE_LIMIT``).
    """
    srv = server()
    settings = srv.settings
    if request.mimetype != "application/json":
        raise ApiError(415, "send feedback as application/json (forms are refused: any web "
                            "page could make its visitors' browsers post one); got "
                            f"{request.content_type or 'no Content-Type'!r}")
    source = _source(settings)
    body = json_object()
    if "label" not in body or ("pixels" in body) == ("image" in body):
        raise ApiError(400, "feedback needs 'label' (0..9) and either 'pixels' (784 values "
                            "or 28x28, 0..255) or 'image' (a PNG data URL)")
    image = (_data_url_image(body["image"]) if "image" in body
             else protocol.pixels_from(body["pixels"], "'pixels'", max_batch=1))
    key = address_key(settings.feedback_address_key, settings.s3_secret_key)
    if key is None:
        raise ApiError(503, "feedback cannot be stored: no registry is configured")
    try:
        item = FeedbackItem.create(image, body["label"], predicted=body.get("predicted"),
                                   model_version=body.get("model_version"), source=source,
                                   client=client_id(request.remote_addr or "unknown", key))
    except ValueError as error:
        raise ApiError(400, str(error)) from error
    try:
        stored = FeedbackStore(srv.model.registry, legacy_key=key).add(item)
    except Exception as error:  # the store is down: say so, keep serving
        log.warning("feedback not stored: %s", error)
        raise ApiError(503, "feedback cannot be stored right now (registry unreachable); "
                            "try again later") from error
    agreed = {None: "unknown", True: "no", False: "yes"}[item.disagreed]
    srv.metrics.feedback.labels(agreed).inc()
    return json_response({"id": stored.rsplit("/", 1)[1].removesuffix(".json"),
                          "stored": stored, "sha256": item.sha256, "label": item.label,
                          "predicted": item.predicted, "agreed": agreed, "source": source}, 201)


def own_origin() -> str:
    """The origin this request was addressed to: its scheme and ``Host``."""
    return normalize_origin(f"{request.scheme}://{request.host}")


def _source(settings: ServeSettings) -> str:
    """``page`` or ``api``, or refuse: 403 for a foreign browser page, 401 without the token.

    A browser always sends ``Origin`` on a POST; a request without one is a
    program, not a page a visitor happens to have open.
    """
    origin = request.headers.get("Origin")
    allowed = False
    if origin is not None:
        try:
            allowed = normalize_origin(origin) in (settings.allowed_origins or (own_origin(),))
        except ValueError:  # "null" (sandboxed frames, file: pages) or garbage
            allowed = False
        if not allowed:
            raise ApiError(403, f"feedback from a page at {origin[:100]!r} is refused: only "
                                "this server's own page may post it from a browser "
                                "(DIGITS_ALLOWED_ORIGINS)")
    if allowed and request.headers.get(CLIENT_HEADER) == PAGE_CLIENT:
        return "page"
    token = settings.feedback_token
    if token is not None and token.get_secret_value():
        _authenticate(token.get_secret_value())
    return "api"


def _authenticate(token: str) -> None:
    """Require ``Authorization: Bearer <token>``, compared in constant time."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    challenge = WWWAuthenticate("bearer", {"realm": "digits feedback"})
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("feedback from an API client needs 'Authorization: Bearer <token>' "
                           "(DIGITS_FEEDBACK_TOKEN)", www_authenticate=challenge)
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        challenge.parameters["error"] = "invalid_token"
        raise Unauthorized("the feedback token is not the one this server expects",
                           www_authenticate=challenge)


def _data_url_image(value: Any) -> np.ndarray:
    """The page's drawing: a base64 PNG/JPEG data URL → the canonical 28×28 image."""
    if not isinstance(value, str) or not _DATA_URL.match(value):
        raise ApiError(400, "'image' must be a PNG or JPEG data URL "
                            "(data:image/png;base64,...)")
    try:
        blob = base64.b64decode(value[value.index(",") + 1:], validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "'image' is not valid base64") from None
    return decode_uploads([blob], ["image"])
