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


def run_for_kfp(dataset_path: str, model_path: str, evaluation_artifact, metrics_artifact,
                classification_artifact) -> None:
    """What the evaluate component does: score, then feed the KFP dashboard's metrics views."""
    from components.metrics import kfp_classification_inputs, summary_scalars
    from components.progress import headline

    scored = run_evaluate(Path(dataset_path), Path(model_path), Path(evaluation_artifact.path))
    headline(f"holdout accuracy {scored.metrics['accuracy']:.4f}")
    for name, value in summary_scalars(scored.metrics).items():
        metrics_artifact.log_metric(name, value)
    curves = kfp_classification_inputs(scored.y_true, scored.proba)
    classification_artifact.log_confusion_matrix(curves["categories"], curves["confusion_matrix"])
    classification_artifact.log_roc_curve(curves["fpr"], curves["tpr"], curves["thresholds"])


def main(argv: list[str] | None = None) -> int:
    p = make_parser("digits evaluate", __doc__)
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True, help="model directory")
    p.add_argument("--output", type=Path, required=True, help="evaluation directory to write")
    args = p.parse_args(argv)
    evaluation = run_evaluate(args.dataset, args.model, args.output)
    print(json.dumps({k: evaluation.metrics[k] for k in ("n", "accuracy", "log_loss", "mcc")}))
    return 0
