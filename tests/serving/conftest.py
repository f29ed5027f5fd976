"""Fixtures for the serving tests: real models trained on real digits, a real registry.

Two models of different kinds (so their answers differ and a mixed response
would show): the session's tiny models (``tiny_models`` in ``tests/conftest.py``),
published to buckets on the session's ``weed`` S3 server.
"""

from __future__ import annotations

import uuid

import pytest
from minio import Minio

from components.registry import Registry
from tests.serving.helpers import Trained, make_app, promote


@pytest.fixture(scope="session")
def trained(tiny_models) -> dict[str, Trained]:
    """``{"xgboost": ..., "baseline": ...}``: the session's tiny models (``tiny_models``)."""
    return {kind: Trained(tiny_models[kind].model, tiny_models[kind].directory)
            for kind in ("xgboost", "baseline")}


@pytest.fixture(scope="session")
def make_registry(s3_server):
    """A factory of empty registries, each in its own bucket on the real S3 server."""

    def make() -> Registry:
        client = Minio(s3_server.endpoint, s3_server.access_key, s3_server.secret_key,
                       secure=False, region="us-east-1")
        return Registry(client, f"serve-{uuid.uuid4().hex[:12]}")

    return make


@pytest.fixture(scope="session")
def production(make_registry, trained):
    """A registry whose production is the XGBoost model: ``(registry, version)``.

    Shared: tests may read it and add feedback (counted from what was there before),
    never promote into it.
    """
    registry = make_registry()
    return registry, promote(registry, trained["xgboost"])


@pytest.fixture
def served(s3_server, production, trained):
    """A fresh ready app serving the XGBoost model: ``(app, client, version, trained model)``.

    One per test: an app holds state (metrics, rate-limit counts, its model's reloads),
    and no test may see another's.
    """
    registry, version = production
    app, server = make_app(s3_server, registry, max_body_bytes=1_000_000, max_batch=256,
                           max_image_pixels=4_000_000)
    assert server.model.wait_ready(30), server.model.last_error
    yield app, app.test_client(), version, trained["xgboost"]
    server.model.stop()
