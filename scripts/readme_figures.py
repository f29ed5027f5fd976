"""Write measured figures into README.md between markers, so no number is typed by hand.

    python scripts/readme_figures.py run SUMMARY.json          # from `digits run --json`
    python scripts/readme_figures.py bench-train RESULTS.json  # from bench/training.py
    python scripts/readme_figures.py bench-serve ROWS.json     # from bench/serving.py --json
    python scripts/readme_figures.py study DIRECTORY            # a `digits simulate` --output

    python scripts/readme_figures.py check                      # which blocks are stale
    python scripts/readme_figures.py stamp NAME COMMIT          # provenance of an old block

replaces what lies between ``<!-- figures:NAME -->`` and ``<!-- /figures:NAME -->``.
``make readme-figures`` runs the full pipeline and then this; ``make bench`` does the
same for the benchmarks.

Every block starts with a provenance comment: the commit it was made at and a digest of
the contents of the files that determine its numbers (``SOURCES``, the one list of them).
``check`` (and the test suite) compares that digest with today's files, so a figure whose
code has changed since is reported with the command that regenerates it, instead of
quietly describing code that no longer exists.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

README = Path(__file__).resolve().parents[1] / "README.md"
#: The study's committed results: the README's Results section is generated from these.
STUDY = README.parent / "docs" / "study"


class Source(NamedTuple):
    """What makes a figure block: the command that regenerates it and the code behind it.

    ``code`` holds ``fnmatch`` patterns relative to the repository root (``*`` crosses
    folders, so ``components/models*.py`` also covers a ``components/models/`` package).
    Only files whose contents change the block's numbers belong here: a file that only
    formats or transports them would make every refactor look like a stale figure.
    """

    command: str
    code: tuple[str, ...]


#: The models as trained and as they predict: every figure depends on these.
_MODEL_CODE = ("components/stem.py", "components/features.py", "components/models*.py",
               "components/calibration.py", "components/train.py")
#: A full run: models, data splits, scoring, the gate's choice, the pipeline's defaults.
_RUN_CODE = (*_MODEL_CODE, "components/data.py", "components/datafiles.py", "components/ingest.py",
             "components/evaluate.py", "components/scoring.py", "components/metrics.py",
             "components/gate.py", "pipelines/training.py")

#: The one list of which code determines which README block, and how to regenerate it.
SOURCES: dict[str, Source] = {
    "run": Source("make readme-figures", _RUN_CODE),
    "bench-train": Source("make bench WHAT=train",
                          (*_MODEL_CODE, "components/data.py", "components/datafiles.py",
                           "bench/training.py")),
    "bench-serve": Source("make bench WHAT=serve",
                          (*_MODEL_CODE, "components/export.py", "serving/*.py", "bench/serving.py",
                           "bench/loadgen.py")),
    "study": Source("make study", (*_RUN_CODE, "pipelines/simulate.py", "pipelines/study.py")),
}

_PROVENANCE = re.compile(r"<!-- provenance commit=(\S+) code=(\S+) regenerate=\"([^\"]+)\" -->")
#: A block left old on purpose (its run did not fit): says so where readers see it, and
#: holds the digest of the code it was left old against, so a further change fails again.
_OUTDATED = re.compile(r"<!-- outdated code=(\S+) -->\n> [^\n]*\n\n?")


def code_files(name: str, paths: Iterable[str], *, strict: bool = True) -> list[str]:
    """The files among ``paths`` (repository-relative, ``/``-separated) behind block ``name``.

    ``strict``: every pattern must match something, as in today's tree: a renamed file
    would otherwise drop out of the digest unnoticed and its changes would never make the
    block stale. An old commit (``stamp``) may predate a file; there it is simply absent.
    """
    paths = sorted(set(paths))
    chosen: set[str] = set()
    for pattern in SOURCES[name].code:
        matched = fnmatch.filter(paths, pattern)
        if not matched and strict:
            raise SystemExit(f"scripts/readme_figures.py: nothing matches {pattern!r} (block "
                             f"{name!r}); update SOURCES to where that code lives now")
        chosen.update(matched)
    return sorted(chosen)


def code_digest(files: Iterable[str], read: Callable[[str], bytes]) -> str:
    """A digest of the files' paths and exact bytes (not their mtimes; nothing normalised)."""
    digest = hashlib.sha256()
    for path in sorted(files):
        content = read(path)
        digest.update(f"{path}\0{len(content)}\0".encode())
        digest.update(content)
    return "sha256:" + digest.hexdigest()[:16]


def _tree_files(root: Path) -> list[str]:
    """Every file under ``root`` as a repository path, skipping caches and hidden folders."""
    return [path.relative_to(root).as_posix() for path in root.rglob("*")
            if path.is_file() and not any(part.startswith(".") or part == "__pycache__"
                                          for part in path.relative_to(root).parts)]


