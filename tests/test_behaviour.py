"""Behaviour on real digits (Made-With-ML's behavioural tests): invariance, direction,
and features that travel with the model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from components.features import CELL, ORIENTATIONS, POOL, deskew, feature_rows
from components.models import create_model, load_model
from components.train import train


def shear(images: np.ndarray, slant: float) -> np.ndarray:
    """Slant digits like a hand would: columns move in proportion to the row."""
    centre = 13.5
    out = [ndimage.affine_transform(image.astype(np.float32), [[1, 0], [slant, 1]],
                                    offset=[0, -slant * centre], order=1)
           for image in images]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    a -= a.mean(axis=1, keepdims=True)
    b -= b.mean(axis=1, keepdims=True)
    return (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))


def test_deskew_is_deterministic_and_keeps_the_canonical_form(tiny_dataset):
    digits = tiny_dataset.x_holdout[:200]
    once = deskew(digits)
    assert once.dtype == np.uint8 and once.shape == digits.shape
    np.testing.assert_array_equal(once, deskew(digits))
    np.testing.assert_array_equal(deskew(digits[:1]), once[:1])  # batch-independent
    blank = np.zeros((1, 28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(deskew(blank), blank)


@pytest.mark.parametrize(("name", "width"), [
    ("raw", 784), ("deskew", 784),
    ("hog", (28 // CELL) ** 2 * ORIENTATIONS + (28 // POOL) ** 2),
])
def test_feature_sets_are_deterministic_shaped_and_batch_independent(tiny_dataset, name,
                                                                     width):
    digits = tiny_dataset.x_holdout[:100]
    rows = feature_rows(name)(digits)
    assert rows.dtype == np.float32 and rows.shape == (100, width)
    assert np.isfinite(rows).all()
    np.testing.assert_array_equal(rows, feature_rows(name)(digits))
    np.testing.assert_allclose(feature_rows(name)(digits[7:8]), rows[7:8], rtol=1e-6)


def test_gradient_histograms_see_stroke_direction():
    """Direction: a vertical bar has horizontal gradients only, a horizontal bar vertical."""
    vertical = np.zeros((1, 28, 28), dtype=np.uint8)
    vertical[0, 4:24, 13:15] = 255
    horizontal = vertical.transpose(0, 2, 1).copy()
    cells = (28 // CELL) ** 2

    def by_orientation(image):
        hog = feature_rows("hog")(image)[0, :cells * ORIENTATIONS]
        return hog.reshape(cells, ORIENTATIONS).sum(axis=0)

    v, h = by_orientation(vertical), by_orientation(horizontal)
    assert v.argmax() == 0 and h.argmax() == ORIENTATIONS // 2  # 0° and 90° edges


def test_deskew_undoes_a_slant(tiny_dataset):
    """Direction: a slanted digit, once deskewed, looks like the upright one deskewed."""
    digits = tiny_dataset.x_holdout[:200]
    upright = deskew(digits)
    for slant in (-0.3, 0.3):
        slanted = shear(digits, slant)
        before = correlation(slanted, upright)
        after = correlation(deskew(slanted), upright)
        assert np.median(after) > 0.9
        assert np.median(after) > np.median(before) + 0.1


def test_an_unknown_feature_set_is_refused():
    with pytest.raises(ValueError, match="unknown feature set 'sift'"):
        feature_rows("sift")


def test_a_model_saved_before_deskewing_still_predicts_as_it_was_trained(
        tiny_dataset, tmp_path):
    """A model from before the ``features`` parameter existed loads with raw pixels."""
    old = create_model("xgboost", n_estimators=10, max_depth=3, features="raw",
                       colsample_bytree=1.0, max_bin=256, early_stopping_rounds=0, n_jobs=1)
    old.fit(tiny_dataset.x_train, tiny_dataset.y_train,
            tiny_dataset.x_validation, tiny_dataset.y_validation)
    old.save(tmp_path)
    info = json.loads((tmp_path / "model.json").read_text())
    for newer in ("features", "colsample_bytree", "max_bin"):
        del info["params"][newer]
    (tmp_path / "model.json").write_text(json.dumps(info))

    loaded = load_model(tmp_path)
    assert loaded.params["features"] == "raw"
    np.testing.assert_allclose(loaded.predict_proba(tiny_dataset.x_holdout),
                               old.predict_proba(tiny_dataset.x_holdout), atol=1e-6)


def test_the_transform_travels_with_the_saved_model(tiny_dataset, tmp_path):
    model, info = train("xgboost", tiny_dataset, n_estimators=10, max_depth=3, n_jobs=1)
    assert model.params["features"] == "hog"
    model.save(tmp_path, **info)
    loaded = load_model(tmp_path)
    assert loaded.params["features"] == "hog"
    np.testing.assert_allclose(loaded.predict_proba(tiny_dataset.x_holdout),
                               model.predict_proba(tiny_dataset.x_holdout), atol=1e-6)
    # ...and it is what the model sees: other features are refused, never mis-read.
    raw = load_model(tmp_path)
    raw.params["features"] = "raw"
    with pytest.raises(Exception, match=r"[Ff]eature"):
        raw.predict_proba(tiny_dataset.x_holdout)


@pytest.mark.slow
def test_the_cnn_barely_notices_a_small_shift(mnist):
    """Invariance: moving a clean digit by a pixel or two rarely changes the CNN's answer."""
    x_train, y_train, x_test, _, _ = mnist
    model = create_model("cnn", epochs=3, batch_size=64, width=16)
    model.fit(x_train[:4000], y_train[:4000], x_train[4000:4500], y_train[4000:4500])
    digits = x_test[:300]
    before = model.predict(digits)
    for rows, cols in ((1, 0), (0, -1), (2, 0), (-1, 2)):
        moved = np.roll(np.roll(digits, rows, axis=1), cols, axis=2)
        agreement = np.mean(model.predict(moved) == before)
        assert agreement >= 0.95, f"shift {rows, cols}: {agreement:.3f} unchanged"
