"""components.metrics against scikit-learn and SciPy on real predictions; hand-checked formulas."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn import metrics as skm

from components.metrics import (
    ECE_BINS,
    LABELS,
    SMALL_HOLDOUT,
    brier_score,
    calibration_bins,
    compute_metrics,
    decimate,
    directory_size_bytes,
    expected_calibration_error,
    kfp_classification_inputs,
    mcnemar_test,
    summary_scalars,
    timed_predict,
    top_k_accuracy,
    wilson_interval,
)


@pytest.fixture(scope="module")
def baseline(tiny_models):
    """A real logistic-regression model trained on genuine MNIST digits (the session's)."""
    return tiny_models["baseline"].model


@pytest.fixture(scope="module")
def predictions(baseline, tiny_dataset):
    """``(y_true, proba)`` of the real model on the 300-digit holdout."""
    proba = baseline.predict_proba(tiny_dataset.x_holdout).astype(np.float64)
    # float32 softmax rows sum to 1 only within ~1e-7; renormalise so scikit-learn
    # sees exactly what compute_metrics uses (it normalises the same way).
    return tiny_dataset.y_holdout.astype(np.int64), proba / proba.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def metrics(predictions):
    return compute_metrics(*predictions)


def _sk_log_loss(y, proba):
    if "y_proba" in inspect.signature(skm.log_loss).parameters:
        return skm.log_loss(y, y_proba=proba, labels=LABELS)
    return skm.log_loss(y, proba, labels=LABELS)


# --------------------------------------------------------------------------- vs scikit-learn


def test_headline_metrics_match_sklearn(predictions, metrics):
    y, proba = predictions
    pred = proba.argmax(axis=1)
    assert metrics["n"] == len(y) == 300
    assert metrics["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert metrics["top2_accuracy"] == pytest.approx(
        skm.top_k_accuracy_score(y, proba, k=2, labels=LABELS))
    assert metrics["log_loss"] == pytest.approx(_sk_log_loss(y, proba), rel=1e-6)
    assert metrics["mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred))
    assert metrics["cohen_kappa"] == pytest.approx(skm.cohen_kappa_score(y, pred))
    # A real model on 300 digits: sanity, not a quality bar.
    assert 0.5 < metrics["accuracy"] < 1.0


def test_brier_matches_sklearn_multiclass(predictions, metrics):
    y, proba = predictions
    if "labels" not in inspect.signature(skm.brier_score_loss).parameters:
        pytest.skip("scikit-learn < 1.7 has no multiclass Brier score")
    assert metrics["brier"] == pytest.approx(skm.brier_score_loss(y, proba, labels=LABELS))


def test_per_class_and_averages_match_sklearn(predictions, metrics):
    y, proba = predictions
    pred = proba.argmax(axis=1)
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=LABELS, zero_division=0)
    for digit in LABELS:
        row = metrics["per_class"][str(digit)]
        assert row["precision"] == pytest.approx(p[digit])
        assert row["recall"] == pytest.approx(r[digit])
        assert row["f1"] == pytest.approx(f[digit])
        assert row["support"] == s[digit]
        positive = y == digit
        assert row["roc_auc"] == pytest.approx(skm.roc_auc_score(positive, proba[:, digit]))
        assert row["average_precision"] == pytest.approx(
            skm.average_precision_score(positive, proba[:, digit]))
    for average in ("macro", "weighted"):
        block = metrics[f"{average}_avg"]
        assert block["f1"] == pytest.approx(skm.f1_score(y, pred, average=average))
        assert block["precision"] == pytest.approx(
            skm.precision_score(y, pred, average=average, zero_division=0))
        assert block["recall"] == pytest.approx(skm.recall_score(y, pred, average=average))
    assert metrics["roc_auc_macro"] == pytest.approx(
        skm.roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=LABELS))
    assert metrics["average_precision_macro"] == pytest.approx(
        np.mean([skm.average_precision_score(y == d, proba[:, d]) for d in LABELS]))


