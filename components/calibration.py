"""Temperature scaling: probabilities that mean what they say.

A model's probabilities are its answer to "how sure are you?", and the
drawing page, every API client and the gate read them. Training choices that
help accuracy distort them (label smoothing makes a clear 7 come out at
p ≈ 0.91; averaged test-time views flatten them further), so every family is
calibrated after training: one temperature ``T`` is fitted on the validation
split, never the holdout, by minimising its negative log-likelihood (Guo et
al., 2017), and applied to every prediction as ``softmax(log p / T)``.

One scalar cannot change which class is largest, so labels and accuracy stay
exactly as trained; a model saved before calibration existed has ``T = 1`` and
predicts exactly as it did.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

#: The temperature of an uncalibrated model: probabilities pass through unchanged.
NEUTRAL = 1.0
#: Search range of ``log T``: T from e^-3 ≈ 0.05 (sharpen ×20) to e^3 ≈ 20 (flatten ×20).
LOG_T_BOUNDS = (-3.0, 3.0)
#: Probabilities are clipped here before the log: a float32 softmax can round to 0.
_FLOOR = 1e-30


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)`` row by row, as ``float32``; ``T = 1`` returns ``proba`` itself."""
    if temperature == NEUTRAL:
        return proba
    logits = np.log(np.maximum(proba, _FLOOR, dtype=np.float64)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    scaled /= scaled.sum(axis=1, keepdims=True)
    return scaled.astype(np.float32)


def fit_temperature(proba: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the validation split's negative log-likelihood.

    The objective is convex in ``1/T`` and smooth in ``log T``, so a bounded
    scalar search finds it in a few dozen evaluations of ``N × 10`` arrays.
    """
    proba = np.asarray(proba, dtype=np.float64)
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("cannot calibrate on an empty validation split")
    log_p = np.log(np.maximum(proba, _FLOOR))
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        logits = log_p / np.exp(log_t)
        logits -= logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(logits).sum(axis=1))
        return float((log_norm - logits[rows, labels]).mean())

    result = minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded",
                             options={"xatol": 1e-4})
    return float(np.exp(result.x))
