"""README figures come from a command: the block writer and the run table."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("readme_figures",
                                              ROOT / "scripts" / "readme_figures.py")
readme_figures = importlib.util.module_from_spec(spec)
spec.loader.exec_module(readme_figures)


def test_a_block_is_replaced_between_its_markers_only():
    text = "intro\n<!-- figures:run -->\nold\n<!-- /figures:run -->\nrest <!-- figures:x -->\n"
    new = readme_figures.replace_block(text, "run", "new line\n")
    assert new == ("intro\n<!-- figures:run -->\nnew line\n<!-- /figures:run -->\n"
                   "rest <!-- figures:x -->\n")
    assert readme_figures.replace_block(new, "run", "new line") == new
    with pytest.raises(SystemExit, match="no <!-- figures:bench-train --> block"):
        readme_figures.replace_block(text, "bench-train", "x")


def test_the_run_table_reports_what_the_run_printed():
    summary = {"wall_seconds": 978.4, "gate": {"decision": "promote", "challenger": "cnn"},
               "models": {"cnn": {"holdout_accuracy": 0.99634, "validation_accuracy": 0.9956,
                                  "train_seconds": 687.2}}}
    text = readme_figures.run_figures(summary)
    assert "16 min 18 s wall" in text and "**promote** for cnn" in text
    assert "| cnn | 99.63% | 99.56% | 687 s |" in text


def test_the_readme_holds_every_block_the_commands_write():
    readme = (ROOT / "README.md").read_text()
    for name in readme_figures.FIGURES:
        assert f"<!-- figures:{name} -->" in readme and f"<!-- /figures:{name} -->" in readme


def test_the_results_section_is_generated_from_the_committed_study():
    """README "Results" is exactly what `make study-readme` makes of docs/study/results.csv."""
    readme = (ROOT / "README.md").read_text()
    block = readme_figures.replace_block(readme, "study", readme_figures.study_figures())
    assert block == readme, "README Results is stale or edited by hand: run `make study-readme`"
    assert (readme_figures.STUDY / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "docs/study/learning_curves.png" in readme
