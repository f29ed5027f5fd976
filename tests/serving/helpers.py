"""Helpers for the serving tests (fixtures are in ``conftest.py``)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from components.models import DigitModel
from components.registry import Registry
from serving.app import create_app


@dataclass
class Trained:
    """A trained model, its saved directory, and what it predicts for the holdout digits."""

    model: DigitModel
    directory: Path

    @property
    def kind(self) -> str:
        return self.model.kind

    def proba(self, images: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(images)


def promote(registry: Registry, item: Trained, reason: str = "test") -> str:
    return registry.promote(item.directory, {"kind": item.kind, "metrics": {"accuracy": 0.9}},
                            reason)


def serving_environ(s3_server, bucket: str) -> dict[str, str]:
    """``DIGITS_S3_*`` of the serving identity, granted ``bucket``: what a serving pod holds
    (read production and versions, write feedback and submissions), never the root keys."""
    s3_server.grant(bucket)
    return {**s3_server.environ("serving"), "DIGITS_BUCKET": bucket}


def operator_registry(s3_server, bucket: str) -> Registry:
    """``bucket`` as the pipeline identity sees it: what an operator (or the next training
    run) reads feedback back with; the serving identity may not list it."""
    return Registry(s3_server.client("pipeline"), bucket)


def app_config(s3_server, registry: Registry, **overrides: Any) -> dict[str, Any]:
    """Settings for ``create_app``: this registry as the serving identity, no background
    polling to speak of."""
    environ = serving_environ(s3_server, registry.bucket)
    return {
        "s3_endpoint": s3_server.endpoint, "s3_access_key": environ["DIGITS_S3_ACCESS_KEY"],
        "s3_secret_key": environ["DIGITS_S3_SECRET_KEY"], "bucket": registry.bucket,
        "poll_interval_s": 3600, "access_log": False, **overrides,
    }


def make_app(s3_server, registry: Registry, **overrides: Any):
    """An app whose model has loaded what production points at (if anything)."""
    app = create_app(app_config(s3_server, registry, **overrides))
    server = app.extensions["digits"]
    server.model.start()
    return app, server


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    image.save(buffer, "PNG")
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray, quality: int = 92) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def v2_body(images: np.ndarray, *, datatype: str = "UINT8", nested: bool = False,
            **extra: Any) -> dict[str, Any]:
    data = images.tolist() if nested else images.reshape(len(images), -1).ravel().tolist()
    shape = list(images.shape) if nested else [len(images), 784]
    return {"inputs": [{"name": "images", "shape": shape, "datatype": datatype,
                        "data": data}], **extra}


def schema_validator(spec: dict[str, Any], name: str):
    """A JSON Schema (draft 2020-12, OpenAPI 3.1's) validator of the OpenAPI document's
    ``#/components/schemas/<name>``, references resolved in the document itself (some
    schemas are recursive, so they cannot be inlined)."""
    import jsonschema
    import referencing
    from referencing.jsonschema import DRAFT202012

    base = "urn:digits:openapi"
    resource = referencing.Resource.from_contents(spec, default_specification=DRAFT202012)
    registry = referencing.Registry().with_resource(base, resource)
    return jsonschema.Draft202012Validator({"$ref": f"{base}#/components/schemas/{name}"},
                                           registry=registry)
