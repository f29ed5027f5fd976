"""End to end: ``digits run --quick`` twice through kfp.local, with its own S3 store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def run_cli(*args: str, env: dict[str, str]) -> tuple[dict, str]:
    result = subprocess.run(
        [sys.executable, "-m", "cli", "run", "--quick", "--json", *args],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout), result.stderr


def assert_quiet_progress(progress: str, summary: dict) -> None:
    """Not a terminal: one plain line per state change, no kfp dumps, a log per task."""
    lines = progress.splitlines()
    assert len(lines) < 60, progress
    assert lines[0] == "[1/11] ingest: running"
    assert any(line.startswith("[1/11] ingest: done in ") and "3,020 train" in line
               and "(20 feedback)" in line for line in lines)
    assert any(" train-cnn: epoch 3/3 " in line for line in lines)
    assert any(line.startswith("[10/11] deploy: done in ") for line in lines)
    assert any(line.startswith("[11/11] kaggle-submit: done in ") and "not submitted" in line
               for line in lines)
    assert "executor_input" not in progress and "\x1b[" not in progress
    logs = Path(summary["logs"])
    assert {p.stem for p in logs.glob("*.log")} >= {
        "ingest", "train-cnn", "train-xgboost", "train-baseline", "evaluate-cnn", "gate",
        "report", "deploy", "kaggle-submit"}
    assert "Got executor_input" in (logs / "train-cnn.log").read_text()


def assert_dashboard_outputs(run_dir: Path, report: Path) -> None:
    """What the KFP dashboard shows: metrics, confusion matrix and ROC, the HTML report."""
    evaluations = sorted(run_dir.glob("evaluate*/executor_output.json"))
    assert len(evaluations) == 3
    for path in evaluations:
        artifacts = json.loads(path.read_text())["artifacts"]
        scalars = artifacts["metrics"]["artifacts"][0]["metadata"]
        assert 0.5 < scalars["accuracy"] <= 1
        curves = artifacts["classification"]["artifacts"][0]["metadata"]
        assert len(curves["confusionMatrix"]["rows"]) == 10
        assert 2 <= len(curves["confidenceMetrics"]) <= 200
    html = report.read_text()
    assert html.startswith("<!DOCTYPE html>") and "https://" not in html
    assert all(f'id="{section}"' in html for section in ("summary", "gate", "comparison"))
    markdown = next(run_dir.glob("report/summary"))
    assert "Gate: promote" in markdown.read_text()


def assert_offline_submission(summary: dict) -> None:
    """After a promotion: a Kaggle-format file of the holdout, scored, not sent."""
    kaggle = summary["kaggle"]
    assert kaggle["mode"] == "offline" and kaggle["submitted"] is False
    assert kaggle["version"] == summary["version"] and kaggle["kaggle_score"] is None
    lines = Path(kaggle["file"]).read_text().splitlines()
    assert lines[0] == "ImageId,Label" and len(lines) - 1 == kaggle["rows"] == 10_000
    # The same model on the same holdout: the submission scores what the gate measured.
    promoted = summary["models"][summary["gate"]["challenger"]]
    assert kaggle["local_score"] == pytest.approx(promoted["holdout_accuracy"], abs=1e-9)


def store_feedback(home: Path, mnist) -> int:
    """What users would have sent: 20 new digits and one that is a holdout digit."""
    from components.feedback import FeedbackItem, FeedbackStore
    from components.registry import open_registry

    _, _, x_test, y_test, _ = mnist
    items = [FeedbackItem.create(np.roll(image, 2, axis=1), int(label))
             for image, label in zip(x_test[:20], y_test[:20], strict=True)]
    items.append(FeedbackItem.create(x_test[100], int(y_test[100])))  # must never be trained on
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DIGITS_HOME", str(home))
        for name in [k for k in os.environ if k.startswith("DIGITS_S3")]:
            patch.delenv(name)
        with open_registry() as registry:
            for item in items:
                FeedbackStore(registry).add(item)
    return len(items)


def test_quick_run_twice_promotes_then_refuses_a_weaker_model(tmp_path, mnist_dir, mnist):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITS_")}
    env.update(DIGITS_HOME=str(tmp_path / "home"), DIGITS_MNIST_DIR=str(mnist_dir))
    received = store_feedback(tmp_path / "home", mnist)

    first, progress = run_cli(env=env)
    assert first["feedback"]["received"] == received
    assert first["feedback"]["used"] == received - 1  # the holdout digit is left out
    assert_quiet_progress(progress, first)
    assert first["report"].endswith("report.html")
    assert set(first["models"]) == {"cnn", "xgboost", "baseline"}
    for row in first["models"].values():
        assert 0.5 < row["holdout_accuracy"] <= 1 and row["train_seconds"] > 0
    assert first["gate"]["decision"] == "promote" and first["gate"]["champion"] is None
    assert first["production"] == first["version"]
    assert_dashboard_outputs(Path(first["decision_report"]).parents[1], Path(first["report"]))
    assert Path(first["report"]).parent.name == first["run_id"]
    assert_offline_submission(first)

    weaker, _ = run_cli("--train-size", "200", "--models", "xgboost,baseline", "--no-feedback",
                        env=env)
    assert weaker["feedback"] is None
    assert weaker["gate"]["decision"] == "reject"
    assert weaker["gate"]["champion"] == first["version"]
    assert weaker["production"] == first["version"]
    assert set(weaker["models"]) == {"xgboost", "baseline"}
    assert weaker["kaggle"] is None  # nothing promoted, nothing submitted

    archived = subprocess.run(
        [sys.executable, "-m", "cli", "kaggle", "list", "--json"],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )
    record, = json.loads(archived.stdout)
    assert record["version"] == first["version"] and record["key"] == first["kaggle"]["key"]

    listed = subprocess.run(
        [sys.executable, "-m", "cli", "registry", "list", "--json"],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )
    statuses = {row["version"]: row["status"] for row in json.loads(listed.stdout)}
    assert statuses == {first["version"]: "production", weaker["version"]: "rejected"}
    # The embedded store was stopped after each command.
    assert not (tmp_path / "home" / "s3" / "server.json").exists()
