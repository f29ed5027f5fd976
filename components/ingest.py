"""Ingest stage: read MNIST or a Kaggle CSV, write the split :class:`Dataset`.

:func:`run_ingest` is the stage (the KFP component calls it); ``main`` only
parses flags around it. The reading and splitting is :func:`components.data.ingest`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from components.argparsing import fraction, make_parser, positive_int
from components.data import Dataset, add_feedback, ingest
from components.errors import report
from components.feedback import DEFAULT_CAP, USE_FEEDBACK, load_feedback
from components.registry import open_registry


def parser() -> argparse.ArgumentParser:
    p = make_parser("digits ingest", __doc__)
    p.add_argument("--source", choices=["mnist", "kaggle-csv"], default="mnist")
    p.add_argument("--mnist-dir", type=Path, help="MNIST IDX directory (else DIGITS_MNIST_DIR, "
                   "else the cache, else a checksum-verified download)")
    p.add_argument("--csv", type=Path, help="Kaggle digit-recognizer train.csv")
    p.add_argument("--train-size", type=int, help="stratified, seeded subsample of training")
    p.add_argument("--holdout-size", type=int, help="keep only the first N holdout digits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--feedback", action=argparse.BooleanOptionalAction, default=USE_FEEDBACK,
                   help="merge the users' feedback digits from the registry into training")
    p.add_argument("--feedback-cap", type=fraction, default=DEFAULT_CAP,
                   help="largest share of training feedback may take")
    p.add_argument("--feedback-weight", type=positive_int, default=1,
                   help="times each feedback digit counts")
    p.add_argument("--output", type=Path, required=True, help="directory for the dataset")
    return p


def run_ingest(output: Path, source: str = "mnist", *, seed: int = 0,
               mnist_dir: Path | None = None, csv_path: Path | None = None,
               train_size: int | None = None, holdout_size: int | None = None,
               feedback: bool = USE_FEEDBACK, feedback_cap: float = DEFAULT_CAP,
               feedback_weight: int = 1) -> Dataset:
    """The ingest stage: split the source, add the users' feedback if asked, save to ``output``."""
    dataset = ingest(source, seed=seed, mnist_dir=mnist_dir, csv_path=csv_path,
                     train_size=train_size, holdout_size=holdout_size)
    if feedback:
        with open_registry() as registry:
            items = load_feedback(registry)
        add_feedback(dataset, items, cap=feedback_cap, weight=feedback_weight)
    dataset.save(output)
    return dataset


def run_for_kfp(dataset_artifact, source: str, *, seed: int, mnist_dir: str, csv_path: str,
                train_size: int, holdout_size: int, use_feedback: bool, feedback_cap: float,
                feedback_weight: int) -> None:
    """What the ingest component does: KFP's "unset" (0, "") becomes None; label the artifact."""
    from components.progress import headline

    data = run_ingest(Path(dataset_artifact.path), source, seed=seed,
                      mnist_dir=Path(mnist_dir) if mnist_dir else None,
                      csv_path=Path(csv_path) if csv_path else None,
                      train_size=train_size or None, holdout_size=holdout_size or None,
                      feedback=use_feedback, feedback_cap=feedback_cap,
                      feedback_weight=feedback_weight)
    sizes = data.manifest["sizes"]
    used = data.manifest.get("feedback", {}).get("used", 0)
    dataset_artifact.metadata.update(source=data.manifest["source"], seed=seed, feedback=used,
                                     **sizes)
    headline(" / ".join(f"{count:,} {split}" for split, count in sizes.items())
             + (f" ({used:,} feedback)" if use_feedback else ""))


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        dataset = run_ingest(
            args.output, args.source, seed=args.seed, mnist_dir=args.mnist_dir,
            csv_path=args.csv, train_size=args.train_size, holdout_size=args.holdout_size,
            feedback=args.feedback, feedback_cap=args.feedback_cap,
            feedback_weight=args.feedback_weight)
    except Exception as error:  # the one policy: a line and an exit code, or a traceback
        return report("ingest", error)
    print(json.dumps({"sizes": dataset.manifest["sizes"], "source": dataset.manifest["source"],
                      "feedback": dataset.manifest.get("feedback")}))
    return 0
