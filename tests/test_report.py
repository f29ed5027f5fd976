"""The model watcher report: figures, HTML structure, self-containment, outputs, edge cases."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from typing import ClassVar

import numpy as np
import pytest

from components.contract import (
    EVALUATION_FILE,
    METRICS_FILE,
    PREDICTIONS_FILE,
    REPORT_FILE,
    GateDecision,
    ModelEvaluation,
)
from components.gate import GatePolicy, decide
from components.metrics import compute_metrics, directory_size_bytes, mcnemar_test, timed_predict
from components.models import create_model
from components.rendering.figures import (
    figure_to_data_uri,
    most_confident_mistakes,
    plot_confidence_histogram,
    plot_confusion_matrix,
    plot_per_class,
    plot_reliability,
    plot_roc_pr,
    plot_top_mistakes,
    plot_training_curves,
)
from components.rendering.page import (
    MODEL_SECTION_SUFFIXES,
    SECTION_IDS,
    render_report,
    report_data,
    slug,
    summary_table,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def evaluations(tiny_dataset, tmp_path_factory) -> dict[str, ModelEvaluation]:
    """Two real models (logistic regression, a small XGBoost) on the 300 genuine holdout digits."""
    d = tiny_dataset
    result = {}
    for kind, params in (("xgboost", {"n_estimators": 15, "n_jobs": 2}),
                         ("baseline", {"max_iter": 50})):
        model = create_model(kind, **params)
        start = time.perf_counter()
        model.fit(d.x_train, d.y_train, d.x_validation, d.y_validation)
        train_seconds = time.perf_counter() - start
        proba, latency = timed_predict(model.predict_proba, d.x_holdout)
        folder = tmp_path_factory.mktemp(kind)
        model.save(folder)
        metrics = compute_metrics(d.y_holdout, proba, latency_ms_per_1000=latency,
                                  model_size_bytes=directory_size_bytes(folder),
                                  train_seconds=train_seconds)
        result[kind] = ModelEvaluation(
            name=kind, y_true=d.y_holdout, proba=proba, images=d.x_holdout,
            history=model.history, metrics=metrics,
            info={"kind": kind, "version": f"20260101T000000Z-{kind}-abcdef",
                  "params": model.params},
        )
    return result


def _gate(evaluations, *, champion: bool = True) -> dict:
    """The gate's own decision on these predictions: XGBoost challenging the baseline."""
    new, old = evaluations["xgboost"], evaluations["baseline"]
    result = decide(new.y_true, new.y_pred, old.y_pred if champion else None,
                    GatePolicy(min_accuracy=0.5))
    result["challenger"].update(kind="xgboost", metrics=new.metrics)
    if champion:
        result["champion"].update(version=old.info["version"], metrics=old.metrics)
    return GateDecision(**result).to_json()


@pytest.fixture(scope="module")
def page(evaluations) -> str:
    return render_report(evaluations, _gate(evaluations), "Watcher <test> & co")


