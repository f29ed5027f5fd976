"""The served model: loaded from the registry's production pointer, swapped in place.

Shaped like an MLServer/KServe runtime: :meth:`DigitsModel.load` brings in
what production points at and sets :attr:`DigitsModel.ready`, which the
readiness probe reports; :meth:`DigitsModel.predict` answers requests.

Rollover without a failed request:

* a loaded model is an immutable :class:`LoadedModel` (version, weights,
  metadata); the live one is a single attribute, replaced by one assignment;
* a request reads that attribute once, at its start, and uses the object it got
  to the end, so it can never mix two versions, and an old model stays alive
  for as long as a request still holds it;
* a new version is downloaded, checked and loaded completely *before* the swap;
  anything wrong with it (pointer/metadata/file checksums, load error, a
  forward pass that does not produce probabilities) leaves the current model
  serving, is logged, counted, and retried later with back-off;
* every worker process runs its own polling thread, started lazily in the
  worker (after the fork), so the processes converge independently and a dead
  registry only ever delays a rollover.

Requests that arrive while the model is busy are merged into one forward pass
(:class:`serving.batching.Batcher`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.models import DigitModel, load_model
from components.registry import Pointer, Registry
from components.stem import IMAGE_SIDE, NUM_CLASSES
from components.watch import Reference
from serving.batching import Batcher
from serving.metrics import Metrics
from serving.settings import ServeSettings
from serving.watch import Watch

log = logging.getLogger(__name__)

#: Longest wait before retrying a version that was refused.
MAX_RETRY_S = 300.0


class ModelNotReady(RuntimeError):
    """No model is loaded yet (or the requested version is not the one serving)."""


class ModelRejected(RuntimeError):
    """A production version that failed its checks; the current model keeps serving."""


@dataclass(frozen=True)
class LoadedModel:
    """One version, fully loaded and checked: what a request holds on to."""

    version: str
    kind: str
    model: DigitModel
    metadata: dict[str, Any]
    metadata_sha256: str
    loaded_at: float
    directory: Path
    #: The version's training reference (``None`` for a version stored without one).
    reference: Reference | None = None

    @property
    def platform(self) -> str:
        return self.model.platform

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(images)


@dataclass
class Prediction:
    """A request's answer, tagged with the version that produced it."""

    version: str
    kind: str
    probabilities: np.ndarray  # float32 [N, 10]

    @property
    def labels(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)


def make_registry(settings: ServeSettings) -> Registry:
    """The registry with short timeouts: the poll loop must notice a dead store quickly."""
    return Registry.from_settings(settings, timeout_s=settings.registry_timeout_s)