def test_confusion_matrices_match_sklearn(predictions, metrics):
    y, proba = predictions
    pred = proba.argmax(axis=1)
    np.testing.assert_array_equal(metrics["confusion_matrix"],
                                  skm.confusion_matrix(y, pred, labels=LABELS))
    np.testing.assert_allclose(metrics["confusion_matrix_normalized"],
                               skm.confusion_matrix(y, pred, labels=LABELS, normalize="true"))


def test_existing_keys_and_json(metrics):
    """The keys other code already reads keep their names and types; all of it is strict JSON."""
    for key in ("n", "accuracy", "log_loss", "mcc", "per_class", "confusion_matrix"):
        assert key in metrics
    assert set(metrics["per_class"]) == {str(d) for d in LABELS}
    assert {"precision", "recall", "f1", "support"} <= set(metrics["per_class"]["7"])
    assert isinstance(metrics["per_class"]["7"]["support"], int)
    assert json.loads(json.dumps(metrics, allow_nan=False)) == metrics
    assert metrics["performance"] == {
        "latency_ms_per_1000": None, "model_size_bytes": None, "train_seconds": None}


def test_performance_inputs_pass_through(predictions):
    m = compute_metrics(*predictions, latency_ms_per_1000=12.5, model_size_bytes=4096,
                        train_seconds=3.25)
    assert m["performance"] == {
        "latency_ms_per_1000": 12.5, "model_size_bytes": 4096, "train_seconds": 3.25}
    assert summary_scalars(m)["latency_ms_per_1000"] == 12.5


def test_accuracy_interval_is_wilson(metrics):
    correct = round(metrics["accuracy"] * metrics["n"])
    expected = binomtest(correct, metrics["n"]).proportion_ci(method="wilson")
    assert metrics["accuracy_ci"]["low"] == pytest.approx(expected.low)
    assert metrics["accuracy_ci"]["high"] == pytest.approx(expected.high)
    assert metrics["accuracy_ci"]["low"] < metrics["accuracy"] < metrics["accuracy_ci"]["high"]


# --------------------------------------------------------------------------- hand-checked formulas


def test_wilson_interval_hand_checked():
    # 8 of 10: the textbook Wilson 95% interval is (0.4902, 0.9433).
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 20)[0] == 0.0
    assert wilson_interval(20, 20)[1] == pytest.approx(1.0)
    for k, n in ((1, 7), (290, 300), (9_912, 10_000)):
        expected = binomtest(k, n).proportion_ci(confidence_level=0.99, method="wilson")
        assert wilson_interval(k, n, 0.99) == pytest.approx((expected.low, expected.high))
    with pytest.raises(ValueError):
        wilson_interval(3, 0)


def _rows(confidences: list[float], predicted: list[int]) -> np.ndarray:
    """Probability rows with the given max probability on the given class, rest spread evenly."""
    proba = np.empty((len(confidences), 10))
    for i, (conf, cls) in enumerate(zip(confidences, predicted, strict=True)):
        proba[i] = (1 - conf) / 9
        proba[i, cls] = conf
    return proba


def test_expected_calibration_error_hand_checked():
    # Bin (13/15, 14/15]: conf 0.9, one right one wrong -> gap 0.4, weight 2/4.
    # Bin (8/15, 9/15]: conf 0.6, right -> gap 0.4, weight 1/4.
    # Bin (4/15, 5/15]: conf 0.3, wrong -> gap 0.3, weight 1/4.
    proba = _rows([0.9, 0.9, 0.6, 0.3], [1, 2, 3, 4])
    y = np.array([1, 5, 3, 0])
    assert expected_calibration_error(y, proba) == pytest.approx(0.2 + 0.1 + 0.075)
    assert compute_metrics(y, proba)["ece"] == pytest.approx(0.375)
    bins = calibration_bins(y, proba)
    assert len(bins) == ECE_BINS
    assert [b["count"] for b in bins if b["count"]] == [1, 1, 2]
    assert bins[13]["confidence"] == pytest.approx(0.9) and bins[13]["accuracy"] == 0.5


