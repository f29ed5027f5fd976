"""The OpenAPI 3.1 description of the server, built in code and served at ``/openapi.json``.

Kept next to the routes and checked by a test against ``app.url_map``, so an
endpoint cannot be added without being documented.

The request schemas state every rule the server enforces that JSON Schema
(2020-12, OpenAPI 3.1's) can: pixels are whole numbers 0..255; an image is 784
of them or 28 rows of 28, a batch 1..``DIGITS_MAX_BATCH`` images; a v2 tensor's
shape is one of ``[784]``, ``[28, 28]``, ``[N, 784]``, ``[N, 28, 28]``; feedback
is one image and a label 0..9. Tests post crafted bodies to check that what the
server refuses is schema-invalid and what the schema allows is accepted. Beyond
a schema: that a tensor's data holds as many values as its shape, the binary
bytes' length, whether an upload is a decodable image, and JSON Schema's view
that ``7.0`` is an integer (the server wants ``7`` for a label or a shape).
"""

from __future__ import annotations

from typing import Any

from components.stem import IMAGE_SIDE, MAX_PIXEL, NUM_CLASSES, NUM_PIXELS
from serving.protocol import OUTPUT_ALIASES, OUTPUTS, WIRE_TYPES

#: The datatypes an input may have (the binary extension's and JSON's alike).
DATATYPES = tuple(WIRE_TYPES)
#: ``data:image/png;base64,`` or jpeg, any case (as the server matches it), then base64.
DATA_URL_PATTERN = ("^[dD][aA][tT][aA]:[iI][mM][aA][gG][eE]/(?:[pP][nN][gG]|[jJ][pP][eE][gG]);"
                    "[bB][aA][sS][eE]64,"
                    "(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Malformed request: bad JSON, shape, datatype, values or image.",
        404: "Unknown model name or version, or no such endpoint.",
        408: "The body did not arrive within DIGITS_BODY_TIMEOUT_S.",
        413: "Body larger than DIGITS_MAX_BODY_BYTES, batch larger than DIGITS_MAX_BATCH, or "
             "images over the request's pixel budget.",
        415: "Unsupported Content-Type.",
        429: "Too many requests from this client (the route's rate limit); see Retry-After.",
        503: "No model loaded yet, or overloaded (then with Retry-After).",
    }
    return {str(code): {"$ref": f"#/components/responses/E{code}"} for code in codes
            if code in text}


#: What any POST can be refused with: malformed, too large, too slow, wrong type, no model
#: or overloaded (every route goes through the same limits, serving.hooks).
WORK_ERRORS = (400, 404, 408, 413, 415, 503)

NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
        "description": "Model name (DIGITS_MODEL_NAME, default `digits`)."}
VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"},
           "description": "Registry version id; must be the one currently serving."}


BINARY_FORM = (
    "The binary tensor extension: the first Inference-Header-Content-Length bytes are an "
    "InferenceRequest (or InferenceResponse) in JSON; the raw bytes of every tensor whose "
    "parameters carry binary_data_size follow, in the order of the JSON's tensors, "
    "little-endian and row-major. Sent with no Content-Type, application/json or "
    "application/octet-stream: the header, not the Content-Type, marks the binary form."
)
BINARY_LENGTH = {
    "name": "Inference-Header-Content-Length", "in": "header", "required": False,
    "schema": {"type": "integer", "minimum": 0},
    "description": "Present for the binary form: the length in bytes of the JSON part.",
}

#: What only /feedback refuses with: a foreign browser page (403), a missing token (401).
FEEDBACK_REFUSALS = {
    "401": {"description": "DIGITS_FEEDBACK_TOKEN is set and this API client sent no bearer "
                           "token, or the wrong one.",
            "headers": {"WWW-Authenticate": {"schema": {"type": "string"},
                                             "description": "Bearer realm=\"digits feedback\""}},
            "content": {"application/json": {"schema": _ref("Error")}}},
    "403": _json(_ref("Error"), "Sent from a browser page whose Origin is not allowed "
                                "(DIGITS_ALLOWED_ORIGINS; by default only this server's own)."),
}


