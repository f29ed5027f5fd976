"""``digits serve``: run the HTTP server under gunicorn against the project's registry.

The registry is the one ``digits run`` publishes to: the configured S3 store
(``DIGITS_S3_*``) or, when none is configured, the embedded store under
``DIGITS_HOME`` (joined if ``digits run`` already started it). gunicorn runs
as a child process; SIGTERM/SIGINT/SIGHUP are passed on to it, so a
Kubernetes rollout or Ctrl-C drains in-flight requests before exit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator

from serving.metrics import MULTIPROC_ENV
from serving.settings import ServeSettings, get_serve_settings

APP = "serving.app:create_app()"
CONFIG = "python:serving.gunicorn_conf"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digits serve",
        description="Serve the production model (Open Inference Protocol v2, v1, /predict, "
                    "a drawing page at /) under gunicorn.",
    )
    parser.add_argument("--port", type=int, default=8080, help="TCP port (default 8080)")
    parser.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes (default DIGITS_WORKERS, else 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per worker (default DIGITS_THREADS, else 4)")
    return parser


@contextlib.contextmanager
def metrics_directory() -> Iterator[str]:
    """``PROMETHEUS_MULTIPROC_DIR`` for the workers: the given one, or a private temp dir."""
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


def gunicorn_command(host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "gunicorn", "--config", CONFIG,
            "--bind", f"{host}:{port}", APP]


def run_gunicorn(command: list[str], env: dict[str, str]) -> int:
    """Run gunicorn in the foreground, forwarding stop/reload signals; its exit code."""
    process = subprocess.Popen(command, env=env)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        return process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if process.poll() is None:
            process.terminate()
            process.wait()


def serve(settings: ServeSettings, *, host: str, port: int, workers: int | None = None,
          threads: int | None = None) -> int:
    from components.s3local import s3_environment

    with contextlib.ExitStack() as stack:
        if not settings.s3_configured:
            # Exports DIGITS_S3_* into os.environ, which the workers inherit.
            stack.enter_context(s3_environment(settings, identity="serving"))
        env = dict(os.environ)
        env[MULTIPROC_ENV] = stack.enter_context(metrics_directory())
        if workers is not None:
            env["DIGITS_WORKERS"] = str(workers)
        if threads is not None:
            env["DIGITS_THREADS"] = str(threads)
        print(f"digits serve: http://{host}:{port}/ (model {settings.model_name!r}, "
              f"bucket {settings.bucket!r})", file=sys.stderr, flush=True)
        return run_gunicorn(gunicorn_command(host, port), env)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("workers", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"digits serve: --{name} must be at least 1", file=sys.stderr)
            return 2
    try:
        settings = get_serve_settings()
    except ValueError as error:  # pydantic's ValidationError: a malformed DIGITS_* variable
        print(f"digits serve: bad settings: {error}", file=sys.stderr)
        return 2
    return serve(settings, host=args.host, port=args.port, workers=args.workers,
                 threads=args.threads)


if __name__ == "__main__":
    sys.exit(main())
