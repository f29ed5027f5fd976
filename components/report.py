"""The model watcher report: plots, a side-by-side comparison and one offline HTML file.

Input is plain data: one :class:`ModelEvaluation` per model (labels,
probabilities, the holdout digits, training history, the metrics dictionary
from :func:`components.metrics.compute_metrics`, and free-form info such as
version, kind and params) plus, optionally, the gate's decision dictionary.
Output is a single ``report.html`` whose images are embedded as base64 PNG —
no CSS, JavaScript, fonts or images are fetched from anywhere, so it opens the
same from a KFP artifact, an S3 download or an air-gapped laptop — and a
``metrics.json`` with the same numbers for machines.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg
canvas and never registered with ``pyplot``: nothing global is switched,
nothing leaks between reports, and importing this module draws nothing.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from components.data import write_atomically
from components.metrics import (
    DIGITS,
    LABELS,
    compute_metrics,
    decimate,
    mcnemar_test,
    validate_predictions,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPORT_FILE = "report.html"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.npz"
EVALUATION_FILE = "evaluation.json"
DPI = 100
#: Points per curve in the ROC / precision-recall plots; beyond this the eye sees no change.
CURVE_POINTS = 300
#: Most confident mistakes shown per model.
MISTAKES_SHOWN = 24
MISTAKE_COLUMNS = 12
#: Top-level sections, in page order; ids are stable so links and tests can rely on them.
SECTION_IDS = ("summary", "gate", "comparison", "models")
#: Per-model subsections, each with id ``model-<slug>-<suffix>``.
MODEL_SECTION_SUFFIXES = (
    "overview", "confusion", "per-class", "curves", "calibration", "confidence",
    "mistakes", "training",
)
#: What one step of training history is called, per model kind.
X_LABELS = {"cnn": "epoch", "xgboost": "boosting round", "baseline": "fit"}
MODEL_COLORS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")
OK_COLOR, BAD_COLOR = "#1a7f37", "#cf222e"


# --------------------------------------------------------------------------- input


@dataclass
class ModelEvaluation:
    """One model's predictions on the frozen holdout, and what is known about it.

    ``metrics`` is computed from ``y_true``/``proba`` when not given; pass it
    (from :func:`compute_metrics` with latency/size/training time) to show the
    measured performance numbers. Construction validates the predictions, so
    a model that emitted NaN fails here with a :class:`ValueError` naming it,
    before any half-written report exists.
    """

    name: str
    y_true: np.ndarray
    proba: np.ndarray
    images: np.ndarray | None = None
    history: dict[str, list[float]] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            self.y_true, self.proba = validate_predictions(self.y_true, self.proba)
        except ValueError as error:
            raise ValueError(f"model {self.name!r}: {error}") from None
        if self.images is not None:
            self.images = np.asarray(self.images)
            if self.images.shape != (len(self.y_true), 28, 28):
                raise ValueError(
                    f"model {self.name!r}: images must be [{len(self.y_true)}, 28, 28], "
                    f"got {list(self.images.shape)}"
                )
        if self.metrics is None:
            self.metrics = compute_metrics(self.y_true, self.proba)
        self.history = dict(self.history or {})
        self.info = dict(self.info or {})

    @property
    def y_pred(self) -> np.ndarray:
        return self.proba.argmax(axis=1)

    def save(self, directory: Path | str, *, include_images: bool = True) -> list[Path]:
        """Store predictions (``predictions.npz``) and the rest (``evaluation.json``).

        This is what a registered version keeps so ``digits report <version>``
        can re-render its report later without the model or the framework.
        Probabilities are stored as float32 and images compressed (~2 MB for
        10,000 digits).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {"y_true": self.y_true.astype(np.uint8), "proba": self.proba.astype(np.float32)}
        if include_images and self.images is not None:
            arrays["images"] = self.images.astype(np.uint8)
        np.savez_compressed(directory / PREDICTIONS_FILE, **arrays)
        meta = {"name": self.name, "history": self.history, "info": self.info,
                "metrics": self.metrics}
        (directory / EVALUATION_FILE).write_text(_dumps(meta))
        return [directory / PREDICTIONS_FILE, directory / EVALUATION_FILE]

    @classmethod
    def load(cls, directory: Path | str, *, images: np.ndarray | None = None) -> ModelEvaluation:
        """Bring back what :meth:`save` wrote; ``images`` fills in if they were not stored."""
        directory = Path(directory)
        meta = json.loads((directory / EVALUATION_FILE).read_text())
        with np.load(directory / PREDICTIONS_FILE) as arrays:
            stored = arrays["images"] if "images" in arrays.files else images
            return cls(
                name=meta["name"], y_true=arrays["y_true"], proba=arrays["proba"],
                images=stored, history=meta.get("history") or {},
                metrics=meta.get("metrics"), info=meta.get("info") or {},
            )


def _as_mapping(
    models: Mapping[str, ModelEvaluation] | Sequence[ModelEvaluation],
) -> dict[str, ModelEvaluation]:
    result = dict(models) if isinstance(models, Mapping) else {m.name: m for m in models}
    if not result:
        raise ValueError("a report needs at least one model")
    for key, value in result.items():
        if not isinstance(value, ModelEvaluation):
            raise TypeError(f"model {key!r}: expected a ModelEvaluation, got {type(value)}")
    return result


def _pick_reference(
    models: dict[str, ModelEvaluation], gate: Mapping | None, reference: str | None
) -> str:
    """The model others are compared with: asked for, else the gate's champion, else the first."""
    if reference is not None:
        if reference not in models:
            raise ValueError(f"reference {reference!r} is not one of {sorted(models)}")
        return reference
    champion = (gate or {}).get("champion") or {}
    if champion.get("version") is not None:
        for name, model in models.items():
            if model.info.get("version") == champion["version"]:
                return name
    return next(iter(models))


# --------------------------------------------------------------------------- figures


def _use_agg() -> None:
    """Pick Agg before seaborn imports pyplot, unless the host already chose a backend."""
    if "matplotlib.pyplot" not in sys.modules:
        import matplotlib

        matplotlib.use("Agg")


def _style() -> dict[str, Any]:
    """One look for every figure: seaborn's whitegrid at a compact size."""
    _use_agg()
    import seaborn as sns

    return {
        **sns.axes_style("whitegrid"),
        **sns.plotting_context("notebook", font_scale=0.9),
        "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "Arial", "sans-serif"],
        "axes.titleweight": "bold",
        "axes.titlesize": 11,
        "figure.dpi": DPI,
        "savefig.dpi": DPI,
        "legend.frameon": False,
    }