def test_ece_bin_edges_and_perfect_confidence():
    # Exactly 1.0 lands in the last bin; exactly 9/15 = 0.6 lands in (8/15, 9/15].
    proba = _rows([1.0, 0.6], [0, 0])
    bins = calibration_bins(np.array([0, 0]), proba)
    assert bins[14]["count"] == 1 and bins[8]["count"] == 1
    confident = _rows([1.0] * 5, [3] * 5)
    assert expected_calibration_error(np.full(5, 3), confident) == 0.0


def test_brier_and_top2_hand_checked():
    y = np.array([0, 1])
    proba = np.zeros((2, 10))
    proba[0, 0] = 1.0   # right with certainty: 0
    proba[1, 2] = 1.0   # wrong with certainty: (1-0)^2 + (0-1)^2 = 2
    assert brier_score(y, proba) == pytest.approx(1.0)
    proba = _rows([0.5, 0.5], [3, 3])
    proba[:, 4] += 0.1
    proba[:, 5] -= 0.1  # digit 4 is now second most likely everywhere
    assert top_k_accuracy(np.array([4, 5]), proba, 2) == 0.5


def test_mcnemar_hand_checked():
    y = np.zeros(10, dtype=int)
    challenger = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 1])
    champion = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    result = mcnemar_test(y, challenger, champion)
    # b: challenger right & champion wrong = 3; c = 0; both right 4; both wrong 3.
    assert (result["both_right"], result["b"], result["c"], result["both_wrong"]) == (4, 3, 0, 3)
    assert result["p_value"] == pytest.approx(0.25)  # 2 * 0.5^3
    assert result["p_value"] == pytest.approx(binomtest(3, 3, 0.5).pvalue)
    assert mcnemar_test(y, champion, champion)["p_value"] == 1.0
    balanced = mcnemar_test(y, np.array([0, 1] * 5), np.array([1, 0] * 5))
    assert balanced["b"] == balanced["c"] == 5 and balanced["p_value"] == 1.0


# --------------------------------------------------------------------------- edge cases


def test_class_absent_from_truth(predictions):
    y, proba = predictions
    keep = y != 0
    m = compute_metrics(y[keep], proba[keep])
    assert m["per_class"]["0"]["support"] == 0
    assert m["per_class"]["0"]["roc_auc"] is None
    assert m["per_class"]["0"]["average_precision"] is None
    assert m["roc_auc_macro"] == pytest.approx(
        np.mean([m["per_class"][str(d)]["roc_auc"] for d in range(1, 10)]))
    assert any("absent from the holdout: [0]" in w for w in m["warnings"])
    json.dumps(m, allow_nan=False)


def test_class_never_predicted(predictions):
    y, proba = predictions
    proba = proba.copy()
    proba[:, 9] = 0
    proba /= proba.sum(axis=1, keepdims=True)
    m = compute_metrics(y, proba)
    assert m["per_class"]["9"]["precision"] == 0.0
    assert m["per_class"]["9"]["recall"] == 0.0
    assert any("never predicted: [9]" in w for w in m["warnings"])
    pred = proba.argmax(axis=1)
    assert m["macro_avg"]["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))


def test_single_class_subset(predictions):
    y, proba = predictions
    ones = y == 1
    m = compute_metrics(y[ones], proba[ones])
    assert m["n"] == int(ones.sum())
    assert m["roc_auc_macro"] is None  # one class: no negatives, nothing to rank
    assert m["per_class"]["1"]["average_precision"] == pytest.approx(1.0)
    assert m["accuracy"] == pytest.approx((proba[ones].argmax(axis=1) == 1).mean())
    json.dumps(m, allow_nan=False)
    everything_right = compute_metrics(np.full(3, 2), _rows([0.9] * 3, [2] * 3))
    assert everything_right["accuracy"] == 1.0
    assert everything_right["cohen_kappa"] is None  # undefined: chance agreement is 1


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p.__setitem__((0, 0), np.nan), "NaN"),
        (lambda p: p.__setitem__((1, 3), np.inf), "NaN or infinity"),
        (lambda p: p.__imul__(0.5), "sum to 1"),
        (lambda p: p.__setitem__((0, slice(None)), np.r_[1.5, -0.5, np.zeros(8)]), "0..1"),
    ],
)
def test_bad_probabilities_raise(predictions, mutate, message):
    y, proba = predictions
    proba = proba.copy()
    mutate(proba)
    with pytest.raises(ValueError, match=message):
        compute_metrics(y, proba)