class DigitsModel:
    """The model behind the API: ``load()``, ``predict()``, ``ready``, and its poller."""

    def __init__(self, settings: ServeSettings, *, metrics: Metrics | None = None,
                 registry: Registry | None = None) -> None:
        self.name = settings.model_name
        self.settings = settings
        self.metrics = metrics
        self._registry = registry
        self._current: LoadedModel | None = None
        self._load_lock = threading.Lock()
        self._refused: dict[tuple[str, str], tuple[int, float]] = {}
        self._poller: threading.Thread | None = None
        self._poller_pid: int | None = None
        self._stop = threading.Event()
        self._cache_root: Path | None = None
        self._cache_root_pid: int | None = None
        self._start_lock = threading.Lock()
        # Only a worker that works on several requests at once has requests to merge.
        concurrent = settings.concurrency > 1
        self._batcher = Batcher(metrics) if settings.batching and concurrent else None
        self.last_error: str | None = None
        #: Records what every prediction saw (metrics, payload sample); None when disabled.
        self.watch = Watch(settings, metrics, lambda: self.registry) if settings.watch else None

    # ------------------------------------------------------------------ state

    @property
    def current(self) -> LoadedModel | None:
        """The serving model; read it once per request and keep the reference."""
        return self._current

    @property
    def ready(self) -> bool:
        return self._current is not None

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = make_registry(self.settings)
        return self._registry

    # ------------------------------------------------------------------ loading

    def load(self, *, force: bool = False) -> bool:
        """Poll once: load what production points at if it changed; True if swapped.

        Never raises: an unreachable registry or a bad version is logged and
        counted, and the current model (if any) keeps serving. ``force``
        retries a refused version without waiting for its back-off.
        """
        with self._load_lock:
            try:
                pointer = self.registry.production()
            except Exception as error:  # network, auth, a garbled pointer: all survivable
                self._note_registry_error(error)
                return False
            if pointer is None:
                if self._current is None and self.last_error is None:
                    log.info("no production model in the registry yet; polling every %ss",
                             self.settings.poll_interval_s)
                    self.last_error = "no production model in the registry yet"
                return False
            key = (pointer.version, pointer.metadata_sha256)
            current = self._current
            if current is not None and (current.version, current.metadata_sha256) == key:
                return False
            attempts, retry_at = self._refused.get(key, (0, 0.0))
            if attempts and not force and time.monotonic() < retry_at:
                return False
            try:
                loaded = self._fetch(pointer)
            except Exception as error:
                self._refuse(key, attempts, error)
                return False
            self._refused.pop(key, None)
            self._swap(loaded)
            return True

    def _fetch(self, pointer: Pointer) -> LoadedModel:
        """Download, verify and load one version, or raise saying why it is refused."""
        directory = Path(tempfile.mkdtemp(prefix=f"{pointer.version}-", dir=self._cache()))
        try:
            metadata = self.registry.download_production(pointer, directory / "model")
            model = load_model(directory / "model")
            if metadata.get("kind") not in (None, model.kind):
                raise ModelRejected(
                    f"{pointer.version}: metadata says {metadata.get('kind')!r}, "
                    f"files hold {model.kind!r}"
                )
            model.set_threads(self.settings.predict_threads)
            self._smoke_test(pointer.version, model)
            reference = self._reference(pointer.version, directory / "model")
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return LoadedModel(pointer.version, model.kind, model, metadata,
                           pointer.metadata_sha256, time.time(), directory, reference)

    @staticmethod
    def _reference(version: str, directory: Path) -> Reference | None:
        """The version's training reference; a broken one only costs the embedding metrics
        (the model itself passed every check), so it is logged, not refused."""
        try:
            return Reference.load(directory)
        except ValueError as error:
            log.warning("%s: no drift embedding: %s", version, error,
                        extra={"event": "reference_refused", "version": version})
            return None

    @staticmethod
    def _smoke_test(version: str, model: DigitModel) -> None:
        """Forward passes before the swap: a model that loads but cannot predict is refused."""
        probe = np.zeros((3, IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
        probe[1, 8:20, 13:15] = 255  # a stroke, so the rows differ
        probe[2] = np.random.default_rng(0).integers(0, 256, probe[2].shape, dtype=np.uint8)
        proba = np.asarray(model.predict_proba(probe))
        if proba.shape != (len(probe), NUM_CLASSES) or not np.isfinite(proba).all():
            raise ModelRejected(f"{version}: a test prediction gave shape {proba.shape} "
                                "or non-finite values")
        if not np.allclose(proba.sum(axis=1), 1.0, atol=1e-3):
            raise ModelRejected(f"{version}: test probabilities do not sum to 1")
        # A single image may take another code path (XGBoost's goes through
        # Treelite); it must give the same answer, and is warmed up here.
        single = np.concatenate([model.predict_proba(probe[i:i + 1]) for i in range(len(probe))])
        if not np.allclose(single, proba, atol=1e-5):
            raise ModelRejected(f"{version}: single-image predictions differ from batch ones "
                                f"(max |diff| {np.abs(single - proba).max():.2e})")

    def _swap(self, loaded: LoadedModel) -> None:
        previous = self._current
        self._current = loaded  # the one atomic step; requests already running keep theirs
        self.last_error = None
        log.info("serving model %s (%s)%s", loaded.version, loaded.kind,
                 f", replacing {previous.version}" if previous else "",
                 extra={"event": "model_loaded", "version": loaded.version,
                        "kind": loaded.kind,
                        "previous": previous.version if previous else None})
        if self.metrics is not None:
            self.metrics.reloads.labels("success").inc()
            if previous is not None:
                self.metrics.model_info.labels(previous.version, previous.kind).set(0)
            self.metrics.model_info.labels(loaded.version, loaded.kind).set(1)
            self.metrics.ready.set(1)
        if previous is not None:
            # Weights are in memory; the files are no longer needed by anyone.
            shutil.rmtree(previous.directory, ignore_errors=True)

    def _refuse(self, key: tuple[str, str], attempts: int, error: BaseException) -> None:
        attempts += 1
        delay = min(self.settings.poll_interval_s * 2 ** attempts, MAX_RETRY_S)
        self._refused[key] = (attempts, time.monotonic() + delay)
        self.last_error = f"{key[0]}: {error}"
        serving = self._current.version if self._current else None
        log.error("refused production model %s (attempt %d, retry in %.0fs): %s; "
                  "still serving %s", key[0], attempts, delay, error, serving,
                  extra={"event": "model_refused", "version": key[0], "error": str(error),
                         "serving": serving})
        if self.metrics is not None:
            self.metrics.reloads.labels("failure").inc()

    def _note_registry_error(self, error: BaseException) -> None:
        self.last_error = f"registry: {error}"
        log.warning("registry unreachable, keeping %s: %s",
                    self._current.version if self._current else "no model", error,
                    extra={"event": "registry_error", "error": str(error)})
        if self.metrics is not None:
            self.metrics.registry_errors.inc()

    def _cache(self) -> Path:
        if self._cache_root is None or self._cache_root_pid != os.getpid():
            base = self.settings.model_cache_dir
            if base is not None:
                Path(base).mkdir(parents=True, exist_ok=True)
            self._cache_root = Path(tempfile.mkdtemp(prefix="digits-models-",
                                                     dir=base))
            self._cache_root_pid = os.getpid()
        return self._cache_root

    # ------------------------------------------------------------------ predicting

    def predict(self, images: np.ndarray, loaded: LoadedModel | None = None) -> Prediction:
        """Probabilities from one model version (``loaded``, or the current one)."""
        loaded = loaded or self._current
        if loaded is None:
            raise ModelNotReady(f"model {self.name} is not ready: no version loaded yet")
        if self._batcher is not None:
            proba = self._batcher.predict(loaded, images)
        else:
            if self.metrics is not None:
                self.metrics.forward_batch.observe(len(images))
            proba = loaded.predict_proba(images)
        if self.watch is not None:
            self.watch.observe(loaded, images, proba)
        return Prediction(loaded.version, loaded.kind, proba)

    # ------------------------------------------------------------------ polling

    def start(self) -> None:
        """Start this process's poller if it is not running (cheap; call on every request).

        Keyed by PID: a thread does not survive ``fork``, so a worker forked from
        a process that had one starts its own.
        """
        if self._poller_pid == os.getpid():
            return
        with self._start_lock:
            if self._poller_pid == os.getpid():
                return
            self._stop.clear()
            self._poller = threading.Thread(target=self._poll_forever,
                                            name="digits-model-poller", daemon=True)
            self._poller_pid = os.getpid()
            self._poller.start()
        if self.watch is not None:
            self.watch.start()

    def _poll_forever(self) -> None:
        while not self._stop.is_set():
            try:
                self.load()
            except Exception:  # load() catches everything; this is the last line of defence
                log.exception("model poll failed")
            self._stop.wait(self.settings.poll_interval_s)

    def stop(self) -> None:
        """Stop the poller (tests, and a worker shutting down)."""
        self._stop.set()
        if self._poller is not None and self._poller_pid == os.getpid():
            self._poller.join(timeout=5)
        self._poller_pid = None
        if self.watch is not None:
            self.watch.stop()  # writes the partial payload windows

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.ready and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.ready
