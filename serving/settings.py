"""Serving knobs, read from the same ``DIGITS_`` environment as everything else.

:class:`ServeSettings` extends :class:`components.settings.StoreSettings`, so
the server finds the registry through exactly the variables ``digits run`` uses
(``DIGITS_S3_*``, ``DIGITS_BUCKET``, ``DIGITS_HOME``) and holds only what the
server uses besides.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from components.settings import StoreSettings


class ServeSettings(StoreSettings):
    """``DIGITS_<FIELD>`` settings of the HTTP server (and its gunicorn workers)."""

    model_name: str = Field(
        default="digits", description="Name the model answers to in /v1 and /v2 URLs."
    )
    poll_interval_s: float = Field(
        default=10.0, gt=0,
        description="How often each worker re-reads the production pointer.",
    )
    max_body_bytes: int = Field(
        default=16 * 1024 * 1024, gt=0,
        description="Largest request body accepted; larger ones get 413.",
    )
    max_batch: int = Field(
        default=4096, gt=0, description="Most images in one request; more get 413."
    )
    max_image_pixels: int = Field(
        default=25_000_000, gt=0,
        description="Largest uploaded image (width x height); guards against decompression bombs.",
    )
    workers: int = Field(default=2, gt=0, description="gunicorn worker processes.")
    worker_class: str = Field(
        default="sync", pattern="^(sync|gthread)$",
        description="gunicorn worker type: sync (one request per process at a time, the "
                    "kernel balances them: best tail latency) or gthread (keep-alive, threads).",
    )
    max_wait_ms: int = Field(
        default=250, ge=0,
        description="sync workers: a request that waited longer than this for a worker gets "
                    "an immediate 503 with Retry-After instead of an ever longer wait.",
    )
    threads: int = Field(
        default=4, gt=0,
        description="Threads per gthread worker; concurrent requests then share forward passes.",
    )
    predict_threads: int = Field(
        default=1, gt=0,
        description="Threads a model may use per forward pass (workers already fill the cores).",
    )
    batching: bool = Field(
        default=True,
        description="Merge requests that arrive while the model is busy into one forward pass.",
    )
    access_log: bool = Field(default=True, description="One JSON line per request.")
    log_level: str = Field(default="INFO", description="Level of the server's own logs.")
    registry_timeout_s: float = Field(
        default=10.0, gt=0,
        description="Connect/read timeout on registry calls, so a dead store never hangs a poll.",
    )
    feedback_rate_limit: str = Field(
        default="30/minute",
        description="Feedback posts one client address may make (per worker), e.g. 30/minute; "
                    "more get a 429 with Retry-After, so one browser cannot flood the bucket.",
    )
    model_cache_dir: Path | None = Field(
        default=None,
        description="Where workers unpack downloaded models; unset means a private temp dir.",
    )


def get_serve_settings() -> ServeSettings:
    """Read settings now, never at import time (tests and the CLI set the environment first)."""
    return ServeSettings()
