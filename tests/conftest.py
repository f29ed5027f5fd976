"""Shared fixtures: the real MNIST copy, tiny real subsets of it, a real S3 server.

Tests use genuine digits (a few hundred) and a real ``weed`` S3 server, never
mocks of the project's own code.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from minio import Minio

from components.data import Dataset, build_dataset
from components.datafiles import Source, load_mnist
from components.registry import Registry
from components.s3local import LocalS3

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(os.environ.get("DIGITS_MNIST_DIR") or ROOT.parent / "shared" / "data" / "mnist")
KAGGLE_DIR = MNIST_DIR.parent / "kaggle"


#: The credentials files git ignores in manifests/ (an ``.example`` of each is committed).
MANIFEST_ENV_FILES = ("base/s3.env", "base/serving-s3.env",
                      "components/kaggle-submit/kaggle.env", "overlays/kubeflow/pipeline.env",
                      "overlays/standalone/minio-root.env")
#: What the tests fill them with.
TEST_CREDENTIALS = {"DIGITS_S3_ACCESS_KEY": "test-access-key",
                    "DIGITS_S3_SECRET_KEY": "test-secret-key",
                    "KAGGLE_USERNAME": "test-user", "KAGGLE_KEY": "test-kaggle-key",
                    "MINIO_ROOT_USER": "test-minio-root",
                    "MINIO_ROOT_PASSWORD": "test-minio-root-password"}
#: Files whose values must differ from :data:`TEST_CREDENTIALS` (another identity's keys).
TEST_CREDENTIALS_BY_FILE = {"base/serving-s3.env": {
    "DIGITS_S3_ACCESS_KEY": "test-serving-access-key",
    "DIGITS_S3_SECRET_KEY": "test-serving-secret-key"}}


@pytest.fixture(scope="session")
def manifests_dir(tmp_path_factory) -> Path:
    """``manifests/`` as a user renders it: a copy with the git-ignored env files filled in."""
    import shutil

    copy = tmp_path_factory.mktemp("manifests") / "manifests"
    shutil.copytree(ROOT / "manifests", copy, ignore=shutil.ignore_patterns("*.env"))
    for relative in MANIFEST_ENV_FILES:
        example = (copy / f"{relative}.example").read_text()
        keys = [line.split("=")[0] for line in example.splitlines()
                if line and not line.startswith("#")]
        values = {**TEST_CREDENTIALS, **TEST_CREDENTIALS_BY_FILE.get(relative, {})}
        (copy / relative).write_text("".join(f"{k}={values[k]}\n" for k in keys))
    return copy


def missing_prerequisite(reason: str, *, module: bool = False) -> None:
    """Skip a test group whose tool is absent here, but fail it in CI (``CI=true``).

    CI provisions Docker and Chromium (``scripts/ci-provision.sh``), so a missing
    one there is a broken CI, which must show red rather than pass by skipping.
    """
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run this test group, but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=module)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not MNIST_DIR.is_dir():
        pytest.fail(f"MNIST copy not found at {MNIST_DIR}; set DIGITS_MNIST_DIR")
    return MNIST_DIR


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    """The full genuine MNIST: ``(x_train, y_train, x_test, y_test, source)``."""
    return load_mnist(mnist_dir)


@pytest.fixture(scope="session")
def tiny_dataset(mnist) -> Dataset:
    """600 train + validation digits and a 300-digit holdout, all genuine MNIST."""
    x_train, y_train, x_test, y_test, source = mnist
    return build_dataset(
        x_train[:1200], y_train[:1200], x_test[:300], y_test[:300],
        Source("mnist", source.location, source.files), seed=0, train_size=600,
    )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> LocalS3:
    server = LocalS3(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> dict[str, str]:
    """Point ``DIGITS_S3_*`` (and a fresh bucket) at the shared test server."""
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    for key, value in {**s3_server.environ(), "DIGITS_BUCKET": bucket}.items():
        monkeypatch.setenv(key, value)
    return {**s3_server.environ(), "DIGITS_BUCKET": bucket}


@pytest.fixture
def minio_client(s3_server) -> Minio:
    return Minio(s3_server.endpoint, s3_server.access_key, s3_server.secret_key,
                 secure=False, region="us-east-1")


@pytest.fixture
def registry(minio_client) -> Registry:
    """An empty registry in a bucket of its own on the real S3 server."""
    return Registry(minio_client, f"test-{uuid.uuid4().hex[:12]}")