def _figure(width: float, height: float, **kwargs: Any) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def figure_to_data_uri(fig: Figure) -> str:
    """PNG bytes of a figure as a ``data:`` URI (no metadata, so no URL hides in it)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    fig.clear()
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _with_style(function):
    """Decorator: draw inside the shared rc style, restored afterwards."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        import matplotlib as mpl

        with mpl.rc_context(_style()):
            return function(*args, **kwargs)

    return wrapper


@_with_style
def plot_confusion_matrix(metrics: Mapping[str, Any], title: str = "Confusion matrix") -> Figure:
    """Counts annotated; colour is the share of the true row on a power scale.

    The power scale keeps 1 % confusions visible next to 99 % diagonals, which
    a linear scale would paint white.
    """
    import seaborn as sns
    from matplotlib.colors import PowerNorm

    counts = np.asarray(metrics["confusion_matrix"])
    share = np.asarray(metrics.get("confusion_matrix_normalized") or _row_normalize(counts))
    annotations = np.where(counts > 0, counts.astype(str), "")
    fig = _figure(6.2, 5.2)
    ax = fig.subplots()
    sns.heatmap(
        share, ax=ax, annot=annotations, fmt="", cmap="Blues",
        norm=PowerNorm(0.4, vmin=0, vmax=1), square=True, linewidths=0.5,
        linecolor="white", cbar_kws={"label": "share of true digit", "shrink": 0.8},
        annot_kws={"fontsize": 8}, xticklabels=DIGITS, yticklabels=DIGITS,
    )
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    ax.set_title(title)
    ax.tick_params(rotation=0)
    return fig


def _row_normalize(counts: np.ndarray) -> np.ndarray:
    rows = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)


@_with_style
def plot_per_class(
    metrics: Mapping[str, Any], title: str = "Per-digit precision, recall, F1"
) -> Figure:
    """Grouped bars, y-axis zoomed to the data so a 2-point dip is not lost near 100 %."""
    per_class = metrics["per_class"]
    names = ("precision", "recall", "f1")
    values = np.array([[per_class[d][k] for d in DIGITS] for k in names])
    fig = _figure(6.6, 4.2)
    ax = fig.subplots()
    x = np.arange(len(DIGITS))
    colors = ("#4C72B0", "#DD8452", "#55A868")
    for i, (name, color) in enumerate(zip(names, colors, strict=True)):
        ax.bar(x + (i - 1) * 0.27, values[i], width=0.27, label=name, color=color)
    present = values[:, [per_class[d]["support"] > 0 for d in DIGITS]]
    low = float(present.min()) if present.size else 0.0
    ax.set_ylim(max(0.0, low - (1 - low) * 0.3 - 0.01), 1.0)
    ax.set_xticks(x, [f"{d}\nn={per_class[d]['support']}" for d in DIGITS], fontsize=8)
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.legend(ncols=3, loc="lower center", bbox_to_anchor=(0.5, 1.06), fontsize=9)
    ax.grid(axis="x", visible=False)
    return fig


def _thin(*arrays: np.ndarray, max_points: int = CURVE_POINTS) -> list[np.ndarray]:
    keep = decimate(len(arrays[0]), max_points)
    return [a[keep] for a in arrays]


@_with_style
def plot_roc_pr(y_true: np.ndarray, proba: np.ndarray, title: str = "") -> Figure:
    """One-vs-rest ROC and precision-recall curves per digit, decimated for speed.

    Digits with no positives (or no negatives) in the holdout have no curve and
    are listed as such in the legend instead of crashing the plot.
    """
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    fig = _figure(12.4, 4.9)
    ax_roc, ax_pr = fig.subplots(1, 2)
    palette = _digit_palette()
    for digit in LABELS:
        positive = y_true == digit
        n_pos = int(positive.sum())
        color = palette[digit]
        if 0 < n_pos < len(y_true):
            fpr, tpr, _ = roc_curve(positive, proba[:, digit])
            area = auc(fpr, tpr)
            fpr, tpr = _thin(fpr, tpr)
            ax_roc.plot(fpr, tpr, color=color, lw=1.4, label=f"{digit}: AUC {area:.4f}")
        else:
            ax_roc.plot([], [], color=color, label=f"{digit}: undefined")
        if n_pos:
            precision, recall, _ = precision_recall_curve(
                positive, proba[:, digit], drop_intermediate=True
            )
            recall, precision = _thin(recall, precision)
            ax_pr.plot(recall, precision, color=color, lw=1.4, label=digit)
    ax_roc.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1)
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate",
               title=f"ROC, one digit vs rest{title}", xlim=(-0.01, 1), ylim=(0, 1.01))
    ax_roc.legend(fontsize=8, loc="lower right", ncols=2)
    # Inset zoom on the top-left corner, where good models actually differ.
    inset = ax_roc.inset_axes((0.3, 0.42, 0.3, 0.42))
    for line in ax_roc.get_lines()[:-1]:
        if len(line.get_xdata()):
            inset.plot(line.get_xdata(), line.get_ydata(), color=line.get_color(), lw=1.1)
    inset.set(xlim=(0, 0.05), ylim=(0.9, 1.0))
    inset.tick_params(labelsize=7)
    inset.set_title("zoom", fontsize=8)
    ax_pr.set(xlabel="recall", ylabel="precision",
              title=f"Precision-recall, one digit vs rest{title}", xlim=(0, 1.01), ylim=(0, 1.01))
    ax_pr.legend(fontsize=8, loc="lower left", ncols=2, title="digit")
    return fig


def _digit_palette() -> list:
    import matplotlib as mpl

    return [mpl.colormaps["tab10"](i) for i in range(10)]


@_with_style
def plot_reliability(metrics: Mapping[str, Any], title: str = "Reliability") -> Figure:
    """Accuracy per confidence bin against the diagonal, gaps shaded, counts beneath."""
    calibration = metrics["calibration"]
    bins = calibration["bins"]
    fig = _figure(6.2, 5.0)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    lower = np.array([b["lower"] for b in bins])
    width = bins[0]["upper"] - bins[0]["lower"]
    filled = [b for b in bins if b["count"]]
    top.bar([b["lower"] for b in filled], [b["accuracy"] for b in filled], width=width,
            align="edge", color="#4C72B0", edgecolor="white", label="accuracy")
    # The gap is drawn hatched and unfilled so it reads the same above (over-
    # confident) or inside (under-confident) the accuracy bar.
    top.bar([b["lower"] for b in filled], [b["confidence"] - b["accuracy"] for b in filled],
            bottom=[b["accuracy"] for b in filled], width=width, align="edge", fill=False,
            hatch="////", edgecolor=BAD_COLOR, linewidth=1.0, label="gap to mean confidence")
    top.plot([0, 1], [0, 1], ls="--", color="0.4", lw=1, label="perfect calibration")
    top.set(ylim=(0, 1.02), ylabel="accuracy in bin",
            title=f"{title}: ECE = {metrics['ece']:.4f} ({calibration['n_bins']} bins)")
    top.legend(loc="upper left", fontsize=9)
    counts = [b["count"] for b in bins]
    bottom.bar(lower, counts, width=width, align="edge", color="0.55", edgecolor="white")
    if max(counts) > 0:
        bottom.set_yscale("symlog", linthresh=1)
    bottom.set(xlim=(0, 1), xlabel="confidence (max probability)", ylabel="digits")
    return fig


