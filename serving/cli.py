"""``digits serve``: the HTTP server (granian, worker processes) against the project's registry.

The registry is the one ``digits run`` publishes to: the configured S3 store
(``DIGITS_S3_*``) or, when none is configured, the embedded store under
``DIGITS_HOME`` (joined if ``digits run`` already started it).

granian runs in this process and forks the workers; each runs
:func:`serving.front.create_front` (the Flask app behind a buffering RSGI
front) and its own gRPC server on ``DIGITS_GRPC_PORT``, the workers sharing that
port (:mod:`serving.grpc_server`). This process also serves the workers'
aggregated Prometheus metrics on ``DIGITS_METRICS_PORT``, apart from the public
port, and gives the workers one SQLite file for rate-limit counts, so a client's
limit holds whichever worker answers. SIGTERM and SIGINT stop it gracefully: in-flight requests
finish first (a Kubernetes rollout, Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator

from serving.metrics import MULTIPROC_ENV
from serving.settings import ServeSettings, get_serve_settings

TARGET = "serving.front:create_front"
DEFAULT_HOST = "0.0.0.0"
#: Where the workers learn ``--host`` (serving.grpc_server reads it; grpc itself must not
#: be imported here, before granian forks the workers).
GRPC_HOST_ENV = "DIGITS_SERVE_HOST"
#: On SIGTERM (a rollout), in-flight requests get this long to finish.
GRACEFUL_TIMEOUT_S = 25
BACKLOG = 2048


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digits serve",
        description="Serve the production model (Open Inference Protocol v2, v1, /predict, "
                    "a drawing page at /) with granian.",
    )
    parser.add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to bind, HTTP and gRPC (default {DEFAULT_HOST})")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default DIGITS_WORKERS, else 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per worker running the app (default DIGITS_THREADS, "
                             "else 16)")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="port of /metrics (default DIGITS_METRICS_PORT, else 9090; "
                             "0: none)")
    parser.add_argument("--grpc-port", type=int, default=None,
                        help="port of the Open Inference Protocol's gRPC service (default "
                             "DIGITS_GRPC_PORT, else 8081; 0: none)")
    return parser


@contextlib.contextmanager
def metrics_directory() -> Iterator[str]:
    """``PROMETHEUS_MULTIPROC_DIR`` for the workers: the given one, or a private temp dir.

    Files of processes that are gone would be summed in, so a private one starts empty.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        os.makedirs(given, exist_ok=True)
        yield given
        return
    directory = tempfile.mkdtemp(prefix="digits-metrics-")
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def shared_rate_limits(settings: ServeSettings) -> Iterator[str]:
    """A rate-limit storage every worker shares: the configured one, or a SQLite file."""
    if settings.rate_limit_storage != "memory://":
        yield settings.rate_limit_storage
        return
    directory = tempfile.mkdtemp(prefix="digits-limits-")
    try:
        yield f"sqlite://{directory}/limits.db"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def port_taken(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound now (``None`` if it can).

    The workers bind the gRPC port with ``SO_REUSEPORT``, which would silently share it
    with a stale server of the same user; a plain bind here refuses that first.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, port))
    except OSError as error:
        return error.strerror or str(error)
    return None


def serve_metrics(host: str, port: int) -> None:
    """Serve every worker's metrics on ``port`` from a thread of this (the main) process."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(port, addr=host, registry=registry)


def granian_server(settings: ServeSettings, *, host: str, port: int):
    """The granian server ``digits serve`` runs (built, not started)."""
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.http import HTTP1Settings
    from granian.server import Server

    from serving.logs import logging_config

    return Server(
        TARGET, factory=True, address=host, port=port, interface=Interfaces.RSGI, loop=Loops.uvloop,
        workers=settings.workers, http=HTTPModes.http1, websockets=False, backlog=BACKLOG,
        http1_settings=HTTP1Settings(header_read_timeout=int(settings.header_timeout_s * 1000)),
        log_access=False, log_dictconfig=logging_config(settings.log_level),
        respawn_failed_workers=True, workers_kill_timeout=GRACEFUL_TIMEOUT_S,
    )


def serve(settings: ServeSettings, *, host: str, port: int) -> int:
    from components.s3local import s3_environment

    with contextlib.ExitStack() as stack:
        if not settings.s3_configured:
            # Exports DIGITS_S3_* into os.environ, which the workers inherit.
            stack.enter_context(s3_environment(settings, identity="serving"))
        os.environ[MULTIPROC_ENV] = stack.enter_context(metrics_directory())
        os.environ["DIGITS_RATE_LIMIT_STORAGE"] = stack.enter_context(
            shared_rate_limits(settings))
        # Frameworks size their thread pools from these when first used: one forward
        # pass gets DIGITS_PREDICT_THREADS cores, since the other workers use the rest.
        for name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
            os.environ.setdefault(name, str(settings.predict_threads))
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
        if settings.metrics_port:
            serve_metrics(host, settings.metrics_port)
        metrics = (f", metrics on :{settings.metrics_port}/metrics"
                   if settings.metrics_port else "")
        grpc = f", gRPC on :{settings.grpc_port}" if settings.grpc_port else ""
        print(f"digits serve: http://{host}:{port}/ (model {settings.model_name!r}, "
              f"bucket {settings.bucket!r}, {settings.workers} workers{grpc}{metrics})",
              file=sys.stderr, flush=True)
        granian_server(settings, host=host, port=port).serve()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("workers", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"digits serve: --{name} must be at least 1", file=sys.stderr)
            return 2
    overrides = {name: getattr(args, name)
                 for name in ("workers", "threads", "metrics_port", "grpc_port")
                 if getattr(args, name) is not None}
    for name, value in overrides.items():  # the workers read their settings again
        os.environ[f"DIGITS_{name.upper()}"] = str(value)
    try:
        settings = get_serve_settings()
    except ValueError as error:  # pydantic's ValidationError: a malformed DIGITS_* variable
        print(f"digits serve: bad settings: {error}", file=sys.stderr)
        return 2
    if settings.metrics_port and settings.metrics_port == args.port:
        print("digits serve: the metrics port must differ from --port", file=sys.stderr)
        return 2
    if settings.grpc_port and settings.grpc_port in (args.port, settings.metrics_port):
        print("digits serve: the gRPC port must differ from --port and the metrics port",
              file=sys.stderr)
        return 2
    if settings.grpc_port and (problem := port_taken(args.host, settings.grpc_port)):
        print(f"digits serve: cannot serve gRPC on {args.host}:{settings.grpc_port}: {problem}",
              file=sys.stderr)
        return 2
    os.environ[GRPC_HOST_ENV] = args.host  # the workers bind gRPC where HTTP is
    return serve(settings, host=args.host, port=args.port)


if __name__ == "__main__":
    sys.exit(main())
