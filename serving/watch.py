"""What the server sees, recorded: per-version distributions as metrics, and a payload sample.

Every prediction passes through :meth:`serving.model.DigitsModel.predict`, which
hands its images and answer to :meth:`Watch.observe` (HTTP and any other
front-end alike). On the request path a few images cost one lock and a copy
into a small per-version buffer, whose statistics (:mod:`components.watch`)
are computed 64 images at a time and added into running bucket counts. A
background thread of the worker then

* moves the counts into Prometheus metrics once a second
  (:data:`FLUSH_INTERVAL_S`): predicted classes, top-class confidence, ink
  mass, centre of mass and the mean of each embedding component, by version;
* writes the sampled requests (``DIGITS_PAYLOAD_SAMPLE``, a share of images,
  at most ``DIGITS_PAYLOAD_MAX_PER_HOUR`` per worker per clock hour) to the
  registry bucket as windows (``payloads/<version>/<stamp>-…npz``, one file per
  ``DIGITS_PAYLOAD_WINDOW`` images or ``DIGITS_PAYLOAD_WINDOW_S`` seconds), so
  no request ever waits for the store;
* reads the monitor's latest verdict (``monitor/verdict.json``) and exports it
  as gauges the alert rules use.

Nothing here may fail a prediction: an error is logged once and counted.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from components.stem import IMAGE_SIDE, NUM_CLASSES
from components.watch import (
    CENTER_BUCKETS,
    CONFIDENCE_BUCKETS,
    INK_BUCKETS,
    VERDICT_KEY,
    Window,
    summarise,
    window_key,
)

if TYPE_CHECKING:
    from components.registry import Registry
    from serving.metrics import Metrics
    from serving.model import LoadedModel
    from serving.settings import ServeSettings

log = logging.getLogger(__name__)

#: How often the accumulators become metrics, and the thread looks at windows.
FLUSH_INTERVAL_S = 1.0

_CONFIDENCE = np.asarray(CONFIDENCE_BUCKETS)
_INK = np.asarray(INK_BUCKETS)
_CENTER = np.asarray(CENTER_BUCKETS)


def bucket_counts(values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Counts per Prometheus bucket (``value <= bound``), the last one being +Inf."""
    return np.bincount(np.searchsorted(bounds, values, side="left"),
                       minlength=len(bounds) + 1)


#: Requests of fewer images than this leave their statistics to be computed later,
#: together; larger ones have already amortised the per-call cost and pay their own.
DEFER_BELOW = 16
#: Deferred images a version's tally holds before the request that fills it counts
#: them all in one product (~0.1 ms, once per 64 single-image requests). Kept small
#: on purpose: counted on the flushing thread instead, a second's worth of images
#: (numpy releasing and retaking the GIL around each large operation) stalled the
#: worker's event loop for ~10 ms once a second, the p99.9 of single-image requests.
SUMMARY_BATCH = 64


class _Tally:
    """One version's observations since the last flush, as running totals.

    A request of a few images copies them and their probabilities into a
    small buffer; the statistics (:func:`components.watch.summarise`, one
    matrix product) are computed for the whole buffer at once, by the request
    that fills it (:data:`SUMMARY_BATCH`) or, for what is left, at the flush.
    Everything is added into bucket counts and sums as it is computed, so a
    flush only copies a few dozen numbers into the metrics.
    """

    def __init__(self, reference: Any = None) -> None:
        self.reference = reference
        self.images = np.empty((SUMMARY_BATCH, IMAGE_SIDE * IMAGE_SIDE), np.uint8)
        self.proba = np.empty((SUMMARY_BATCH, NUM_CLASSES), np.float32)
        self.waiting = 0
        self.count = 0
        self.classes = np.zeros(NUM_CLASSES, np.int64)
        self.confidence = np.zeros(len(_CONFIDENCE) + 1, np.int64)
        self.ink = np.zeros(len(_INK) + 1, np.int64)
        self.center = np.zeros((2, len(_CENTER) + 1), np.int64)
        #: Sums of confidence, ink, centre row, centre column.
        self.sums = np.zeros(4)
        self.embedding: np.ndarray | None = None

    def add(self, images: np.ndarray, proba: np.ndarray) -> None:
        n = len(images)
        if n >= DEFER_BELOW:
            self._count(images.reshape(n, -1), proba)
            return
        if self.waiting + n > SUMMARY_BATCH:
            self.count_waiting()
        self.images[self.waiting:self.waiting + n] = images.reshape(n, -1)
        self.proba[self.waiting:self.waiting + n] = proba
        self.waiting += n

    def count_waiting(self) -> None:
        """Count the buffered images into the totals."""
        if self.waiting:
            waiting, self.waiting = self.waiting, 0
            self._count(self.images[:waiting], self.proba[:waiting])

    def _count(self, images: np.ndarray, proba: np.ndarray) -> None:
        mass, centre, embedding = summarise(images, self.reference)
        confidence = proba.max(axis=1)
        self.count += len(images)
        self.classes += np.bincount(proba.argmax(axis=1), minlength=NUM_CLASSES)
        self.confidence += bucket_counts(confidence, _CONFIDENCE)
        self.ink += bucket_counts(mass, _INK)
        for axis in (0, 1):
            self.center[axis] += bucket_counts(centre[:, axis], _CENTER)
        self.sums += (confidence.sum(dtype=np.float64), mass.sum(dtype=np.float64),
                      *centre.sum(axis=0, dtype=np.float64))
        if embedding is not None:
            total = embedding.sum(axis=0, dtype=np.float64)
            self.embedding = total if self.embedding is None else self.embedding + total


