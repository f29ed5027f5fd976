"""Serving knobs, read from the same ``DIGITS_`` environment as everything else.

:class:`ServeSettings` extends :class:`components.settings.StoreSettings`, so
the server finds the registry through exactly the variables ``digits run`` uses
(``DIGITS_S3_*``, ``DIGITS_BUCKET``, ``DIGITS_HOME``) and holds only what the
server uses besides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from components.settings import StoreSettings

#: The port each scheme implies, which a browser leaves out of an Origin.
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(value: str) -> str:
    """``scheme://host[:port]`` as a browser sends it in ``Origin``: lower case, no default
    port, no path. :class:`ValueError` for anything that is not an http(s) origin."""
    parts = urlsplit(value.strip())
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname or port == -1
            or parts.path not in ("", "/") or parts.query or parts.fragment
            or parts.username is not None):
        raise ValueError(f"{value!r} is not an origin such as https://digits.example.com")
    scheme, host = parts.scheme.lower(), parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"  # IPv6
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


class ServeSettings(StoreSettings):
    """``DIGITS_<FIELD>`` settings of the HTTP server and its worker processes."""

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
        default=16_000_000, gt=0,
        description="Largest uploaded image (width x height, read from its header before "
                    "decoding); guards against decompression bombs.",
    )
    max_request_pixels: int = Field(
        default=16_000_000, gt=0,
        description="Pixels all the images of one /predict request may hold together: "
                    "decoding cost is bounded per request, not only per image.",
    )
    max_upload_images: int = Field(
        default=64, gt=0, description="Most image files in one /predict upload; more get 413."
    )
    decode_timeout_s: float = Field(
        default=2.0, gt=0,
        description="Decoding a request's images stops with 413 once it has taken this long.",
    )
    body_timeout_s: float = Field(
        default=15.0, gt=0,
        description="A request body must arrive within this many seconds, or it gets 408.",
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0, le=60,
        description="A request's headers must arrive within this many seconds, or the "
                    "connection is closed.",
    )
    workers: int = Field(default=2, gt=0, description="Worker processes.")
    threads: int = Field(
        default=16, gt=0,
        description="Threads per worker that run the app on complete requests (slow clients "
                    "never hold one: bodies are read by the event loop first).",
    )
    concurrency: int = Field(
        default=2, gt=0,
        description="Requests (POSTs) a worker works on at once; the rest wait for a slot, "
                    "and concurrent requests share forward passes.",
    )
    max_wait_ms: int = Field(
        default=250, ge=0,
        description="A request that waited longer than this for a slot gets an immediate "
                    "503 with Retry-After instead of an ever longer wait.",
    )
    predict_threads: int = Field(
        default=1, gt=0,
        description="Threads a model may use per forward pass (workers already fill the cores).",
    )
    batching: bool = Field(
        default=True,
        description="Merge requests that arrive while the model is busy into one forward pass.",
    )
    metrics_port: int = Field(
        default=9090, ge=0, le=65535,
        description="Port of the Prometheus /metrics endpoint, apart from the public port "
                    "(0: not served).",
    )
    grpc_port: int = Field(
        default=8081, ge=0, le=65535,
        description="Port of the Open Inference Protocol's gRPC service "
                    "(inference.GRPCInferenceService; 0: not served). Every worker serves "
                    "it from its own model, sharing the port (SO_REUSEPORT).",
    )
    trusted_proxy_hops: int = Field(
        default=0, ge=0,
        description="Proxies in front that append the client's address to X-Forwarded-For; "
                    "rate limits key on the address the outermost trusted one saw.",
    )
    rate_limit_storage: str = Field(
        default="memory://",
        description="Where rate-limit counts live (a limits storage URI): memory:// (one "
                    "process), sqlite:///path (every worker of a server; digits serve sets "
                    "one), redis://host:6379 (every replica).",
    )
    predict_rate_limit: str = Field(
        default="600/minute",
        description="/predict requests one client address may make, e.g. 600/minute; "
                    "more get a 429 with Retry-After.",
    )
    access_log: bool = Field(default=True, description="One JSON line per request.")
    log_level: str = Field(default="INFO", description="Level of the server's own logs.")
    registry_timeout_s: float = Field(
        default=10.0, gt=0,
        description="Connect/read timeout on registry calls, so a dead store never hangs a poll.",
    )
    feedback_rate_limit: str = Field(
        default="30/minute",
        description="Feedback posts one client address may make, e.g. 30/minute; more get "
                    "a 429 with Retry-After, so one client cannot flood the bucket.",
    )
    allowed_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="Origins (comma-separated, e.g. https://digits.example.com) whose pages "
                    "may post /feedback from a browser; a browser request from any other "
                    "Origin gets 403. Empty: only the server's own (the request's "
                    "scheme://Host). Set it in production, behind a TLS proxy (which changes "
                    "the scheme) and against DNS rebinding (which forges the Host).",
    )
    feedback_token: SecretStr | None = Field(
        default=None,
        description="When set, /feedback from anything but the server's own page needs "
                    "'Authorization: Bearer <token>' (else 401); unset, API clients may post "
                    "without one.",
    )
    feedback_address_key: SecretStr | None = Field(
        default=None,
        description="Key of the HMAC-SHA256 feedback items store instead of the client's "
                    "address; unset, one derived from DIGITS_S3_SECRET_KEY (the same on every "
                    "worker and replica).",
    )
    watch: bool = Field(
        default=True,
        description="Record what every prediction sees (predicted classes, confidence, ink, "
                    "centre of mass, embedding) as per-version metrics, and sample payloads.",
    )
    payload_sample: float = Field(
        default=0.01, ge=0, le=1,
        description="Share of classified images kept as a payload sample in the registry "
                    "(payloads/<version>/), which `digits monitor` reads back (0: none).",
    )
    payload_max_per_hour: int = Field(
        default=3600, ge=0,
        description="Most payload images one worker keeps per clock hour, whatever the rate.",
    )
    payload_window: int = Field(
        default=200, gt=0,
        description="Sampled images per payload window file.",
    )
    payload_window_s: float = Field(
        default=300.0, gt=0,
        description="A partial payload window is written once its first image is this old.",
    )
    model_cache_dir: Path | None = Field(
        default=None,
        description="Where workers unpack downloaded models; unset means a private temp dir.",
    )

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _origins(cls, value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
        """A comma-separated list from the environment, or a list; each one normalized."""
        items = value.split(",") if isinstance(value, str) else list(value or ())
        return tuple(normalize_origin(item) for item in items if item.strip())


def get_serve_settings() -> ServeSettings:
    """Read settings now, never at import time (tests and the CLI set the environment first)."""
    return ServeSettings()