def test_bad_shapes_and_labels_raise(predictions):
    y, proba = predictions
    with pytest.raises(ValueError, match=r"\[300, 10\]"):
        compute_metrics(y, proba[:, :9])
    with pytest.raises(ValueError, match=r"0\.\.9"):
        compute_metrics(np.where(y == 0, 10, y), proba)
    with pytest.raises(ValueError, match="non-empty"):
        compute_metrics(np.array([], dtype=int), np.zeros((0, 10)))


def test_small_holdout_warning(predictions, metrics):
    assert metrics["n"] < SMALL_HOLDOUT
    assert any("Small holdout" in w and "±" in w for w in metrics["warnings"])
    y, proba = predictions
    big = compute_metrics(np.tile(y, 4), np.tile(proba, (4, 1)))
    assert big["n"] >= SMALL_HOLDOUT
    assert not any("Small holdout" in w for w in big["warnings"])


# --------------------------------------------------------------------- KFP, measurements


def test_kfp_classification_inputs(predictions):
    y, proba = predictions
    kfp = kfp_classification_inputs(y, proba)
    assert kfp["categories"] == [str(d) for d in LABELS]
    assert kfp["confusion_matrix"] == compute_metrics(y, proba)["confusion_matrix"]
    n = len(kfp["fpr"])
    assert 2 < n <= 200 and len(kfp["tpr"]) == len(kfp["thresholds"]) == n
    assert (kfp["fpr"][0], kfp["fpr"][-1], kfp["tpr"][-1]) == (0.0, 1.0, 1.0)
    assert np.all(np.diff(kfp["fpr"]) >= 0) and np.all(np.diff(kfp["tpr"]) >= 0)
    assert all(0 <= t <= 1 for t in kfp["thresholds"])
    json.dumps(kfp, allow_nan=False)
    small = kfp_classification_inputs(y, proba, max_points=20)
    assert len(small["fpr"]) <= 20

    from kfp import dsl

    artifact = dsl.ClassificationMetrics(name="metrics")
    artifact.log_roc_curve(kfp["fpr"], kfp["tpr"], kfp["thresholds"])
    artifact.log_confusion_matrix(kfp["categories"], kfp["confusion_matrix"])
    assert len(artifact.metadata["confidenceMetrics"]) == n


def test_decimate_keeps_ends():
    idx = decimate(10_000, 200)
    assert len(idx) <= 200 and idx[0] == 0 and idx[-1] == 9_999
    assert list(decimate(5, 200)) == [0, 1, 2, 3, 4]


def test_summary_scalars_are_floats(metrics):
    scalars = summary_scalars(metrics)
    assert scalars["accuracy"] == metrics["accuracy"]
    assert scalars["macro_f1"] == metrics["macro_avg"]["f1"]
    assert "latency_ms_per_1000" not in scalars  # not measured: left out, not None
    assert all(isinstance(v, float) for v in scalars.values())


def test_timed_predict_and_model_size(baseline, tiny_dataset, tmp_path):
    proba, ms_per_1000 = timed_predict(baseline.predict_proba, tiny_dataset.x_holdout)
    np.testing.assert_allclose(proba, baseline.predict_proba(tiny_dataset.x_holdout))
    assert ms_per_1000 > 0
    files = baseline.save(tmp_path / "model")
    assert directory_size_bytes(tmp_path / "model") == sum(f.stat().st_size for f in files)
    assert directory_size_bytes(files[0]) == files[0].stat().st_size
