"""Run the training pipeline on this machine with ``kfp.local``.

The very pipeline that compiles to ``digits_pipeline.yaml`` runs here, task by
task, in subprocesses of the current environment (no Docker, no cluster).
With no S3 store configured, an embedded one is started for the run, with its
data under ``DIGITS_HOME`` so the registry persists between runs.
"""

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from components.gate import DECISION_FILE
from components.settings import Settings
from pipelines.training import MODEL_FAMILIES, build_pipeline

#: ``--quick``: small data, three short epochs, few rounds — a smoke run in about a minute.
QUICK_ARGUMENTS: dict[str, Any] = {
    "train_size": 3000, "epochs": 3, "batch_size": 64, "xgb_rounds": 20, "baseline_max_iter": 50,
    "min_accuracy": 0.85,
}


#: The headline metrics a run summary carries per model (the full set is in the report).
SUMMARY_METRICS = ("n", "accuracy", "accuracy_ci", "top2_accuracy", "log_loss", "mcc", "ece",
                   "macro_avg", "performance")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + os.urandom(3).hex()


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to fd 1 (ours and the tasks') to stderr meanwhile.

    ``digits run --json`` promises one JSON object on stdout; kfp.local and
    the tasks it spawns log freely, so their output is moved aside.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run_pipeline(arguments: dict[str, Any], models: Sequence[str] = MODEL_FAMILIES,
                 settings: Settings | None = None) -> dict[str, Any]:
    """Execute the pipeline locally and return the run's summary."""
    from kfp import local

    from components.registry import Registry
    from components.s3local import s3_environment
    from components.settings import get_settings

    settings = settings or get_settings()
    run_id = arguments.get("run_id") or new_run_id()
    pipeline_root = Path(settings.home).resolve() / "runs"
    pipeline_root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with s3_environment(settings):
        local.init(runner=local.SubprocessRunner(use_venv=False),
                   pipeline_root=str(pipeline_root), raise_on_error=True)
        task = build_pipeline(models)(**{**arguments, "run_id": run_id})
        decision_dir = Path(task.outputs["decision_report"].path)
        decision = json.loads((decision_dir / DECISION_FILE).read_text())
        registry = Registry.from_settings(get_settings())
        pointer = registry.production()
    kind = decision["challenger"]["kind"]
    models = {
        name: {**row, "metrics": {k: row["metrics"][k] for k in SUMMARY_METRICS}}
        for name, row in decision["candidates"].items()
    }
    return {
        "run_id": run_id,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "models": models,
        "gate": {
            "decision": decision["decision"],
            "reason": decision["reason"],
            "challenger": kind,
            "champion": (decision.get("champion") or {}).get("version"),
        },
        "version": f"{run_id}-{kind}",
        "production": pointer.version if pointer else None,
        "decision_report": str(decision_dir),
        "report": task.outputs["report"].path,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable account of the run: metrics table, gate, where things are."""
    from components.report import summary_table

    lines = [f"run {summary['run_id']} ({summary['wall_seconds']} s)",
             summary_table({kind: row["metrics"] for kind, row in summary["models"].items()}),
             "validation / train seconds: " + ", ".join(
                 f"{kind} {row['validation_accuracy']:.4f} / {row['train_seconds']:.0f}s"
                 for kind, row in summary["models"].items())]
    gate = summary["gate"]
    lines += [f"gate: {gate['decision'].upper()} {gate['challenger']} "
              f"(champion: {gate['champion'] or 'none'})",
              f"  {gate['reason']}",
              f"production: {summary['production'] or 'none'}",
              f"report: {summary['report']}"]
    return "\n".join(lines)
