"""The HTTP API: a Flask application factory, served by gunicorn.

Routes
    ``GET  /``                                   the drawing page
    ``GET  /openapi.json``                       the API description (OpenAPI 3)
    ``GET  /metrics``                            Prometheus
    ``GET  /v2``, ``/v2/health/{live,ready}``    Open Inference Protocol (KServe v2, Triton)
    ``GET  /v2/models/{name}[/versions/{v}][/ready]``
    ``POST /v2/models/{name}[/versions/{v}]/infer``
    ``GET  /v1/models/{name}``, ``POST /v1/models/{name}:predict``  (TF-Serving/KServe v1)
    ``POST /predict``                            image uploads or raw pixels
    ``POST /feedback``                           a user's label for a digit (training data)

``create_app()`` builds a fresh app each call and starts nothing: the model
poller starts with the first request in each process (or from gunicorn's
``post_worker_init``), i.e. after gunicorn has forked its workers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from flask import Flask, Response, g, render_template, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from werkzeug.exceptions import HTTPException

from components.feedback import FeedbackItem, FeedbackStore
from serving import protocol
from serving.imaging import IMAGE_TYPES, ImageError, image_to_mnist
from serving.infer import InferRoute
from serving.logs import AccessLog
from serving.metrics import Metrics
from serving.model import DigitsModel, LoadedModel, ModelNotReady, Prediction
from serving.openapi import spec as openapi_spec
from serving.protocol import ApiError
from serving.settings import ServeSettings

log = logging.getLogger(__name__)

SERVER_NAME = "digits-serving"
EXTENSION = "digits"
VERSION_HEADER = "X-Model-Version"
REQUEST_ID_HEADER = "X-Request-Id"


def _settings(config: ServeSettings | Mapping[str, Any] | None) -> ServeSettings:
    if isinstance(config, ServeSettings):
        return config
    return ServeSettings(**dict(config or {}))


def json_response(body: Any, status: int = 200) -> Response:
    return Response(protocol.dumps(body), status=status, mimetype="application/json")


def error_response(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("digits-mlops")
    except PackageNotFoundError:
        return "0"


class Server:
    """What the routes share: settings, the model and the metrics (``app.extensions``)."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.model = DigitsModel(settings, metrics=self.metrics)
        self.metrics.ready.set(0)
        self.access = AccessLog(settings.access_log)
        self._openapi: bytes | None = None

    def predict(self, images: np.ndarray, loaded: LoadedModel) -> Prediction:
        """Classify with the model the request started with, counting what was asked."""
        self.metrics.batch_size.observe(len(images))
        self.metrics.images.inc(len(images))
        return self.model.predict(images, loaded)

    def account(self, *, route: str, method: str, path: str, status: int, started: float,
                version: str | None, batch: int | None, remote: str | None,
                bytes_in: int | None, request_id: str | None) -> list[tuple[str, str]]:
        """Every answered request: metrics, the access line; the headers it gets back."""
        elapsed = time.perf_counter() - started
        self.metrics.requests.labels(route, method, str(status)).inc()
        self.metrics.latency.labels(route).observe(elapsed)
        self.access.write(method=method, path=path, route=route, status=status,
                          duration_ms=round(elapsed * 1000, 3), model_version=version,
                          batch=batch, remote=remote, bytes_in=bytes_in, request_id=request_id)
        headers = []
        if version is not None:
            headers.append((VERSION_HEADER, version))
        if request_id:
            headers.append((REQUEST_ID_HEADER, request_id[:200]))
        return headers

    def too_large(self) -> str:
        return (f"request too large: the limit is {self.settings.max_body_bytes} bytes "
                "(DIGITS_MAX_BODY_BYTES) and 1000 form parts")

    def openapi(self) -> bytes:
        if self._openapi is None:
            self._openapi = protocol.dumps(openapi_spec(_package_version()))
        return self._openapi

    def check_name(self, name: str) -> None:
        """404 for any model name but ours."""
        if name != self.model.name:
            raise ApiError(404, f"unknown model {name!r}; this server serves {self.model.name!r}")

    def resolve(self, name: str, version: str | None = None) -> LoadedModel:
        """The model a request will use, taken once, at its start."""
        self.check_name(name)
        loaded = self.model.current
        if loaded is None:
            raise ModelNotReady(f"model {name!r} is not ready: no version loaded yet")
        if version is not None and version != loaded.version:
            raise ApiError(404, f"model {name!r} version {version!r} is not served "
                                f"(serving {loaded.version!r})")
        return loaded

    def metadata(self, loaded: LoadedModel | None) -> dict[str, Any]:
        return {
            "name": self.model.name,
            "versions": [loaded.version] if loaded else [],
            "platform": loaded.platform if loaded else "",
            "inputs": [{"name": protocol.INPUT_NAME, "datatype": "UINT8",
                        "shape": [-1, 28, 28]}],
            "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
            "parameters": {"kind": loaded.kind} if loaded else {},
        }


