"""Evaluate stage: score a model on the frozen holdout and keep its predictions.

The holdout probabilities are saved next to the metrics so the gate, the
report and ``digits report`` reuse them instead of predicting again.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.data import Dataset
from components.metrics import compute_metrics
from components.models import DigitModel, load_model

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.npz"


@dataclass
class Evaluation:
    """A model's holdout metrics and the probabilities they were computed from."""

    metrics: dict[str, Any]
    y_true: np.ndarray
    proba: np.ndarray

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(directory / PREDICTIONS_FILE, y_true=self.y_true, proba=self.proba)
        (directory / METRICS_FILE).write_text(json.dumps(self.metrics, indent=2))

    @classmethod
    def load(cls, directory: Path) -> Evaluation:
        directory = Path(directory)
        with np.load(directory / PREDICTIONS_FILE) as arrays:
            y_true, proba = arrays["y_true"], arrays["proba"]
        return cls(json.loads((directory / METRICS_FILE).read_text()), y_true, proba)


def evaluate(model: DigitModel, dataset: Dataset) -> Evaluation:
    """Predict the holdout once, time it, and compute every metric from that."""
    started = time.perf_counter()
    proba = model.predict_proba(dataset.x_holdout)
    seconds = time.perf_counter() - started
    metrics = compute_metrics(dataset.y_holdout, proba)
    metrics["latency_ms_per_1000"] = round(seconds / len(proba) * 1000 * 1000, 3)
    metrics["holdout_sha256"] = dataset.manifest.get("holdout_sha256")
    return Evaluation(metrics, dataset.y_holdout, proba)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="digits evaluate", description=__doc__)
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True, help="model directory")
    p.add_argument("--output", type=Path, required=True, help="evaluation directory to write")
    args = p.parse_args(argv)
    evaluation = evaluate(load_model(args.model), Dataset.load(args.dataset))
    evaluation.save(args.output)
    print(json.dumps({k: evaluation.metrics[k] for k in ("n", "accuracy", "log_loss", "mcc")}))
    return 0