@_with_style
def plot_confidence_histogram(
    y_true: np.ndarray, proba: np.ndarray, title: str = "Confidence, correct vs wrong"
) -> Figure:
    """Max-probability histograms for right and wrong answers (log counts).

    A good model is confident when right and hesitant when wrong; the overlap
    shows how much a confidence threshold could catch.
    """
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y_true
    fig = _figure(6.2, 5.0)
    ax = fig.subplots()
    edges = np.linspace(0, 1, 41)
    for mask, label, color in ((correct, "correct", OK_COLOR), (~correct, "wrong", BAD_COLOR)):
        if mask.any():
            ax.hist(confidence[mask], bins=edges, color=color, alpha=0.25, histtype="stepfilled")
            ax.hist(confidence[mask], bins=edges, color=color, histtype="step", linewidth=1.8,
                    label=f"{label} (n={int(mask.sum()):,})")
    ax.set_yscale("symlog", linthresh=1)
    ax.set(xlim=(0, 1), xlabel="confidence (max probability)", ylabel="digits (log scale)",
           title=title)
    ax.legend(loc="upper left")
    return fig


def most_confident_mistakes(
    y_true: np.ndarray, proba: np.ndarray, k: int = MISTAKES_SHOWN
) -> np.ndarray:
    """Indices of the ``k`` wrong answers given with the highest confidence."""
    predicted = proba.argmax(axis=1)
    wrong = np.flatnonzero(predicted != y_true)
    order = np.argsort(-proba[wrong, predicted[wrong]], kind="stable")
    return wrong[order[:k]]


@_with_style
def plot_top_mistakes(
    images: np.ndarray, y_true: np.ndarray, proba: np.ndarray, k: int = MISTAKES_SHOWN,
    title: str = "Most confident mistakes",
) -> Figure | None:
    """The digits the model got wrong most confidently, labelled ``true → predicted``.

    Drawn as one tiled image on a single axes, not one axes per digit: the
    same picture at a fraction of the rendering time. ``None`` when there are
    no mistakes.
    """
    chosen = most_confident_mistakes(y_true, proba, k)
    if not len(chosen):
        return None
    cols = min(MISTAKE_COLUMNS, len(chosen))
    rows = math.ceil(len(chosen) / cols)
    tile, gap, label_h = 28, 4, 14
    cell_w, cell_h = tile + gap, tile + gap + label_h
    mosaic = np.full((rows * cell_h, cols * cell_w), np.nan)
    predicted = proba.argmax(axis=1)
    fig = _figure(cols * 0.95, rows * 1.35 + 0.45)
    ax = fig.subplots()
    for slot, index in enumerate(chosen):
        r, c = divmod(slot, cols)
        top, left = r * cell_h + label_h, c * cell_w + gap // 2
        mosaic[top:top + tile, left:left + tile] = images[index]
        ax.text(left + tile / 2, top - 2,
                f"{y_true[index]}→{predicted[index]}  {proba[index, predicted[index]]:.0%}",
                ha="center", va="bottom", fontsize=8.5, color=BAD_COLOR)
    cmap = _gray_with_white_gaps()
    ax.imshow(mosaic, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(f"{title} (true→predicted, confidence)")
    return fig


def _gray_with_white_gaps():
    import matplotlib as mpl

    return mpl.colormaps["gray_r"].with_extremes(bad="white")


def _split_history_key(key: str) -> tuple[str, str]:
    """``val_loss`` → ``("loss", "validation")``; ``train_mlogloss`` → ``("mlogloss", "train")``."""
    for prefix, split in (("val_", "validation"), ("validation_", "validation"),
                          ("train_", "train"), ("training_", "train")):
        if key.startswith(prefix):
            return key[len(prefix):], split
    return key, "train"


def _clean_series(values: Any) -> list[float]:
    """A history entry as floats; anything that is not a list of numbers becomes ``[]``."""
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, (list, tuple, np.ndarray)):
        return []
    try:
        series = [float(v) for v in values]
    except (TypeError, ValueError):
        return []
    return series if any(math.isfinite(v) for v in series) else []


@_with_style
def plot_training_curves(
    history: Mapping[str, Any], title: str = "", x_label: str | None = None
) -> Figure | None:
    """One panel per metric (loss, accuracy, mlogloss …), train and validation overlaid.

    Takes any ``{name: [values per epoch or round]}``; Keras (``loss`` /
    ``val_loss``) and XGBoost (``train_mlogloss`` / ``val_mlogloss``) naming are
    both understood. Empty or non-numeric entries are skipped; ``None`` when
    nothing is left to draw. ``x_label`` defaults to "round" for
    ``train_*``-style (XGBoost) keys and "epoch" otherwise.
    """
    groups: dict[str, dict[str, list[float]]] = {}
    for key, values in (history or {}).items():
        series = _clean_series(values)
        if series:
            metric, split = _split_history_key(str(key))
            groups.setdefault(metric, {})[split] = series
    if not groups:
        return None
    panels = list(groups.items())[:4]
    fig = _figure(4.2 * len(panels) + 0.4, 3.5)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    colors = {"train": "#4C72B0", "validation": "#DD8452"}
    longest = 1
    for ax, (metric, splits) in zip(axes, panels, strict=True):
        for split, series in splits.items():
            x = np.arange(1, len(series) + 1)
            longest = max(longest, len(series))
            style: dict[str, Any] = {"marker": "o", "ms": 7} if len(series) == 1 else {
                "marker": "." if len(series) < 40 else None}
            ax.plot(x, series, color=colors[split], label=split, lw=1.6, **style)
            if len(series) == 1:
                ax.annotate(f"{series[0]:.4f}", (1, series[0]), textcoords="offset points",
                            xytext=(8, 0), va="center")
        ax.set_title(metric.replace("_", " "))
        ax.legend(fontsize=9)
    unit = x_label or (
        "round" if any(str(k).startswith("train_") for k in history) else "epoch")
    for ax in axes:
        ax.set_xlabel(unit)
        if longest < 15:
            ax.set_xticks(range(1, longest + 1))
    if title:
        fig.suptitle(title, fontweight="bold", fontsize=11)
    return fig


