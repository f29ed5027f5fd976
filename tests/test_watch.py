"""The drift reference and payload windows (``components.watch``): stored, read back, checked.

Both are read from the registry bucket, where a leaked serving key can write
payloads: whatever does not parse as what it claims to be is refused with a
clear error, never unpickled or half-used.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.models import create_model, load_model
from components.train import run_train
from components.watch import (
    REFERENCE_FILE,
    Reference,
    WatchError,
    Window,
    build_reference,
    center_of_mass,
    ink,
)


@pytest.fixture(scope="module")
def reference(tiny_dataset) -> Reference:
    model = create_model("baseline", max_iter=100)
    model.fit(tiny_dataset.x_train, tiny_dataset.y_train,
              tiny_dataset.x_validation[:100], tiny_dataset.y_validation[:100])
    return build_reference(tiny_dataset.x_train, tiny_dataset.y_train,
                           tiny_dataset.x_validation,
                           model.predict_proba(tiny_dataset.x_validation))


def test_the_statistics_of_simple_images():
    blank = np.zeros((1, 28, 28), np.uint8)
    bar = blank.copy()
    bar[0, 4:10, 20] = 255  # rows 4..9, column 20
    assert ink(np.concatenate([blank, bar])).tolist() == pytest.approx([0, 6 / 784])
    assert center_of_mass(np.concatenate([blank, bar])).tolist() == [[13.5, 13.5], [6.5, 20]]


def test_a_reference_round_trips_and_embeds_as_stored(reference, tiny_dataset, tmp_path):
    assert reference.components.shape == (8, 784)
    assert reference.predicted_counts.sum() == len(tiny_dataset.x_validation)
    assert reference.label_priors.sum() == pytest.approx(1)
    # Standardised on the training digits: near mean 0, deviation 1 there.
    train = reference.embed(tiny_dataset.x_train)
    assert np.abs(train.mean(axis=0)).max() < 0.2 and np.allclose(train.std(axis=0), 1, atol=0.2)
    reference.save(tmp_path)
    again = Reference.load(tmp_path)
    assert np.allclose(again.embed(tiny_dataset.x_holdout), reference.embed(tiny_dataset.x_holdout),
                       atol=1e-3)
    assert np.allclose(again.embedding, reference.embedding, atol=1e-3)
    assert Reference.load(tmp_path / "nowhere") is None


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.update(format=99), "unknown format"),
    (lambda d: d["pca"].update(mean=[0.0] * 10), "pca.mean"),
    (lambda d: d["pca"].update(scale=[0.0] * 8), "positive"),
    (lambda d: d["sample"].update(confidence=[0.5] * 3), "too small"),
    (lambda d: d["sample"].update(ink=[float("nan")] * len(d["sample"]["ink"])), "finite"),
    (lambda d: d.pop("pca"), "malformed"),
])
def test_a_damaged_reference_is_refused(reference, damage, message):
    data = json.loads(reference.to_json())
    damage(data)
    with pytest.raises(WatchError, match=message):
        Reference.from_json(json.dumps(data))
    with pytest.raises(WatchError, match="malformed"):
        Reference.from_json("[1, 2]")


def test_windows_round_trip_and_refuse_what_they_are_not(tiny_dataset):
    images = tiny_dataset.x_holdout[:7]
    window = Window("v1", images, np.arange(7) % 10, np.linspace(0.5, 1, 7, dtype=np.float32),
                    np.arange(7.0) + 1e9)
    back = Window.from_bytes(window.to_bytes(), "k")
    assert back.version == "v1" and np.array_equal(back.images, images)
    assert np.array_equal(back.predicted, window.predicted)
    joined = Window.concat([Window.from_bytes(window.to_bytes()), back])
    assert len(joined) == 14 and [len(w) for w in joined.split(5)] == [5, 5]
    bad = Window("v1", images, np.full(7, 12), window.confidence, window.times)
    for data in (b"junk", bad.to_bytes()):
        with pytest.raises(WatchError, match="payload window k"):
            Window.from_bytes(data, "k")


def test_the_train_stage_stores_the_reference_with_the_model(tiny_dataset, tmp_path):
    tiny_dataset.save(tmp_path / "dataset")
    run_train("baseline", tmp_path / "dataset", tmp_path / "model", max_iter=50)
    stored = Reference.load(tmp_path / "model")
    assert (tmp_path / "model" / REFERENCE_FILE).exists() and stored is not None
    assert stored.predicted_counts.sum() == len(tiny_dataset.x_validation)
    assert load_model(tmp_path / "model").kind == "baseline"  # the model is untouched


def test_the_servers_one_product_summary_equals_the_definitions(reference, tiny_dataset):
    from components.watch import summarise

    images = np.concatenate([tiny_dataset.x_holdout[:50], np.zeros((1, 28, 28), np.uint8)])
    mass, centre, embedding = summarise(images, reference)
    assert np.allclose(mass, ink(images), rtol=1e-5, atol=1e-7)
    assert np.allclose(centre, center_of_mass(images), atol=1e-3)
    assert np.allclose(embedding, reference.embed(images), atol=1e-3)
    plain = summarise(images)
    assert plain[2] is None and np.allclose(plain[1], centre)


def test_payload_sampling_keeps_its_rate():
    from serving.settings import ServeSettings
    from serving.watch import Watch

    watch = Watch(ServeSettings(payload_sample=0.25, payload_max_per_hour=10**6), None,
                  lambda: None)
    kept = total = 0
    for size in [1, 3, 7, 64] * 60:
        chosen = watch._sample(size)
        if chosen is not None:
            assert len(set(chosen.tolist())) == len(chosen) and chosen.max() < size
            kept += len(chosen)
        total += size
    # Binomial(4500, 0.25): mean 1125, standard deviation 29; six of them either side.
    assert abs(kept - total * 0.25) < 6 * np.sqrt(total * 0.25 * 0.75)