def tree_digest(name: str, root: Path = README.parent) -> str:
    """The digest of block ``name``'s code as it is in the working tree at ``root``."""
    return code_digest(code_files(name, _tree_files(root)), lambda p: (root / p).read_bytes())


def _git(root: Path, *args: str) -> str | None:
    """``git args`` in ``root``, or None where there is no git or no repository."""
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None


def commit_digest(name: str, commit: str, root: Path = README.parent) -> str:
    """The digest of block ``name``'s code as it was at ``commit`` (``git show``)."""
    listing = _git(root, "ls-tree", "-r", "--name-only", commit)
    if listing is None:
        raise SystemExit(f"git cannot list commit {commit!r} in {root}")
    return code_digest(code_files(name, listing.split("\n"), strict=False),
                       lambda p: subprocess.run(["git", "show", f"{commit}:{p}"], cwd=root,
                                                capture_output=True, check=True).stdout)


def current_commit(name: str, root: Path = README.parent) -> str:
    """HEAD's short hash, ``+changes`` when the block's code differs from it, or ``unknown``."""
    head = _git(root, "rev-parse", "--short", "HEAD")
    if head is None:
        return "unknown"
    files = code_files(name, _tree_files(root))
    dirty = _git(root, "status", "--porcelain", "--", *files)
    return head.strip() + ("+changes" if dirty else "")


def provenance(name: str, commit: str, digest: str) -> str:
    """The comment that opens block ``name``: where it was made and how to remake it."""
    return (f'<!-- provenance commit={commit} code={digest} '
            f'regenerate="{SOURCES[name].command}" -->')


def current_provenance(name: str, root: Path = README.parent) -> str:
    """Provenance for a block being generated now, from the working tree at ``root``."""
    return provenance(name, current_commit(name, root), tree_digest(name, root))


def block(text: str, name: str) -> str:
    """What lies between block ``name``'s markers."""
    found = re.search(rf"<!-- figures:{name} -->\n(.*?)<!-- /figures:{name} -->", text, re.S)
    if not found:
        raise SystemExit(f"README.md has no <!-- figures:{name} --> block")
    return found[1]


def with_provenance(content: str, line: str) -> str:
    """``content`` opened by provenance ``line`` (an older provenance line, and any note that
    the block is outdated, replaced: a regenerated block is current)."""
    content = _OUTDATED.sub("", _PROVENANCE.sub("", content, count=1).lstrip("\n"), count=1)
    return line + "\n" + content.lstrip("\n")


def mark_outdated(name: str, reason: str, root: Path = README.parent) -> None:
    """Say, in block ``name`` itself, that its figures predate today's code, and why.

    For a block whose run does not fit now (the study takes hours): the README shows
    readers a warning under the figures' provenance instead of passing them off as
    current, and the staleness check accepts the block only while its code stays as it
    is at this moment.
    """
    readme = root / "README.md"
    text = readme.read_text()
    content = block(text, name)
    found = _PROVENANCE.search(content)
    if not found:
        raise SystemExit(f"README block {name!r} has no provenance to mark outdated")
    content = _OUTDATED.sub("", content, count=1)
    note = (f"<!-- outdated code={tree_digest(name, root)} -->\n"
            f"> **Outdated:** these figures were made at commit {found[1]}; the code that "
            f"determines them has changed since ({reason}). Remake them with "
            f"`{SOURCES[name].command}`.\n\n")
    if name == "study":  # the section is generated from docs/study: the note lives there
        record = json.loads((root / "docs" / "study" / "study.json").read_text())
        record["outdated"] = note
        (root / "docs" / "study" / "study.json").write_text(json.dumps(record, indent=1) + "\n")
    content = content.replace(found[0] + "\n", found[0] + "\n" + note, 1)
    readme.write_text(replace_block(text, name, content))


def stale(root: Path = README.parent) -> list[str]:
    """One line per README block whose code changed since it was made, naming the command.

    Compares each block's recorded digest with the working tree at ``root``; where git
    knows the recorded commit, the line also names the files that changed since.
    """
    text = (root / "README.md").read_text()
    problems = []
    for name, source in SOURCES.items():
        found = _PROVENANCE.search(block(text, name))
        if not found:
            problems.append(f"README block {name!r} says nothing of the code that made it: "
                            f"regenerate it with `{source.command}`")
            continue
        commit, digest = found[1], found[2]
        current = tree_digest(name, root)
        outdated = _OUTDATED.search(block(text, name))
        if digest == current or (outdated and outdated[1] == current):
            continue
        changed = _git(root, "diff", "--name-only", commit.removesuffix("+changes"), "--",
                       *code_files(name, _tree_files(root)))
        since = f" ({', '.join(changed.split())})" if changed and commit != "unknown" else ""
        problems.append(f"README block {name!r} was made at commit {commit} and the code that "
                        f"determines it has changed since{since}: regenerate it with "
                        f"`{source.command}`")
    return problems


