"""The report's figures: matplotlib ``Figure`` objects on the Agg canvas, never pyplot."""

from __future__ import annotations

import base64
import functools
import io
import math
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from components.contract import ModelEvaluation
from components.metrics import DIGITS, LABELS, decimate

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
#: Points per curve in the ROC / precision-recall plots; beyond this the eye sees no change.
CURVE_POINTS = 300
#: Most confident mistakes shown per model.
MISTAKES_SHOWN = 24
MISTAKE_COLUMNS = 12
MODEL_COLORS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")
OK_COLOR, BAD_COLOR = "#1a7f37", "#cf222e"


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
    """Accuracy per confidence bin against the diagonal, gaps shaded, counts beneath.

    A calibrated model's metrics carry the same holdout before calibration
    (``metrics["uncalibrated"]``): drawn as a line, so the diagram shows what the
    temperature changed.
    """
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
    before = metrics.get("uncalibrated")
    if before:
        points = [b for b in before["calibration"]["bins"] if b["count"]]
        top.plot([b["confidence"] for b in points], [b["accuracy"] for b in points],
                 marker="o", ms=4, lw=1.2, color=BAD_COLOR,
                 label=f"before calibration (ECE {before['ece']:.4f})")
    scaled = f", T = {before['temperature']:.2f}" if before else ""
    top.set(ylim=(0, 1.02), ylabel="accuracy in bin",
            title=f"{title}: ECE = {metrics['ece']:.4f} ({calibration['n_bins']} bins{scaled})")
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


