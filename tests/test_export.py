"""Inference forms: each family's export predicts what it was trained to, or is refused.

Tiny real models on genuine MNIST; the real converters (Keras' ONNX export,
XGBoost's UBJSON read by Treelite) and runtimes (onnxruntime, Treelite); a
real S3 registry. The one broken export is made by the real converter and
then damaged the way a converter bug would (one weight off), so the check
that refuses it is the one deploy runs.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from components.contract import EVALUATION_DIR, METADATA_FILE, PROMOTE, GateDecision
from components.deploy import deploy
from components.export import TOLERANCE, ExportError, export_checked, export_registered
from components.models import load_model
from components.scoring import evaluate_saved
from components.train import train

TINY = {
    "cnn": {"epochs": 1, "batch_size": 64, "width": 8},
    # Early stopping keeps a prefix of the trees: the export must keep exactly those.
    "xgboost": {"n_estimators": 60, "max_depth": 3, "learning_rate": 0.9,
                "early_stopping_rounds": 2},
    "baseline": {"max_iter": 100},
}


@pytest.fixture(scope="module", params=sorted(TINY))
def saved(request, tiny_dataset, tmp_path_factory):
    kind = request.param
    model, info = train(kind, tiny_dataset, **TINY[kind])
    directory = tmp_path_factory.mktemp(f"export-{kind}")
    model.save(directory, **info)
    return kind, model, directory


def test_each_family_exports_an_equivalent_inference_form(saved, tiny_dataset):
    kind, model, directory = saved
    holdout = tiny_dataset.x_holdout
    record = export_checked(directory, holdout)
    if kind == "baseline":  # its weights are plain numpy already: nothing to export
        assert record is None and load_model(directory).platform == "numpy"
        return
    exported = load_model(directory)
    assert exported.exported and exported.platform == record["runtime"]
    assert record["runtime"] == "onnxruntime_onnx"
    data = (directory / record["file"]).read_bytes()
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["checked_on"] == len(holdout) and record["max_abs_diff"] <= TOLERANCE
    # The framework's file is still there, and still what load_model(exported=False) gives.
    assert not load_model(directory, exported=False).exported
    expected, got = model.predict_proba(holdout), exported.predict_proba(holdout)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_array_equal(got.argmax(axis=1), expected.argmax(axis=1))
    np.testing.assert_allclose(got, expected, atol=TOLERANCE)
    # Single images (the server's usual request, TTA included) agree with batches.
    one_by_one = np.concatenate([exported.predict_proba(holdout[i:i + 1]) for i in range(8)])
    np.testing.assert_allclose(one_by_one, got[:8], atol=1e-5)
    exported.set_threads(1)  # the server caps threads per process
    np.testing.assert_allclose(exported.predict_proba(holdout[:8]), got[:8], atol=1e-6)
    if kind == "xgboost":
        assert exported.kept_rounds == model.kept_rounds < len(model.history["val_mlogloss"])


def perturb_onnx_exports(monkeypatch) -> None:
    """Keras' ONNX export, then one weight nudged: what a converter bug looks like."""
    import keras
    import onnx
    from onnx import numpy_helper

    original = keras.Model.export

    def export(self, filepath, *args, **kwargs):
        original(self, filepath, *args, **kwargs)
        graph = onnx.load(filepath)
        for tensor in graph.graph.initializer:
            weights = numpy_helper.to_array(tensor)
            if weights.dtype == np.float32 and weights.ndim == 4:  # a convolution kernel
                damaged = weights.copy()
                damaged.flat[0] += 0.5
                tensor.CopyFrom(numpy_helper.from_array(damaged, tensor.name))
                break
        onnx.save(graph, filepath)

    monkeypatch.setattr(keras.Model, "export", export)


def promotable(directory, dataset) -> GateDecision:
    """The model in ``directory`` laid out as deploy receives it, with a promote verdict."""
    evaluate_saved(directory, dataset).save(directory / EVALUATION_DIR)
    return GateDecision(decision=PROMOTE, reason="test promotion", challenger={"kind": "cnn"},
                        checks=[], policy={})


def test_a_broken_export_is_refused_and_production_is_untouched(tiny_dataset, registry,
                                                                 tmp_path, monkeypatch):
    model, info = train("cnn", tiny_dataset, **TINY["cnn"])
    champion = tmp_path / "champion"
    model.save(champion, **info)
    first = deploy(registry, champion, promotable(champion, tiny_dataset), {},
                   holdout=tiny_dataset.x_holdout)
    assert first["status"] == "promoted"
    assert registry.metadata(first["version"])["export"]["file"] == "model.onnx"
    pointer = registry.production()

    challenger = tmp_path / "challenger"
    model.save(challenger, **info)
    decision = promotable(challenger, tiny_dataset)
    decision.champion = {"version": first["version"]}
    perturb_onnx_exports(monkeypatch)
    with pytest.raises(ExportError, match=r"export \(onnxruntime_onnx\) refused: .* differ"):
        deploy(registry, challenger, decision, {}, holdout=tiny_dataset.x_holdout)
    assert registry.production() == pointer
    assert [row["version"] for row in registry.list()] == [first["version"]]
    assert not (challenger / "model.onnx").exists(), "a refused export must not stay behind"


def test_an_old_version_gets_its_export_and_production_follows(saved, tiny_dataset, registry,
                                                               tmp_path):
    kind, model, _ = saved
    old = tmp_path / "old"
    model.save(old)  # as promoted before exports existed: the framework's file only
    version = registry.promote(old, {"kind": kind, "metrics": {}}, "promoted before exports")
    if kind == "baseline":  # nothing to add: its numpy weights are served as they are
        pointer = registry.production()
        assert export_registered(registry, version, tiny_dataset.x_holdout) == {
            "version": version, "export": None, "changed": False}
        assert registry.production() == pointer
        return
    before = registry.production()
    served = tmp_path / "served-before"
    registry.download_production(before, served)
    assert not load_model(served).exported  # served through the framework until exported

    result = export_registered(registry, version, tiny_dataset.x_holdout)
    assert result["changed"] and result["export"]["checked_on"] == len(tiny_dataset.x_holdout)
    metadata = registry.metadata(version)
    name = result["export"]["file"]
    assert metadata["files"][name]["sha256"] == result["export"]["sha256"]
    after = registry.production()
    assert after.version == version and after.history == before.history
    assert after.metadata_sha256 != before.metadata_sha256  # servers see a change and reload
    served = tmp_path / "served-after"
    registry.download_production(after, served)  # checksums and the pointer agree
    assert (served / METADATA_FILE).is_file() and load_model(served).exported
    np.testing.assert_allclose(load_model(served).predict_proba(tiny_dataset.x_holdout[:20]),
                               model.predict_proba(tiny_dataset.x_holdout[:20]),
                               atol=TOLERANCE)
    again = export_registered(registry, version, tiny_dataset.x_holdout)
    assert not again["changed"] and registry.production() == after
