"""The interface every model family implements, and what they share.

:class:`DigitModel` owns everything around a family's forward pass: bounded
chunks, the calibration temperature, saving ``model.json``, the inference form
(ONNX, through :func:`onnx_forward`). A family only says how to fit, how to
run its framework, and how to export.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from components.calibration import NEUTRAL, apply_temperature, fit_temperature
from components.contract import MODEL_INFO
from components.features import feature_rows

log = logging.getLogger(__name__)

#: Called after each epoch or boosting round with its number (from 1) and the validation
#: figures of that step (``accuracy`` and ``log_loss`` when the framework has them);
#: returning True ends training there. :mod:`components.tune` prunes poor trials with it.
StepHook = Callable[[int, dict[str, float]], bool]


#: Rows per forward pass when predicting large batches; bounds memory, keeps BLAS busy.
PREDICT_CHUNK = 4096


class ModelError(RuntimeError):
    """A model directory that cannot be loaded (missing file, unknown kind, bad weights)."""


class DigitModel(ABC):
    """Interface every model family implements."""

    kind: ClassVar[str]
    filename: ClassVar[str]
    #: The framework that runs it, as the inference protocol's ``platform`` names it
    #: (a model loaded from its inference form names that runtime instead).
    platform: ClassVar[str]
    #: The inference form's file name (:meth:`export`); ``None`` when the framework's
    #: own file already needs no framework (the baseline's numpy weights).
    export_filename: ClassVar[str | None] = None
    #: The runtime that reads the inference form, as ``platform`` names it.
    export_platform: ClassVar[str | None] = None
    #: What one step of its training history is (the report's x axis).
    history_step: ClassVar[str]
    defaults: ClassVar[dict[str, Any]]
    #: What a parameter meant before it existed: a model saved without it is loaded
    #: with this value, so it predicts exactly as it was trained (never the new default).
    legacy: ClassVar[dict[str, Any]] = {}

    def __init__(self, **params: Any) -> None:
        unknown = set(params) - set(self.defaults)
        if unknown:
            raise ValueError(f"{self.kind}: unknown parameters {sorted(unknown)}")
        self.params = {**self.defaults, **params}
        self.history: dict[str, list[float]] = {}
        #: Fitted after training on the validation split (:meth:`calibrate`), saved
        #: with the model; a model saved before calibration existed keeps ``NEUTRAL``.
        self.temperature = NEUTRAL
        self.on_step: StepHook | None = None

    def _step(self, step: int, figures: dict[str, float]) -> bool:
        """Hand one step's validation figures to :attr:`on_step`; True means stop here."""
        return bool(self.on_step and self.on_step(step, figures))

    @abstractmethod
    def fit(self, x_train: np.ndarray, y_train: np.ndarray,
            x_val: np.ndarray, y_val: np.ndarray) -> None:
        """Train on ``uint8`` images; validation data drives early stopping and curves."""

    @abstractmethod
    def _predict_proba(self, images: np.ndarray) -> np.ndarray: ...

    @abstractmethod
    def _save_weights(self, path: Path) -> None: ...

    @abstractmethod
    def _load_weights(self, path: Path) -> None: ...

    def predict_proba(self, images: np.ndarray, *, calibrated: bool = True) -> np.ndarray:
        """Class probabilities ``float32 [N, 10]``, predicted in bounded chunks.

        Every caller (evaluate, the server, the Kaggle job) gets calibrated
        probabilities; ``calibrated=False`` is for fitting and reporting the
        calibration itself.
        """
        if len(images) <= PREDICT_CHUNK:  # the server's case: no copies
            proba = self._predict_proba(images).astype(np.float32, copy=False)
        else:
            proba = np.concatenate([
                self._predict_proba(images[start:start + PREDICT_CHUNK])
                for start in range(0, len(images), PREDICT_CHUNK)
            ]).astype(np.float32, copy=False)
        return apply_temperature(proba, self.temperature) if calibrated else proba

    def calibrate(self, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Fit the temperature on held-out digits (the validation split); return its facts.

        Never the holdout: the gate and the report judge calibration there.
        """
        from components.metrics import expected_calibration_error

        raw = self.predict_proba(images, calibrated=False)
        self.temperature = fit_temperature(raw, labels)
        scaled = apply_temperature(raw, self.temperature)
        return {"temperature": self.temperature, "fitted_on": len(labels),
                "validation_ece_before": expected_calibration_error(labels, raw),
                "validation_ece_after": expected_calibration_error(labels, scaled)}

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.predict_proba(images).argmax(axis=1)

    def features(self, images: np.ndarray) -> np.ndarray:
        """``float32 [N, D]`` rows: the family's feature set (``params["features"]``)."""
        return feature_rows(self.params.get("features", "raw"))(images)

    def set_threads(self, threads: int) -> None:  # noqa: B027 - optional hook, no-op default
        """Cap the cores one forward pass may use (a server's workers share the machine).

        Only XGBoost can change its pool after loading; TensorFlow and BLAS fix
        theirs at start-up (digits serve sets them through the environment).
        """

    def export(self, directory: Path) -> Path | None:
        """Write the inference form into ``directory``; ``None`` if the family has none.

        Needs the framework (it runs at deploy, in the training image). Checking
        that the form predicts what the framework does is the caller's
        (:func:`components.export.export_checked`): an unchecked export is never recorded.
        """
        if self.export_filename is None:
            return None
        path = Path(directory) / self.export_filename
        self._export(path)
        return path

    def _export(self, path: Path) -> None:
        raise NotImplementedError(f"{self.kind} has no inference form")

    def _load_export(self, path: Path) -> None:
        raise NotImplementedError(f"{self.kind} has no inference form")

    @property
    def exported(self) -> bool:
        """Whether predictions come from the inference form (not the framework)."""
        return self.export_platform is not None and self.platform == self.export_platform

    def save(self, directory: Path, **info: Any) -> list[Path]:
        """Write the weights and ``model.json`` (kind, params, history, extra info)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_weights(directory / self.filename)
        meta = {"kind": self.kind, "params": self.params, "history": self.history,
                "temperature": self.temperature, **info}
        (directory / MODEL_INFO).write_text(json.dumps(meta, indent=2, default=float))
        return [directory / self.filename, directory / MODEL_INFO]


#: Triton's name for an ONNX model on onnxruntime: every inference form's platform.
ONNX_PLATFORM = "onnxruntime_onnx"


def onnx_forward(graph: bytes, threads: int):
    """``x -> first output`` through one onnxruntime session, ``threads`` cores (0: all).

    A session owns its thread pool, so a thread cap means a new session (tens of
    milliseconds, once per process: prefork workers each build their own after
    the fork). One pass at a time runs sequentially on those threads.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]