@_with_style
def plot_accuracy_comparison(models: Mapping[str, ModelEvaluation]) -> Figure:
    """Each model's accuracy with its Wilson 95% interval; overlapping bars mean "not clear"."""
    names = list(models)
    fig = _figure(6.2, 0.55 * len(names) + 1.4)
    ax = fig.subplots()
    for i, name in enumerate(names):
        m = models[name].metrics
        ci = m["accuracy_ci"]
        color = MODEL_COLORS[i % len(MODEL_COLORS)]
        error = [[max(0.0, m["accuracy"] - ci["low"])], [max(0.0, ci["high"] - m["accuracy"])]]
        ax.errorbar(m["accuracy"], i, xerr=error, fmt="o", color=color, capsize=5, ms=7, lw=2)
        ax.annotate(f"{m['accuracy']:.2%}", (ci["high"], i), textcoords="offset points",
                    xytext=(6, 0), va="center", fontsize=9)
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.invert_yaxis()
    low = min(models[n].metrics["accuracy_ci"]["low"] for n in names)
    ax.set_xlim(max(0, low - 0.02), 1.0)
    ax.xaxis.set_major_formatter(_percent_formatter())
    ax.set(xlabel="holdout accuracy (95% Wilson interval)", title="Accuracy")
    return fig


def _percent_formatter():
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(1.0, decimals=1)


@_with_style
def plot_recall_comparison(models: Mapping[str, ModelEvaluation]) -> Figure:
    """Per-digit recall of every model on one axis, to spot the digit where one lags."""
    fig = _figure(6.6, 4.2)
    ax = fig.subplots()
    x = np.arange(len(DIGITS))
    lowest = 1.0
    for i, (name, model) in enumerate(models.items()):
        per_class = model.metrics["per_class"]
        recall = [per_class[d]["recall"] if per_class[d]["support"] else np.nan for d in DIGITS]
        lowest = min(lowest, np.nanmin(recall) if not np.isnan(recall).all() else 1.0)
        ax.plot(x, recall, marker="o", lw=1.5, ms=6, label=name,
                color=MODEL_COLORS[i % len(MODEL_COLORS)])
    ax.set_xticks(x, DIGITS)
    ax.set_ylim(max(0.0, lowest - (1 - lowest) * 0.3 - 0.01), 1.0 + 0.002)
    ax.yaxis.set_major_formatter(_percent_formatter())
    ax.set(xlabel="digit", ylabel="recall", title="Recall per digit")
    ax.legend(ncols=min(4, len(models)), loc="lower center", bbox_to_anchor=(0.5, 1.06))
    return fig


@_with_style
def plot_recall_deltas(deltas: Mapping[str, float | None], title: str) -> Figure:
    """Diverging bars of per-digit recall change in percentage points (green = better)."""
    values = np.array([np.nan if deltas.get(d) is None else deltas[d] * 100 for d in DIGITS])
    fig = _figure(6.6, 3.8)
    ax = fig.subplots()
    colors = [OK_COLOR if v >= 0 else BAD_COLOR for v in np.nan_to_num(values)]
    ax.bar(DIGITS, np.nan_to_num(values), color=colors)
    span = max(0.5, float(np.nanmax(np.abs(values))) if not np.isnan(values).all() else 0.5)
    for i, v in enumerate(values):
        if not np.isnan(v):
            ax.annotate(f"{v:+.2f}", (i, v), textcoords="offset points",
                        xytext=(0, 3 if v >= 0 else -3), ha="center",
                        va="bottom" if v >= 0 else "top", fontsize=8)
    ax.axhline(0, color="0.3", lw=1)
    ax.set_ylim(-span * 1.3, span * 1.3)
    ax.set(xlabel="digit", ylabel="recall change (pp)", title=title)
    ax.grid(axis="x", visible=False)
    return fig


# --------------------------------------------------------------------------- HTML helpers


