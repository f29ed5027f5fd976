"""The layers' arrows point one way: ``cli`` → ``pipelines`` / ``serving`` → ``components``.

``components/`` is the leaf library every image and stage imports; an import of
``pipelines`` or ``serving`` (or the CLI above them) from inside it would pull
kfp into the serving image, or the server into a training task.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: What each layer must never import (at module level or inside a function).
FORBIDDEN = {"components": ("pipelines", "serving", "cli"),
             "serving": ("pipelines", "cli"),
             "pipelines": ("cli",)}


def imported_packages(path: Path) -> set[str]:
    """Top-level packages a module imports anywhere in its body."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def layer_violations(layer: str, root: Path = ROOT) -> list[str]:
    return [f"{path.relative_to(root)} imports {name}"
            for path in sorted((root / layer).rglob("*.py"))
            for name in sorted(imported_packages(path) & set(FORBIDDEN[layer]))]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_layer_imports_one_above_it(layer):
    assert layer_violations(layer) == []


def test_the_check_sees_an_import_hidden_in_a_function(tmp_path):
    """The check itself: a lazy import upward is found too."""
    (tmp_path / "components").mkdir()
    (tmp_path / "components" / "leaf.py").write_text(
        "def run():\n    from pipelines.local import run_pipeline\n    return run_pipeline\n")
    assert layer_violations("components", tmp_path) == [
        "components/leaf.py imports pipelines"]
