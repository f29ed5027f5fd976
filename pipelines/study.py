"""What a simulation's ``results.csv`` says: aggregates, figures, a report and README text.

Everything here reads the CSV only, so the README's "Results" section, the
HTML report and the learning-curve image can be regenerated from a committed
CSV without rerunning the study (``make study-readme``).
"""

from __future__ import annotations

import csv
import html
import itertools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.training import MODEL_FAMILIES

#: How each family is named in figures and text.
LABELS = {"cnn": "CNN (Keras)", "xgboost": "XGBoost", "baseline": "baseline (logistic)"}
COLORS = {"cnn": "#1f77b4", "xgboost": "#d62728", "baseline": "#7f7f7f"}
_FLOATS = ("holdout_accuracy", "mcc", "train_seconds", "inference_ms_per_1000")


def read_results(path: Path) -> list[dict[str, Any]]:
    """``results.csv`` with its numbers as numbers (``production_accuracy`` may be None)."""
    with Path(path).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key in _FLOATS:
            row[key] = float(row[key])
        for key in ("step", "seed", "train_digits", "cores"):
            row[key] = int(row[key])
        row["promoted"] = row["promoted"] == "True"
        row["challenger"] = row["challenger"] == "True"
        row["production_accuracy"] = (float(row["production_accuracy"])
                                      if row["production_accuracy"] else None)
    return rows


@dataclass(frozen=True)
class Cell:
    """One model at one training size, over its seeds."""

    model: str
    train_digits: int
    accuracy: list[float]
    mcc: list[float]
    seconds: list[float]
    inference_ms: list[float]

    @staticmethod
    def _mean(values: list[float]) -> float:
        return statistics.fmean(values)

    @staticmethod
    def _spread(values: list[float]) -> float:
        return statistics.stdev(values) if len(values) > 1 else 0.0

    @property
    def accuracy_mean(self) -> float:
        return self._mean(self.accuracy)

    @property
    def accuracy_sd(self) -> float:
        return self._spread(self.accuracy)

    @property
    def seconds_mean(self) -> float:
        return self._mean(self.seconds)


def models_in(rows: Sequence[dict[str, Any]]) -> list[str]:
    present = {row["model"] for row in rows}
    return [m for m in MODEL_FAMILIES if m in present]


def cells(rows: Sequence[dict[str, Any]]) -> dict[str, list[Cell]]:
    """Per model, its cells in order of training size (sizes keyed by digits trained on)."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        grouped.setdefault((row["model"], row["train_size"]), []).append(row)
    result: dict[str, list[Cell]] = {}
    for (model, _size), group in grouped.items():
        result.setdefault(model, []).append(Cell(
            model=model, train_digits=round(statistics.fmean(r["train_digits"] for r in group)),
            accuracy=[r["holdout_accuracy"] for r in group], mcc=[r["mcc"] for r in group],
            seconds=[r["train_seconds"] for r in group],
            inference_ms=[r["inference_ms_per_1000"] for r in group]))
    return {m: sorted(result[m], key=lambda c: c.train_digits) for m in models_in(rows)}


def scaling_exponent(cells_of_model: Sequence[Cell]) -> float | None:
    """``b`` in seconds ≈ a · digits^b, least squares in log–log over the sizes."""
    points = [(math.log(c.train_digits), math.log(c.seconds_mean)) for c in cells_of_model
              if c.train_digits > 0 and c.seconds_mean > 0]
    if len(points) < 2:
        return None
    slope, _ = statistics.linear_regression([x for x, _ in points], [y for _, y in points])
    return slope


def production_steps(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per step: size, seed, the production version and accuracy after it, who got promoted.

    In the order the steps were saved (the CSV's), which is the order production
    was read in: steps running side by side may finish out of schedule order.
    """
    steps: dict[int, dict[str, Any]] = {}
    for row in rows:
        step = steps.setdefault(row["step"], {
            "step": row["step"], "train_size": row["train_size"], "seed": row["seed"],
            "train_digits": row["train_digits"], "version": row["production_version"],
            "accuracy": row["production_accuracy"], "promoted": None})
        if row["promoted"]:
            step["promoted"] = row["model"]
    return list(steps.values())


