"""Fixtures for the serving tests: real models trained on real digits, a real registry.

Two models of different kinds (so their answers differ and a mixed response
would show) are trained once per session on the ``tiny_dataset`` fixture's
genuine MNIST digits and published to buckets on the session's ``weed``
S3 server.
"""

from __future__ import annotations

import uuid

import pytest
from minio import Minio

from components.models import create_model
from components.registry import Registry
from tests.serving.helpers import Trained, make_app, promote


@pytest.fixture(scope="session")
def trained(tiny_dataset, tmp_path_factory) -> dict[str, Trained]:
    """``{"xgboost": ..., "baseline": ...}`` trained on 600 genuine digits."""
    out = {}
    for kind, params in (("xgboost", {"n_estimators": 20, "max_depth": 4,
                                      "early_stopping_rounds": 0, "n_jobs": 1}),
                         ("baseline", {"max_iter": 200})):
        model = create_model(kind, **params)
        model.fit(tiny_dataset.x_train, tiny_dataset.y_train,
                  tiny_dataset.x_validation[:200], tiny_dataset.y_validation[:200])
        directory = tmp_path_factory.mktemp(f"model-{kind}")
        model.save(directory)
        out[kind] = Trained(model, directory)
    return out


@pytest.fixture(scope="session")
def make_registry(s3_server):
    """A factory of empty registries, each in its own bucket on the real S3 server."""

    def make() -> Registry:
        client = Minio(s3_server.endpoint, s3_server.access_key, s3_server.secret_key,
                       secure=False, region="us-east-1")
        return Registry(client, f"serve-{uuid.uuid4().hex[:12]}")

    return make


@pytest.fixture(scope="module")
def served(s3_server, make_registry, trained):
    """A ready app serving the XGBoost model: ``(app, client, version, trained model)``."""
    registry = make_registry()
    version = promote(registry, trained["xgboost"])
    app, server = make_app(s3_server, registry, max_body_bytes=1_000_000, max_batch=256,
                           max_image_pixels=4_000_000)
    assert server.model.wait_ready(30), server.model.last_error
    yield app, app.test_client(), version, trained["xgboost"]
    server.model.stop()
