"""Evaluate stage: score a model on the frozen holdout and keep its predictions.

The holdout probabilities are predicted once, timed in the same pass, and
saved with every metric (:func:`components.metrics.compute_metrics`), so the
gate, the report and ``digits report`` reuse them instead of predicting again.
"""

from __future__ import annotations

import json
from pathlib import Path

from components.argparsing import make_parser
from components.contract import ModelEvaluation
from components.data import Dataset
from components.scoring import evaluate_saved


def run_evaluate(dataset_dir: Path, model_dir: Path, output: Path) -> ModelEvaluation:
    """Score the model in ``model_dir`` on the dataset's holdout; write it to ``output``."""
    evaluation = evaluate_saved(Path(model_dir), Dataset.load(Path(dataset_dir)))
    evaluation.save(output)
    return evaluation


def main(argv: list[str] | None = None) -> int:
    p = make_parser("digits evaluate", __doc__)
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True, help="model directory")
    p.add_argument("--output", type=Path, required=True, help="evaluation directory to write")
    args = p.parse_args(argv)
    evaluation = run_evaluate(args.dataset, args.model, args.output)
    print(json.dumps({k: evaluation.metrics[k] for k in ("n", "accuracy", "log_loss", "mcc")}))
    return 0
