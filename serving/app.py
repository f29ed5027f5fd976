"""The HTTP API: a Flask application factory; ``serving.front`` runs it under granian.

Routes, one blueprint per API (``serving/routes``):

    ``v2``        ``/v2``, ``/v2/health/{live,ready}``, ``/v2/models/{name}[/versions/{v}]``
                  ``[/ready]``, ``/v2/models/{name}[/versions/{v}]/infer`` (Open Inference
                  Protocol: KServe v2, Triton)
    ``v1``        ``/v1/models/{name}``, ``/v1/models/{name}:predict`` (TF-Serving/KServe v1)
    ``images``    ``/predict``: image uploads or raw pixels
    ``feedback``  ``/feedback``: a user's label for a digit (training data)
    ``page``      ``/`` (the drawing page), ``/openapi.json``

What applies to every route — limits, admission and shedding, error mapping,
security headers, metrics and the access log — is installed once by
:func:`serving.hooks.install`. Prometheus metrics are served on a port of
their own (``DIGITS_METRICS_PORT``) by ``digits serve``, not by this app.

``create_app()`` builds a fresh app each call and starts nothing: the model
poller starts with the worker's lifespan (``serving.front``) or its first
request.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from flask import Flask, g
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import BaseConverter

from serving import hooks, protocol
from serving.logs import AccessLog
from serving.metrics import Metrics
from serving.model import DigitsModel, LoadedModel, ModelNotReady, Prediction
from serving.openapi import spec as openapi_spec
from serving.protocol import ApiError
from serving.ratelimit import RateLimits
from serving.settings import ServeSettings

SERVER_NAME = "digits-serving"
EXTENSION = "digits"
#: Routes limited per client, and the setting that holds each one's limit.
RATE_LIMITS = {"images.predict": "predict_rate_limit", "feedback.feedback": "feedback_rate_limit"}


def _settings(config: ServeSettings | Mapping[str, Any] | None) -> ServeSettings:
    if isinstance(config, ServeSettings):
        return config
    return ServeSettings(**dict(config or {}))


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("digits-mlops")
    except PackageNotFoundError:
        return "0"


class Server:
    """What the routes share: settings, the model, metrics, the rate limits."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.rate_limits = RateLimits(settings.rate_limit_storage, {
            route: getattr(settings, setting) for route, setting in RATE_LIMITS.items()})
        self.metrics = Metrics()
        self.model = DigitsModel(settings, metrics=self.metrics)
        self.metrics.ready.set(0)
        self.access = AccessLog(settings.access_log)
        self.admission = hooks.Admission(settings.concurrency, settings.max_wait_ms)
        self._openapi: bytes | None = None

    def predict(self, images: np.ndarray, loaded: LoadedModel) -> Prediction:
        """Classify with the model the request started with; record who answered."""
        g.batch = len(images)
        prediction = self.infer(images, loaded)
        g.model_version = prediction.version
        return prediction

    def infer(self, images: np.ndarray, loaded: LoadedModel) -> Prediction:
        """Classify and count, outside any Flask request: what every transport (HTTP
        through :meth:`predict`, gRPC in :mod:`serving.grpc_server`) runs."""
        self.metrics.batch_size.observe(len(images))
        self.metrics.images.inc(len(images))
        return self.model.predict(images, loaded)

    def account(self, *, route: str, method: str, path: str, status: int, started: float,
                version: str | None, batch: int | None, remote: str | None,
                bytes_in: int | None, request_id: str | None) -> None:
        """Every answered request: counters, latency, the access line."""
        elapsed = time.perf_counter() - started
        self.metrics.requests.labels(route, method, str(status)).inc()
        self.metrics.latency.labels(route).observe(elapsed)
        self.access.write(method=method, path=path, route=route, status=status,
                          duration_ms=round(elapsed * 1000, 3), model_version=version,
                          batch=batch, remote=remote, bytes_in=bytes_in, request_id=request_id)

    def too_large(self) -> str:
        return (f"request too large: the limit is {self.settings.max_body_bytes} bytes "
                "(DIGITS_MAX_BODY_BYTES) and 1000 form parts")

    def openapi(self) -> bytes:
        if self._openapi is None:
            self._openapi = protocol.dumps(openapi_spec(package_version(),
                                                        max_batch=self.settings.max_batch))
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


class ModelName(BaseConverter):
    """A model name in a URL: no ``/`` and no ``:``, so ``/v1/models/<model:name>`` never
    swallows ``/v1/models/digits:predict`` (which would then advertise GET)."""

    regex = r"[^/:]+"


def server_of(app: Flask) -> Server:
    return app.extensions[EXTENSION]


def create_app(config: ServeSettings | Mapping[str, Any] | None = None) -> Flask:
    """Build the app. ``config``: a :class:`ServeSettings`, or field overrides for one
    (``{"poll_interval_s": 1}``); anything not given comes from ``DIGITS_*``."""
    from serving.routes import feedback, images, page, v1, v2

    settings = _settings(config)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["MAX_FORM_MEMORY_SIZE"] = settings.max_body_bytes
    app.extensions[EXTENSION] = Server(settings)
    hooks.install(app, app.extensions[EXTENSION])
    app.url_map.converters["model"] = ModelName
    for module in (v2, v1, images, feedback, page):
        app.register_blueprint(module.blueprint)
    if settings.trusted_proxy_hops:
        app.wsgi_app = ProxyFix(app.wsgi_app,  # type: ignore[method-assign]
                                x_for=settings.trusted_proxy_hops)
    return app
