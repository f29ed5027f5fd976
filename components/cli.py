"""digits: one command for every stage, the local pipeline, the registry and serving.

Subcommands import what they need when they run, so `digits --help` is
instant and `digits registry list` never loads TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

STAGES = {
    "ingest": "components.ingest",
    "train": "components.train",
    "evaluate": "components.evaluate",
    "gate": "components.gate",
    "deploy": "components.deploy",
    "report": "components.watch",
    "kaggle": "components.kaggle",
}
STAGE_HELP = {
    "report": "render a run's report, or re-render a stored version's (digits report VERSION)",
    "kaggle": "predict Kaggle's test.csv and submit ImageId,Label (digits kaggle run ...)",
}


def _models(value: str) -> list[str]:
    from pipelines.training import MODEL_FAMILIES

    models = [m.strip() for m in value.split(",") if m.strip()]
    bad = [m for m in models if m not in MODEL_FAMILIES]
    if bad or not models:
        raise argparse.ArgumentTypeError(
            f"choose from {','.join(MODEL_FAMILIES)} (comma-separated), got {value!r}")
    return models


def _positive(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return number


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run the training pipeline locally (kfp.local)")
    p.add_argument("--quick", action="store_true",
                   help="3,000 training digits, 3 epochs, 20 rounds: a smoke run")
    p.add_argument("--models", type=_models, default=None,
                   help="comma-separated subset of cnn,xgboost,baseline (default: all)")
    p.add_argument("--source", choices=["mnist", "kaggle-csv"], default="mnist")
    p.add_argument("--mnist-dir", type=Path, help="MNIST IDX directory (else DIGITS_MNIST_DIR)")
    p.add_argument("--csv", type=Path, help="Kaggle train.csv (with --source kaggle-csv)")
    p.add_argument("--train-size", type=_positive, help="training digits (stratified subsample)")
    p.add_argument("--epochs", type=_positive, help="CNN epochs")
    p.add_argument("--rounds", type=_positive, help="XGBoost boosting rounds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-accuracy", type=float, help="gate: absolute accuracy floor")
    p.add_argument("--min-improvement", type=float, help="gate: required accuracy gain")
    p.add_argument("--alpha", type=float, help="gate: McNemar significance level")
    p.add_argument("--max-class-regression", type=float,
                   help="gate: largest allowed per-class recall drop")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _run(args) -> int:
    from pipelines.local import QUICK_ARGUMENTS, format_summary, run_pipeline, stdout_to_stderr
    from pipelines.training import MODEL_FAMILIES

    arguments = dict(QUICK_ARGUMENTS) if args.quick else {}
    explicit = {
        "source": args.source, "seed": args.seed,
        "mnist_dir": str(args.mnist_dir.resolve()) if args.mnist_dir else None,
        "csv_path": str(args.csv.resolve()) if args.csv else None,
        "train_size": args.train_size, "epochs": args.epochs, "xgb_rounds": args.rounds,
        "min_accuracy": args.min_accuracy, "min_improvement": args.min_improvement,
        "alpha": args.alpha, "max_class_regression": args.max_class_regression,
    }
    arguments.update({k: v for k, v in explicit.items() if v is not None})
    # Task logs go to stderr so stdout carries only the result.
    with stdout_to_stderr():
        summary = run_pipeline(arguments, args.models or MODEL_FAMILIES)
    print(json.dumps(summary) if args.json else format_summary(summary))
    return 0


def _add_registry(sub) -> None:
    p = sub.add_parser("registry", help="list, inspect, promote or roll back model versions")
    verbs = p.add_subparsers(dest="verb", required=True)
    for name, text in (("list", "every version, newest first"),
                       ("show", "one version's metadata"),
                       ("promote", "point production at a version (checksums verified)"),
                       ("rollback", "point production back at the previous version")):
        v = verbs.add_parser(name, help=text)
        if name in ("show", "promote"):
            v.add_argument("version")
        if name in ("promote", "rollback"):
            v.add_argument("--reason", default=f"manual {name}")
        v.add_argument("--json", action="store_true")


def _registry(args) -> int:
    from components.registry import Registry
    from components.s3local import s3_environment
    from components.settings import get_settings

    with s3_environment(get_settings()):
        registry = Registry.from_settings(get_settings())
        if args.verb == "list":
            result = registry.list()
        elif args.verb == "show":
            result = registry.metadata(args.version)
        elif args.verb == "promote":
            result = registry.set_production(args.version, args.reason).__dict__
        else:
            result = registry.rollback(args.reason).__dict__
    if args.json:
        print(json.dumps(result, indent=None if args.verb == "list" else 2))
    elif args.verb == "list":
        print(f"{'version':<40}{'status':<10}{'kind':<10}{'holdout':>8}  production")
        for row in result:
            acc = "" if row["holdout_accuracy"] is None else f"{row['holdout_accuracy']:.4f}"
            star = "*" if row["production"] else ""
            kind = row["kind"] or "?"
            print(f"{row['version']:<40}{row['status']:<10}{kind:<10}{acc:>8}  {star}")
    elif args.verb == "show":
        print(json.dumps(result, indent=2))
    else:
        print(f"production -> {result['version']} ({result['reason']})")
    return 0


def _compile(args) -> int:
    from pipelines.training import COMPILED, compile_pipeline

    print(compile_pipeline(args.output or COMPILED))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="digits", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_registry(sub)
    p = sub.add_parser("compile", help="compile the KFP pipeline YAML")
    p.add_argument("--output", type=Path, default=None,
                   help="where to write (default: pipelines/digits_pipeline.yaml)")
    for name, module in STAGES.items():
        text = STAGE_HELP.get(name, f"run the {name} stage ({module})")
        sub.add_parser(name, help=text, add_help=False)
    sub.add_parser("serve", help="start the HTTP model server (gunicorn)", add_help=False)
    sub.add_parser("submit", help="start a run of the compiled pipeline on a KFP cluster",
                   add_help=False)
    sub.add_parser("simulate", help="run the pipeline over growing training sets "
                   "(learning curves)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Stage and serve commands own their flags: hand the rest of the line over untouched.
    if argv and argv[0] in STAGES:
        import importlib

        return importlib.import_module(STAGES[argv[0]]).main(argv[1:])
    if argv and argv[0] == "serve":
        from serving.cli import main as serve

        return serve(argv[1:])
    if argv and argv[0] in ("submit", "simulate"):
        import importlib

        return importlib.import_module(f"pipelines.{argv[0]}").main(argv[1:])
    args = build_parser().parse_args(argv)
    handlers = {"run": _run, "registry": _registry, "compile": _compile}
    try:
        return handlers[args.command](args)
    except Exception as error:  # one clear line for users; tracebacks are for bugs
        from components.data import DataError
        from components.registry import RegistryError

        if isinstance(error, (DataError, RegistryError, ValueError)):
            print(f"digits {args.command}: {error}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
