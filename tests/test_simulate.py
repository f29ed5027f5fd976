"""The simulator runs real pipelines over growing training sets."""

from __future__ import annotations

import json

import pytest

from pipelines.simulate import learning_curves, main

pytestmark = pytest.mark.slow


def test_more_data_helps_and_the_gate_follows(tmp_path, mnist_dir, monkeypatch, capsys):
    for key in ("DIGITS_S3_ENDPOINT", "DIGITS_S3_ACCESS_KEY", "DIGITS_S3_SECRET_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DIGITS_MNIST_DIR", str(mnist_dir))
    assert main(["--sizes", "100,3000", "--models", "baseline,xgboost", "--xgb-rounds", "15",
                 "--output", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = result["rows"]
    assert len(rows) == 4
    by = {(r["model"], r["train_size"]): r for r in rows}
    for model in ("baseline", "xgboost"):
        assert by[(model, 3000)]["holdout_accuracy"] > by[(model, 100)]["holdout_accuracy"] + 0.05
    # The first run has no champion and a zero floor: its challenger is promoted.
    assert any(r["promoted"] for r in rows if r["train_size"] == 100)
    assert (tmp_path / "learning_curves.png").stat().st_size > 5000
    table = learning_curves(rows)
    assert "3,000" in table and "xgboost" in table