def replace_block(text: str, name: str, content: str) -> str:
    """``text`` with the block named ``name`` holding ``content`` (markers kept)."""
    pattern = re.compile(rf"(<!-- figures:{name} -->\n).*?(<!-- /figures:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no <!-- figures:{name} --> block")
    return pattern.sub(lambda m: m[1] + content.rstrip("\n") + "\n" + m[2], text)


def _bench():
    """``bench/training.py``, which knows the machine and formats the benchmark table."""
    import importlib.util

    # By path, never by putting bench/ on sys.path: bench/serving.py would then shadow the
    # `serving` package for the rest of the process (a test run imports both).
    if "bench_training" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_training",
                                                      README.parent / "bench" / "training.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["bench_training"] = module
        spec.loader.exec_module(module)
    return sys.modules["bench_training"]


def run_figures(summary: dict) -> str:
    """One sentence and a table from a full run's summary."""
    import os

    cpu_model = _bench().cpu_model

    minutes, seconds = divmod(round(summary["wall_seconds"]), 60)
    rows = ["| model | holdout accuracy | validation accuracy | training | "
            "holdout ECE, before → after calibration |",
            "| --- | --- | --- | --- | --- |"]
    for kind, row in summary["models"].items():
        metrics = row.get("metrics", {})
        ece = "" if "ece" not in metrics else f"{metrics['ece']:.4f}"
        if ece and metrics.get("uncalibrated"):
            ece = f"{metrics['uncalibrated']['ece']:.4f} → {ece}"
        rows.append(f"| {kind} | {row['holdout_accuracy']:.2%} | "
                    f"{row['validation_accuracy']:.2%} | {row['train_seconds']:.0f} s | {ece} |")
    gate = summary["gate"]
    return (
        f"Measured with `make readme-figures` (a full `digits run` on all of MNIST) on "
        f"{os.cpu_count()} cores ({cpu_model()}): {minutes} min {seconds:02d} s wall; "
        f"the gate said **{gate['decision']}** for {gate['challenger']}.\n\n"
        + "\n".join(rows) + "\n"
    )


def bench_train_figures(results: dict) -> str:
    """The training benchmark's table, as ``bench/training.py`` prints it."""
    return "Measured with `make bench WHAT=train`:\n\n" + _bench().table(results) + "\n"


def bench_serve_figures(rows: list) -> str:
    """The serving benchmark's comparison with MLServer, from ``bench/serving.py --json``."""
    import importlib.util

    # bench/serving.py by path: the name `serving` belongs to the package.
    spec = importlib.util.spec_from_file_location("bench_serving",
                                                  README.parent / "bench" / "serving.py")
    bench_serving = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_serving)
    return ("Measured with `make bench WHAT=serve` (XGBoost on raw pixels, both servers on "
            "the same trees: MLServer on XGBoost's booster, ours on its ONNX export checked "
            "as deploy checks it, the form production serves; closed-loop clients on "
            "127.0.0.1; "
            f"{_bench().cpu_model()}):\n\n" + bench_serving.markdown(rows) + "\n"
            + ("\nSlow clients holding connections (trickling headers or a body a byte every "
               "2 s, or idle) while a well-behaved client asks for a probe and a prediction "
               "on new connections, each with a 2 s timeout:\n\n"
               + bench_serving.hostile_markdown(rows) + "\n"
               if any(row.get("hostile") for row in rows) else "")
            + ("\nThe model users get, the CNN (production architecture with its test-time "
               "views), served through its exported ONNX form on onnxruntime, and in process "
               "on onnxruntime and on Keras:\n\n" + cnn + "\n"
               if (cnn := bench_serving.cnn_markdown(rows)) else ""))


def keep_study(simulation: Path, into: Path = STUDY, note: str = "") -> None:
    """Copy a finished simulation's CSV and image into ``docs/study`` with where it was made.

    ``note``: anything a reader must know about the conditions (shown after the provenance).
    """
    state = json.loads((simulation / "simulation.json").read_text())
    into.mkdir(parents=True, exist_ok=True)
    for name in ("results.csv", "learning_curves.png"):
        shutil.copyfile(simulation / name, into / name)
    finished = datetime.fromtimestamp((simulation / "results.csv").stat().st_mtime, timezone.utc)
    record = {
        "schedule": state["schedule"], "steps": len(state["steps"]),
        "wall_seconds": round(state["elapsed_seconds"]),
        "jobs": state["jobs"], "cores_per_step": sorted({step["cores"] for step in state["steps"]}),
        "machine": f"{os.cpu_count()} cores ({_bench().cpu_model()})",
        "finished": finished.strftime("%Y-%m-%d"),
        "note": note,
        # The code as it is now, when the study has just run: re-rendering the section
        # later (`make study-readme`) keeps describing the code that made the numbers.
        "provenance": current_provenance("study"),
    }
    (into / "study.json").write_text(json.dumps(record, indent=1) + "\n")