def _v2_model_paths() -> dict[str, Any]:
    """The v2 model endpoints, without and with ``/versions/{version}``."""
    metadata = {
        "get": {
            "tags": ["v2"], "summary": "Model metadata",
            "responses": {"200": _json(_ref("ModelMetadata"), "Model metadata."),
                          **_errors(404)},
        }
    }
    ready = {
        "get": {
            "tags": ["v2"], "summary": "Model readiness",
            "responses": {"200": _json(_ref("ModelReady"), "The model is ready."),
                          "503": _json(_ref("ModelReady"), "Not ready (no model loaded)."),
                          **_errors(404)},
        }
    }
    infer = {
        "post": {
            "tags": ["v2"], "summary": "Inference (Open Inference Protocol)",
            "description": (
                "One input tensor of pixels 0..255, shape `[N, 784]` or `[N, 28, 28]`, data "
                "row-major, flat or nested. Outputs `label` (INT64 `[N]`) and `probabilities` "
                "(FP32 `[N, 10]`); `predict`/`predict_proba` are accepted as MLServer-style "
                "aliases. `id` is echoed."
            ),
            "parameters": [BINARY_LENGTH],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref("InferenceRequest")},
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                    "description": BINARY_FORM}}},
            "responses": {
                "200": {
                    "description": "Predictions: JSON, or the binary form when any output "
                                   "was asked for as binary (`binary_data_output` on the "
                                   "request or `binary_data` on an output).",
                    "headers": {"Inference-Header-Content-Length": {
                        "description": "Length of the JSON part (binary form only).",
                        "schema": {"type": "integer", "minimum": 0}}},
                    "content": {
                        "application/json": {"schema": _ref("InferenceResponse")},
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"},
                            "description": BINARY_FORM}}},
                **_errors(*WORK_ERRORS)},
        }
    }
    paths = {}
    for prefix, params in (("/v2/models/{name}", [NAME]),
                           ("/v2/models/{name}/versions/{version}", [NAME, VERSION])):
        for tail, item in (("", metadata), ("/ready", ready), ("/infer", infer)):
            paths[prefix + tail] = {"parameters": params, **item}
    return paths


def _batch(image: str, max_batch: int | None, *, exactly_one: bool = False) -> dict[str, Any]:
    """An array of 1.. images (``max_batch``: the most, ``None``: no stated limit)."""
    most = 1 if exactly_one else max_batch
    return {"type": "array", "minItems": 1, "items": _ref(image),
            **({"maxItems": most} if most is not None else {})}


def _pixel_schemas(max_batch: int | None) -> dict[str, Any]:
    """Pixels, images, batches and v2 shapes as the server checks them
    (:func:`components.stem.as_images`, :func:`serving.protocol.v2_tensor`)."""
    images = ["ImageFlat", "ImageSquare"]
    batch_size = {"type": "integer", "minimum": 1,
                  **({"maximum": max_batch} if max_batch is not None else {})}
    return {
        "Pixel": {"type": "number", "minimum": 0, "maximum": MAX_PIXEL, "multipleOf": 1,
                  "description": f"A whole number 0..{MAX_PIXEL} (3 or 3.0; not 3.5, not "
                                 "scaled to 0..1), white digit on black like MNIST."},
        "ImageFlat": {"type": "array", "minItems": NUM_PIXELS, "maxItems": NUM_PIXELS,
                      "items": _ref("Pixel"), "description": "One image, 784 pixels row-major."},
        "ImageSquare": {"type": "array", "minItems": IMAGE_SIDE, "maxItems": IMAGE_SIDE,
                        "items": {"type": "array", "minItems": IMAGE_SIDE,
                                  "maxItems": IMAGE_SIDE, "items": _ref("Pixel")},
                        "description": "One image, 28 rows of 28 pixels."},
        "Pixels": {"description": "One image (784 pixels, or 28 rows of 28) or a batch of "
                                  "them (at most DIGITS_MAX_BATCH; more get 413).",
                   "oneOf": [*map(_ref, images), *(_batch(i, max_batch) for i in images)]},
        "FeedbackPixels": {"description": "One image: 784 pixels, 28 rows of 28, or a batch of "
                                          "exactly one of either.",
                           "oneOf": [*map(_ref, images),
                                     *(_batch(i, None, exactly_one=True) for i in images)]},
        "TensorData": {"description": "Row-major tensor contents, flat or nested (regular, "
                                      "holding as many pixels as the shape needs).",
                       "oneOf": [{"type": "array", "minItems": 1, "items": _ref("Pixel")},
                                 {"type": "array", "minItems": 1,
                                  "items": _ref("TensorData")}]},
        "Shape": {"description": "[784] or [28, 28] (one image), [N, 784] or [N, 28, 28] "
                                 "(a batch of N, at most DIGITS_MAX_BATCH; more get 413).",
                  "oneOf": [
                      {"enum": [[NUM_PIXELS], [IMAGE_SIDE, IMAGE_SIDE]]},
                      {"type": "array", "minItems": 2, "maxItems": 2,
                       "prefixItems": [batch_size, {"const": NUM_PIXELS}]},
                      {"type": "array", "minItems": 3, "maxItems": 3,
                       "prefixItems": [batch_size, {"const": IMAGE_SIDE},
                                       {"const": IMAGE_SIDE}]}],
                  "examples": [[1, NUM_PIXELS]]},
    }