def summary_table(rows: Sequence[dict[str, Any]]) -> str:
    """A terminal table: mean ± sd holdout accuracy and mean training seconds per size."""
    by_model = cells(rows)
    models = list(by_model)
    header = f"{'digits':>7}  " + "  ".join(f"{m:>24}" for m in models)
    lines = [header, f"{'':>7}  " + "  ".join(f"{'accuracy ± sd / train s':>24}" for _ in models)]
    for i, first in enumerate(by_model[models[0]]):
        parts = []
        for m in models:
            c = by_model[m][i]
            parts.append(f"{c.accuracy_mean:>9.4f} ± {c.accuracy_sd:.4f} / {c.seconds_mean:>5.0f}")
        lines.append(f"{first.train_digits:>7,}  " + "  ".join(f"{p:>24}" for p in parts))
    steps = production_steps(rows)
    promotions = sum(1 for s in steps if s["promoted"])
    lines.append(f"production: {_pct(steps[0]['accuracy'])} → {_pct(steps[-1]['accuracy'])} "
                 f"over {len(steps)} steps, {promotions} promotions")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "none" if value is None else f"{value:.2%}"


# --- figures ---------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _digits_axis(ax, rows) -> None:
    """A log x axis ticked at the study's sizes, written as numbers."""
    sizes = sorted({c.train_digits for line in cells(rows).values() for c in line})
    ax.set_xscale("log")
    ax.set_xticks(sizes, labels=[f"{n:,}" for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("training digits")


def _band_figure(rows, mean_of, values_of, *, ylabel: str, title: str,
                 label_of=lambda model, line: LABELS[model], log_y: bool = False):
    """One line per model against training digits (log axis), the seeds' range as a band."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for model, line in cells(rows).items():
        x = [c.train_digits for c in line]
        ax.plot(x, [mean_of(c) for c in line], marker="o", color=COLORS[model],
                label=label_of(model, line))
        ax.fill_between(x, [min(values_of(c)) for c in line], [max(values_of(c)) for c in line],
                        color=COLORS[model], alpha=0.2, linewidth=0)
    _digits_axis(ax, rows)
    ax.set(ylabel=ylabel, title=title)
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    return fig


def curves_figure(rows: Sequence[dict[str, Any]]):
    """Holdout accuracy against training digits (log axis), the seeds' range as a band."""
    seeds = len({row["seed"] for row in rows})
    return _band_figure(
        rows, lambda c: c.accuracy_mean, lambda c: c.accuracy, ylabel="holdout accuracy",
        title=f"How each model improves with data (mean, band: range over {seeds} seeds)")


def _time_figure(rows):
    def label(model: str, line: list[Cell]) -> str:
        exponent = scaling_exponent(line)
        return LABELS[model] + ("" if exponent is None else f" (∝ n^{exponent:.2f})")

    return _band_figure(rows, lambda c: c.seconds_mean, lambda c: c.seconds,
                        ylabel="training seconds", label_of=label, log_y=True,
                        title="Training time against data (fitted scaling exponent)")


def _inference_figure(rows):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    by_model = cells(rows)
    largest = [line[-1] for line in by_model.values()]
    ax.bar([LABELS[c.model] for c in largest], [statistics.fmean(c.inference_ms) for c in largest],
           yerr=[Cell._spread(c.inference_ms) for c in largest],
           color=[COLORS[c.model] for c in largest], capsize=4)
    ax.set(ylabel="ms per 1,000 digits",
           title=f"Inference cost, models trained on {largest[0].train_digits:,} digits")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def _production_figure(rows):
    plt = _pyplot()
    steps = production_steps(rows)
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    known = [(n, s["accuracy"]) for n, s in enumerate(steps, 1) if s["accuracy"] is not None]
    ax.step([k for k, _ in known], [a for _, a in known], where="post", color="#2ca02c")
    for model in models_in(rows):
        hits = [(n, s["accuracy"]) for n, s in enumerate(steps, 1) if s["promoted"] == model]
        if hits:
            ax.scatter(*zip(*hits, strict=True), color=COLORS[model], zorder=3,
                       label=f"{LABELS[model]} promoted")
    ax.set(xlabel="steps finished (sizes × seeds, smallest first)",
           ylabel="production holdout accuracy",
           title="Production across the simulation (never falls)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    return fig


def write_curves(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    plt = _pyplot()
    fig = curves_figure(rows)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path


# --- the report ------------------------------------------------------------------------

def _data_uri(fig) -> str:
    from components.rendering import figure_to_data_uri

    try:
        return figure_to_data_uri(fig)
    finally:
        _pyplot().close(fig)


def _table(rows: Sequence[dict[str, Any]]) -> str:
    by_model = cells(rows)
    head = "".join(f"<th>{html.escape(LABELS[m])} accuracy</th><th>MCC</th><th>train s</th>"
                   for m in by_model)
    body = []
    for i, first in enumerate(next(iter(by_model.values()))):
        tds = "".join(
            f"<td>{c.accuracy_mean:.4f} ± {c.accuracy_sd:.4f}</td>"
            f"<td>{statistics.fmean(c.mcc):.4f}</td><td>{c.seconds_mean:.1f}</td>"
            for c in (by_model[m][i] for m in by_model))
        body.append(f"<tr><td>{first.train_digits:,}</td>{tds}</tr>")
    return (f"<table><tr><th>training digits</th>{head}</tr>" + "".join(body) + "</table>")


def write_report(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """A self-contained HTML page (figures inline, no external URL) with the findings."""
    figures = [("Accuracy against training data", curves_figure(rows)),
               ("Training time", _time_figure(rows)),
               ("Inference cost", _inference_figure(rows)),
               ("Production accuracy across steps", _production_figure(rows))]
    sections = "".join(
        f'<h2>{html.escape(title)}</h2><img alt="{html.escape(title)}" src="{_data_uri(fig)}">'
        for title, fig in figures)
    findings = "".join(f"<li>{html.escape(text)}</li>" for text in findings_text(rows))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>digits: the study</title>
<style>body{{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
img{{max-width:100%}}</style></head><body>
<h1>Deep learning vs XGBoost as data grows</h1>
<ul>{findings}</ul>
<h2>Holdout accuracy (mean ± sd over seeds)</h2>{_table(rows)}
{sections}
</body></html>
"""
    Path(path).write_text(page)
    return Path(path)


# --- findings --------------------------------------------------------------------------

def findings_text(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The study's answers, each a sentence computed from the rows."""
    by_model = cells(rows)
    answers = []
    if "cnn" in by_model and "xgboost" in by_model:
        pairs = list(zip(by_model["cnn"], by_model["xgboost"], strict=True))
        ahead = [c for c, x in pairs if c.accuracy_mean > x.accuracy_mean]
        clear = [c for c, x in pairs if min(c.accuracy) > max(x.accuracy)]
        behind = [c for c, x in pairs if c.accuracy_mean <= x.accuracy_mean]
        gaps = ", ".join(f"{c.train_digits:,}: {c.accuracy_mean - x.accuracy_mean:+.2%}"
                         for c, x in pairs)
        verdict = ("Yes" if not behind else "No") + (
            f": the CNN's mean holdout accuracy is ahead at {len(ahead)} of {len(pairs)} sizes"
            f" (every seed ahead of every XGBoost seed at {len(clear)})")
        if behind:
            verdict += "; behind or level at " + ", ".join(f"{c.train_digits:,}" for c in behind)
        answers.append(f"Does deep learning beat XGBoost at every data size? {verdict}. "
                       f"CNN − XGBoost by training digits: {gaps}.")
        ratios = [(c.train_digits, c.seconds_mean / x.seconds_mean) for c, x in pairs]
        faster = [n for n, r in ratios if r < 1]
        exponents = {m: scaling_exponent(by_model[m]) for m in ("cnn", "xgboost")}
        answers.append(
            "Which trains faster? "
            + ("The CNN at every size" if len(faster) == len(ratios)
               else "XGBoost at every size" if not faster
               else f"The CNN at {', '.join(f'{n:,}' for n in faster)} digits, XGBoost at the rest")
            + ": CNN/XGBoost training time " + ", ".join(f"{n:,}: {r:.2f}×" for n, r in ratios)
            + f"; time grows as n^{exponents['cnn']:.2f} (CNN) and n^{exponents['xgboost']:.2f} "
              "(XGBoost).")
        small_c, small_x = pairs[0]
        holds = small_c.accuracy_mean > small_x.accuracy_mean
        answers.append(
            "The original finding \"even with very small data deep learning starts better\" "
            + ("holds" if holds else "does not hold")
            + f": at {small_c.train_digits:,} digits the CNN scored "
              f"{small_c.accuracy_mean:.2%} ± {small_c.accuracy_sd:.2%} and XGBoost "
              f"{small_x.accuracy_mean:.2%} ± {small_x.accuracy_sd:.2%}.")
        full_c, full_x = pairs[-1]
        answers.append(
            "The original finding \"deep learning is actually faster\" "
            + ("holds" if full_c.seconds_mean < full_x.seconds_mean else "does not hold")
            + f" on this machine: on {full_c.train_digits:,} digits the CNN trained in "
              f"{full_c.seconds_mean:.0f} s and XGBoost in {full_x.seconds_mean:.0f} s "
              f"(inference {statistics.fmean(full_c.inference_ms):.0f} vs "
              f"{statistics.fmean(full_x.inference_ms):.0f} ms per 1,000 digits).")
    steps = production_steps(rows)
    values = [s["accuracy"] for s in steps if s["accuracy"] is not None]
    fell = any(b < a for a, b in itertools.pairwise(values))
    promoted = [s for s in steps if s["promoted"]]
    answers.append(
        "Does the pipeline keep improving production and never make it worse? "
        + ("No — production fell at some step." if fell else "Yes")
        + f": over {len(steps)} steps the gate promoted {len(promoted)} challengers ("
        + ", ".join(f"{LABELS[s['promoted']]} at {s['train_digits']:,}" for s in promoted)
        + f"), production went from {_pct(values[0] if values else None)} to "
          f"{_pct(values[-1] if values else None)}"
        + ("" if fell else " and never fell") + ".")
    return answers


def results_markdown(rows: Sequence[dict[str, Any]], image: str, provenance: str) -> str:
    """The README's "Results" block: provenance, the table, the image, the answers."""
    by_model = cells(rows)
    models = list(by_model)
    lines = [provenance, "",
             "| training digits | " + " | ".join(f"{LABELS[m]}: accuracy ± sd (train s)"
                                                 for m in models) + " |",
             "| ---: | " + " | ".join("---:" for _ in models) + " |"]
    for i, first in enumerate(by_model[models[0]]):
        cells_ = (by_model[m][i] for m in models)
        lines.append(f"| {first.train_digits:,} | " + " | ".join(
            f"{c.accuracy_mean:.2%} ± {c.accuracy_sd:.2%} ({c.seconds_mean:.0f} s)"
            for c in cells_) + " |")
    lines += ["", f"![Holdout accuracy against training digits]({image})", ""]
    lines += [f"- {text}" for text in findings_text(rows)]
    return "\n".join(lines) + "\n"
