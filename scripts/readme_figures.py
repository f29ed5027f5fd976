"""Write measured figures into README.md between markers, so no number is typed by hand.

    python scripts/readme_figures.py run SUMMARY.json          # from `digits run --json`
    python scripts/readme_figures.py bench-train RESULTS.json  # from bench/training.py
    python scripts/readme_figures.py bench-serve ROWS.json     # from bench/serving.py --json
    python scripts/readme_figures.py study DIRECTORY            # a `digits simulate` --output

replaces what lies between ``<!-- figures:NAME -->`` and ``<!-- /figures:NAME -->``.
``make readme-figures`` runs the full pipeline and then this; ``make bench`` does the
same for the training benchmark.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
#: The study's committed results: the README's Results section is generated from these.
STUDY = README.parent / "docs" / "study"


def replace_block(text: str, name: str, content: str) -> str:
    """``text`` with the block named ``name`` holding ``content`` (markers kept)."""
    pattern = re.compile(rf"(<!-- figures:{name} -->\n).*?(<!-- /figures:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no <!-- figures:{name} --> block")
    return pattern.sub(lambda m: m[1] + content.rstrip("\n") + "\n" + m[2], text)


def _bench():
    """``bench/training.py``, which knows the machine and formats the benchmark table."""
    sys.path.insert(0, str(README.parent / "bench"))
    import training

    return training


def run_figures(summary: dict) -> str:
    """One sentence and a table from a full run's summary."""
    import os

    cpu_model = _bench().cpu_model

    minutes, seconds = divmod(round(summary["wall_seconds"]), 60)
    rows = ["| model | holdout accuracy | validation accuracy | training |",
            "| --- | --- | --- | --- |"]
    for kind, row in summary["models"].items():
        rows.append(f"| {kind} | {row['holdout_accuracy']:.2%} | "
                    f"{row['validation_accuracy']:.2%} | {row['train_seconds']:.0f} s |")
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
            "the same booster; closed-loop clients on 127.0.0.1; "
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
    return results_markdown(read_results(directory / "results.csv"),
                            "docs/study/learning_curves.png", provenance)


FIGURES = {"run": run_figures, "bench-train": bench_train_figures,
           "bench-serve": bench_serve_figures}


def main(argv: list[str]) -> int:
    study = len(argv) in (2, 3) and argv[0] == "study"
    if not study and (len(argv) != 2 or argv[0] not in FIGURES):
        raise SystemExit(f"usage: readme_figures.py {'|'.join(FIGURES)} RESULTS.json\n"
                         "       readme_figures.py study SIMULATION_DIRECTORY [NOTE]")
    name, path = argv[:2]
    if study:
        if Path(path).resolve() != STUDY.resolve():
            keep_study(Path(path), note=argv[2] if len(argv) == 3 else "")
        content = study_figures()
    else:
        content = FIGURES[name](json.loads(Path(path).read_text()))
    README.write_text(replace_block(README.read_text(), name, content))
    print(f"README.md: {name} figures updated from {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