def spec(server_version: str = "0", *, max_batch: int | None = None) -> dict[str, Any]:
    """The OpenAPI document; ``max_batch`` (DIGITS_MAX_BATCH) bounds batches when given."""
    schemas = {
        **_pixel_schemas(max_batch),
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "string"}}},
        "Live": {"type": "object", "properties": {"live": {"type": "boolean"}}},
        "Ready": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
        "ModelReady": {"type": "object", "properties": {"name": {"type": "string"},
                                                        "ready": {"type": "boolean"}}},
        "ServerMetadata": {"type": "object", "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}}}},
        "MetadataTensor": {"type": "object", "required": ["name", "datatype", "shape"],
                           "properties": {"name": {"type": "string"},
                                          "datatype": {"type": "string"},
                                          "shape": {"type": "array",
                                                    "items": {"type": "integer"}}}},
        "ModelMetadata": {"type": "object", "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": _ref("MetadataTensor")},
            "outputs": {"type": "array", "items": _ref("MetadataTensor")},
            "parameters": {"type": "object"}}},
        "RequestInput": {
            "type": "object", "required": ["name", "shape", "datatype"],
            "description": "Pixels in `data` (JSON) or, in the binary form, "
                           "`parameters.binary_data_size` bytes after the JSON part: "
                           "exactly one of the two.",
            "properties": {
                "name": {"type": "string", "examples": ["images"]},
                "shape": _ref("Shape"),
                "datatype": {"type": "string", "enum": list(DATATYPES)},
                "parameters": {"type": "object", "properties": {
                    "binary_data_size": {"type": "integer", "minimum": 0,
                                         "description": "shape × the datatype's width"}}},
                "data": _ref("TensorData")},
            "oneOf": [
                {"required": ["data"], "not": {"required": ["parameters"], "properties": {
                    "parameters": {"required": ["binary_data_size"]}}}},
                {"required": ["parameters"], "not": {"required": ["data"]}, "properties": {
                    "parameters": {"required": ["binary_data_size"]}}}]},
        "RequestOutput": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "enum": [*OUTPUTS, *OUTPUT_ALIASES]},
            "parameters": {"type": "object", "properties": {
                "binary_data": {"type": "boolean",
                                "description": "Answer this output as raw bytes."}}}}},
        "InferenceRequest": {"type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object", "properties": {
                "binary_data_output": {"type": "boolean",
                                       "description": "Answer every output as raw bytes "
                                                      "unless it says otherwise."}}},
            "inputs": {"type": "array", "minItems": 1, "maxItems": 1,
                       "items": _ref("RequestInput")},
            "outputs": {"type": "array", "items": _ref("RequestOutput")}}},
        "ResponseOutput": {"type": "object", "required": ["name", "shape", "datatype"],
                           "properties": {"name": {"type": "string"},
                                          "shape": {"type": "array",
                                                    "items": {"type": "integer"}},
                                          "datatype": {"type": "string"},
                                          "parameters": {"type": "object", "properties": {
                                              "binary_data_size": {"type": "integer"}}},
                                          "data": {"type": "array"}}},
        "InferenceResponse": {"type": "object", "required": ["model_name", "outputs"],
                              "properties": {
                                  "model_name": {"type": "string"},
                                  "model_version": {"type": "string"},
                                  "id": {"type": "string"},
                                  "parameters": {"type": "object"},
                                  "outputs": {"type": "array",
                                              "items": _ref("ResponseOutput")}}},
        "Prediction": {"type": "object", "properties": {
            "label": _ref("Digit"),
            "probabilities": {"type": "array", "items": {"type": "number"},
                              "minItems": NUM_CLASSES, "maxItems": NUM_CLASSES},
            "source": {"type": "string", "description": "Uploaded file name (uploads only)."}}},
        "PredictResponse": {"type": "object", "properties": {
            "model_name": {"type": "string"}, "model_version": {"type": "string"},
            "model_kind": {"type": "string"},
            "predictions": {"type": "array", "items": _ref("Prediction")}}},
        "FeedbackRequest": {
            "type": "object", "required": ["label"],
            "description": "`label` and exactly one of `pixels` (API clients) or `image` "
                           "(the drawing page).",
            "oneOf": [{"required": ["pixels"], "not": {"required": ["image"]}},
                      {"required": ["image"], "not": {"required": ["pixels"]}}],
            "properties": {
                "pixels": _ref("FeedbackPixels"),
                "image": {"type": "string", "pattern": DATA_URL_PATTERN,
                          "description": "The drawing as a PNG or JPEG data URL "
                                         "(data:image/png;base64,...), decoded and converted "
                                         "like /predict's uploads."},
                "label": _ref("Digit"),
                "predicted": {"type": ["integer", "null"], "minimum": 0,
                              "maximum": NUM_CLASSES - 1,
                              "description": "What the model answered, if known."},
                "model_version": {"type": ["string", "null"], "maxLength": 200}}},
        "Digit": {"type": "integer", "minimum": 0, "maximum": NUM_CLASSES - 1},
        "FeedbackResponse": {"type": "object", "properties": {
            "id": {"type": "string"},
            "stored": {"type": "string", "description": "The item's key in the registry bucket."},
            "sha256": {"type": "string"}, "label": _ref("Digit"),
            "predicted": {"type": ["integer", "null"]},
            "agreed": {"type": "string", "enum": ["yes", "no", "unknown"]},
            "source": {"type": "string", "enum": ["page", "api"],
                       "description": "The drawing page, or an API client."}}},
        "V1Request": {"type": "object", "required": ["instances"], "properties": {
            "instances": _ref("Pixels")}},
        "PredictRequest": {"type": "object", "required": ["pixels"], "properties": {
            "pixels": _ref("Pixels")}},
        "V1Response": {"type": "object", "properties": {
            "predictions": {"type": "array", "items": _ref("Prediction")},
            "model_name": {"type": "string"}, "model_version": {"type": "string"}}},
    }
    responses = {
        f"E{code}": _json(_ref("Error"), text) for code, text in (
            (400, "Bad request."), (404, "Not found."), (408, "Request timeout."),
            (413, "Payload too large."), (415, "Unsupported media type."),
            (429, "Too many requests."),
            (503, "No model loaded yet, or overloaded: retry after Retry-After seconds."))
    }
    paths: dict[str, Any] = {
        "/": {"get": {"tags": ["web"], "summary": "Drawing page",
                      "responses": {"200": {"description": "HTML page.",
                                            "content": {"text/html": {}}}}}},
        "/openapi.json": {"get": {"tags": ["web"], "summary": "This document",
                                  "responses": {"200": {"description": "OpenAPI 3 JSON."}}}},
        "/v2": {"get": {"tags": ["v2"], "summary": "Server metadata",
                        "responses": {"200": _json(_ref("ServerMetadata"), "Server metadata.")}}},
        "/v2/health/live": {"get": {"tags": ["v2"], "summary": "Liveness",
                                    "responses": {"200": _json(_ref("Live"), "Live.")}}},
        "/v2/health/ready": {"get": {
            "tags": ["v2"], "summary": "Readiness: a model is loaded",
            "responses": {"200": _json(_ref("Ready"), "Ready."),
                          "503": _json(_ref("Ready"), "Not ready.")}}},
        **_v2_model_paths(),
        "/v1/models/{name}": {"parameters": [NAME], "get": {
            "tags": ["v1"], "summary": "Model status (KServe v1)",
            "responses": {"200": _json(_ref("ModelReady"), "Ready."),
                          "503": _json(_ref("ModelReady"), "Not ready."), **_errors(404)}}},
        "/v1/models/{name}:predict": {"parameters": [NAME], "post": {
            "tags": ["v1"], "summary": "Predict (TF-Serving / KServe v1 `instances`)",
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref("V1Request")}}},
            "responses": {"200": _json(_ref("V1Response"), "One prediction per instance."),
                          **_errors(*WORK_ERRORS)}}},
        "/predict": {"post": {
            "tags": ["predict"], "summary": "Classify uploaded images or raw pixels",
            "description": (
                "PNG or JPEG of any size (dark-on-light or light-on-dark; converted to MNIST "
                "format: grayscale, inverted if needed, ink box scaled into 20x20, centred by "
                "mass in 28x28), as multipart files (several = a batch) or a raw image body; "
                "or JSON `{\"pixels\": ...}`."
            ),
            "requestBody": {"required": True, "content": {
                "multipart/form-data": {"schema": {
                    "type": "object", "properties": {"file": {
                        "type": "array", "items": {"type": "string", "format": "binary"}}}}},
                "image/png": {"schema": {"type": "string", "format": "binary"}},
                "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": _ref("PredictRequest")},
            }},
            "responses": {"200": _json(_ref("PredictResponse"), "One prediction per image."),
                          **_errors(*WORK_ERRORS, 429)}}},
        "/feedback": {"post": {
            "tags": ["feedback"], "summary": "Label one digit for the next training run",
            "description": (
                "The digit as the model saw it (`pixels`, one image) or the page's drawing "
                "(`image`, a PNG data URL converted like /predict), with the label the user says "
                "is right. JSON only, so no other site's form can post it (415), and a browser "
                "page whose `Origin` is not allowed (DIGITS_ALLOWED_ORIGINS, by default this "
                "server's own) is refused (403). The page sends `X-Digits-Client: page`; any "
                "other client needs `Authorization: Bearer <token>` when DIGITS_FEEDBACK_TOKEN "
                "is set (401). Stored in the registry bucket under `feedback/` with a keyed "
                "hash of the client's address, never the address; the next run trains with it "
                "(training split only, capped overall and per client). A 503 means the store "
                "is unreachable."
            ),
            "security": [{}, {"feedbackToken": []}],
            "parameters": [{"name": "X-Digits-Client", "in": "header", "required": False,
                            "schema": {"type": "string", "enum": ["page"]},
                            "description": "Sent by the drawing page (with its Origin)."}],
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref("FeedbackRequest")},
            }},
            "responses": {"201": _json(_ref("FeedbackResponse"), "Stored."),
                          **FEEDBACK_REFUSALS, **_errors(*WORK_ERRORS, 429)}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Digits model server",
            "version": server_version,
            "description": (
                "Handwritten-digit classification. Every prediction names the model version "
                "that answered (body and `X-Model-Version` header). Errors are "
                "`{\"error\": \"...\"}`. Prometheus metrics are served on a port of their "
                "own (DIGITS_METRICS_PORT, default 9090), not here."
            ),
        },
        "paths": paths,
        "components": {"schemas": schemas, "responses": responses,
                       "securitySchemes": {"feedbackToken": {
                           "type": "http", "scheme": "bearer",
                           "description": "DIGITS_FEEDBACK_TOKEN, for /feedback from API "
                                          "clients when it is set."}}},
    }
