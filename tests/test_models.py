"""Model behaviour: each family learns real digits, and survives a save/load round trip."""

from __future__ import annotations

import numpy as np
import pytest

from components.models import ModelError, create_model, load_model, read_info
from components.train import train
from tests.conftest import TINY_PARAMS

# Chance is 10%; these models reach well past 70% on 600 digits.
MIN_TINY_ACCURACY = 0.7


@pytest.fixture(params=sorted(TINY_PARAMS))
def trained(request, tiny_models):
    """Each family's tiny model in turn: ``(kind, model, info, saved folder)``."""
    tiny = tiny_models[request.param]
    return request.param, tiny.model, tiny.info, tiny.directory


def test_models_learn_real_digits(trained, tiny_dataset):
    kind, model, info, _ = trained
    accuracy = np.mean(model.predict(tiny_dataset.x_holdout) == tiny_dataset.y_holdout)
    assert accuracy > MIN_TINY_ACCURACY, f"{kind}: {accuracy:.3f}"
    assert info["validation_accuracy"] > MIN_TINY_ACCURACY
    assert info["train_seconds"] > 0


def test_probabilities_are_distributions(trained, tiny_dataset):
    _, model, _, _ = trained
    proba = model.predict_proba(tiny_dataset.x_holdout[:50])
    assert proba.shape == (50, 10) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-4)


def test_save_load_round_trip_gives_identical_predictions(trained, tiny_dataset):
    kind, model, _, directory = trained
    loaded = load_model(directory)
    assert loaded.kind == kind
    np.testing.assert_allclose(loaded.predict_proba(tiny_dataset.x_holdout),
                               model.predict_proba(tiny_dataset.x_holdout), atol=1e-6)
    info = read_info(directory)
    assert info["params"]["seed"] == 0 and info["history"]


def test_training_curves_are_recorded(trained):
    kind, model, _, _ = trained
    key = {"cnn": "val_accuracy", "xgboost": "val_mlogloss", "baseline": "val_accuracy"}[kind]
    expected = {"cnn": TINY_PARAMS["cnn"]["epochs"],
                "xgboost": TINY_PARAMS["xgboost"]["n_estimators"], "baseline": 1}[kind]
    assert len(model.history[key]) == expected


def test_predictions_do_not_depend_on_batch_split(trained, tiny_dataset):
    _, model, _, _ = trained
    x = tiny_dataset.x_holdout[:64]
    whole = model.predict_proba(x)
    one_by_one = np.concatenate([model.predict_proba(x[i:i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(whole, one_by_one, atol=1e-5)


def test_early_stopped_xgboost_answers_single_images_with_the_kept_trees(tiny_dataset,
                                                                          tmp_path):
    # Single rows go through Treelite, batches through XGBoost: both must use only
    # the trees up to the best round, not every tree in the file.
    import xgboost

    model, _ = train("xgboost", tiny_dataset, n_estimators=80, max_depth=3,
                     learning_rate=0.9, early_stopping_rounds=2)
    assert 0 < model.kept_rounds < len(model.history["val_mlogloss"]), "no early stop"
    x = tiny_dataset.x_holdout[:8]
    one_by_one = np.concatenate([model.predict_proba(x[i:i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(one_by_one, model.predict_proba(x), atol=1e-5)
    model.save(tmp_path)
    every_tree = xgboost.Booster(model_file=str(tmp_path / model.filename)).inplace_predict(
        model.features(x[:1]))
    assert np.abs(every_tree - one_by_one[:1]).max() > 1e-4


def test_unknown_kind_and_parameters_are_rejected():
    with pytest.raises(ValueError, match="unknown model kind"):
        create_model("svm")
    from components.models import CNN

    with pytest.raises(ValueError, match="unknown parameters"):
        CNN(epochz=3)


def test_corrupt_weights_raise_a_model_error(trained, tmp_path):
    kind, model, _, _ = trained
    broken = tmp_path / "broken"
    model.save(broken)
    (broken / model.filename).write_bytes(b"not a model")
    with pytest.raises(ModelError, match=f"cannot load {kind}"):
        load_model(broken)
    (broken / "model.json").write_text('{"kind": "svm"}')
    with pytest.raises(ModelError, match="unknown model kind"):
        load_model(broken)


def test_cnn_validation_scores_the_members_average_it_saves(tiny_dataset):
    """Members train side by side, each on its own loss; what validation reports is the
    accuracy of their average, the one model that is saved and served."""
    import keras

    model = create_model("cnn", epochs=1, batch_size=64, width=8, members=2, tta=0)
    model.fit(tiny_dataset.x_train, tiny_dataset.y_train,
              tiny_dataset.x_validation, tiny_dataset.y_validation)
    served = model.predict_proba(tiny_dataset.x_validation, calibrated=False).argmax(axis=1)
    accuracy = np.mean(served == tiny_dataset.y_validation)
    assert model.history["val_accuracy"][-1] == pytest.approx(accuracy, abs=1e-6)
    members = [layer for layer in model._model.layers if isinstance(layer, keras.Sequential)]
    assert len(members) == 2
