"""The submission file: Kaggle's ``test.csv`` in, ``ImageId,Label`` out, checked as Kaggle checks.

Kaggle accepts some malformed files and scores them near zero (or burns one of
the day's few submissions on an error), so every file is read back and
refused here before it could be sent.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from components.datafiles import DataError, load_kaggle_csv, read_lines, write_atomically
from components.stem import NUM_CLASSES, NUM_PIXELS, as_images

#: Rows in Kaggle's digit-recognizer ``test.csv``, hence in a complete submission.
EXPECTED_ROWS = 28_000
SUBMISSION_HEADER = "ImageId,Label"


def _label_counts(labels: np.ndarray) -> dict[str, int]:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=NUM_CLASSES)
    return {str(digit): int(count) for digit, count in enumerate(counts)}


def predict_submission(model, test_csv: Path, output: Path, *,
                       version: str | None = None) -> dict[str, Any]:
    """Predict every digit of Kaggle's ``test.csv`` and write ``ImageId,Label``.

    ``test.csv`` is read by :func:`components.datafiles.load_kaggle_csv`, which
    rejects a bad file naming the line, before anything is written; the
    output appears only complete (see :func:`write_atomically`). ``version``
    is only recorded in the summary, so a score can be traced to a model.
    """
    started = time.perf_counter()
    images, _ = load_kaggle_csv(test_csv, labelled=False)
    labels = np.asarray(model.predict(images), dtype=np.int64)
    if labels.shape != (len(images),) or labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise ValueError(f"model returned {labels.shape} labels in "
                         f"{labels.min()}..{labels.max()} for {len(images)} images")
    lines = [SUBMISSION_HEADER]
    lines.extend(f"{image_id},{label}" for image_id, label in enumerate(labels.tolist(), 1))
    write_atomically(output, "\n".join(lines) + "\n")
    return {
        "output": str(output),
        "rows": len(labels),
        "label_counts": _label_counts(labels),
        "seconds": round(time.perf_counter() - started, 3),
        "model_version": version,
        "model_kind": getattr(model, "kind", None),
    }


def read_submission(path: Path, *, expected_rows: int | None = EXPECTED_ROWS) -> np.ndarray:
    """The labels of a submission file Kaggle would score, in ImageId order.

    Kaggle accepts some malformed files and scores them near zero (or burns one
    of the day's few submissions on an error), so the file is refused here:
    header exactly ``ImageId,Label``, ImageIds 1..N in order with no gaps,
    labels 0..9, and ``expected_rows`` rows (``None`` allows any N >= 1).
    """
    path = Path(path)
    lines = read_lines(path)
    header = lines[0].strip()
    if header != SUBMISSION_HEADER:
        raise DataError(f"{path}: line 1: header must be {SUBMISSION_HEADER!r}, got {header!r}")
    labels = np.empty(len(lines) - 1, dtype=np.int64)
    for number, line in enumerate(lines[1:], start=2):
        cells = line.strip().split(",")
        if len(cells) != 2:
            raise DataError(f"{path}: line {number}: {len(cells)} columns, expected 2")
        try:
            image_id, label = int(cells[0]), int(cells[1])
        except ValueError as error:
            raise DataError(f"{path}: line {number}: not an integer ({error})") from error
        if image_id != number - 1:
            raise DataError(f"{path}: line {number}: ImageId {image_id}, expected {number - 1} "
                            "(ImageIds must run 1..N in order)")
        if not 0 <= label < NUM_CLASSES:
            raise DataError(f"{path}: line {number}: label {label} outside 0..9")
        labels[number - 2] = label
    if len(labels) == 0:
        raise DataError(f"{path}: no data rows")
    if expected_rows is not None and len(labels) != expected_rows:
        raise DataError(f"{path}: {len(labels)} rows, Kaggle's test set has {expected_rows} "
                        "(pass --allow-partial to submit anyway)")
    return labels


def validate_submission(path: Path, *, expected_rows: int | None = EXPECTED_ROWS,
                        ) -> dict[str, Any]:
    """Check a submission is what Kaggle scores (:func:`read_submission`); summarise it."""
    labels = read_submission(path, expected_rows=expected_rows)
    return {"rows": len(labels), "label_counts": _label_counts(labels)}


def score_submission(path: Path, truth: np.ndarray) -> float:
    """The submission's accuracy against known labels: what the leaderboard computes.

    The file is read back from disk and validated first, so the score is that
    of the exact bytes that would be uploaded, not of the in-memory predictions.
    """
    truth = np.asarray(truth, dtype=np.int64)
    labels = read_submission(path, expected_rows=len(truth))
    return float(np.mean(labels == truth))


def write_test_csv(images: np.ndarray, path: Path) -> Path:
    """Write canonical images as Kaggle's ``test.csv`` (``pixel0..pixel783``, no label)."""
    flat = as_images(images).reshape(len(images), NUM_PIXELS)
    header = ",".join(f"pixel{i}" for i in range(NUM_PIXELS))
    path = Path(path)
    with path.open("w", encoding="utf-8", newline="") as handle:
        np.savetxt(handle, flat, fmt="%d", delimiter=",", header=header, comments="")
    return path