def slug(name: str) -> str:
    """A model name as an HTML id fragment: lowercase, ``[a-z0-9-]`` only."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "model"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{_e(alt)}" loading="lazy">'


def _figure_html(fig: Figure | None, alt: str, caption: str = "", empty: str = "") -> str:
    if fig is None:
        return f'<p class="muted">{_e(empty)}</p>' if empty else ""
    caption_html = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f"<figure>{_img(figure_to_data_uri(fig), alt)}{caption_html}</figure>"


def _pct(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value * 100:.{digits}f}%"


def _num(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _bytes(value: float | None) -> str:
    if value is None:
        return "—"
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return "—"  # unreachable


def _seconds(value: float | None) -> str:
    return "—" if value is None else (f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min")


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f} ms"


def _ci(metrics: Mapping[str, Any]) -> str:
    ci = metrics["accuracy_ci"]
    return f"{ci['low'] * 100:.2f}–{ci['high'] * 100:.2f}%"


def _perf(metrics: Mapping[str, Any], key: str) -> float | None:
    return (metrics.get("performance") or {}).get(key)


#: Rows of the comparison table: label, getter, formatter, better direction
#: (+1 higher is better, -1 lower is better), delta unit ("pp", "abs", "rel").
COMPARISON_ROWS: tuple[tuple[str, Any, Any, int, str], ...] = (
    ("accuracy", lambda m: m["accuracy"], _pct, +1, "pp"),
    ("95% interval", None, None, 0, ""),
    ("top-2 accuracy", lambda m: m.get("top2_accuracy"), _pct, +1, "pp"),
    ("macro F1", lambda m: (m.get("macro_avg") or {}).get("f1"), _num, +1, "abs"),
    ("weighted F1", lambda m: (m.get("weighted_avg") or {}).get("f1"), _num, +1, "abs"),
    ("macro precision", lambda m: (m.get("macro_avg") or {}).get("precision"), _num, +1, "abs"),
    ("macro recall", lambda m: (m.get("macro_avg") or {}).get("recall"), _num, +1, "abs"),
    ("log loss", lambda m: m.get("log_loss"), _num, -1, "abs"),
    ("Brier score", lambda m: m.get("brier"), _num, -1, "abs"),
    ("ECE (15 bins)", lambda m: m.get("ece"), _num, -1, "abs"),
    ("ROC-AUC, macro OvR", lambda m: m.get("roc_auc_macro"), lambda v: _num(v, 5), +1, "abs"),
    ("average precision, macro", lambda m: m.get("average_precision_macro"),
     lambda v: _num(v, 5), +1, "abs"),
    ("MCC", lambda m: m.get("mcc"), _num, +1, "abs"),
    ("Cohen's kappa", lambda m: m.get("cohen_kappa"), _num, +1, "abs"),
    ("latency / 1,000 digits", lambda m: _perf(m, "latency_ms_per_1000"), _ms, -1, "rel"),
    ("model size", lambda m: _perf(m, "model_size_bytes"), _bytes, -1, "rel"),
    ("training time", lambda m: _perf(m, "train_seconds"), _seconds, -1, "rel"),
    ("holdout digits", lambda m: m["n"], lambda v: f"{v:,}", 0, ""),
)


def _delta_html(value: float | None, ref: float | None, better: int, unit: str) -> str:
    if value is None or ref is None or not better:
        return ""
    diff = value - ref
    if unit == "pp":
        text = f"{diff * 100:+.2f} pp"
    elif unit == "rel":
        if ref == 0:
            return ""
        text = f"×{value / ref:.2f}"
        diff = value / ref - 1
    else:
        text = f"{diff:+.4f}"
    tiny = abs(diff) < 1e-12
    css = "same" if tiny else ("pos" if diff * better > 0 else "neg")
    return f' <span class="delta {css}">{text}</span>'


def _metric_table(models: Mapping[str, ModelEvaluation], reference: str) -> str:
    names = list(models)
    tag = ' <span class="tag">reference</span>'
    head = "".join(
        f"<th>{_e(n)}{tag if n == reference and len(names) > 1 else ''}</th>" for n in names
    )
    rows = []
    ref_metrics = models[reference].metrics
    for label, getter, fmt, better, unit in COMPARISON_ROWS:
        cells = []
        for name in names:
            m = models[name].metrics
            if getter is None:
                cells.append(f"<td>{_ci(m)}</td>")
                continue
            value = getter(m)
            delta = "" if name == reference else _delta_html(
                value, getter(ref_metrics), better, unit)
            cells.append(f"<td>{fmt(value)}{delta}</td>")
        rows.append(f"<tr><th scope=\"row\">{_e(label)}</th>{''.join(cells)}</tr>")
    return (f'<table class="metrics"><thead><tr><th>metric</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def _recall_table(models: Mapping[str, ModelEvaluation], reference: str) -> str:
    names = list(models)
    head = "".join(f"<th>{_e(n)}</th>" for n in names)
    rows = []
    ref = models[reference].metrics["per_class"]
    for d in DIGITS:
        cells = []
        for name in names:
            pc = models[name].metrics["per_class"][d]
            if not pc["support"]:
                cells.append("<td>—</td>")
                continue
            delta = "" if name == reference or not ref[d]["support"] else _delta_html(
                pc["recall"], ref[d]["recall"], +1, "pp")
            cells.append(f"<td>{_pct(pc['recall'])}{delta}</td>")
        support = models[reference].metrics["per_class"][d]["support"]
        rows.append(f"<tr><th scope=\"row\">{d}</th><td>{support:,}</td>{''.join(cells)}</tr>")
    return (f'<table class="metrics"><thead><tr><th>digit</th><th>support</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def _same_holdout(a: ModelEvaluation, b: ModelEvaluation) -> bool:
    return len(a.y_true) == len(b.y_true) and bool(np.array_equal(a.y_true, b.y_true))


def pairwise_mcnemar(
    models: Mapping[str, ModelEvaluation], reference: str
) -> dict[str, dict[str, Any]]:
    """McNemar of each model against the reference, where both saw the same holdout."""
    ref = models[reference]
    return {
        name: mcnemar_test(ref.y_true, model.y_pred, ref.y_pred)
        for name, model in models.items()
        if name != reference and _same_holdout(model, ref)
    }


def _mcnemar_table(result: Mapping[str, Any], challenger: str, champion: str) -> str:
    """The 2×2 contingency table, discordant cells highlighted, and what it means in words."""

    def cell(key: str) -> str:
        value = result.get(key)
        return "—" if value is None else f"{int(value):,}"

    b, c, p = result.get("b"), result.get("c"), result.get("p_value")
    table = (
        '<table class="contingency"><thead><tr><th></th>'
        f"<th>{_e(champion)} right</th><th>{_e(champion)} wrong</th></tr></thead><tbody>"
        f'<tr><th scope="row">{_e(challenger)} right</th><td>{cell("both_right")}</td>'
        f'<td class="disc">b = {cell("b")}</td></tr>'
        f'<tr><th scope="row">{_e(challenger)} wrong</th>'
        f'<td class="disc">c = {cell("c")}</td><td>{cell("both_wrong")}</td></tr>'
        "</tbody></table>"
    )
    if b is None or c is None:
        return table
    p_text = "not given" if p is None else f"{p:.3g}"
    return table + (
        f"<p>On the {b + c:,} digits where exactly one model is right, the {_e(challenger)} "
        f"wins <b>b = {b:,}</b> and the {_e(champion)} <b>c = {c:,}</b>. "
        f"Exact McNemar p-value: <b>{p_text}</b> — the chance of a split at least this "
        "lopsided if the two models were equally accurate.</p>"
    )


# --------------------------------------------------------------------------- HTML sections


def _warnings_html(warnings: Iterable[str]) -> str:
    return "".join(f'<div class="warn">⚠ {_e(w)}</div>' for w in warnings)


def _summary_section(models: dict[str, ModelEvaluation], gate: Mapping | None) -> str:
    cards = []
    for i, (name, model) in enumerate(models.items()):
        m = model.metrics
        sub = " · ".join(_e(model.info[k]) for k in ("kind", "version") if model.info.get(k))
        cards.append(
            f'<a class="card" href="#model-{slug(name)}" '
            f'style="border-top-color:{MODEL_COLORS[i % len(MODEL_COLORS)]}">'
            f'<div class="card-title">{_e(name)}</div><div class="muted small">{sub}</div>'
            f'<div class="big">{_pct(m["accuracy"])}</div>'
            f'<div class="muted small">95% CI {_ci(m)} · n = {m["n"]:,}</div>'
            f'<div class="small">macro F1 {_num(m["macro_avg"]["f1"])} · '
            f'ECE {_num(m["ece"])} · {_ms(_perf(m, "latency_ms_per_1000"))}/1k</div></a>'
        )
    decision = ""
    if gate and gate.get("decision"):
        css = "promote" if gate["decision"] == "promote" else "reject"
        decision = f'<a class="badge {css}" href="#gate">gate: {_e(gate["decision"]).upper()}</a>'
    warnings = [f"{name}: {w}" for name, model in models.items()
                for w in model.metrics.get("warnings", [])]
    return (
        f'<section id="summary"><h2>Summary {decision}</h2>'
        f'<div class="cards">{"".join(cards)}</div>{_warnings_html(warnings)}</section>'
    )


def _checks_table(checks: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for check in checks:
        passed = bool(check.get("passed"))
        rows.append(
            f"<tr><td>{_e(check.get('name', ''))}</td>"
            f"<td class=\"{'pass' if passed else 'fail'}\">{'✔ pass' if passed else '✘ fail'}</td>"
            f'<td class="left">{_e(check.get("detail", ""))}</td></tr>'
        )
    return ('<table class="checks"><thead><tr><th>check</th><th class="left">result</th>'
            f'<th class="left">detail</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _gate_recall_html(challenger: Mapping[str, Any], champion: Mapping[str, Any] | None) -> str:
    new_recall = {str(k): v for k, v in (challenger.get("per_class_recall") or {}).items()}
    old_recall = {str(k): v for k, v in ((champion or {}).get("per_class_recall") or {}).items()}
    if not new_recall:
        return ""
    head = "<th>digit</th><th>challenger</th>" + (
        "<th>champion</th><th>change</th>" if old_recall else "")
    rows = []
    deltas: dict[str, float | None] = {}
    for d in DIGITS:
        new, old = new_recall.get(d), old_recall.get(d)
        deltas[d] = None if new is None or old is None else new - old
        extra = (f"<td>{_pct(old)}</td><td>{_delta_html(new, old, +1, 'pp') or '—'}</td>"
                 if old_recall else "")
        rows.append(f'<tr><th scope="row">{d}</th><td>{_pct(new)}</td>{extra}</tr>')
    figure = ""
    if old_recall and any(v is not None for v in deltas.values()):
        figure = _figure_html(
            plot_recall_deltas(deltas, "Recall change per digit, challenger − champion"),
            "per-digit recall change")
    return (f'<h3>Per-digit recall</h3><div class="figs"><div><table class="metrics">'
            f'<thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
            f"<div>{figure}</div></div>")


def _gate_section(gate: Mapping | None) -> str:
    """The decision, then the evidence: checks, McNemar table, per-digit recall changes."""
    if not gate:
        return ('<section id="gate"><h2>Gate decision</h2>'
                '<p class="muted">No gate decision was supplied with this report.</p></section>')
    decision = str(gate.get("decision", "unknown"))
    css = "promote" if decision == "promote" else "reject"
    challenger = gate.get("challenger") or {}
    champion = gate.get("champion") or None
    roles = [("challenger", challenger)] + ([("champion", champion)] if champion else [])
    role_rows = "".join(
        f'<tr><th scope="row">{role}</th><td class="left">{_e(d.get("kind") or "—")}</td>'
        f'<td class="left">{_e(d.get("version") or "—")}</td>'
        f'<td>{_pct(d.get("accuracy"))}</td></tr>'
        for role, d in roles
    )
    left = ('<table class="metrics"><thead><tr><th>role</th><th class="left">kind</th>'
            '<th class="left">version</th><th>holdout accuracy</th></tr></thead>'
            f"<tbody>{role_rows}</tbody></table>")
    if not champion:
        left += ('<p class="muted">No champion yet: this is the first model, so there is '
                 "nothing to compare against and no McNemar test.</p>")
    if gate.get("checks"):
        left += "<h3>Checks</h3>" + _checks_table(gate["checks"])
    right = ""
    if gate.get("mcnemar"):
        right = ("<h3>McNemar test on the same holdout digits</h3>"
                 + _mcnemar_table(gate["mcnemar"], "challenger", "champion"))
    return (
        '<section id="gate"><h2>Gate decision</h2>'
        f'<div class="decision {css}"><span class="verdict">{_e(decision.upper())}</span>'
        f'<span>{_e(gate.get("reason", ""))}</span></div>'
        f'<div class="figs"><div>{left}</div><div>{right}</div></div>'
        f"{_gate_recall_html(challenger, champion)}</section>"
    )


def _feedback_section(models: dict[str, ModelEvaluation]) -> str:
    """Accuracy on the users' feedback digits: shown apart, never what the gate judges by."""
    scored = {name: m.info["feedback"] for name, m in models.items() if m.info.get("feedback")}
    if not scored:
        return ""
    rows = "".join(f'<tr><th scope="row">{_e(name)}</th><td>{f["n"]:,}</td>'
                   f'<td>{_pct(f["accuracy"])}</td></tr>' for name, f in scored.items())
    return ('<section id="feedback"><h2>Feedback digits</h2>'
            "<p>Digits the people using the model labelled, which this run trained on "
            "(training split only). They lean toward the model's own mistakes, so these "
            "numbers are biased and <b>never decide the gate</b>: only the frozen holdout "
            "does.</p>"
            '<table class="metrics"><thead><tr><th>model</th><th>feedback digits</th>'
            f"<th>accuracy on them</th></tr></thead><tbody>{rows}</tbody></table></section>")


