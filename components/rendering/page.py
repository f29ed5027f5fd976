"""The report's HTML page, ``metrics.json`` and the terminal summary table."""

from __future__ import annotations

import functools
import html
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from components.contract import METRICS_FILE, REPORT_FILE, ModelEvaluation, dumps, to_jsonable
from components.datafiles import write_atomically
from components.metrics import DIGITS, mcnemar_test
from components.rendering.figures import (
    MODEL_COLORS,
    figure_to_data_uri,
    plot_accuracy_comparison,
    plot_confidence_histogram,
    plot_confusion_matrix,
    plot_per_class,
    plot_recall_comparison,
    plot_recall_deltas,
    plot_reliability,
    plot_roc_pr,
    plot_top_mistakes,
    plot_training_curves,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

def _history_step(kind: str | None) -> str | None:
    """What one step of a family's training history is called (the family says)."""
    from components.models import MODEL_KINDS

    family = MODEL_KINDS.get(kind or "")
    return family.history_step if family else None


#: Top-level sections, in page order; ids are stable so links and tests can rely on them.
SECTION_IDS = ("summary", "gate", "comparison", "models")
#: Per-model subsections, each with id ``model-<slug>-<suffix>``.
MODEL_SECTION_SUFFIXES = (
    "overview", "confusion", "per-class", "curves", "calibration", "confidence",
    "mistakes", "training",
)


@functools.cache
def stylesheet() -> str:
    """The page's CSS, shipped as package data and inlined into every report."""
    from importlib.resources import files

    return files("components.rendering").joinpath("report.css").read_text()


# --------------------------------------------------------------------------- input


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
            plot_training_curves(model.history, x_label=_history_step(model.info.get("kind"))),
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
<style>{stylesheet()}</style>
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
    return to_jsonable({
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
    data = dumps(report_data(models, gate, title, reference=reference))
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