@dataclass
class _Pending:
    """Sampled images of one version waiting to be written as a window."""

    images: list[np.ndarray] = field(default_factory=list)
    predicted: list[np.ndarray] = field(default_factory=list)
    confidence: list[np.ndarray] = field(default_factory=list)
    times: list[np.ndarray] = field(default_factory=list)
    count: int = 0
    started: float = field(default_factory=time.monotonic)


class Watch:
    """One worker's recorder; :meth:`observe` on the request path, the rest on its thread."""

    def __init__(self, settings: ServeSettings, metrics: Metrics | None,
                 registry: Callable[[], Registry]) -> None:
        self.settings = settings
        self.metrics = metrics
        self._registry = registry
        self._lock = threading.Lock()
        self._tallies: dict[str, _Tally] = {}
        self._pending: dict[str, _Pending] = {}
        self._hour = -1
        self._sampled_this_hour = 0
        self._capped = 0
        self._rng = np.random.default_rng()
        #: Images to pass over before the next one sampled.
        self._skip = 0
        self._thread: threading.Thread | None = None
        self._thread_pid: int | None = None
        self._stop = threading.Event()
        self._start_lock = threading.Lock()
        self._failed_once = False
        self._verdict_due = 0.0
        self._verdict_labels: set[tuple[str, ...]] = set()
        self.windows_written = 0

    # ------------------------------------------------------------------ request path

    def observe(self, loaded: LoadedModel, images: np.ndarray, proba: np.ndarray) -> None:
        """Record one answered batch. Never raises."""
        try:
            self._observe(loaded, images, proba)
        except Exception:  # a bug here must never cost a prediction
            if not self._failed_once:
                self._failed_once = True
                log.exception("recording a prediction failed; predictions are unaffected")

    def _observe(self, loaded: LoadedModel, images: np.ndarray, proba: np.ndarray) -> None:
        proba = np.asarray(proba)
        with self._lock:
            sample = self._sample(len(images))
            tally = self._tallies.get(loaded.version)
            if tally is None:
                tally = self._tallies[loaded.version] = _Tally(loaded.reference)
            tally.add(images, proba)
            if sample is not None:
                pending = self._pending.get(loaded.version)
                if pending is None:
                    pending = self._pending[loaded.version] = _Pending()
                kept = proba[sample]
                pending.images.append(images[sample].astype(np.uint8, copy=True))
                pending.predicted.append(kept.argmax(axis=1))
                pending.confidence.append(kept.max(axis=1).astype(np.float32))
                pending.times.append(np.full(len(sample), time.time()))
                pending.count += len(sample)
        if self._thread_pid != os.getpid():
            self.start()

    def _sample(self, n: int) -> np.ndarray | None:
        """Indices of the images of this batch to keep (``None``: none); call under the lock.

        Each image is kept with probability ``DIGITS_PAYLOAD_SAMPLE``, drawn as
        geometric gaps between kept images, so a request that keeps nothing (nearly
        all of them) costs one comparison. At most ``DIGITS_PAYLOAD_MAX_PER_HOUR``
        per clock hour; the rest are counted as capped.
        """
        rate = self.settings.payload_sample
        if rate <= 0:
            return None
        if self._skip >= n:
            self._skip -= n
            return None
        chosen = []
        position = self._skip
        while position < n:
            chosen.append(position)
            position += 1 + (int(self._rng.geometric(rate)) - 1 if rate < 1 else 0)
        self._skip = position - n
        hour = int(time.time() // 3600)
        if hour != self._hour:
            self._hour, self._sampled_this_hour = hour, 0
        room = max(self.settings.payload_max_per_hour - self._sampled_this_hour, 0)
        if room < len(chosen):
            self._capped += len(chosen) - room
            chosen = chosen[:room]
        self._sampled_this_hour += len(chosen)
        return np.asarray(chosen) if chosen else None

    # ------------------------------------------------------------------ the worker's thread

    def start(self) -> None:
        """Start this process's thread if needed (cheap; keyed by PID, as the poller)."""
        if self._thread_pid == os.getpid():
            return
        with self._start_lock:
            if self._thread_pid == os.getpid():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="digits-watch", daemon=True)
            self._thread_pid = os.getpid()
            self._thread.start()

    def stop(self) -> None:
        """Flush everything (metrics and partial windows) and stop the thread."""
        self._stop.set()
        if self._thread is not None and self._thread_pid == os.getpid():
            self._thread.join(timeout=10)
        self._thread_pid = None
        self.flush(final=True)

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL_S):
            try:
                self.flush()
            except Exception:
                log.exception("watch flush failed")

    def flush(self, *, final: bool = False) -> None:
        """Metrics now; windows that are full, old enough, or all of them when ``final``."""
        with self._lock:
            tallies, self._tallies = self._tallies, {}
            capped, self._capped = self._capped, 0
            due = {version: pending for version, pending in self._pending.items()
                   if final or pending.count >= self.settings.payload_window
                   or time.monotonic() - pending.started >= self.settings.payload_window_s}
            for version in due:
                del self._pending[version]
        if self.metrics is not None:
            for version, tally in tallies.items():
                self._export(version, tally)
            if capped:
                self.metrics.payload_images.labels("capped").inc(capped)
        for version, pending in due.items():
            self._write(version, pending)
        if not final and time.monotonic() >= self._verdict_due:
            self._verdict_due = time.monotonic() + self.settings.poll_interval_s
            self._read_verdict()

    def _export(self, version: str, tally: _Tally) -> None:
        from serving.metrics import observe_counts

        m = self.metrics
        assert m is not None
        tally.count_waiting()
        if not tally.count:
            return
        for label, count in enumerate(tally.classes):
            if count:
                m.predicted_class.labels(version, str(label)).inc(int(count))
        confidence_sum, ink_sum, *center_sums = tally.sums
        observe_counts(m.confidence.labels(version), tally.confidence, float(confidence_sum))
        observe_counts(m.ink.labels(version), tally.ink, float(ink_sum))
        for axis, name in enumerate(("row", "column")):
            observe_counts(m.center.labels(version, name), tally.center[axis],
                           float(center_sums[axis]))
        if tally.embedding is not None:
            for component, total in enumerate(tally.embedding):
                observe_counts(m.embedding.labels(version, str(component)), tally.count,
                               float(total))

    def _write(self, version: str, pending: _Pending) -> None:
        window = Window(version,
                        np.concatenate(pending.images).reshape(-1, IMAGE_SIDE, IMAGE_SIDE),
                        np.concatenate(pending.predicted), np.concatenate(pending.confidence),
                        np.concatenate(pending.times))
        try:
            self._registry().append(window_key(version), window.to_bytes(),
                                    "application/octet-stream")
        except Exception as error:  # the store is down or refuses: the sample is lost
            log.warning("could not write a payload window of %d images: %s", len(window),
                        error, extra={"event": "payload_error", "error": str(error)})
            if self.metrics is not None:
                self.metrics.payload_images.labels("failed").inc(len(window))
                self.metrics.payload_windows.labels("failed").inc()
            return
        self.windows_written += 1
        if self.metrics is not None:
            self.metrics.payload_images.labels("written").inc(len(window))
            self.metrics.payload_windows.labels("written").inc()

    def _read_verdict(self) -> None:
        """Export the monitor's latest verdict, if there is one (the alerts read it)."""
        if self.metrics is None:
            return
        try:
            raw = self._registry().read(VERDICT_KEY)
        except Exception as error:
            log.debug("no monitor verdict: %s", error)
            return
        if raw is None:
            return
        try:
            verdict: dict[str, Any] = json.loads(raw)
            version = str(verdict["version"])
            drift = 1.0 if verdict["drift"] else 0.0
            tests = {str(name): float(test["p_value"])
                     for name, test in verdict.get("tests", {}).items()}
            accuracy = verdict.get("feedback_accuracy")
            at = float(verdict.get("timestamp", 0))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            log.warning("ignoring an unreadable %s: %s", VERDICT_KEY, error)
            return
        m = self.metrics
        m.drift.labels(version).set(drift)
        for name, p_value in tests.items():
            m.drift_p_value.labels(version, name).set(p_value)
        m.feedback_accuracy.labels(version).set(-1.0 if accuracy is None else float(accuracy))
        m.monitor_timestamp.set(at)
