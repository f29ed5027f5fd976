"""README figures come from a command: the block writer and the run table."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

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
                                  "train_seconds": 687.2,
                                  "metrics": {"ece": 0.0013, "uncalibrated": {"ece": 0.0901}}}}}
    text = readme_figures.run_figures(summary)
    assert "16 min 18 s wall" in text and "**promote** for cnn" in text
    assert "| cnn | 99.63% | 99.56% | 687 s | 0.0901 → 0.0013 |" in text


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


def test_every_readme_figure_was_made_from_todays_code():
    """Each block's recorded code digest matches the code now; otherwise, the command to run.

    A model, feature, split or server change after a figure was measured makes the figure
    describe code that no longer exists: this names each such block and how to remake it.
    """
    problems = readme_figures.stale(ROOT)
    assert not problems, "\n".join(problems)


def _copy_of_the_code(into: Path) -> Path:
    """The README and the code the figures depend on, copied (no git) under ``into``."""
    for folder in ("components", "pipelines", "serving", "bench"):
        shutil.copytree(ROOT / folder, into / folder,
                        ignore=shutil.ignore_patterns("__pycache__", ".*"))
    shutil.copyfile(ROOT / "README.md", into / "README.md")
    text = (into / "README.md").read_text()
    for name in readme_figures.SOURCES:
        line = readme_figures.current_provenance(name, into)
        content = readme_figures.with_provenance(readme_figures.block(text, name), line)
        text = readme_figures.replace_block(text, name, content)
    (into / "README.md").write_text(text)
    return into


def test_a_changed_model_file_makes_every_figure_it_determines_stale(tmp_path):
    root = _copy_of_the_code(tmp_path)
    assert readme_figures.stale(root) == []
    assert "commit=unknown" in (root / "README.md").read_text()  # no git here: said so

    models = root / "components" / "models" / "cnn.py"
    os.utime(models, (0, 0))  # a touched file is not a changed one
    assert readme_figures.stale(root) == []

    models.write_text(models.read_text() + "\nBN_MOMENTUM = 0.99  # a changed model\n")
    problems = readme_figures.stale(root)
    assert len(problems) == len(readme_figures.SOURCES)  # every figure runs the models
    for name, source in readme_figures.SOURCES.items():
        assert any(f"'{name}'" in p and f"`{source.command}`" in p for p in problems), problems


def test_a_block_left_outdated_says_so_and_only_for_the_code_it_was_left_against(tmp_path):
    """A run that does not fit now: the README says the figures are old, the check accepts it
    until the code changes again."""
    root = _copy_of_the_code(tmp_path)
    features = root / "components" / "features.py"
    features.write_text(features.read_text() + "\nCELL = 7  # a changed feature\n")
    assert any("'run'" in p for p in readme_figures.stale(root))

    readme_figures.mark_outdated("run", "a changed feature", root)
    text = (root / "README.md").read_text()
    assert "**Outdated:**" in readme_figures.block(text, "run")
    assert "`make readme-figures`" in readme_figures.block(text, "run")
    assert not any("'run'" in p for p in readme_figures.stale(root))

    features.write_text(features.read_text() + "\nPOOL = 3  # and another\n")
    assert any("'run'" in p for p in readme_figures.stale(root))

    regenerated = readme_figures.with_provenance(
        readme_figures.block(text, "run"), readme_figures.current_provenance("run", root))
    assert "Outdated" not in regenerated  # a remade block is current again


def test_code_outside_a_figures_sources_leaves_it_current(tmp_path):
    root = _copy_of_the_code(tmp_path)
    front = root / "serving" / "front.py"
    front.write_text(front.read_text() + "\n# a comment is a change too\n")
    registry = root / "components" / "registry.py"
    registry.write_text(registry.read_text() + "\n# the registry determines no figure\n")
    problems = readme_figures.stale(root)
    assert len(problems) == 1 and "'bench-serve'" in problems[0], problems
    assert "`make bench WHAT=serve`" in problems[0]


def test_a_figures_code_that_moved_is_an_error_not_a_smaller_digest():
    with pytest.raises(SystemExit, match=r"nothing matches 'components/stem\.py'"):
        readme_figures.code_files("run", ["components/models.py", "components/features.py"])


def test_a_commits_digest_is_the_digest_of_its_files(tmp_path):
    """``stamp`` (git's copy at a commit) and generation (the working tree) agree."""
    root = _copy_of_the_code(tmp_path)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "figures"]):
        subprocess.run(git + command, cwd=root, check=True)
    for name in readme_figures.SOURCES:
        assert (readme_figures.commit_digest(name, "HEAD", root)
                == readme_figures.tree_digest(name, root))
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                          capture_output=True, text=True).stdout.strip()
    assert readme_figures.current_commit("run", root) == head
    stem = root / "components" / "stem.py"
    stem.write_text(stem.read_text() + "\n")
    assert readme_figures.current_commit("run", root) == head + "+changes"
    assert readme_figures.current_commit("bench-serve", root).endswith("+changes")
