"""Scoring a model on the frozen holdout: one timed pass, every metric from it.

The evaluate stage scores each candidate with it and the gate scores the
production champion with it, so both are judged the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.calibration import NEUTRAL, apply_temperature
from components.contract import ModelEvaluation
from components.data import Dataset
from components.metrics import (
    ECE_BINS,
    calibration_bins,
    compute_metrics,
    directory_size_bytes,
    expected_calibration_error,
    log_loss,
    timed_predict,
)
from components.models import DigitModel, load_model, read_info


def evaluate(model: DigitModel, dataset: Dataset, *, name: str | None = None,
             model_dir: Path | None = None, info: dict | None = None) -> ModelEvaluation:
    """Predict the holdout once and compute every metric from that one pass.

    When the run trained with users' feedback digits, the model is also scored
    on them (``info["feedback"]``): shown in the report as a separate set,
    biased toward hard cases, never used by the gate.
    """
    info = dict(info or {})
    if len(dataset.y_feedback):
        right = model.predict(dataset.x_feedback) == dataset.y_feedback
        info["feedback"] = {"n": len(right), "accuracy": float(np.mean(right))}
    proba, ms_per_1000 = timed_predict(model.predict_proba, dataset.x_holdout)
    metrics = compute_metrics(
        dataset.y_holdout, proba,
        latency_ms_per_1000=ms_per_1000,
        model_size_bytes=directory_size_bytes(model_dir) if model_dir else None,
        train_seconds=info.get("train_seconds"),
    )
    if model.temperature != NEUTRAL:
        # The same holdout before calibration, for the report's reliability
        # diagram: undoing one temperature recovers them (to float precision), so
        # there is no second pass.
        raw = apply_temperature(proba, 1 / model.temperature)
        metrics["uncalibrated"] = {
            "temperature": model.temperature,
            "ece": expected_calibration_error(dataset.y_holdout, raw),
            "log_loss": log_loss(dataset.y_holdout, raw),
            "calibration": {"n_bins": ECE_BINS, "bins": calibration_bins(dataset.y_holdout, raw)},
        }
    return ModelEvaluation(
        name=name or model.kind, y_true=dataset.y_holdout, proba=proba,
        images=dataset.x_holdout, history=model.history, metrics=metrics,
        info={**info, "kind": model.kind, "params": model.params,
              "holdout_sha256": dataset.manifest.get("holdout_sha256")},
    )


def evaluate_saved(model_dir: Path, dataset: Dataset, *, name: str | None = None,
                   extra: dict | None = None) -> ModelEvaluation:
    """Evaluate a saved model directory, carrying its training facts into the evaluation."""
    info = {k: v for k, v in read_info(model_dir).items() if k != "history"}
    return evaluate(load_model(model_dir), dataset, name=name, model_dir=model_dir,
                    info={**info, **(extra or {})})
