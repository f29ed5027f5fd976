"""Classification metrics, computed once, here, for every consumer.

The evaluate stage, the gate's evidence and the report all read the same
dictionary, so a number never means two things in two places.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics as skm

from components.stem import NUM_CLASSES

LABELS = list(range(NUM_CLASSES))


def compute_metrics(y_true: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    """Holdout metrics from true labels and ``[N, 10]`` probabilities (JSON-ready)."""
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape != (len(y_true), NUM_CLASSES):
        raise ValueError(f"probabilities must be [{len(y_true)}, {NUM_CLASSES}], got {proba.shape}")
    if not np.isfinite(proba).all():
        raise ValueError("probabilities contain NaN or infinity")
    y_pred = proba.argmax(axis=1)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=LABELS, zero_division=0
    )
    return {
        "n": len(y_true),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "log_loss": float(skm.log_loss(y_true, np.clip(proba, 1e-15, 1), labels=LABELS)),
        "mcc": float(skm.matthews_corrcoef(y_true, y_pred)),
        "per_class": {
            str(c): {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for c, p, r, f, s in zip(LABELS, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=LABELS).tolist(),
    }
