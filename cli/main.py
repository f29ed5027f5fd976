"""digits: one command for every stage, the local pipeline, the registry and serving.

Subcommands import what they need when they run, so `digits --help` is
instant and `digits registry list` never loads TensorFlow. Only `digits run`
builds its parser from the pipeline (kfp): serve, kaggle and registry work in
the serving image, which has neither kfp nor TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from components.argparsing import HelpFormatter, fraction, plain, positive_int

STAGES = {
    "ingest": "components.ingest",
    "train": "components.train",
    "evaluate": "components.evaluate",
    "gate": "components.gate",
    "deploy": "components.deploy",
    "report": "components.report",
    "kaggle": "components.kaggle.cli",
    "feedback": "components.feedback",
    "tune": "components.tune",
    "monitor": "pipelines.monitor",
}
STAGE_HELP = {
    "report": "render a run's report, or re-render a stored version's (digits report VERSION)",
    "kaggle": "predict Kaggle's test.csv and submit ImageId,Label (digits kaggle run ...)",
    "feedback": "list or purge the digits users labelled (digits feedback list|purge)",
    "tune": "search a family's settings on train/validation; write a params file for "
            "digits run --params (digits tune --family xgboost --budget 5)",
    "monitor": "judge production's recent inputs against its training reference: drift, "
               "feedback accuracy, whether to retrain (--json, an HTML report)",
}


def _models(value: str) -> list[str]:
    from pipelines.training import MODEL_FAMILIES

    models = [m.strip() for m in value.split(",") if m.strip()]
    bad = [m for m in models if m not in MODEL_FAMILIES]
    if bad or not models:
        raise argparse.ArgumentTypeError(
            f"choose from {','.join(MODEL_FAMILIES)} (comma-separated), got {value!r}")
    return models


RUN_HELP = "run the training pipeline locally (kfp.local)"


def _add_run(sub) -> None:
    from components.kaggle.job import MODES
    from pipelines.local import LOCAL_KAGGLE_MODE, QUICK_ARGUMENTS, RUNNERS
    from pipelines.training import pipeline_defaults

    defaults = pipeline_defaults()

    def default(name: str) -> str:
        quick = QUICK_ARGUMENTS.get(name)
        return f" (default: {defaults[name]}" + (f"; --quick: {quick})" if quick else ")")

    p = sub.add_parser("run", help=RUN_HELP,
                       description="Run the training pipeline on this machine: ingest, train "
                       "each model, evaluate, gate against production, report, deploy.",
                       formatter_class=HelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: " + ", ".join(f"{k}={v}" for k, v in QUICK_ARGUMENTS.items()))
    p.add_argument("--models", type=_models, default=None,
                   help="comma-separated subset of cnn,xgboost,baseline (default: all)")
    p.add_argument("--source", choices=["mnist", "kaggle-csv"], default="mnist",
                   help="where the digits come from")
    p.add_argument("--mnist-dir", type=Path,
                   help="MNIST IDX directory (default: DIGITS_MNIST_DIR, else the cache, "
                   "else a checksum-verified download)")
    p.add_argument("--csv", type=Path, help="Kaggle train.csv (with --source kaggle-csv)")
    p.add_argument("--train-size", type=positive_int,
                   help="training digits, a stratified subsample (default: all"
                   + (f"; --quick: {QUICK_ARGUMENTS['train_size']})"))
    p.add_argument("--params", type=Path, action="append", default=[], metavar="FILE",
                   help="a family's settings from `digits tune` (params.json), one file per "
                   "family; they override --quick, and explicit flags override them")
    p.add_argument("--epochs", type=positive_int, help="CNN epochs" + default("epochs"))
    p.add_argument("--xgb-rounds", type=positive_int,
                   help="XGBoost boosting rounds" + default("xgb_rounds"))
    p.add_argument("--seed", type=int, default=defaults["seed"],
                   help="seeds the splits and every model")
    for name, text in (("min_accuracy", "gate: absolute holdout-accuracy floor"),
                       ("min_improvement", "gate: required accuracy gain over production"),
                       ("alpha", "gate: McNemar significance level"),
                       ("max_class_regression", "gate: largest allowed per-digit recall drop")):
        p.add_argument(f"--{name.replace('_', '-')}", type=fraction, help=text + default(name))
    p.add_argument("--no-feedback", dest="use_feedback", action="store_false", default=None,
                   help="train without the users' feedback digits (default: with them)")
    p.add_argument("--feedback-cap", type=fraction,
                   help="largest share of training feedback may take" + default("feedback_cap"))
    p.add_argument("--feedback-weight", type=positive_int,
                   help="times each feedback digit counts" + default("feedback_weight"))
    p.add_argument("--kaggle", choices=MODES, default=LOCAL_KAGGLE_MODE,
                   help="after a promotion: score a Kaggle-format submission of the holdout "
                   "offline, submit it (online: needs --kaggle-test and credentials), or submit "
                   "only when both are at hand (auto)")
    p.add_argument("--kaggle-test", type=Path, help="Kaggle's test.csv, for --kaggle online/auto")
    p.add_argument("--runner", choices=RUNNERS, default="subprocess",
                   help="run each stage in this environment, or in its own container from the "
                   "project's images (build them first: make images)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--verbose", action="store_true",
                   help="stream every task's full output (always kept in the run's logs/)")


def params_arguments(files: list[Path], models: list[str]) -> dict[str, object]:
    """``--params`` files → pipeline arguments; a file for a family not trained, or a
    second file for the same family, is refused rather than silently ignored."""
    from components.tune import read_params
    from pipelines.training import family_arguments

    arguments: dict[str, object] = {}
    seen: dict[str, Path] = {}
    for path in files:
        family, params = read_params(path)
        if family in seen:
            raise ValueError(f"--params {path}: {family} settings already come from {seen[family]}")
        if family not in models:
            raise ValueError(f"--params {path}: this run does not train {family} "
                             f"(--models {','.join(models)})")
        seen[family] = path
        try:
            arguments.update(family_arguments(family, params))
        except ValueError as error:
            raise ValueError(f"--params {path}: {error}") from None
    return arguments


def run_arguments(args) -> tuple[dict[str, object], list[str]]:
    """``digits run``'s flags → the pipeline's arguments and the families to train.

    Precedence, lowest first: the pipeline's defaults, ``--quick``, ``--params``
    files, then every flag given explicitly.
    """
    from pipelines.local import QUICK_ARGUMENTS
    from pipelines.training import MODEL_FAMILIES

    models = list(args.models or MODEL_FAMILIES)
    arguments = dict(QUICK_ARGUMENTS) if args.quick else {}
    arguments.update(params_arguments(args.params, models))
    explicit = {
        "source": args.source, "seed": args.seed,
        "mnist_dir": str(args.mnist_dir.resolve()) if args.mnist_dir else None,
        "csv_path": str(args.csv.resolve()) if args.csv else None,
        "train_size": args.train_size, "epochs": args.epochs, "xgb_rounds": args.xgb_rounds,
        "min_accuracy": args.min_accuracy, "min_improvement": args.min_improvement,
        "alpha": args.alpha, "max_class_regression": args.max_class_regression,
        "use_feedback": args.use_feedback, "feedback_cap": args.feedback_cap,
        "feedback_weight": args.feedback_weight, "kaggle_mode": args.kaggle,
        "kaggle_test_csv": str(args.kaggle_test.resolve()) if args.kaggle_test else None,
    }
    arguments.update({k: v for k, v in explicit.items() if v is not None})
    return arguments, models


def _run(args) -> int:
    from pipelines.local import format_summary, run_pipeline

    arguments, models = run_arguments(args)
    summary = run_pipeline(arguments, models, verbose=args.verbose, runner=args.runner)
    print(json.dumps(summary) if args.json else format_summary(summary))
    return 0


def _add_registry(sub) -> None:
    p = sub.add_parser("registry", help="list, inspect, promote or roll back model versions")
    verbs = p.add_subparsers(dest="verb", required=True)
    for name, text in (("list", "every version, newest first"),
                       ("show", "one version's metadata"),
                       ("promote", "point production at a version (checksums verified)"),
                       ("rollback", "point production back at the previous version"),
                       ("export", "add the inference form (ONNX) to a version "
                        "promoted before exports existed; needs the training image")):
        v = verbs.add_parser(name, help=text)
        if name in ("show", "promote", "export"):
            v.add_argument("version")
        if name in ("promote", "rollback"):
            v.add_argument("--reason", default=f"manual {name}")
        if name == "export":
            v.add_argument("--dataset", type=Path,
                           help="an ingested dataset whose holdout checks the export "
                           "(default: MNIST's test set)")
        v.add_argument("--json", action="store_true")


def _registry(args) -> int:
    from components.registry import open_registry

    with open_registry() as registry:
        if args.verb == "list":
            result = registry.list()
        elif args.verb == "show":
            result = registry.describe(args.version)
        elif args.verb == "promote":
            result = registry.set_production(args.version, args.reason).__dict__
        elif args.verb == "export":
            from components.export import export_registered
            from components.kaggle.job import holdout_digits

            images, _, _ = holdout_digits(args.dataset)
            result = export_registered(registry, args.version, images)
        else:
            result = registry.rollback(args.reason).__dict__
    if args.json:
        print(json.dumps(result, indent=None if args.verb == "list" else 2))
    elif args.verb == "list":
        print(format_versions(result))
    elif args.verb == "show":
        print(format_version(result))
    elif args.verb == "export":
        record = result["export"]
        print(f"{result['version']}: " + (
            "needs no export (its weights are plain numpy)" if record is None else
            f"{record['file']} ({record['runtime']}), {record['checked_on']:,} holdout digits, "
            f"max |diff| {record['max_abs_diff']:.1e}"
            + ("" if result["changed"] else " (already there)")))
    else:
        print(f"production -> {result['version']} ({result['reason']})")
    return 0


def _when(timestamp: str | None) -> str:
    """``2026-11-30T06:44:54.231Z`` → ``2026-11-30 06:44`` (UTC, minutes are enough here)."""
    return (timestamp or "?")[:16].replace("T", " ")


def format_versions(rows: list[dict]) -> str:
    """``registry list`` for people: newest first, production marked with ``*``."""
    if not rows:
        return "no versions yet: `digits run` trains and registers the first"
    width = max(len(row["version"]) for row in rows)
    lines = [f"  {'version':<{width}}  {'status':<10}  {'kind':<8}  {'holdout':>7}  "
             "created (UTC)"]
    for row in rows:
        accuracy = "" if row["holdout_accuracy"] is None else f"{row['holdout_accuracy']:.2%}"
        lines.append(f"{'*' if row['production'] else ' '} {row['version']:<{width}}  "
                     f"{row['status']:<10}  {row['kind'] or '?':<8}  {accuracy:>7}  "
                     f"{_when(row['created_at'])}")
    return "\n".join(lines)


def format_version(meta: dict) -> str:
    """``registry show`` for people: the model, its numbers, the gate, the data, the files."""
    metrics = meta.get("metrics") or {}
    ci = metrics.get("accuracy_ci") or {}
    macro = (metrics.get("macro_avg") or {}).get("f1")
    gate = meta.get("gate") or {}
    data = meta.get("dataset") or {}
    sizes = data.get("sizes") or {}
    files = meta.get("files") or {}
    total = sum(entry.get("bytes", 0) for entry in files.values())
    params = " ".join(f"{k}={v}" for k, v in (meta.get("params") or {}).items())
    figures = [f"accuracy {metrics['accuracy']:.2%}" if "accuracy" in metrics else None,
               f"95% CI [{ci['low']:.2%}, {ci['high']:.2%}]" if {"low", "high"} <= set(ci)
               else None,
               f"macro F1 {macro:.4f}" if macro is not None else None,
               f"log loss {metrics['log_loss']:.4f}" if "log_loss" in metrics else None,
               f"on {metrics['n']:,} digits" if "n" in metrics else None]
    rows = [
        ("version", f"{meta['version']} ({meta['status']})"),
        ("model", f"{meta.get('kind', '?')}  {params}"),
        ("created", f"{_when(meta.get('created_at'))} UTC, code {meta.get('code_version', '?')}"),
        ("holdout", ", ".join(f for f in figures if f)),
        ("gate", f"{gate.get('decision', '?')}: {gate.get('reason', '')}"),
        ("champion", meta.get("champion_version") or "none (first model)"),
        ("data", f"{data.get('source', '?')} from {data.get('location', '?')}; "
                 + " / ".join(f"{n:,} {split}" for split, n in sizes.items())
                 + f"; seed {data.get('seed', '?')}"),
        ("holdout sha256", data.get("holdout_sha256", "?")),
        ("files", f"{len(files)} ({total / 1e6:.1f} MB): " + ", ".join(sorted(files))),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows) + (
        "\n(full metadata: --json)")


def _compile(args) -> int:
    from pipelines.training import COMPILED, compile_pipeline

    print(compile_pipeline(args.output or COMPILED))
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``digits`` parser; ``run``'s own flags unless ``command`` is another one.

    Those flags come from the pipeline (kfp), so for any other command ``run``
    is listed by name alone: ``digits registry ...`` must work where kfp is absent.
    """
    parser = argparse.ArgumentParser(prog="digits", description=plain(__doc__),
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    if command in (None, "run"):
        _add_run(sub)
    else:
        sub.add_parser("run", help=RUN_HELP, add_help=False)
    _add_registry(sub)
    p = sub.add_parser("compile", help="compile the KFP pipeline YAML")
    p.add_argument("--output", type=Path, default=None,
                   help="where to write (default: pipelines/digits_pipeline.yaml)")
    for name, module in STAGES.items():
        text = STAGE_HELP.get(name, f"run the {name} stage ({module})")
        sub.add_parser(name, help=text, add_help=False)
    sub.add_parser("serve", help="start the HTTP model server (granian + Flask)", add_help=False)
    sub.add_parser("submit", help="start a run of the compiled pipeline on a KFP cluster",
                   add_help=False)
    sub.add_parser("schedule", help="create or replace a KFP recurring run (scheduled "
                   "retraining)", add_help=False)
    sub.add_parser("simulate", help="run the pipeline over growing training sets "
                   "(learning curves)", add_help=False)
    return parser


def _run_stage(name: str, argv: list[str]) -> int:
    """A stage CLI under the one error policy (:mod:`components.errors`)."""
    import importlib

    from components.errors import report

    try:
        return importlib.import_module(STAGES[name]).main(argv)
    except (Exception, KeyboardInterrupt) as error:
        return report(name, error)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Stage and serve commands own their flags: hand the rest of the line over untouched.
    if argv and argv[0] in STAGES:
        return _run_stage(argv[0], argv[1:])
    if argv and argv[0] == "serve":
        from serving.cli import main as serve

        return serve(argv[1:])
    if argv and argv[0] in ("submit", "schedule", "simulate"):
        import importlib

        from components.stopping import sigterm_as_interrupt

        # SIGTERM stops a simulation as Ctrl-C does: steps saved, the S3 store stopped.
        with sigterm_as_interrupt():
            return importlib.import_module(f"pipelines.{argv[0]}").main(argv[1:])
    args = build_parser(argv[0] if argv else "").parse_args(argv)
    handlers = {"run": _run, "registry": _registry, "compile": _compile}
    try:
        from components.stopping import sigterm_as_interrupt

        with sigterm_as_interrupt():
            return handlers[args.command](args)
    except (Exception, KeyboardInterrupt) as error:  # Ctrl-C or SIGTERM: cleaned up by now
        from components.errors import report

        # One line for users, tracebacks for bugs; RunFailed and a SIGTERM carry their code.
        return report(args.command, error)


if __name__ == "__main__":
    sys.exit(main())
