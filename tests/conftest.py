"""Shared fixtures: the real MNIST copy, tiny real subsets of it, a real S3 server.

Tests use genuine digits (a few hundred) and a real ``weed`` S3 server, never
mocks of the project's own code.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from minio import Minio

from components.data import Dataset, build_dataset
from components.datafiles import Source, load_mnist
from components.registry import Registry
from components.s3local import LocalS3

if TYPE_CHECKING:
    from components.models import DigitModel

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


#: The tiny models' settings: small but real, seconds each on 600 genuine digits (the CNN most).
TINY_PARAMS: dict[str, dict[str, Any]] = {
    "cnn": {"epochs": 4, "batch_size": 32},
    "xgboost": {"n_estimators": 15, "max_depth": 4},
    "baseline": {"max_iter": 100},
}


@dataclass(frozen=True)
class TinyModel:
    """A model trained on ``tiny_dataset``, what training reported, and its saved folder.

    Shared by the whole session: never change ``model`` or anything in ``directory``;
    save or copy it somewhere of your own first.
    """

    model: DigitModel
    info: dict[str, Any]
    directory: Path

    @property
    def kind(self) -> str:
        return self.model.kind

    def proba(self, images: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(images)


@dataclass
class TinyModels:
    """One tiny model per family, trained when a test first asks for it (``models[kind]``)."""

    dataset: Dataset
    folders: Any  # pytest's TempPathFactory
    _trained: dict[str, TinyModel] = field(default_factory=dict)

    def __getitem__(self, kind: str) -> TinyModel:
        if kind not in self._trained:
            from components.train import train

            model, info = train(kind, self.dataset, **TINY_PARAMS[kind])
            directory = self.folders.mktemp(f"tiny-{kind}")
            model.save(directory, **info)
            self._trained[kind] = TinyModel(model, info, directory)
        return self._trained[kind]


@pytest.fixture(scope="session")
def tiny_models(tiny_dataset, tmp_path_factory) -> TinyModels:
    """The session's tiny trained models, one per family, each trained once on first use."""
    return TinyModels(tiny_dataset, tmp_path_factory)


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


@pytest.fixture
def kfp_api():
    """A local stand-in of the KFP API (``tests/kfp_api.py``): its URL and what it received."""
    from tests.kfp_api import running

    with running() as (url, received):
        yield url, received
