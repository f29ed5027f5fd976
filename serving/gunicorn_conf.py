"""gunicorn configuration (``gunicorn -c python:serving.gunicorn_conf``).

gunicorn reads this module's globals; they come from ``DIGITS_*`` so the
container, ``digits serve`` and a bare ``gunicorn`` command line agree.
Hooks: wipe stale Prometheus files at start, start each worker's model poller
right after it boots (not only at its first request), and tell Prometheus
when a worker dies so its gauges disappear.

Worker model (``DIGITS_WORKER_CLASS``): ``sync`` by default — one process
per core, each answering one request at a time, new requests waiting in the
kernel's accept queue and going to whichever worker is free. Measured with
``bench/serving.py`` on 2 cores it had the best p99 at every concurrency:
``gthread`` pins keep-alive connections to a worker (uneven load at high
concurrency) and its threads queue on the GIL, which cost 2-3x in p99 for
~20% more single-image throughput. Behind a Kubernetes Service or an ingress
that buffers requests, sync workers are the standard choice for CPU-bound
work. With ``gthread``, concurrent requests in a worker share forward passes
(:class:`serving.batching.Batcher`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# prometheus_client picks single- or multi-process mode when it is first imported,
# so the directory must be set before anything imports it (``digits serve`` sets
# one; a bare ``gunicorn -c python:serving.gunicorn_conf`` gets one here).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
if not os.environ.get(MULTIPROC_ENV):
    os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="digits-metrics-")

from gunicorn.glogging import Logger  # noqa: E402

from serving.logs import logging_config  # noqa: E402
from serving.settings import get_serve_settings  # noqa: E402

_settings = get_serve_settings()


class AppLogger(Logger):
    """gunicorn's logger minus its access log: the app writes a JSON line per request.

    With a ``logconfig_dict`` gunicorn prepares every access entry (~45 µs of
    formatting) even when its access logger drops it; this skips that work.
    """

    def access(self, resp, req, environ, request_time) -> None:
        return None


bind = os.environ.get("DIGITS_BIND", "0.0.0.0:8080")
workers = _settings.workers
#: ``sync`` is gunicorn's sync worker with a bounded queue (:mod:`serving.workers`).
worker_class = ("serving.workers.SheddingSyncWorker" if _settings.worker_class == "sync"
                else _settings.worker_class)
threads = _settings.threads if worker_class == "gthread" else 1
#: Seconds a connection stays open between requests (sync: one per worker, only
#: while no other connection waits; see serving.workers).
keepalive = 5
#: A worker stuck this long is restarted; a forward pass takes milliseconds.
timeout = 60
#: On SIGTERM (a rollout), in-flight requests get this long to finish.
graceful_timeout = 25
backlog = 2048
accesslog = None  # the app writes structured access lines itself
logger_class = AppLogger
logconfig_dict = logging_config(_settings.log_level)
#: The heartbeat file on tmpfs: on overlayfs (containers) its fsync can stall workers.
worker_tmp_dir = "/dev/shm" if Path("/dev/shm").is_dir() else None
proc_name = "digits-serve"


def post_fork(server, worker) -> None:
    """Per-worker process settings, before the app (and any model) is loaded.

    Frameworks size their thread pools from the environment when first used:
    one forward pass gets ``DIGITS_PREDICT_THREADS`` cores, since the other
    workers use the rest (XGBoost is also set per booster, see serving.model).
    """
    threads = str(_settings.predict_threads)
    for name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ.setdefault(name, threads)
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")


def on_starting(server) -> None:
    """Start from an empty metrics directory: files of dead processes would be summed in."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()


def post_worker_init(worker) -> None:
    """Begin loading the production model as soon as the worker exists.

    Also move every object alive now (Flask, numpy, XGBoost, TensorFlow) out of
    the garbage collector's sight: full collections then scan only what
    requests create, which trims latency outliers.
    """
    import gc

    gc.collect()
    gc.freeze()
    server = getattr(worker.wsgi, "extensions", {}).get("digits")
    if server is not None:
        server.model.start()


def child_exit(server, worker) -> None:
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