def _require_json() -> None:
    mimetype = request.mimetype
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise ApiError(415, f"Content-Type must be application/json, got "
                            f"{request.content_type or 'none'!r}")


def create_app(config: ServeSettings | Mapping[str, Any] | None = None) -> Flask:
    """Build the app. ``config``: a :class:`ServeSettings`, or field overrides for one
    (``{"poll_interval_s": 1}``); anything not given comes from ``DIGITS_*``."""
    settings = _settings(config)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["MAX_FORM_MEMORY_SIZE"] = settings.max_body_bytes
    server = Server(settings)
    app.extensions[EXTENSION] = server
    model, metrics = server.model, server.metrics
    limiter = Limiter(get_remote_address, app=app, storage_uri="memory://",
                      headers_enabled=True, strategy="moving-window")

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        model.start()

    @app.after_request
    def _finish(response: Response) -> Response:
        headers = server.account(
            route=request.url_rule.rule if request.url_rule is not None else "<unmatched>",
            method=request.method, path=request.path, status=response.status_code,
            started=g.get("started", time.perf_counter()), version=g.get("model_version"),
            batch=g.get("batch"), remote=request.remote_addr,
            bytes_in=request.content_length, request_id=request.headers.get(REQUEST_ID_HEADER))
        response.headers.update(headers)
        return response

    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> Response:
        return error_response(error.status, error.message)

    @app.errorhandler(ModelNotReady)
    def _not_ready(error: ModelNotReady) -> Response:
        return error_response(503, str(error))

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

    def _predict(images: np.ndarray, loaded: LoadedModel) -> Prediction:
        """Classify with the model the request started with; record who answered."""
        g.batch = len(images)
        prediction = server.predict(images, loaded)
        g.model_version = prediction.version
        return prediction

    # ------------------------------------------------------------------ page, docs, metrics

    @app.get("/")
    def index() -> str:
        return render_template("index.html", model_name=model.name)

    @app.get("/openapi.json")
    def openapi() -> Response:
        return Response(server.openapi(), mimetype="application/json")

    @app.get("/metrics")
    def prometheus() -> Response:
        body, content_type = metrics.render()
        return Response(body, content_type=content_type)

    # ------------------------------------------------------------------ v2: health, metadata

    @app.get("/v2")
    def server_metadata() -> Response:
        return json_response({"name": SERVER_NAME, "version": _package_version(),
                              "extensions": [protocol.BINARY_EXTENSION]})

    @app.get("/v2/health/live")
    def live() -> Response:
        return json_response({"live": True})

    @app.get("/v2/health/ready")
    def ready() -> Response:
        is_ready = model.ready
        return json_response({"ready": is_ready}, 200 if is_ready else 503)

    @app.get("/v2/models/<name>")
    @app.get("/v2/models/<name>/versions/<version>")
    def model_metadata(name: str, version: str | None = None) -> Response:
        server.check_name(name)
        loaded = model.current
        if version is not None:
            loaded = server.resolve(name, version)
        return json_response(server.metadata(loaded))

    @app.get("/v2/models/<name>/ready")
    @app.get("/v2/models/<name>/versions/<version>/ready")
    def model_ready(name: str, version: str | None = None) -> Response:
        server.check_name(name)
        loaded = model.current
        is_ready = loaded is not None and version in (None, loaded.version)
        return json_response({"name": name, "ready": is_ready}, 200 if is_ready else 503)

    # ------------------------------------------------------------------ v1

    @app.get("/v1/models/<name>")
    def v1_status(name: str) -> Response:
        server.check_name(name)
        is_ready = model.ready
        return json_response({"name": name, "ready": is_ready}, 200 if is_ready else 503)

    @app.post("/v1/models/<name>:predict")
    def v1_predict(name: str) -> Response:
        loaded = server.resolve(name)
        _require_json()
        body = protocol.as_object(protocol.loads(request.get_data(cache=False),
                                                 array_key=None), "the request")
        if "instances" not in body:
            raise ApiError(400, "the request needs 'instances': a list of images, each "
                                "784 pixels or 28 rows of 28")
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise ApiError(400, "'instances' must be a non-empty list of images")
        images = protocol.pixels_from(instances, "'instances'", max_batch=settings.max_batch)
        prediction = _predict(images, loaded)
        return json_response({"predictions": protocol.predictions(prediction.probabilities),
                              "model_name": name, "model_version": prediction.version})

    # ------------------------------------------------------------------ /predict

    @app.post("/predict")
    def predict() -> Response:
        loaded = server.resolve(model.name)
        mimetype = request.mimetype
        sources: list[str] | None = None
        if mimetype == "multipart/form-data":
            uploads = [(key, upload) for key, upload in request.files.items(multi=True)]
            if not uploads:
                raise ApiError(400, "no file in the form: upload images as file fields")
            if len(uploads) > settings.max_batch:
                raise ApiError(413, f"{len(uploads)} images exceed the limit of "
                                    f"{settings.max_batch}")
            sources = [upload.filename or key for key, upload in uploads]
            images = _decode_images([upload.read() for _, upload in uploads], sources)
        elif mimetype in IMAGE_TYPES:
            images = _decode_images([request.get_data(cache=False)], ["body"])
        elif mimetype == "application/json":
            body = protocol.as_object(protocol.loads(request.get_data(cache=False),
                                                     array_key=None), "the request")
            if "pixels" not in body:
                raise ApiError(400, "JSON requests need 'pixels': one image (784 values or "
                                    "28x28) or a batch of them, 0..255")
            images = protocol.pixels_from(body["pixels"], "'pixels'",
                                          max_batch=settings.max_batch)
        else:
            raise ApiError(415, "send images as multipart/form-data, image/png or image/jpeg, "
                                f"or pixels as application/json (got "
                                f"{request.content_type or 'no Content-Type'!r})")
        prediction = _predict(images, loaded)
        rows = protocol.predictions(prediction.probabilities)
        if sources is not None:
            for row, source in zip(rows, sources, strict=True):
                row["source"] = source
        return json_response({"model_name": model.name, "model_version": prediction.version,
                              "model_kind": prediction.kind, "predictions": rows})

    # ------------------------------------------------------------------ /feedback

    @app.post("/feedback")
    @limiter.limit(lambda: settings.feedback_rate_limit)
    def feedback() -> Response:
        """Store one digit with the label a user gave it, for the next training run.

        JSON (``pixels``: the canonical image, ``label``, optional ``predicted``
        and ``model_version``) or the page's form (an ``image`` file plus the
        same fields). Each item is its own object in the registry's bucket,
        so concurrent posts never overwrite one another.
        """
        if request.mimetype == "multipart/form-data":
            upload = request.files.get("image")
            if upload is None:
                raise ApiError(400, "the form needs an 'image' file field (the drawing)")
            image = _decode_images([upload.read()], ["image"])
            fields: Mapping[str, Any] = {
                name: _form_int(name) for name in ("label", "predicted")
                if request.form.get(name, "") != ""}
            fields = {**fields, "model_version": request.form.get("model_version") or None}
            source = "page"
        elif request.mimetype == "application/json":
            body = protocol.as_object(protocol.loads(request.get_data(cache=False),
                                                     array_key=None), "the request")
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
            key = FeedbackStore(model.registry).add(item)
        except Exception as error:  # the store is down: say so, keep serving
            log.warning("feedback not stored: %s", error)
            raise ApiError(503, "feedback cannot be stored right now (registry unreachable); "
                                "try again later") from error
        agreed = {None: "unknown", True: "no", False: "yes"}[item.disagreed]
        metrics.feedback.labels(agreed).inc()
        return json_response({"id": key.rsplit("/", 1)[1].removesuffix(".json"),
                              "stored": key, "sha256": item.sha256, "label": item.label,
                              "predicted": item.predicted, "agreed": agreed}, 201)

    def _form_int(name: str) -> int:
        raw = request.form[name]
        try:
            return int(raw)
        except ValueError:
            raise ApiError(400, f"'{name}' must be a whole number 0..9, got {raw!r}") from None

    def _decode_images(blobs: list[bytes], sources: list[str]) -> np.ndarray:
        pictures = []
        for blob, source in zip(blobs, sources, strict=True):
            try:
                pictures.append(image_to_mnist(blob, max_pixels=settings.max_image_pixels))
            except ImageError as error:
                raise ApiError(400, f"{source}: {error}" if len(blobs) > 1 else str(error)
                               ) from error
        return protocol.images_from(np.stack(pictures), max_batch=settings.max_batch)

    # The inference route, the hot path, is answered before Flask (serving.infer).
    app.wsgi_app = InferRoute(app.wsgi_app, server)  # type: ignore[method-assign]
    return app