def _comparison_section(models: dict[str, ModelEvaluation], reference: str) -> str:
    intro = (f"<p>Deltas are against <b>{_e(reference)}</b>: "
             '<span class="delta pos">green</span> is better, '
             '<span class="delta neg">red</span> worse. Percentages change in pp (percentage '
             "points); latency, size and training time as ratios.</p>") if len(models) > 1 else ""
    figures = _figure_html(plot_accuracy_comparison(models), "accuracy with intervals")
    figures += _figure_html(plot_recall_comparison(models), "recall per digit")
    pairs = pairwise_mcnemar(models, reference)
    pair_html = ""
    if pairs:
        rows = "".join(
            f'<tr><th scope="row">{_e(name)}</th><td>{r["b"]:,}</td><td>{r["c"]:,}</td>'
            f'<td>{r["p_value"]:.3g}</td></tr>'
            for name, r in pairs.items()
        )
        pair_html = (
            f"<h3>McNemar against {_e(reference)}</h3>"
            '<table class="metrics"><thead><tr><th>model</th><th>b: it right, '
            f"{_e(reference)} wrong</th><th>c: {_e(reference)} right, it wrong</th>"
            f"<th>exact p-value</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    return (
        f'<section id="comparison"><h2>Comparison</h2>{intro}'
        f'<div class="figs"><div>{_metric_table(models, reference)}{pair_html}</div>'
        f"<div>{figures}</div></div>"
        f"<h3>Recall per digit</h3>{_recall_table(models, reference)}</section>"
    )


def _per_class_table(metrics: Mapping[str, Any]) -> str:
    def row(label: str, values: Mapping[str, Any], css: str = "") -> str:
        support = values.get("support")
        return (
            f'<tr{css}><th scope="row">{label}</th><td>{_num(values.get("precision"))}</td>'
            f'<td>{_num(values.get("recall"))}</td><td>{_num(values.get("f1"))}</td>'
            f'<td>{"" if support is None else f"{support:,}"}</td>'
            f'<td>{_num(values.get("roc_auc"), 5)}</td>'
            f'<td>{_num(values.get("average_precision"), 5)}</td></tr>'
        )

    rows = [row(d, metrics["per_class"][d]) for d in DIGITS]
    rows += [row(label, metrics.get(key) or {}, ' class="avg"')
             for label, key in (("macro", "macro_avg"), ("weighted", "weighted_avg"))]
    return ('<table class="metrics"><thead><tr><th>digit</th><th>precision</th><th>recall</th>'
            "<th>F1</th><th>support</th><th>ROC-AUC</th><th>avg precision</th></tr></thead>"
            f'<tbody>{"".join(rows)}</tbody></table>')


