"""Settings read from the environment, all under one prefix: ``DIGITS_``.

:class:`StoreSettings` is what the pipeline and the server share (where the
registry lives), so a value set for ``digits run`` (say ``DIGITS_S3_ENDPOINT``)
means the same to ``digits serve`` and to the containers on the cluster, where
the same variables come from a Kubernetes Secret and ConfigMap. The pipeline's
own knobs are :class:`Settings`; the server's are ``serving.settings.ServeSettings``.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, FilePath, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class StoreSettings(BaseSettings):
    """Where the registry lives (``DIGITS_<FIELD>``): an S3 store, or an embedded one."""

    model_config = SettingsConfigDict(env_prefix="DIGITS_", extra="ignore")

    home: Path = Field(
        default=Path(".digits"),
        description="Project-local state: the embedded S3 store's data, pipeline runs.",
    )
    s3_endpoint: str | None = Field(
        default=None, description="host:port of the S3 store; unset means an embedded one."
    )
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_secure: bool = False
    s3_ca_bundle: FilePath | None = Field(
        default=None,
        description="PEM file of the CA(s) that signed the S3 store's certificate (a private "
                    "CA); unset means the system's CAs. Only used with DIGITS_S3_SECURE=true.",
    )
    s3_region: str | None = None
    bucket: str = "digits-registry"

    @property
    def s3_configured(self) -> bool:
        """True when an external S3 store is named, so no embedded one is needed."""
        return bool(self.s3_endpoint and self.s3_access_key and self.s3_secret_key)


class Settings(StoreSettings):
    """The pipeline's configuration (``DIGITS_<FIELD>``): data, the registry, Kaggle."""

    mnist_dir: Path | None = Field(
        default=None, description="Directory holding the four MNIST IDX .gz files."
    )
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "digits",
        description="Where downloaded datasets are kept.",
    )
    mnist_url: str = Field(
        default="https://storage.googleapis.com/cvdf-datasets/mnist/",
        description="Mirror used when MNIST must be downloaded.",
    )
    kaggle_score_timeout_s: float = Field(
        default=600.0, gt=0,
        description="How long a Kaggle submission job waits for Kaggle to score the file.",
    )
    kaggle_poll_interval_s: float = Field(
        default=10.0, gt=0, description="Pause between two reads of the submission's status.",
    )
    kaggle_attempts: int = Field(
        default=4, ge=1, description="Tries per Kaggle call when it times out or answers 5xx.",
    )
    kaggle_backoff_s: float = Field(
        default=2.0, ge=0,
        description="First back-off between those tries; it doubles each time.",
    )


def get_settings() -> Settings:
    """Read settings now (not at import time, so tests can set the environment first)."""
    return Settings()
