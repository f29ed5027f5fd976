"""Ingest stage CLI: read MNIST or a Kaggle CSV, write the split :class:`Dataset`.

The work is in :func:`components.data.ingest`; this module only parses flags,
so the KFP component, ``digits ingest`` and tests all run the same code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from components.argparsing import fraction, make_parser, positive_int
from components.data import DataError, add_feedback, ingest
from components.feedback import DEFAULT_CAP, load_feedback
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
    p.add_argument("--feedback", action="store_true",
                   help="merge the users' feedback digits from the registry into training")
    p.add_argument("--feedback-cap", type=fraction, default=DEFAULT_CAP,
                   help="largest share of training feedback may take")
    p.add_argument("--feedback-weight", type=positive_int, default=1,
                   help="times each feedback digit counts")
    p.add_argument("--output", type=Path, required=True, help="directory for the dataset")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        dataset = ingest(
            args.source, seed=args.seed, mnist_dir=args.mnist_dir, csv_path=args.csv,
            train_size=args.train_size, holdout_size=args.holdout_size,
        )
        if args.feedback:
            with open_registry() as registry:
                items = load_feedback(registry)
            add_feedback(dataset, items, cap=args.feedback_cap, weight=args.feedback_weight)
    except DataError as error:
        print(f"digits ingest: {error}", file=sys.stderr)
        return 2
    dataset.save(args.output)
    print(json.dumps({"sizes": dataset.manifest["sizes"], "source": dataset.manifest["source"],
                      "feedback": dataset.manifest.get("feedback")}))
    return 0
