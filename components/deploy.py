"""Deploy stage: record the gate's verdict in the registry.

A promoted challenger goes to ``versions/`` and becomes production (the
serving Deployment polls the pointer and rolls over by itself); a rejected
one goes to ``failed/`` with the evidence, so nothing a run learned is lost.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from components import __version__
from components.argparsing import make_parser
from components.contract import (
    EVALUATION_DIR,
    GATE_DIR,
    MANIFEST_FILE,
    PROMOTE,
    REJECT,
    REPORT_FILE,
    GateDecision,
    ModelEvaluation,
    StageError,
)
from components.models import read_info
from components.registry import FAILED, ProductionMoved, Registry, utcnow


def code_version() -> str:
    """The package version plus the git commit when known (baked into images as an env var)."""
    commit = os.environ.get("DIGITS_CODE_VERSION")
    if not commit:
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                cwd=Path(__file__).parent, timeout=5, check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def build_metadata(challenger_dir: Path, decision: GateDecision,
                   manifest: dict[str, Any], run_id: str = "") -> dict[str, Any]:
    """Everything needed to trust and reproduce a version, in one JSON document."""
    info = read_info(challenger_dir)
    metrics = ModelEvaluation.load(Path(challenger_dir) / EVALUATION_DIR).metrics
    return {
        "kind": info["kind"],
        "run_id": run_id or None,
        "params": info.get("params", {}),
        "metrics": metrics,
        "validation_accuracy": info.get("validation_accuracy"),
        "train_seconds": info.get("train_seconds"),
        "dataset": manifest,
        "gate": {k: getattr(decision, k) for k in ("decision", "reason", "checks", "mcnemar",
                                                    "policy")},
        "champion_version": decision.champion_version,
        "code_version": code_version(),
        "created_at": utcnow(),
    }


def assemble(challenger_dir: Path, decision_dir: Path | None, report: Path | None,
             staging: Path) -> Path:
    """Lay out a version: model files, ``evaluation/``, ``gate/`` evidence, ``report.html``."""
    shutil.copytree(challenger_dir, staging)
    if decision_dir is not None:
        shutil.copytree(decision_dir, staging / GATE_DIR)
    if report is not None:
        shutil.copy(report, staging / REPORT_FILE)
    return staging


def deploy(registry: Registry, challenger_dir: Path, decision: GateDecision,
           manifest: dict[str, Any], run_id: str = "") -> dict[str, Any]:
    """Promote or archive the challenger according to the decision; return where it went.

    A promotion only replaces the champion the gate judged against; if another
    run promoted in between, this challenger is archived as rejected with that
    reason (:class:`~components.registry.ProductionMoved`) and production keeps
    the other run's model.

    ``challenger_dir`` is the assembled version (see :func:`assemble`). The
    registry names the version (after ``run_id`` when there is one).
    """
    metadata = build_metadata(challenger_dir, decision, manifest, run_id)
    if decision.promoted:
        try:
            version = registry.promote(challenger_dir, metadata, decision.reason,
                                       expect_champion=metadata["champion_version"])
            return {"version": version, "status": "promoted", "production": version,
                    "reason": decision.reason}
        except ProductionMoved as error:  # a racing run promoted first: this one lost
            reason = f"not promoted: {error}"
            metadata["gate"] = {**metadata["gate"], "decision": "reject", "reason": reason}
    else:
        reason = decision.reason
    version = registry.publish(challenger_dir, metadata, status=FAILED)
    current = registry.production()
    return {"version": version, "status": "rejected", "reason": reason,
            "production": current.version if current else None}


def run_deploy(challenger_dir: Path, decision_dir: Path, dataset_dir: Path,
               report: Path | None = None, *, expect: str | None = None, run_id: str = "",
               registry: Registry | None = None) -> dict[str, Any]:
    """The deploy stage: assemble the version and promote or archive it; return the outcome.

    ``expect`` guards the pipeline's branches: the promote branch must never
    archive and the reject branch never promote, whatever the decision file says.
    """
    decision = GateDecision.load(decision_dir)
    if expect and decision.decision != expect:
        raise StageError(f"decision is {decision.decision!r}, this branch expects {expect!r}")
    manifest = json.loads((Path(dataset_dir) / MANIFEST_FILE).read_text())
    if registry is None:
        from components.settings import get_settings

        registry = Registry.from_settings(get_settings())
    with tempfile.TemporaryDirectory() as tmp:
        version_dir = assemble(Path(challenger_dir), Path(decision_dir), report, Path(tmp) / "v")
        return deploy(registry, version_dir, decision, manifest, run_id)


def run_for_kfp(challenger_path: str, decision_path: str, dataset_path: str, report_path: str,
                *, expect: str, run_id: str) -> str:
    """What the deploy component does: promote or archive; the outcome as JSON for later steps."""
    from components.progress import headline

    outcome = run_deploy(Path(challenger_path), Path(decision_path), Path(dataset_path),
                         Path(report_path), expect=expect, run_id=run_id)
    headline(f"{outcome['status']} {outcome['version']}")
    return json.dumps(outcome)


def main(argv: list[str] | None = None) -> int:
    p = make_parser("digits deploy", __doc__)
    p.add_argument("--challenger", type=Path, required=True, help="model directory from the gate")
    p.add_argument("--decision", type=Path, required=True, help="the gate's decision directory")
    p.add_argument("--report", type=Path, help="the run's report.html, stored with the version")
    p.add_argument("--dataset", type=Path, required=True, help="dataset (for its manifest)")
    p.add_argument("--run-id", default="", help="names the version <run-id>-<kind>")
    p.add_argument("--expect", choices=[PROMOTE, REJECT],
                   help="fail unless the decision is this (guards the pipeline's branches)")
    args = p.parse_args(argv)
    outcome = run_deploy(args.challenger, args.decision, args.dataset, args.report,
                         expect=args.expect, run_id=args.run_id)
    print(json.dumps(outcome))
    return 0
