"""Train stage: fit one model family on the dataset's train split.

Every family gets the same images through the same stem and is scored on the
same validation split, so the gate can pick the run's best model fairly.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from components import progress
from components.argparsing import key_value, make_parser
from components.data import Dataset
from components.models import MODEL_KINDS, DigitModel, create_model
from components.watch import Reference, build_reference

log = logging.getLogger(__name__)


def train(kind: str, dataset: Dataset, **params: Any) -> tuple[DigitModel, dict[str, Any]]:
    """Fit a model; return it with what later stages need to know about the fit."""
    model = create_model(kind, **params)
    log.info("training %s on %d digits with %s", kind, len(dataset.y_train), model.params)
    started = time.perf_counter()
    model.fit(dataset.x_train, dataset.y_train, dataset.x_validation, dataset.y_validation)
    seconds = time.perf_counter() - started
    calibration = model.calibrate(dataset.x_validation, dataset.y_validation)
    val_accuracy = float(np.mean(model.predict(dataset.x_validation) == dataset.y_validation))
    info = {
        "validation_accuracy": val_accuracy,
        "calibration": calibration,
        "train_seconds": round(seconds, 3),
        "train_size": len(dataset.y_train),
        "dataset_holdout_sha256": dataset.manifest.get("holdout_sha256"),
    }
    log.info("%s: validation accuracy %.4f in %.1fs; temperature %.3f (validation ECE "
             "%.4f -> %.4f)", kind, val_accuracy, seconds, calibration["temperature"],
             calibration["validation_ece_before"], calibration["validation_ece_after"])
    return model, info


def run_for_kfp(kind: str, dataset_path: str, model_artifact, metrics_artifact,
                **params: Any) -> None:
    """What every train component does: train, then label its KFP artifacts.

    The model's kind and validation accuracy go on the ``Model`` artifact and
    the headline numbers into ``Metrics``, so the dashboard can compare runs.
    """
    info = run_train(kind, Path(dataset_path), Path(model_artifact.path), **params)
    model_artifact.metadata.update(kind=kind, validation_accuracy=info["validation_accuracy"])
    metrics_artifact.log_metric("validation_accuracy", info["validation_accuracy"])
    metrics_artifact.log_metric("train_seconds", info["train_seconds"])
    progress.headline(f"validation accuracy {info['validation_accuracy']:.4f} "
                      f"in {info['train_seconds']:.0f} s")


def run_train(kind: str, dataset_dir: Path, output: Path, **params: Any) -> dict[str, Any]:
    """The train stage: fit ``kind`` on the dataset, save it to ``output``; return its facts."""
    dataset = Dataset.load(Path(dataset_dir))
    model, info = train(kind, dataset, **params)
    model.save(output, **info)
    reference_for(model, dataset).save(output)
    return info


def reference_for(model: DigitModel, dataset: Dataset) -> Reference:
    """The drift reference of a trained model, saved beside it so it travels with the
    version into the registry and production (:mod:`components.watch`): the embedding
    is fitted on the training digits, the distributions are the model's on validation."""
    return build_reference(dataset.x_train, dataset.y_train, dataset.x_validation,
                           model.predict_proba(dataset.x_validation),
                           seed=int(dataset.manifest.get("seed") or 0))


def main(argv: list[str] | None = None) -> int:
    p = make_parser("digits train", __doc__)
    p.add_argument("--kind", choices=sorted(MODEL_KINDS), required=True)
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--output", type=Path, required=True, help="model directory to write")
    p.add_argument("--param", action="append", default=[], type=key_value, metavar="KEY=VALUE",
                   help="model parameter (a JSON value), repeatable")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    params = {key: json.loads(value) for key, value in args.param}
    info = run_train(args.kind, args.dataset, args.output, **params)
    print(json.dumps({"kind": args.kind, **info}))
    return 0