def study_figures(directory: Path = STUDY) -> str:
    """The README's Results section from ``docs/study`` (its CSV, image and record)."""
    sys.path.insert(0, str(README.parent))
    from pipelines.study import read_results, results_markdown

    record = json.loads((directory / "study.json").read_text())
    schedule = record["schedule"]
    sizes = ", ".join(f"{size:,}" if size else "all" for size in schedule["sizes"])
    arguments = ", ".join(f"`{k}={v}`" for k, v in schedule["arguments"].items()) or "none"
    from pipelines.simulate import command_line

    provenance = (
        f"Made by `{command_line(schedule)}` (training sizes {sizes}; "
        f"{schedule['seeds']} seeds each; {', '.join(schedule['models'])}; pipeline arguments "
        f"{arguments}, every other at its default) on {record['machine']}: "
        f"{record['steps']} pipeline runs, {record['jobs']} at a time, each on "
        f"{'/'.join(map(str, record['cores_per_step']))} core(s) (training and inference "
        f"times are for that share), in {record['wall_seconds'] / 60:.0f} min, finished "
        f"{record['finished']}. Generated from [docs/study/results.csv](docs/study/results.csv) "
        "by `make study-readme`; nothing here is typed by hand. `make study` runs the default "
        "study and rewrites this section." + (f" {record['note']}" if record.get("note") else ""))
    text = results_markdown(read_results(directory / "results.csv"),
                            "docs/study/learning_curves.png", provenance)
    if "provenance" not in record:
        return text
    text = with_provenance(text, record["provenance"])
    if record.get("outdated"):  # readme_figures.py outdated study REASON
        text = text.replace(record["provenance"] + "\n",
                            record["provenance"] + "\n" + record["outdated"], 1)
    return text


def stamp(name: str, commit: str) -> None:
    """Record in block ``name`` that it was made at ``commit`` (git's copy of its code).

    For blocks generated before blocks carried provenance: the digest is computed over the
    files as ``commit`` holds them, so the staleness check then reports honestly whether
    the code has changed since. The figures themselves are left as they are.
    """
    line = provenance(name, _git(README.parent, "rev-parse", "--short", commit).strip(),
                      commit_digest(name, commit))
    if name == "study":
        record = json.loads((STUDY / "study.json").read_text())
        record["provenance"] = line
        (STUDY / "study.json").write_text(json.dumps(record, indent=1) + "\n")
        content = study_figures()
    else:
        content = with_provenance(block(README.read_text(), name), line)
    README.write_text(replace_block(README.read_text(), name, content))
    print(f"README.md: {name} stamped as made at {commit}")


FIGURES = {"run": run_figures, "bench-train": bench_train_figures,
           "bench-serve": bench_serve_figures}


def main(argv: list[str]) -> int:
    if argv == ["check"]:
        problems = stale()
        print("\n".join(problems) or "README.md: every figure block is current")
        return 1 if problems else 0
    if len(argv) == 3 and argv[0] == "stamp" and argv[1] in SOURCES:
        stamp(argv[1], argv[2])
        return 0
    if len(argv) == 3 and argv[0] == "outdated" and argv[1] in SOURCES:
        mark_outdated(argv[1], argv[2])
        print(f"README.md: {argv[1]} marked outdated")
        return 0
    study = len(argv) in (2, 3) and argv[0] == "study"
    if not study and (len(argv) != 2 or argv[0] not in FIGURES):
        raise SystemExit(f"usage: readme_figures.py {'|'.join(FIGURES)} RESULTS.json\n"
                         "       readme_figures.py study SIMULATION_DIRECTORY [NOTE]\n"
                         "       readme_figures.py check\n"
                         f"       readme_figures.py stamp {'|'.join(SOURCES)} COMMIT\n"
                         f"       readme_figures.py outdated {'|'.join(SOURCES)} REASON")
    name, path = argv[:2]
    if study:
        if Path(path).resolve() != STUDY.resolve():
            keep_study(Path(path), note=argv[2] if len(argv) == 3 else "")
        content = study_figures()
    else:
        content = with_provenance(FIGURES[name](json.loads(Path(path).read_text())),
                                  current_provenance(name))
    README.write_text(replace_block(README.read_text(), name, content))
    print(f"README.md: {name} figures updated from {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