#: The headline tiles of a model's overview: label, getter, formatter.
TILES: tuple[tuple[str, Any, Any], ...] = (
    ("accuracy", lambda m: m["accuracy"], _pct),
    ("95% interval", lambda m: m, _ci),
    ("top-2 accuracy", lambda m: m.get("top2_accuracy"), _pct),
    ("macro F1", lambda m: m["macro_avg"]["f1"], _num),
    ("log loss", lambda m: m.get("log_loss"), _num),
    ("Brier score", lambda m: m.get("brier"), _num),
    ("ECE", lambda m: m.get("ece"), _num),
    ("ROC-AUC (macro)", lambda m: m.get("roc_auc_macro"), lambda v: _num(v, 5)),
    ("MCC", lambda m: m.get("mcc"), _num),
    ("Cohen's kappa", lambda m: m.get("cohen_kappa"), _num),
    ("latency / 1k digits", lambda m: _perf(m, "latency_ms_per_1000"), _ms),
    ("model size", lambda m: _perf(m, "model_size_bytes"), _bytes),
    ("training time", lambda m: _perf(m, "train_seconds"), _seconds),
    ("holdout digits", lambda m: m["n"], lambda v: f"{v:,}"),
)


def _overview_html(model: ModelEvaluation) -> str:
    m = model.metrics
    info = "".join(
        f"<dt>{_e(k)}</dt><dd>"
        f"{_e(json.dumps(v, default=str) if isinstance(v, (dict, list)) else v)}</dd>"
        for k, v in model.info.items()
    )
    tiles = "".join(
        f'<div class="tile"><div class="muted small">{_e(label)}</div>'
        f'<div class="val">{fmt(get(m))}</div></div>'
        for label, get, fmt in TILES
    )
    return (f'<dl class="info">{info}</dl>' if info else "") + (
        f'{_warnings_html(m.get("warnings", []))}<div class="tiles">{tiles}</div>')


def _model_section(model: ModelEvaluation, index: int) -> str:
    sid = f"model-{slug(model.name)}"
    m = model.metrics
    name = model.name
    suffix = f" — {name}"
    if model.images is None:
        mistakes = '<p class="muted">Holdout images were not supplied.</p>'
    else:
        mistakes = _figure_html(
            plot_top_mistakes(model.images, model.y_true, model.proba),
            f"most confident mistakes of {name}", empty="No mistakes on the holdout.")
    parts = {
        "overview": _overview_html(model),
        "confusion": _figure_html(plot_confusion_matrix(m, "Confusion matrix" + suffix),
                                  "confusion matrix"),
        "per-class": _figure_html(plot_per_class(m, "Precision, recall, F1" + suffix),
                                  "per-digit scores")
        + f"<details><summary>Per-digit table</summary>{_per_class_table(m)}</details>",
        "curves": _figure_html(plot_roc_pr(model.y_true, model.proba, suffix),
                               "ROC and precision-recall curves"),
        "calibration": _figure_html(plot_reliability(m, "Reliability" + suffix),
                                    "reliability diagram"),
        "confidence": _figure_html(
            plot_confidence_histogram(model.y_true, model.proba, "Confidence" + suffix),
            "confidence histogram"),
        "mistakes": "<h3>Most confident mistakes</h3>" + mistakes,
        "training": "<h3>Training curves</h3>" + _figure_html(
            plot_training_curves(model.history, x_label=X_LABELS.get(model.info.get("kind"))),
            f"training curves of {name}",
            empty="No training history recorded."),
    }

    def block(*suffixes: str) -> str:
        inner = "".join(f'<div id="{sid}-{s}">{parts[s]}</div>' for s in suffixes)
        return f'<div class="figs">{inner}</div>' if len(suffixes) > 1 else inner

    color = MODEL_COLORS[index % len(MODEL_COLORS)]
    return (
        f'<section id="{sid}" class="model" style="border-left-color:{color}">'
        f"<h2>Model: {_e(name)}</h2>"
        + block("overview") + block("confusion", "per-class") + block("curves")
        + block("calibration", "confidence") + block("mistakes") + block("training")
        + "</section>"
    )


CSS = """
:root{--ok:#1a7f37;--bad:#cf222e;--muted:#57606a;--border:#d0d7de;--bg:#f6f8fa}
*{box-sizing:border-box}
body{margin:0;font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,
sans-serif;
color:#1f2328;background:#fff;line-height:1.45;font-size:15px}
header{background:#24292f;color:#fff;padding:16px 32px}
header h1{margin:0 0 4px;font-size:1.5em}
header .meta{color:#c9d1d9;font-size:.9em}
nav{background:#f6f8fa;border-bottom:1px solid var(--border);padding:8px 32px;font-size:.9em;
position:sticky;top:0;z-index:1}
nav a{margin-right:14px;color:#0969da;text-decoration:none}
main{max-width:1360px;margin:0 auto;padding:4px 32px 48px}
section{margin-top:26px}
section.model{border-left:5px solid var(--border);padding-left:16px}
h2{border-bottom:2px solid var(--border);padding-bottom:4px;margin-bottom:12px}
h3{margin:18px 0 8px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:12px}
.card{display:block;color:inherit;text-decoration:none;border:1px solid var(--border);
border-top:5px solid var(--border);border-radius:8px;padding:10px 14px;background:var(--bg)}
.card-title{font-weight:600;font-size:1.1em}
.big{font-size:1.8em;font-weight:650}
.small{font-size:.85em}.muted{color:var(--muted)}
.warn{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:8px 12px;margin:8px 0}
.badge{font-size:.6em;vertical-align:middle;padding:3px 10px;border-radius:12px;color:#fff;
text-decoration:none;margin-left:8px}
.badge.promote{background:var(--ok)}.badge.reject{background:var(--bad)}
.decision{display:flex;gap:16px;align-items:center;border:2px solid;border-radius:8px;
padding:12px 16px;margin-bottom:12px}
.decision.promote{background:#dafbe1;border-color:var(--ok)}
.decision.reject{background:#ffebe9;border-color:var(--bad)}
.verdict{font-size:1.5em;font-weight:700}
.decision.promote .verdict{color:var(--ok)}.decision.reject .verdict{color:var(--bad)}
table{border-collapse:collapse;font-variant-numeric:tabular-nums;margin:6px 0 12px}
th,td{border-bottom:1px solid var(--border);padding:4px 10px;text-align:right;vertical-align:top;
white-space:nowrap}
td.left{white-space:normal}
th:first-child,td:first-child,.left{text-align:left}
thead th{background:var(--bg);border-bottom:2px solid var(--border)}
tr.avg th,tr.avg td{font-weight:600}
.delta{font-size:.85em;margin-left:4px;white-space:nowrap}
.pos{color:var(--ok)}.neg{color:var(--bad)}.same{color:var(--muted)}
td.pass{color:var(--ok);font-weight:600}td.fail{color:var(--bad);font-weight:600}
.contingency td{text-align:center;min-width:120px}
.contingency td.disc{background:#fff8c5;font-weight:600}
.tag{font-size:.75em;background:#ddf4ff;color:#0969da;border-radius:8px;padding:1px 6px}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:8px;
margin:8px 0 14px}
.tile{border:1px solid var(--border);border-radius:6px;padding:6px 10px;background:var(--bg)}
.tile .val{white-space:nowrap;font-size:1.15em;font-weight:600;font-variant-numeric:tabular-nums}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:18px;align-items:start}
.figs>div{min-width:0;overflow-x:auto}
figure{margin:0 0 10px}
img{max-width:100%;height:auto;display:block}
figcaption{color:var(--muted);font-size:.85em}
dl.info{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0 0 8px}
dl.info dt{color:var(--muted)}dl.info dd{margin:0;word-break:break-word;font-family:ui-monospace,
SFMono-Regular,Menlo,Consolas,monospace;font-size:.9em}
details{margin:4px 0 12px}summary{cursor:pointer;color:#0969da}
footer{color:var(--muted);font-size:.85em;margin-top:36px;border-top:1px solid var(--border);
padding-top:8px}
"""


