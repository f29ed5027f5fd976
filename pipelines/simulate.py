"""The simulator: run the pipeline over growing training sets and watch each model learn.

Every step is a real pipeline run (locally through ``kfp.local``, or submitted
to a cluster), gate included, against a registry of its own, so the output
shows both the learning curves of CNN vs XGBoost vs baseline and when the
gate would have promoted a new champion along the way.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from components.argparsing import make_parser, positive_int
from pipelines.training import MODEL_FAMILIES

DEFAULT_SIZES = (500, 2000, 8000)


def simulate(sizes: list[int], models: list[str], seeds: int, arguments: dict[str, Any],
             home: Path) -> list[dict[str, Any]]:
    """Run the local pipeline for every (seed, size); one row per model per run."""
    from components.settings import Settings
    from pipelines.local import run_pipeline

    settings = Settings(home=home)
    rows = []
    for seed_index in range(seeds):
        for size in sizes:
            seed = arguments.get("seed", 0) + seed_index
            summary = run_pipeline({**arguments, "train_size": size, "seed": seed}, models,
                                   settings=settings)
            for kind, row in summary["models"].items():
                rows.append({
                    "seed": seed, "train_size": size, "model": kind,
                    "validation_accuracy": row["validation_accuracy"],
                    "holdout_accuracy": row["holdout_accuracy"],
                    "train_seconds": row["train_seconds"],
                    "challenger": kind == summary["gate"]["challenger"],
                    "promoted": kind == summary["gate"]["challenger"]
                    and summary["gate"]["decision"] == "promote",
                    "run_id": summary["run_id"],
                })
            print(f"simulate: seed {seed} size {size}: gate "
                  f"{summary['gate']['decision']} {summary['gate']['challenger']}",
                  file=sys.stderr)
    return rows


def learning_curves(rows: list[dict[str, Any]]) -> str:
    """A text table: holdout accuracy per model (columns) and training size (rows)."""
    models = sorted({r["model"] for r in rows}, key=lambda m: MODEL_FAMILIES.index(m))
    sizes = sorted({r["train_size"] for r in rows})
    lines = [f"{'train size':>10}  " + "  ".join(f"{m:>10}" for m in models) + "  promoted"]
    for size in sizes:
        cells, promoted = [], []
        for model in models:
            hits = [r for r in rows if r["train_size"] == size and r["model"] == model]
            mean = sum(r["holdout_accuracy"] for r in hits) / len(hits)
            cells.append(f"{mean:>10.4f}")
            promoted += [model] * sum(r["promoted"] for r in hits)
        lines.append(f"{size:>10,}  " + "  ".join(cells) + "  " + (",".join(promoted) or "-"))
    return "\n".join(lines)


def plot_learning_curves(rows: list[dict[str, Any]], path: Path) -> Path:
    """Holdout accuracy against training-set size, one line per model (log x axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for model in sorted({r["model"] for r in rows}):
        points = sorted((r["train_size"], r["holdout_accuracy"]) for r in rows
                        if r["model"] == model)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=model)
    ax.set(xscale="log", xlabel="training digits", ylabel="holdout accuracy",
           title="How each model improves with data")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = make_parser("digits simulate", __doc__)
    p.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                   help="comma-separated training-set sizes")
    p.add_argument("--models", default=",".join(MODEL_FAMILIES))
    p.add_argument("--seeds", type=positive_int, default=1,
                   help="runs per size, each with the next seed")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--xgb-rounds", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=Path(".digits/simulation"),
                   help="directory for results.json, learning_curves.png and its registry")
    p.add_argument("--host", help="submit the runs to this KFP API instead of running locally")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not sizes or min(sizes) < 10 or set(models) - set(MODEL_FAMILIES) or not models:
        p.error(f"sizes must be ≥ 10 and models a subset of {','.join(MODEL_FAMILIES)}")
    arguments = {"epochs": args.epochs, "xgb_rounds": args.xgb_rounds, "seed": args.seed,
                 "min_accuracy": 0.0}
    if args.host:
        from pipelines.submit import submit

        runs = [submit(args.host, "digits-simulation",
                       {**arguments, "train_size": size, "seed": args.seed + r})
                for r in range(args.seeds) for size in sizes]
        print(json.dumps({"submitted": runs}))
        return 0
    args.output.mkdir(parents=True, exist_ok=True)
    rows = simulate(sizes, models, args.seeds, arguments, args.output / "home")
    (args.output / "results.json").write_text(json.dumps(rows, indent=2))
    chart = plot_learning_curves(rows, args.output / "learning_curves.png")
    if args.json:
        print(json.dumps({"rows": rows, "chart": str(chart)}))
    else:
        print(learning_curves(rows))
        print(f"chart: {chart}")
    return 0
