"""``digits kaggle``: predict, run (predict + submit or score offline), submit a file, list.

Parses flags and hands over to :mod:`components.kaggle.job`; prints one JSON
line on stdout. Exit codes follow the one error policy (:mod:`components.errors`):
0 ok; 2 for faults the caller can fix (bad input file, no credentials, empty
registry, unknown version); 1 when Kaggle or the network failed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from components.argparsing import HelpFormatter, make_parser
from components.kaggle.client import COMPETITION
from components.kaggle.job import (
    OFFLINE,
    ONLINE,
    SubmissionJob,
    load_submission_model,
    run_kaggle,
    send,
)
from components.kaggle.submission import EXPECTED_ROWS, predict_submission, validate_submission
from components.registry import open_registry


def parser() -> argparse.ArgumentParser:
    p = make_parser("digits kaggle", __doc__)
    verbs = p.add_subparsers(dest="verb", required=True)
    kinds = {"formatter_class": HelpFormatter}
    predict = verbs.add_parser("predict", help="write a submission for test.csv", **kinds)
    run = verbs.add_parser("run", help="predict, then submit (or --dry-run: score offline)",
                           **kinds)
    send = verbs.add_parser("submit", help="submit an existing submission file", **kinds)
    listing = verbs.add_parser("list", help="archived submissions, newest first", **kinds)
    predict.add_argument("--test", type=Path, required=True, help="Kaggle's test.csv")
    run.add_argument("--test", type=Path,
                     help="Kaggle's test.csv (needed to submit; --dry-run without it predicts "
                          "the frozen holdout and scores it)")
    run.add_argument("--dry-run", action="store_true",
                     help="never touch the network: predict, validate, score when labels are "
                          "known, archive")
    run.add_argument("--dataset", type=Path,
                     help="an ingested dataset whose holdout --dry-run predicts "
                          "(default: MNIST's test set)")
    for v in (predict, run):
        v.add_argument("--output", type=Path, required=True, help="submission CSV to write")
        source = v.add_mutually_exclusive_group()
        source.add_argument("--version", help="registry version (default: production)")
        source.add_argument("--model-dir", type=Path, help="a local saved model directory")
    send.add_argument("--file", type=Path, required=True, help="submission CSV")
    send.add_argument("--message", required=True, help="submission description on Kaggle")
    run.add_argument("--message", default="", help="submission description on Kaggle "
                                                   "(default: names the model version)")
    for v in (send, run):
        v.add_argument("--competition", default=COMPETITION)
        v.add_argument("--allow-partial", action="store_true",
                       help=f"submit a file without all {EXPECTED_ROWS:,} rows")
    listing.add_argument("--json", action="store_true", help="one JSON list on stdout")
    return p


def _predict(args, registry) -> dict[str, Any]:
    with load_submission_model(registry, version=args.version, model_dir=args.model_dir) as (
            model, info):
        summary = predict_submission(model, args.test, args.output, version=info["version"])
    return {**summary, "model_source": info["source"]}


def _run(args, registry) -> dict[str, Any]:
    job = SubmissionJob(output=args.output, mode=OFFLINE if args.dry_run else ONLINE,
                        test_csv=args.test, dataset_dir=args.dataset, message=args.message,
                        competition=args.competition, allow_partial=args.allow_partial)
    return run_kaggle(job, version=args.version, model_dir=args.model_dir, registry=registry)


def _submit(args, registry) -> dict[str, Any]:
    """Submit a file made elsewhere, wait for its score, archive it (version unknown)."""
    expected = None if args.allow_partial else EXPECTED_ROWS
    sent, failure = send(args.file, args.message, args.competition, expected_rows=expected)
    record = {"mode": ONLINE, "version": None, "competition": args.competition,
              "message": args.message, "file": str(args.file), "local_score": None, **sent}
    record = registry.archive_submission(args.file, record)
    if failure is not None:
        raise failure
    return record


def format_submissions(records: list[dict[str, Any]]) -> str:
    """Archived submissions as a table for people, newest first."""
    if not records:
        return "no submissions archived yet (digits kaggle run --dry-run --output FILE)"

    def score(value: float | None) -> str:
        return "-" if value is None else f"{value:.5f}"

    rows = [("ARCHIVED", "MODE", "VERSION", "ROWS", "LOCAL", "KAGGLE", "REF")]
    rows += [(r.get("archived_at", "")[:19], r["mode"], r.get("version") or "-", str(r["rows"]),
              score(r.get("local_score")), score(r.get("kaggle_score")),
              str(r.get("kaggle_ref") or "-")) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                     .rstrip() for row in rows)


def main(argv: list[str] | None = None) -> int:
    from components.errors import report

    args = parser().parse_args(argv)
    expected = None if getattr(args, "allow_partial", False) else EXPECTED_ROWS
    try:
        if args.verb == "submit":  # fail on a bad file before starting any store
            validate_submission(args.file, expected_rows=expected)
        with open_registry() as registry:
            if args.verb == "predict":
                result: Any = _predict(args, registry)
            elif args.verb == "submit":
                result = _submit(args, registry)
            elif args.verb == "run":
                result = _run(args, registry)
            else:
                records = registry.submissions()
                print(json.dumps(records) if args.json else format_submissions(records))
                return 0
    except Exception as error:  # the one policy: a line and an exit code, or a traceback
        return report(f"kaggle {args.verb}", error)
    print(json.dumps(result))
    return 0
