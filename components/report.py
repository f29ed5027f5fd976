"""Report stage: the run's report, or a stored version's, re-rendered.

In the pipeline it runs after the gate and renders every candidate, the
champion and the gate's evidence into one self-contained HTML page. As
``digits report <version>`` it rebuilds a registered version's report from the
predictions stored with it, without the model or its framework.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from components.argparsing import key_value, make_parser
from components.contract import (
    CHAMPION_DIR,
    DECISION_FILE,
    EVALUATION_DIR,
    GATE_DIR,
    METADATA_FILE,
    REPORT_FILE,
    GateDecision,
    ModelEvaluation,
)
from components.rendering import summary_table, write_report


def run_report(decision_dir: Path, evaluations: dict[str, Path], output: Path,
               title: str = "Training run") -> tuple[Path, str]:
    """The report stage: write the run's report into ``output``; return it and a summary table."""
    decision = GateDecision.load(decision_dir)
    models = {kind: ModelEvaluation.load(path) for kind, path in evaluations.items()}
    champion_dir = Path(decision_dir) / CHAMPION_DIR
    if champion_dir.is_dir():
        models["champion"] = ModelEvaluation.load(champion_dir)
    html = write_report(output, models, decision.to_json(), title)
    return html, summary_table(models)


def gate_markdown(decision: GateDecision) -> str:
    """The gate's verdict and each candidate's scores, as the KFP run's Markdown summary."""
    rows = ["| model | validation | holdout |", "| --- | --- | --- |"]
    rows += [f"| {kind} | {row['validation_accuracy']:.4f} | {row['holdout_accuracy']:.4f} |"
             for kind, row in decision.candidates.items()]
    return (f"## Gate: {decision.decision} {decision.challenger_kind}\n\n"
            f"{decision.reason}\n\n" + "\n".join(rows) + "\n")


def run_for_kfp(decision_path: str, evaluations: dict[str, Any], html_artifact,
                summary_artifact) -> None:
    """What the report component does: the page into the HTML artifact, the verdict as Markdown.

    ``evaluations`` maps each family to its KFP input, ``None`` where it did not run.
    """
    present = {kind: Path(item.path) for kind, item in evaluations.items() if item is not None}
    with tempfile.TemporaryDirectory() as out:
        page, _ = run_report(Path(decision_path), present, Path(out))
        shutil.copy(page, html_artifact.path)
    Path(summary_artifact.path).write_text(gate_markdown(GateDecision.load(Path(decision_path))))


def render_version(version_dir: Path, output: Path) -> tuple[Path, str]:
    """Re-render a downloaded version: its challenger evaluation and the champion it beat."""
    metadata: dict[str, Any] = json.loads((Path(version_dir) / METADATA_FILE).read_text())
    models = {metadata["kind"]: ModelEvaluation.load(Path(version_dir) / EVALUATION_DIR)}
    champion_dir = Path(version_dir) / GATE_DIR / CHAMPION_DIR
    if champion_dir.is_dir():
        models["champion"] = ModelEvaluation.load(champion_dir)
    gate_file = Path(version_dir) / GATE_DIR / DECISION_FILE
    gate = json.loads(gate_file.read_text()) if gate_file.exists() else metadata.get("gate")
    title = f"Version {metadata['version']} ({metadata['status']})"
    html = write_report(output, models, gate, title)
    return html, summary_table(models)


def main(argv: list[str] | None = None) -> int:
    p = make_parser(
        "digits report", __doc__,
        epilog="Either VERSION (re-render from the registry) or --decision with "
               "--evaluation (the pipeline's report stage).")
    p.add_argument("version", nargs="?", help="registered version to re-render")
    p.add_argument("--output", type=Path, default=None,
                   help="directory for report.html and metrics.json (default: ./report-VERSION)")
    p.add_argument("--decision", type=Path, help="the gate's decision directory")
    p.add_argument("--evaluation", action="append", default=[], type=key_value,
                   metavar="KIND=EVAL_DIR")
    args = p.parse_args(argv)
    if args.decision:
        evaluations = {kind: Path(path) for kind, path in args.evaluation}
        html, table = run_report(args.decision, evaluations, args.output or Path("report"))
    elif args.version:
        from components.registry import Registry, RegistryError
        from components.s3local import s3_environment
        from components.settings import get_settings

        output = args.output or Path(f"report-{args.version}")
        with tempfile.TemporaryDirectory() as tmp, s3_environment(get_settings()):
            try:
                Registry.from_settings(get_settings()).download(args.version, Path(tmp) / "v")
            except RegistryError as error:
                print(f"digits report: {error}", file=sys.stderr)
                return 2
            html, table = render_version(Path(tmp) / "v", output)
            stored = Path(tmp) / "v" / REPORT_FILE
            if stored.exists():  # the run's original, all candidates included
                shutil.copy(stored, output / "run-report.html")
    else:
        p.error("give a VERSION, or --decision and --evaluation")
    print(table)
    print(f"report: {html}")
    return 0
