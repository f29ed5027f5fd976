"""Prometheus metrics of the server, correct across its several worker processes.

With ``PROMETHEUS_MULTIPROC_DIR`` set (``digits serve`` and the image always
set it) every worker writes its samples to files there and ``/metrics``
aggregates them, whichever worker answers the scrape. Without it (the Flask
test client) the metrics live in a private registry of the app, so several
apps in one process never collide.

Metric objects are built by :class:`Metrics`, never at import time, and
``prometheus_client`` itself is imported only then: it picks single- or
multi-process mode when first imported, so ``digits serve`` must set the
directory before that happens in the process that forks the workers.
"""

from __future__ import annotations

import os
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower())


class Metrics:
    """Every metric the server exports, created once per app."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary

        from components.watch import CENTER_BUCKETS, CONFIDENCE_BUCKETS, INK_BUCKETS

        self.multiprocess = multiprocess_dir() is not None
        # In multiprocess mode samples are collected from files, not from a registry.
        self.registry = None if self.multiprocess else CollectorRegistry()
        reg = {"registry": self.registry}
        self.requests = Counter(
            "digits_http_requests", "HTTP requests by route, method and status.",
            ["route", "method", "status"], **reg,
        )
        self.latency = Histogram(
            "digits_http_request_duration_seconds", "Time to answer a request, by route.",
            ["route"], buckets=LATENCY_BUCKETS, **reg,
        )
        self.shed = Counter(
            "digits_http_shed", "Requests answered 503 at once because too many were waiting.",
            **reg,
        )
        self.batch_size = Histogram(
            "digits_request_batch_size", "Images per prediction request.",
            buckets=BATCH_BUCKETS, **reg,
        )
        self.forward_batch = Histogram(
            "digits_forward_batch_size",
            "Images per forward pass of the model (requests merged while it was busy).",
            buckets=BATCH_BUCKETS, **reg,
        )
        self.images = Counter("digits_predicted_images", "Images classified.", **reg)
        self.model_info = Gauge(
            "digits_model_info", "1 for the model version each worker serves.",
            ["version", "kind"], multiprocess_mode="liveall", **reg,
        )
        self.ready = Gauge(
            "digits_model_ready", "1 when the worker has a model loaded.",
            multiprocess_mode="liveall", **reg,
        )
        self.reloads = Counter(
            "digits_model_reloads", "Attempts to load a new production model, by result.",
            ["result"], **reg,
        )
        self.feedback = Counter(
            "digits_feedback",
            "Labelled digits users sent back, by whether they agreed with the model "
            "(yes / no / unknown when the prediction was not sent).",
            ["agreed"], **reg,
        )
        self.registry_errors = Counter(
            "digits_registry_errors", "Polls of the registry that failed (store unreachable).",
            **reg,
        )
        # What the model is shown and answers, per version (serving.watch): the drift signals.
        self.predicted_class = Counter(
            "digits_predicted_class", "Images classified, by model version and predicted digit.",
            ["version", "class"], **reg,
        )
        self.confidence = Histogram(
            "digits_prediction_confidence", "Top-class probability of each classified image.",
            ["version"], buckets=CONFIDENCE_BUCKETS, **reg,
        )
        self.ink = Histogram(
            "digits_input_ink", "Ink mass of each classified image: mean intensity, 0..1.",
            ["version"], buckets=INK_BUCKETS, **reg,
        )
        self.center = Histogram(
            "digits_input_center", "Centre of mass of each classified image (pixels, 0..27), "
            "by axis (row, column).",
            ["version", "axis"], buckets=CENTER_BUCKETS, **reg,
        )
        self.embedding = Summary(
            "digits_input_embedding", "Each image's coordinate on one component of the "
            "version's fixed PCA embedding, standardised on its training digits (mean 0, "
            "standard deviation 1 there): sum/count is the live mean.",
            ["version", "component"], **reg,
        )
        self.payload_images = Counter(
            "digits_payload_images", "Sampled request images, by fate: written to the "
            "registry, failed (store refused), capped (over DIGITS_PAYLOAD_MAX_PER_HOUR).",
            ["result"], **reg,
        )
        self.payload_windows = Counter(
            "digits_payload_windows", "Payload windows written to the registry, by result.",
            ["result"], **reg,
        )
        # The latest `digits monitor` verdict, read back from the registry by every worker.
        self.drift = Gauge(
            "digits_drift_detected", "1 when the latest monitor verdict found drift.",
            ["version"], multiprocess_mode="livemax", **reg,
        )
        self.drift_p_value = Gauge(
            "digits_drift_p_value", "p-value of each test of the latest monitor verdict.",
            ["version", "test"], multiprocess_mode="livemin", **reg,
        )
        self.feedback_accuracy = Gauge(
            "digits_monitor_feedback_accuracy", "Accuracy on recent corrected digits in the "
            "latest monitor verdict (-1: no feedback).",
            ["version"], multiprocess_mode="livemax", **reg,
        )
        self.monitor_timestamp = Gauge(
            "digits_monitor_verdict_timestamp_seconds", "When the latest monitor verdict was "
            "made (Unix time).",
            multiprocess_mode="livemax", **reg,
        )

    def render(self) -> tuple[bytes, str]:
        """The exposition text: this process's registry, or every worker's files."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def observe_counts(child: Any, counts: Any, total: float) -> None:
    """Add many observations at once to a Histogram (``counts`` per bucket, +Inf last) or
    Summary (``counts`` an int) child: what ``observe`` would do for each value, in a few
    increments instead of one per image.

    ``prometheus_client`` has no public bulk observe; this uses the per-bucket values
    ``observe`` itself increments (``_buckets``, ``_sum``, ``_count``), and
    ``tests/serving/test_watch.py`` checks it against ``observe`` value by value.

    Nothing here imports numpy at module level: ``digits serve`` imports this module
    before it sets ``OMP_NUM_THREADS`` for the workers it forks, and numpy's BLAS sizes
    its thread pool when first imported.
    """
    if hasattr(child, "_buckets"):
        if len(counts) != len(child._buckets):
            raise ValueError(f"{len(counts)} counts for {len(child._buckets)} buckets")
        for value, count in zip(child._buckets, counts, strict=True):
            if count:
                value.inc(int(count))
    else:
        child._count.inc(int(counts))
    child._sum.inc(total)
