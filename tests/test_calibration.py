"""Calibration: a temperature fitted on validation digits makes confidence match accuracy.

Model behaviour on genuine digits: an over-confident model gets honest on
digits it never saw (the holdout), without one label changing; old models
predict exactly as they were trained.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.calibration import NEUTRAL, apply_temperature, fit_temperature
from components.metrics import expected_calibration_error, log_loss
from components.models import MODEL_KINDS, create_model, load_model
from components.scoring import evaluate
from components.train import train


@pytest.fixture(scope="module")
def overconfident(tiny_dataset):
    """Logistic regression with almost no regularisation on 600 digits: sure of everything."""
    model = create_model("baseline", C=1e4, max_iter=500)
    model.fit(tiny_dataset.x_train, tiny_dataset.y_train,
              tiny_dataset.x_validation, tiny_dataset.y_validation)
    return model


def test_an_overconfident_model_gets_honest_on_unseen_digits(overconfident, tiny_dataset):
    x, y = tiny_dataset.x_holdout, tiny_dataset.y_holdout
    before = overconfident.predict_proba(x)
    ece_before = expected_calibration_error(y, before)
    assert ece_before > 0.05, "the fixture must be over-confident for this test to mean anything"

    facts = overconfident.calibrate(tiny_dataset.x_validation, tiny_dataset.y_validation)
    after = overconfident.predict_proba(x)

    assert facts["temperature"] > 1, "an over-confident model is cooled, not sharpened"
    assert expected_calibration_error(y, after) < ece_before
    assert log_loss(y, after) < log_loss(y, before)
    np.testing.assert_array_equal(after.argmax(axis=1), before.argmax(axis=1))
    np.testing.assert_allclose(after.sum(axis=1), 1.0, atol=1e-5)


def test_the_temperature_is_fitted_on_validation_digits_only(tiny_dataset):
    """Fitting on the holdout would grade calibration on what it was tuned to."""
    model = create_model("baseline", C=1e4, max_iter=500)
    model.fit(tiny_dataset.x_train, tiny_dataset.y_train,
              tiny_dataset.x_validation, tiny_dataset.y_validation)
    _, info = train("baseline", tiny_dataset, C=1e4, max_iter=500)
    expected = fit_temperature(model.predict_proba(tiny_dataset.x_validation, calibrated=False),
                               tiny_dataset.y_validation)
    assert info["calibration"]["temperature"] == pytest.approx(expected, rel=1e-6)
    assert info["calibration"]["fitted_on"] == len(tiny_dataset.y_validation)


def test_an_honest_model_keeps_its_probabilities():
    """Probabilities drawn from the model's own confidences need no correction (T ≈ 1)."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(20_000, 10))
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(10, p=row) for row in proba])
    assert fit_temperature(proba, labels) == pytest.approx(1.0, abs=0.05)


def test_temperature_scaling_is_softmax_of_scaled_log_probabilities():
    proba = np.array([[0.7, 0.2, 0.1] + [0.0] * 7], dtype=np.float32)
    scaled = apply_temperature(proba, 2.0)
    expected = np.sqrt(proba) / np.sqrt(proba).sum()
    np.testing.assert_allclose(scaled, expected, atol=1e-6)
    assert apply_temperature(proba, NEUTRAL) is proba
    np.testing.assert_allclose(apply_temperature(scaled, 0.5), proba, atol=1e-6)


@pytest.mark.parametrize("kind", sorted(MODEL_KINDS))
def test_a_model_saved_before_calibration_predicts_exactly_as_trained(kind, tiny_dataset,
                                                                       tmp_path):
    """No temperature in model.json: loaded with T = 1, the probabilities it always gave."""
    params = {"cnn": {"epochs": 1, "batch_size": 64}, "xgboost": {"n_estimators": 5},
              "baseline": {"max_iter": 50}}[kind]
    model = create_model(kind, **params)
    model.fit(tiny_dataset.x_train, tiny_dataset.y_train,
              tiny_dataset.x_validation, tiny_dataset.y_validation)
    model.save(tmp_path)
    description = json.loads((tmp_path / "model.json").read_text())
    del description["temperature"]  # what every model saved before this change looks like
    (tmp_path / "model.json").write_text(json.dumps(description))

    old = load_model(tmp_path)
    assert old.temperature == NEUTRAL
    np.testing.assert_allclose(old.predict_proba(tiny_dataset.x_holdout),
                               model.predict_proba(tiny_dataset.x_holdout, calibrated=False),
                               atol=1e-6)


def test_a_saved_calibrated_model_predicts_calibrated(overconfident, tiny_dataset, tmp_path):
    overconfident.calibrate(tiny_dataset.x_validation, tiny_dataset.y_validation)
    overconfident.save(tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.temperature == pytest.approx(overconfident.temperature)
    np.testing.assert_allclose(loaded.predict_proba(tiny_dataset.x_holdout),
                               overconfident.predict_proba(tiny_dataset.x_holdout), atol=1e-6)


def test_the_evaluation_shows_reliability_before_and_after(overconfident, tiny_dataset):
    overconfident.calibrate(tiny_dataset.x_validation, tiny_dataset.y_validation)
    metrics = evaluate(overconfident, tiny_dataset).metrics
    before = metrics["uncalibrated"]
    raw = overconfident.predict_proba(tiny_dataset.x_holdout, calibrated=False)
    assert before["ece"] == pytest.approx(
        expected_calibration_error(tiny_dataset.y_holdout, raw), abs=1e-4)
    assert metrics["ece"] < before["ece"]
    assert before["temperature"] == overconfident.temperature
