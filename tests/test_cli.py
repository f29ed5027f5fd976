"""The ``digits`` command: each stage's thin CLI, chained by hand, and the registry verbs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import main
from components.registry import Registry
from components.settings import get_settings


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "registry", "compile", "ingest", "train", "evaluate", "gate",
                    "deploy", "report", "serve", "submit", "schedule", "simulate", "kaggle",
                    "feedback"):
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
                       "production": "run1-baseline", "reason": decision["reason"]}

    # A second run judged against the same empty production lost the race: archived, not served.
    racing = ["deploy", "--challenger", str(tmp_path / "challenger"),
              "--decision", str(tmp_path / "decision"), "--dataset", str(data),
              "--run-id", "run2", "--expect", "promote"]
    assert main(racing) == 0
    lost = json.loads(capsys.readouterr().out)
    assert lost["status"] == "rejected" and lost["production"] == "run1-baseline"
    assert "production is run1-baseline but the gate judged against no champion" in lost["reason"]
    assert Registry.from_settings(get_settings()).describe("run2-baseline")["status"] == "rejected"

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
    assert [(r["version"], r["production"], r["status"]) for r in rows] == [
        ("run2-baseline", False, "rejected"), ("run1-baseline", True, "production")]
    assert main(["registry", "list"]) == 0
    header, lost_row, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["version", "status", "kind", "holdout", "created", "(UTC)"]
    assert lost_row.split()[:2] == ["run2-baseline", "rejected"]
    assert row.split()[:4] == ["*", "run1-baseline", "production", "baseline"]
    assert row.split()[4] == f"{decision['challenger']['accuracy']:.2%}"
    assert row.split()[5] == stored["created_at"][:10]

    assert main(["registry", "show", "run1-baseline"]) == 0
    shown = capsys.readouterr().out
    assert len(shown.splitlines()) < 15 and "{" not in shown
    assert "version         run1-baseline (production)" in shown
    assert f"gate            promote: {decision['reason']}" in shown
    assert "600 train" in shown and "report.html" in shown
    assert main(["registry", "show", "run1-baseline", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"] == stored["metrics"]
    assert main(["registry", "promote", "no-such-version"]) == 2
    assert "no version 'no-such-version'" in capsys.readouterr().err
    assert main(["registry", "rollback"]) == 2
    assert "nothing to roll back" in capsys.readouterr().err
    # The baseline's numpy weights are its inference form: nothing to add, nothing moved.
    pointer = registry.production()
    assert main(["registry", "export", "run1-baseline", "--dataset", str(data)]) == 0
    assert "needs no export" in capsys.readouterr().out
    assert registry.production() == pointer
    assert main(["registry", "export", "no-such-version", "--dataset", str(data)]) == 2
    assert "no version 'no-such-version'" in capsys.readouterr().err


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A DIGITS_HOME of its own, so 'nothing left behind' can be checked."""
    monkeypatch.setenv("DIGITS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "--source", "kaggle-csv"], "--source kaggle-csv needs --csv PATH"),
    (["run", "--mnist-dir", "/nonexistent"], "--mnist-dir /nonexistent: no such directory"),
    (["run", "--source", "kaggle-csv", "--csv", "/nonexistent.csv"], "no such file"),
    (["run", "--kaggle", "online"], "--kaggle online needs --kaggle-test PATH"),
    (["run", "--kaggle", "auto", "--kaggle-test", "/nonexistent.csv"],
     "--kaggle-test /nonexistent.csv: no such file"),
])
def test_bad_run_arguments_fail_in_one_line_before_anything_runs(argv, message, home, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    [line] = captured.err.splitlines()
    assert line.startswith("digits run: ") and message in line
    assert captured.out == ""
    assert not home.exists()


def test_a_missing_mnist_file_is_named(home, tmp_path, capsys):
    partial = tmp_path / "mnist"
    partial.mkdir()
    (partial / "train-images-idx3-ubyte.gz").write_bytes(b"")
    assert main(["run", "--mnist-dir", str(partial)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "missing train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz" in line


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--epochs", "abc", "argument --epochs: expected a whole number, got 'abc'"),
    ("--xgb-rounds", "0", "argument --xgb-rounds: must be positive, got 0"),
    ("--alpha", "2", "argument --alpha: must be between 0 and 1, got 2"),
])
def test_bad_numbers_are_refused_by_name(flag, value, message, home, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", flag, value])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"digits run: error: {message}"


def test_a_failing_stage_ends_the_run_in_one_line_and_sets_its_folder_aside(
        home, tmp_path, capsys):
    bad = tmp_path / "train.csv"
    bad.write_text("label,pixel0\n1,2\n")
    assert main(["run", "--source", "kaggle-csv", "--csv", str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    last = captured.err.splitlines()[-1]
    assert last.startswith("digits run: stage ingest failed: ")
    assert "line 1: header must be label,pixel0..pixel783" in last
    assert "Traceback" not in captured.err and "\x1b[" not in captured.err
    log = last.rsplit("(log: ", 1)[1].rstrip(")")
    assert "Traceback" in Path(log).read_text()  # the full story is in the task's log
    assert not any((home / "runs").iterdir()), "a failed run must not look like a run"
    [failed] = (home / "failed-runs").iterdir()
    assert log.startswith(str(failed))


def test_help_is_plain_text_with_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    assert "--epochs EPOCHS       CNN epochs (default: 12; --quick: 3)" in text
    assert "--xgb-rounds" in text and "--rounds" not in text.replace("--xgb-rounds", "")
    for stage in ("ingest", "train", "evaluate", "gate", "deploy"):
        with pytest.raises(SystemExit):
            main([stage, "--help"])
        assert ":class:" not in capsys.readouterr().out


def test_serving_side_commands_never_import_the_training_stack():
    """The serving image has no kfp, TensorFlow, XGBoost, SciPy or scikit-learn: the
    verbs it runs (serve, kaggle, registry, help) must not import them, even to build
    their parsers (the image test proves the same inside the image)."""
    import subprocess
    import sys

    code = "\n".join([
        "import sys",
        "from cli import main as cli",
        "for argv in (['--help'], ['registry', 'list', '--help'], ['kaggle', '--help'],",
        "             ['serve', '--help']):",
        "    try:",
        "        cli.main(argv)",
        "    except SystemExit:",
        "        pass",
        "import components.export, components.kaggle.cli, components.kaggle.job, serving.app",
        "heavy = ('kfp', 'pipelines', 'tensorflow', 'keras', 'xgboost', 'treelite', 'scipy',",
        "         'sklearn', 'matplotlib', 'optuna', 'docker')",
        "print(sorted(m for m in heavy if m in sys.modules))"])
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