class _Checker(HTMLParser):
    """Collects tags, ids and src/href values; records any unbalanced end tag."""

    VOID: ClassVar[set[str]] = {"area", "base", "br", "col", "embed", "hr", "img", "input",
                                "link", "meta", "source", "track", "wbr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.ids: list[str] = []
        self.links: list[tuple[str, str]] = []
        self.tags: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        for key in ("src", "href", "action", "srcset", "poster", "data"):
            if key in attrs:
                self.links.append((key, attrs[key] or ""))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> but open: {self.stack[-3:]}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(html_text: str) -> _Checker:
    checker = _Checker()
    checker.feed(html_text)
    checker.close()
    return checker


# --------------------------------------------------------------------------- HTML


def test_html_is_balanced(page):
    checker = _parse(page)
    assert checker.errors == []
    assert checker.stack == []
    assert page.startswith("<!DOCTYPE html>")
    assert len(checker.ids) == len(set(checker.ids)), "duplicate ids"


def test_html_is_self_contained(page):
    checker = _parse(page)
    for key, value in checker.links:
        assert value.startswith(("data:image/png;base64,", "#")), (key, value[:60])
    for needle in ("http://", "https://", "<link", "<script", "@import", "url(", "<iframe"):
        assert needle not in page.lower(), needle
    assert not re.search(r"""(src|href)\s*=\s*["']?//""", page)
    images = [v for k, v in checker.links if k == "src"]
    assert len(images) >= 2 * 7
    for uri in images:
        assert base64.b64decode(uri.split(",", 1)[1]).startswith(PNG_MAGIC)


def test_every_section_present(page, evaluations):
    ids = set(_parse(page).ids)
    assert set(SECTION_IDS) <= ids
    for name in evaluations:
        assert f"model-{slug(name)}" in ids
        for suffix in MODEL_SECTION_SUFFIXES:
            assert f"model-{slug(name)}-{suffix}" in ids
    links = {v for k, v in _parse(page).links if k == "href"}
    assert {f"#{sid}" for sid in ids if not sid.startswith("model-") or sid.count("-") == 1} & links


def test_gate_evidence_rendered(page, evaluations):
    text = " ".join(_parse(page).text)
    gate = _gate(evaluations)
    assert gate["decision"].upper() in text
    assert f"b = {gate['mcnemar']['b']:,}" in text and f"c = {gate['mcnemar']['c']:,}" in text
    assert f"{gate['mcnemar']['p_value']:.3g}" in text
    # Every check the gate made is in the table, with its verdict and its evidence.
    assert [c["name"] for c in gate["checks"]] == [
        "accuracy_floor", "beats_champion", "mcnemar", "class_regression"]
    passed = sum(c["passed"] for c in gate["checks"])
    assert (text.count("✔ pass"), text.count("✘ fail")) == (passed, 4 - passed)
    for check in gate["checks"]:
        assert check["name"] in text and check["detail"] in text
    assert "Watcher &lt;test&gt; &amp; co" in page
    assert "Per-digit recall" in text and "champion" in text
    assert "Small holdout" in text  # 300 digits: the wide-interval warning is visible


def test_text_from_the_gate_is_escaped(evaluations):
    gate = _gate(evaluations)
    gate["checks"][0]["detail"] += " <fell>"
    page = render_report(evaluations, gate, "escaping")
    assert "<fell>" not in page and "&lt;fell&gt;" in page
    assert _parse(page).errors == []


def test_first_model_without_champion(evaluations):
    page = render_report({"xgboost": evaluations["xgboost"]},
                         _gate(evaluations, champion=False), "first")
    checker = _parse(page)
    assert checker.errors == [] and checker.stack == []
    text = " ".join(checker.text)
    assert "No champion yet" in text
    assert "McNemar test on the same holdout" not in text
    assert "challenger" in text


def test_no_gate_and_partial_gate(evaluations):
    alone = render_report([evaluations["baseline"]])
    assert "No gate decision was supplied" in alone
    partial = render_report([evaluations["xgboost"]], {"decision": "reject", "reason": "worse"})
    checker = _parse(partial)
    assert checker.errors == [] and "REJECT" in " ".join(checker.text)


def test_comparison_deltas_against_reference(evaluations, page):
    text = " ".join(_parse(page).text)  # reference: the gate's champion, baseline
    assert "Deltas are against" in text and "McNemar against baseline" in text
    data = report_data(evaluations, reference="baseline")
    pair = data["pairwise_mcnemar"]["xgboost"]
    direct = mcnemar_test(evaluations["baseline"].y_true, evaluations["xgboost"].y_pred,
                          evaluations["baseline"].y_pred)
    assert pair == direct
    # Default reference: the gate's champion when it is among the models.
    assert report_data(evaluations, _gate(evaluations))["reference"] == "baseline"
    assert report_data(evaluations)["reference"] == "xgboost"


# --------------------------------------------------------------------------- outputs


def test_write_report_files(evaluations, tmp_path):
    gate = _gate(evaluations)
    path = write_report(tmp_path / "run", evaluations, gate, "run 1")
    assert path == tmp_path / "run" / REPORT_FILE and path.stat().st_size > 10_000
    data = json.loads((tmp_path / "run" / METRICS_FILE).read_text(),
                      parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert set(data["models"]) == {"xgboost", "baseline"}
    assert data["models"]["baseline"]["metrics"] == evaluations["baseline"].metrics
    assert data["gate"] == gate
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [METRICS_FILE, REPORT_FILE]


def test_nan_model_fails_before_writing(evaluations, tmp_path):
    good = evaluations["baseline"]
    proba = good.proba.copy()
    proba[5, 2] = np.nan
    with pytest.raises(ValueError, match=r"'broken'.*NaN"):
        bad = ModelEvaluation("broken", good.y_true, proba, good.images)
        write_report(tmp_path / "out", {"broken": bad})
    assert not (tmp_path / "out").exists()


def test_summary_table(evaluations):
    table = summary_table(evaluations)
    lines = table.splitlines()
    assert len(lines) == 2 + len(evaluations)
    assert lines[0].split()[:2] == ["model", "n"]
    acc = evaluations["baseline"].metrics["accuracy"]
    assert f"{acc * 100:.2f}%" in lines[3] and lines[3].startswith("baseline")
    from_dicts = summary_table({k: v.metrics for k, v in evaluations.items()})
    assert from_dicts == table


def test_save_and_load_round_trip(evaluations, tmp_path):
    original = evaluations["xgboost"]
    original.save(tmp_path / "stored")
    assert {p.name for p in (tmp_path / "stored").iterdir()} == {PREDICTIONS_FILE,
                                                                  EVALUATION_FILE}
    loaded = ModelEvaluation.load(tmp_path / "stored")
    assert loaded.name == original.name and loaded.info == original.info
    assert loaded.metrics == original.metrics and loaded.history == original.history
    np.testing.assert_array_equal(loaded.y_true, original.y_true)
    np.testing.assert_array_equal(loaded.images, original.images)
    np.testing.assert_allclose(loaded.proba, original.proba, rtol=1e-6)
    original.save(tmp_path / "lean", include_images=False)
    lean = ModelEvaluation.load(tmp_path / "lean")
    assert lean.images is None
    assert "Holdout images were not supplied" in render_report([lean])


# --------------------------------------------------------------------------- figures and edge cases


def test_each_figure_is_a_png(evaluations):
    e = evaluations["baseline"]
    figures = [
        plot_confusion_matrix(e.metrics), plot_per_class(e.metrics),
        plot_roc_pr(e.y_true, e.proba), plot_reliability(e.metrics),
        plot_confidence_histogram(e.y_true, e.proba),
        plot_top_mistakes(e.images, e.y_true, e.proba),
        plot_training_curves(e.history),
        plot_training_curves(evaluations["xgboost"].history),
    ]
    for fig in figures:
        assert fig is not None
        uri = figure_to_data_uri(fig)
        assert base64.b64decode(uri.split(",", 1)[1]).startswith(PNG_MAGIC)


def test_most_confident_mistakes_order(evaluations):
    e = evaluations["baseline"]
    chosen = most_confident_mistakes(e.y_true, e.proba, 10)
    assert len(chosen) == 10 and (e.y_pred[chosen] != e.y_true[chosen]).all()
    confidence = e.proba[chosen].max(axis=1)
    assert (np.diff(confidence) <= 0).all()
    wrong = e.y_pred != e.y_true
    assert confidence[0] == e.proba[wrong].max(axis=1).max()


@pytest.mark.parametrize("history", [
    {},
    {"loss": [], "val_loss": []},
    {"loss": [0.9, 0.5, 0.3], "accuracy": [0.7, 0.85, 0.9],
     "val_loss": [0.6, 0.4, 0.35], "val_accuracy": [0.8, 0.88, 0.9]},  # Keras
    {"train_mlogloss": [1.5, 0.8], "val_mlogloss": [1.6, 1.0],
     "train_merror": [0.2, 0.1], "val_merror": [0.25, 0.15]},  # XGBoost
    {"val_accuracy": [0.87]},  # baseline
    {"notes": "not a series", "nested": {"a": [1]}, "nan": [float("nan")], "loss": [1, 0.5]},
])
def test_training_curves_any_history(history):
    fig = plot_training_curves(history)
    drawable = any(isinstance(v, list) and v and not np.isnan(v).all() for v in history.values())
    assert (fig is not None) == drawable
    if fig is not None:
        figure_to_data_uri(fig)


def test_edge_case_models_render(evaluations):
    """Absent class, never-predicted class, single-class subset, no mistakes, no history."""
    base = evaluations["baseline"]
    no_zero = base.y_true != 0
    never_nine = base.proba.copy()
    never_nine[:, 9] = 0
    never_nine /= never_nine.sum(axis=1, keepdims=True)
    ones = base.y_true == 1
    right = base.y_pred == base.y_true
    models = [
        ModelEvaluation("no zeros", base.y_true[no_zero], base.proba[no_zero],
                        base.images[no_zero]),
        ModelEvaluation("never nine", base.y_true, never_nine, base.images),
        ModelEvaluation("only ones", base.y_true[ones], base.proba[ones], base.images[ones]),
        ModelEvaluation("perfect", base.y_true[right], base.proba[right], base.images[right]),
    ]
    page = render_report(models, title="edge cases")
    checker = _parse(page)
    assert checker.errors == [] and checker.stack == []
    text = " ".join(checker.text)
    assert "absent from the holdout: [0]" in text
    assert "never predicted: [9" in text
    assert "No mistakes on the holdout." in text
    assert "No training history recorded." in text
    for model in models:
        assert f"model-{slug(model.name)}-curves" in checker.ids


def test_bad_inputs_raise(evaluations):
    base = evaluations["baseline"]
    with pytest.raises(ValueError, match="at least one model"):
        render_report({})
    with pytest.raises(ValueError, match="images"):
        ModelEvaluation("x", base.y_true, base.proba, base.images[:10])
    with pytest.raises(ValueError, match="reference"):
        render_report(evaluations, reference="nope")


# --------------------------------------------------------------------------- browser


@pytest.mark.browser
def test_renders_in_headless_chromium(evaluations, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from PIL import Image

    path = write_report(tmp_path / "report", evaluations, _gate(evaluations), "browser check")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
         "--window-size=1400,4000", path.resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    assert shot.is_file() and shot.stat().st_size > 10_000
    with Image.open(shot) as image:
        rgb = image.convert("RGB")
        assert rgb.size == (1400, 4000)
        pixels = np.asarray(rgb).reshape(-1, 3)
    colours = len(np.unique(pixels[::7], axis=0))
    non_white = (pixels.min(axis=1) < 240).mean()
    assert colours > 500, f"only {colours} distinct colours: blank or unstyled page?"
    assert non_white > 0.05, f"only {non_white:.1%} of the page is not white"


def test_feedback_accuracy_is_shown_apart_only_when_the_run_had_feedback(tiny_dataset,
                                                                         evaluations):
    from dataclasses import replace

    from components.data import add_feedback, build_dataset
    from components.datafiles import Source
    from components.feedback import FeedbackItem
    from components.models import create_model
    from components.scoring import evaluate

    assert 'id="feedback"' not in render_report(evaluations, _gate(evaluations))
    d = tiny_dataset
    dataset = build_dataset(d.x_train, d.y_train, d.x_holdout, d.y_holdout,
                            Source("mnist", "test", {}), seed=0)
    corrections = [FeedbackItem.create(255 - image, int(label))  # inverted: hard for the model
                   for image, label in zip(d.x_train[:20], d.y_train[:20], strict=True)]
    add_feedback(dataset, corrections, cap=0.1, weight=1)
    model = create_model("baseline", max_iter=50)
    model.fit(dataset.x_train, dataset.y_train, dataset.x_validation, dataset.y_validation)
    scored = evaluate(model, dataset)
    right = model.predict(dataset.x_feedback) == dataset.y_feedback
    assert scored.info["feedback"] == {"n": 20, "accuracy": float(right.mean())}
    models = {"baseline": replace(scored, name="baseline"), **{
        k: v for k, v in evaluations.items() if k != "baseline"}}
    html = render_report(models, _gate(evaluations))
    section = html[html.index('<section id="feedback">'):]
    section = section[:section.index("</section>")]
    assert "never decide the gate" in section
    assert "baseline" in section and "xgboost" not in section  # no feedback, no row
    assert f"{100 * right.mean():.2f}%" in section
