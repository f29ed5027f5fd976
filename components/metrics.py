"""Classification metrics, computed once, here, for every consumer.

The evaluate stage, the gate's evidence, the KFP UI and the report all read the
same dictionary from :func:`compute_metrics`, so a number never means two
things in two places. Everything returned is JSON-ready: plain ``int``/``float``
/``str``/``list``/``dict``, and ``None`` where a value is undefined (say, the
ROC-AUC of a digit that never occurs in the holdout) instead of ``NaN``, which
strict JSON cannot carry.

:func:`compute_metrics` is pure: it sees labels and probabilities only.
Latency, model size and training time are measured by the caller (helpers
:func:`timed_predict` and :func:`directory_size_bytes` live here too) and passed
in, so the same predictions always give the same metrics.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from sklearn import metrics as skm

from components.stem import NUM_CLASSES

LABELS = list(range(NUM_CLASSES))
DIGITS = [str(c) for c in LABELS]
#: Equal-width confidence bins for the expected calibration error (Guo et al., 2017).
ECE_BINS = 15
#: Below this many holdout digits the 95% interval is wide enough to warn about.
SMALL_HOLDOUT = 1000
#: Two-sided 95% normal quantile, ``scipy.stats.norm.ppf(0.975)``.
Z_95 = 1.959963984540054
#: Probabilities are clipped here before the logarithm, so one confident miss
#: costs ``-log(1e-15) ≈ 34.5`` rather than infinity.
LOG_EPS = 1e-15
#: Rows must sum to 1 within this; anything further off is not a probability
#: vector (logits, a broken softmax) and would make every metric meaningless.
SUM_TOLERANCE = 1e-3
#: Points kept on a curve handed to the KFP UI; more only slows the UI down.
KFP_CURVE_POINTS = 200


# --------------------------------------------------------------------------- validation


def validate_predictions(y_true: Any, proba: Any) -> tuple[np.ndarray, np.ndarray]:
    """Check labels and probabilities; return ``(int64 [N], float64 [N, 10])``.

    Raises :class:`ValueError` naming the fault, because a model that emits NaN
    or unnormalised scores still "works" and would otherwise produce a report
    full of plausible-looking garbage.
    """
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    if y_true.ndim != 1 or len(y_true) == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {y_true.shape}")
    if proba.ndim != 2 or proba.shape != (len(y_true), NUM_CLASSES):
        raise ValueError(f"probabilities must be [{len(y_true)}, {NUM_CLASSES}], got {proba.shape}")
    if not np.isfinite(proba).all():
        bad = int((~np.isfinite(proba)).any(axis=1).sum())
        raise ValueError(f"probabilities contain NaN or infinity ({bad} of {len(proba)} rows)")
    if proba.min() < 0 or proba.max() > 1 + SUM_TOLERANCE:
        raise ValueError(
            f"probabilities must lie in 0..1, got {proba.min():.4g}..{proba.max():.4g}"
        )
    sums = proba.sum(axis=1)
    if np.abs(sums - 1).max() > SUM_TOLERANCE:
        raise ValueError(
            f"probability rows must sum to 1, got sums in {sums.min():.4g}..{sums.max():.4g}"
        )
    whole = np.issubdtype(y_true.dtype, np.integer) or (
        np.issubdtype(y_true.dtype, np.floating) and np.array_equal(y_true, np.round(y_true))
    )
    if not whole:
        raise ValueError(f"labels must be integers 0..9, got dtype {y_true.dtype}")
    y_true = y_true.astype(np.int64)
    if y_true.min() < 0 or y_true.max() >= NUM_CLASSES:
        raise ValueError(f"labels must lie in 0..9, got {y_true.min()}..{y_true.max()}")
    return y_true, proba / sums[:, None]


def _finite(value: float) -> float | None:
    """``float(value)``, or ``None`` if undefined, so JSON never sees ``NaN``."""
    value = float(value)
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------- single formulas


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion.

    Chosen over the normal ("Wald") interval because it stays inside 0..1 and
    keeps its coverage near 0 and 1 — exactly where a digit classifier's
    accuracy lives.
    """
    if n <= 0:
        raise ValueError("the Wilson interval needs n > 0")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in 0..{n}, got {successes}")
    if confidence == 0.95:
        z = Z_95
    else:
        from scipy.stats import norm

        z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At 0 or n successes the bound is exactly 0 or 1; say so rather than 1 - 1e-16.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def top_k_accuracy(y_true: np.ndarray, proba: np.ndarray, k: int = 2) -> float:
    """Share of digits whose true class is among the ``k`` most probable."""
    top = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    return float((top == np.asarray(y_true)[:, None]).any(axis=1).mean())


