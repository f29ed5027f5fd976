"""The ``digits`` command: each stage's thin CLI, chained by hand, and the registry verbs."""

from __future__ import annotations

import json

import pytest

from components.cli import main
from components.registry import Registry
from components.settings import get_settings


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "registry", "compile", "ingest", "train", "evaluate", "gate",
                    "deploy", "report", "serve", "submit", "simulate", "kaggle"):
        assert command in out


def test_bad_model_list_is_refused_before_anything_runs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--models", "cnn,svm"])
    assert exit_info.value.code == 2
    assert "choose from cnn,xgboost,baseline" in capsys.readouterr().err


def test_ingest_reports_bad_csv_with_exit_code_2(tmp_path, capsys):
    bad = tmp_path / "train.csv"
    bad.write_text("label,pixel0\n1,2\n")
    code = main(["ingest", "--source", "kaggle-csv", "--csv", str(bad),
                 "--output", str(tmp_path / "out")])
    assert code == 2
    assert "line 1: header" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_stage_clis_chain_into_a_registered_model(mnist_dir, tmp_path, s3_env, capsys):
    """ingest → train → evaluate → gate → deploy, as the KFP components call them."""
    data, model, evaluation = tmp_path / "data", tmp_path / "model", tmp_path / "eval"
    assert main(["ingest", "--mnist-dir", str(mnist_dir), "--train-size", "600",
                 "--output", str(data)]) == 0
    assert main(["train", "--kind", "baseline", "--dataset", str(data), "--output", str(model),
                 "--param", "max_iter=200"]) == 0
    assert main(["evaluate", "--dataset", str(data), "--model", str(model),
                 "--output", str(evaluation)]) == 0
    assert main(["gate", "--dataset", str(data), "--candidate", f"baseline={model}",
                 "--evaluation", f"baseline={evaluation}", "--min-accuracy", "0.8",
                 "--challenger-output", str(tmp_path / "challenger"),
                 "--decision-output", str(tmp_path / "decision")]) == 0
    decision = json.loads((tmp_path / "decision" / "decision.json").read_text())
    assert decision["decision"] == "promote" and decision["champion"] is None
    assert (tmp_path / "challenger" / "evaluation" / "predictions.npz").exists()
    assert main(["report", "--decision", str(tmp_path / "decision"),
                 "--evaluation", f"baseline={evaluation}",
                 "--output", str(tmp_path / "report")]) == 0
    capsys.readouterr()
    assert main(["deploy", "--challenger", str(tmp_path / "challenger"),
                 "--decision", str(tmp_path / "decision"), "--dataset", str(data),
                 "--report", str(tmp_path / "report" / "report.html"),
                 "--run-id", "run1"]) == 0
    outcome = json.loads(capsys.readouterr().out)
    assert outcome == {"version": "run1-baseline", "status": "promoted",
                       "production": "run1-baseline"}

    registry = Registry.from_settings(get_settings())
    stored = registry.metadata("run1-baseline")
    assert stored["dataset"]["sizes"]["train"] == 600
    assert stored["metrics"]["accuracy"] == decision["challenger"]["accuracy"]
    assert stored["gate"]["decision"] == "promote" and stored["code_version"]
    assert {"report.html", "gate/decision.json", "evaluation/predictions.npz",
            "model.json", "weights.npz"} <= set(stored["files"])

    # `digits report <version>` rebuilds the report from what the registry stored.
    capsys.readouterr()
    assert main(["report", "run1-baseline", "--output", str(tmp_path / "again")]) == 0
    assert "baseline" in capsys.readouterr().out
    html = (tmp_path / "again" / "report.html").read_text()
    assert "run1-baseline" in html and (tmp_path / "again" / "run-report.html").exists()

    assert main(["registry", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["version"], r["production"]) for r in rows] == [("run1-baseline", True)]
    assert main(["registry", "promote", "no-such-version"]) == 2
    assert "no version 'no-such-version'" in capsys.readouterr().err
    assert main(["registry", "rollback"]) == 2
    assert "nothing to roll back" in capsys.readouterr().err