def render_report(
    models: Mapping[str, ModelEvaluation] | Sequence[ModelEvaluation],
    gate: Mapping[str, Any] | None = None,
    title: str = "Model watcher report",
    *,
    reference: str | None = None,
    generated_at: str | None = None,
) -> str:
    """The whole report as one self-contained HTML document.

    ``models`` maps a display name to its evaluation, in the order to show
    them; ``reference`` (default: the gate's champion if it is among them,
    else the first) is what the comparison deltas are measured against.
    ``gate`` is the gate stage's decision dictionary; any part of it may be
    missing.
    """
    models = _as_mapping(models)
    reference = _pick_reference(models, gate, reference)
    generated_at = generated_at or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav_links = [("summary", "Summary"), ("gate", "Gate"), ("comparison", "Comparison")] + [
        (f"model-{slug(name)}", name) for name in models
    ]
    nav = "".join(f'<a href="#{sid}">{_e(label)}</a>' for sid, label in nav_links)
    holdouts = sorted({m.metrics["n"] for m in models.values()})
    plural = "s" if len(models) != 1 else ""
    body = "".join((
        _summary_section(models, gate),
        _gate_section(gate),
        _feedback_section(models),
        _comparison_section(models, reference),
        '<div id="models">',
        "".join(_model_section(model, i) for i, model in enumerate(models.values())),
        "</div>",
    ))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{CSS}</style>
</head>
<body>
<header><h1>{_e(title)}</h1>
<div class="meta">generated {_e(generated_at)} · {len(models)} model{plural}
 · holdout {', '.join(f'{n:,}' for n in holdouts)} digits</div></header>
<nav>{nav}</nav>
<main>{body}
<footer>All metrics on the frozen holdout, computed by components.metrics.compute_metrics.
Intervals: Wilson 95%. ECE: 15 equal-width bins of max probability. McNemar: exact binomial
test on the discordant digits. The same numbers are in metrics.json next to this file.</footer>
</main>
</body>
</html>
"""


# --------------------------------------------------------------------------- outputs


def _jsonable(value: Any) -> Any:
    """Plain JSON types only: numpy scalars/arrays unwrapped, NaN/inf as ``None``."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _dumps(value: Any) -> str:
    return json.dumps(_jsonable(value), indent=2, allow_nan=False)


def report_data(
    models: Mapping[str, ModelEvaluation] | Sequence[ModelEvaluation],
    gate: Mapping[str, Any] | None = None,
    title: str = "Model watcher report",
    *,
    reference: str | None = None,
) -> dict[str, Any]:
    """What ``metrics.json`` holds: every model's metrics and info, the gate, pairwise McNemar."""
    models = _as_mapping(models)
    reference = _pick_reference(models, gate, reference)
    return _jsonable({
        "title": title,
        "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "reference": reference,
        "models": {
            name: {"info": m.info, "metrics": m.metrics, "history": m.history}
            for name, m in models.items()
        },
        "pairwise_mcnemar": pairwise_mcnemar(models, reference),
        "gate": gate,
    })


def write_report(
    directory: Path | str,
    models: Mapping[str, ModelEvaluation] | Sequence[ModelEvaluation],
    gate: Mapping[str, Any] | None = None,
    title: str = "Model watcher report",
    *,
    reference: str | None = None,
) -> Path:
    """Write ``report.html`` and ``metrics.json`` into ``directory``; return the HTML path.

    Everything is rendered in memory first and each file is renamed into
    place, so a failure (say, a NaN model) never leaves a half-written report.
    """
    models = _as_mapping(models)
    page = render_report(models, gate, title, reference=reference)
    data = _dumps(report_data(models, gate, title, reference=reference))
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in ((METRICS_FILE, data), (REPORT_FILE, page)):
        write_atomically(directory / name, text)
    return directory / REPORT_FILE


def summary_table(
    models: Mapping[str, ModelEvaluation | Mapping[str, Any]] | Sequence[ModelEvaluation],
) -> str:
    """A plain-text table for the terminal, one row per model.

    Accepts evaluations or bare metrics dictionaries (e.g. read back from
    ``metrics.json``), so the CLI can print it without the predictions.
    """
    if not isinstance(models, Mapping):
        models = {m.name: m for m in models}
    header = ("model", "n", "accuracy (95% CI)", "macro F1", "log loss", "ECE", "ms/1k")
    rows = [header]
    for name, item in models.items():
        m = item.metrics if isinstance(item, ModelEvaluation) else item
        ci = m.get("accuracy_ci") or {}
        accuracy = f"{m['accuracy'] * 100:.2f}%"
        if ci:
            accuracy += f" [{ci['low'] * 100:.2f}, {ci['high'] * 100:.2f}]"
        latency = _perf(m, "latency_ms_per_1000")
        rows.append((
            str(name), f"{m['n']:,}", accuracy,
            _num((m.get("macro_avg") or {}).get("f1")), _num(m.get("log_loss")),
            _num(m.get("ece")), "—" if latency is None else f"{latency:,.1f}",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                  for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