def brier_score(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Multiclass Brier score: mean over digits of ``sum_k (p_k - 1[y=k])^2``, in 0..2."""
    onehot = np.eye(NUM_CLASSES)[np.asarray(y_true)]
    return float(((proba - onehot) ** 2).sum(axis=1).mean())


def log_loss(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Mean negative log-probability of the true class (natural log, clipped at 1e-15).

    Computed here rather than via scikit-learn because its ``log_loss``
    signature changed in 1.9; the tests check the two agree.
    """
    p_true = proba[np.arange(len(proba)), np.asarray(y_true)]
    return float(-np.log(np.clip(p_true, LOG_EPS, 1)).mean())


def calibration_bins(
    y_true: np.ndarray, proba: np.ndarray, n_bins: int = ECE_BINS
) -> list[dict[str, float | int | None]]:
    """Reliability table: per equal-width bin of max-probability, count, confidence, accuracy.

    Bins are ``(lower, upper]`` (the first also takes 0). Empty bins are kept
    with ``None`` so the diagram shows the whole 0..1 axis.
    """
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == np.asarray(y_true)
    index = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        member = index == b
        count = int(member.sum())
        rows.append({
            "lower": b / n_bins,
            "upper": (b + 1) / n_bins,
            "count": count,
            "confidence": float(confidence[member].mean()) if count else None,
            "accuracy": float(correct[member].mean()) if count else None,
        })
    return rows


def expected_calibration_error(
    y_true: np.ndarray, proba: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """ECE: count-weighted mean gap between confidence and accuracy over the bins."""
    n = len(y_true)
    return float(sum(
        row["count"] / n * abs(row["accuracy"] - row["confidence"])
        for row in calibration_bins(y_true, proba, n_bins) if row["count"]
    ))


def mcnemar_test(
    y_true: np.ndarray, challenger_pred: np.ndarray, champion_pred: np.ndarray
) -> dict[str, Any]:
    """Exact McNemar test on paired predictions of the same holdout.

    Only the discordant digits carry evidence: ``b`` (challenger right, champion
    wrong) and ``c`` (champion right, challenger wrong). Under "no difference"
    ``b ~ Binomial(b + c, 1/2)``; the exact two-sided p-value is used at every
    size, so there is no chi-square approximation to second-guess when ``b + c``
    is small.
    """
    y_true = np.asarray(y_true)
    a_right = np.asarray(challenger_pred) == y_true
    b_right = np.asarray(champion_pred) == y_true
    b = int((a_right & ~b_right).sum())
    c = int((~a_right & b_right).sum())
    if b + c == 0:
        p_value = 1.0
    else:
        from scipy.stats import binom

        p_value = min(1.0, 2 * float(binom.cdf(min(b, c), b + c, 0.5)))
    return {
        "n": len(y_true),
        "both_right": int((a_right & b_right).sum()),
        "b": b,
        "c": c,
        "both_wrong": int((~a_right & ~b_right).sum()),
        "p_value": p_value,
    }


# --------------------------------------------------------------------------- the one dictionary


def _per_class_ranking(
    y_true: np.ndarray, proba: np.ndarray
) -> tuple[list[float | None], list[float | None]]:
    """One-vs-rest ROC-AUC and average precision per digit; ``None`` where undefined.

    ROC-AUC needs both positives and negatives; average precision needs a
    positive. A digit missing from (or alone in) the holdout gets ``None``
    rather than scikit-learn's warning plus a misleading 0 or NaN.
    """
    aucs: list[float | None] = []
    aps: list[float | None] = []
    for digit in LABELS:
        positive = y_true == digit
        n_pos = int(positive.sum())
        aucs.append(
            _finite(skm.roc_auc_score(positive, proba[:, digit]))
            if 0 < n_pos < len(y_true) else None
        )
        aps.append(_finite(skm.average_precision_score(positive, proba[:, digit]))
                   if n_pos else None)
    return aucs, aps


def _mean_defined(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def compute_metrics(
    y_true: Any,
    proba: Any,
    *,
    latency_ms_per_1000: float | None = None,
    model_size_bytes: int | None = None,
    train_seconds: float | None = None,
) -> dict[str, Any]:
    """All holdout metrics from true labels and ``[N, 10]`` probabilities (JSON-ready).

    Keys: ``n``, ``accuracy``, ``accuracy_ci`` (Wilson 95%), ``top2_accuracy``,
    ``log_loss``, ``brier``, ``mcc``, ``cohen_kappa``, ``ece``, ``calibration``
    (the reliability bins), ``roc_auc_macro``, ``average_precision_macro``,
    ``macro_avg`` and ``weighted_avg`` (precision/recall/F1), ``per_class``
    (per digit string: precision, recall, f1, support, roc_auc,
    average_precision), ``confusion_matrix`` (counts, rows = truth),
    ``confusion_matrix_normalized`` (rows sum to 1), ``performance`` (whatever
    the caller measured, else ``None``) and ``warnings`` (plain sentences).

    Macro/weighted averages follow scikit-learn's default: over the digits that
    occur in the truth or the predictions, so a digit absent from both does not
    drag the macro F1 of a subset down with a meaningless zero.
    """
    y_true, proba = validate_predictions(y_true, proba)
    n = len(y_true)
    y_pred = proba.argmax(axis=1)
    correct = int((y_pred == y_true).sum())
    low, high = wilson_interval(correct, n)

    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=LABELS, zero_division=0
    )
    present = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    averages = {}
    for average in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=present, average=average, zero_division=0
        )
        averages[average] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    aucs, aps = _per_class_ranking(y_true, proba)
    averages["macro"]["roc_auc"] = _mean_defined(aucs)
    averages["macro"]["average_precision"] = _mean_defined(aps)

    confusion = skm.confusion_matrix(y_true, y_pred, labels=LABELS)
    row_sums = confusion.sum(axis=1, keepdims=True)
    normalized = np.divide(confusion, row_sums, out=np.zeros(confusion.shape),
                           where=row_sums > 0)
    bins = calibration_bins(y_true, proba)
    ece = sum(r["count"] / n * abs(r["accuracy"] - r["confidence"]) for r in bins if r["count"])

    absent_truth = [d for d in LABELS if support[d] == 0]
    never_predicted = [d for d in LABELS if d not in set(y_pred.tolist())]
    notes = []
    if n < SMALL_HOLDOUT:
        notes.append(
            f"Small holdout: only {n} digits (< {SMALL_HOLDOUT}), so the 95% interval on "
            f"accuracy is ±{(high - low) * 50:.1f} percentage points wide; treat small "
            "differences between models as noise."
        )
    if absent_truth:
        notes.append(f"Digits absent from the holdout: {absent_truth}; their recall, "
                        "ROC-AUC and average precision are undefined.")
    if never_predicted:
        notes.append(f"Digits the model never predicted: {never_predicted}.")

    with warnings.catch_warnings():
        # Degenerate subsets (one class) make scikit-learn warn; they are
        # reported in "warnings" above and get None where undefined.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        mcc = float(skm.matthews_corrcoef(y_true, y_pred))
        kappa = _finite(skm.cohen_kappa_score(y_true, y_pred)) if len(present) > 1 else None
    return {
        "n": n,
        "accuracy": correct / n,
        "accuracy_ci": {"low": low, "high": high, "confidence": 0.95, "method": "wilson"},
        "top2_accuracy": top_k_accuracy(y_true, proba, 2),
        "log_loss": log_loss(y_true, proba),
        "brier": brier_score(y_true, proba),
        "mcc": mcc,
        "cohen_kappa": kappa,
        "ece": float(ece),
        "calibration": {"n_bins": ECE_BINS, "bins": bins},
        "roc_auc_macro": averages["macro"]["roc_auc"],
        "average_precision_macro": averages["macro"]["average_precision"],
        "macro_avg": averages["macro"],
        "weighted_avg": averages["weighted"],
        "per_class": {
            str(c): {
                "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s),
                "roc_auc": auc, "average_precision": ap,
            }
            for c, p, r, f, s, auc, ap in zip(
                LABELS, precision, recall, f1, support, aucs, aps, strict=True
            )
        },
        "confusion_matrix": confusion.tolist(),
        "confusion_matrix_normalized": normalized.tolist(),
        "performance": {
            "latency_ms_per_1000": None if latency_ms_per_1000 is None
            else float(latency_ms_per_1000),
            "model_size_bytes": None if model_size_bytes is None else int(model_size_bytes),
            "train_seconds": None if train_seconds is None else float(train_seconds),
        },
        "warnings": notes,
    }


def summary_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The headline numbers as a flat ``name -> float`` map, for KFP ``Metrics.log_metric``.

    Undefined values are left out (the KFP UI cannot show ``None``).
    """
    performance = metrics.get("performance") or {}
    ci = metrics.get("accuracy_ci") or {}
    macro = metrics.get("macro_avg") or {}
    candidates = {
        "accuracy": metrics.get("accuracy"),
        "accuracy_ci_low": ci.get("low"),
        "accuracy_ci_high": ci.get("high"),
        "top2_accuracy": metrics.get("top2_accuracy"),
        "macro_f1": macro.get("f1"),
        "weighted_f1": (metrics.get("weighted_avg") or {}).get("f1"),
        "log_loss": metrics.get("log_loss"),
        "brier": metrics.get("brier"),
        "ece": metrics.get("ece"),
        "ece_uncalibrated": (metrics.get("uncalibrated") or {}).get("ece"),
        "mcc": metrics.get("mcc"),
        "cohen_kappa": metrics.get("cohen_kappa"),
        "roc_auc_macro": metrics.get("roc_auc_macro"),
        "average_precision_macro": metrics.get("average_precision_macro"),
        "latency_ms_per_1000": performance.get("latency_ms_per_1000"),
        "model_size_bytes": performance.get("model_size_bytes"),
        "train_seconds": performance.get("train_seconds"),
        "holdout_size": metrics.get("n"),
    }
    return {k: float(v) for k, v in candidates.items() if v is not None}


# --------------------------------------------------------------------------- KFP UI


def decimate(n: int, max_points: int) -> np.ndarray:
    """Indices of at most ``max_points`` evenly spread points of ``n``, ends included."""
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(int))


def kfp_classification_inputs(
    y_true: Any, proba: Any, *, max_points: int = KFP_CURVE_POINTS
) -> dict[str, list]:
    """Arguments for KFP's ``ClassificationMetrics``: confusion matrix and a light ROC curve.

    The ROC curve is one-vs-rest, micro-averaged (every digit's probability for
    every class as one binary problem), decimated to ``max_points`` so the KFP
    UI stays responsive. The first threshold (``+inf`` in scikit-learn) is
    reported as 1.0 because JSON cannot carry infinity.

    Use as::

        kfp = kfp_classification_inputs(y, proba)
        out.log_confusion_matrix(kfp["categories"], kfp["confusion_matrix"])
        out.log_roc_curve(kfp["fpr"], kfp["tpr"], kfp["thresholds"])
    """
    y_true, proba = validate_predictions(y_true, proba)
    onehot = np.eye(NUM_CLASSES, dtype=bool)[y_true]
    fpr, tpr, thresholds = skm.roc_curve(onehot.ravel(), proba.ravel())
    keep = decimate(len(fpr), max_points)
    thresholds = np.minimum(thresholds[keep], 1.0)
    confusion = skm.confusion_matrix(y_true, proba.argmax(axis=1), labels=LABELS)
    return {
        "categories": list(DIGITS),
        "confusion_matrix": confusion.tolist(),
        "fpr": [float(v) for v in fpr[keep]],
        "tpr": [float(v) for v in tpr[keep]],
        "thresholds": [float(v) for v in thresholds],
    }


# --------------------------------------------------------------------------- measurements


def timed_predict(
    predict_proba: Callable[[np.ndarray], np.ndarray], images: np.ndarray, *, warmup: int = 32
) -> tuple[np.ndarray, float]:
    """Predict the whole holdout once and time it: ``(proba, milliseconds per 1,000 images)``.

    A short warm-up call first absorbs one-off costs (graph tracing, thread
    pools) that a serving process pays once, not per request; the evaluate
    stage then gets its probabilities and its latency from the same pass.
    """
    if warmup:
        predict_proba(images[:warmup])
    start = time.perf_counter()
    proba = np.asarray(predict_proba(images))
    elapsed = time.perf_counter() - start
    return proba, elapsed / len(images) * 1000 * 1000


def directory_size_bytes(path: Path | str) -> int:
    """Bytes on disk of a saved model (a file or everything under a directory)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path) for name in names
    )
