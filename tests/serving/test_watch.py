"""What the server sees, recorded (``serving.watch``): metrics per version, payload windows.

A real model with its training reference, promoted to the real S3 store and
served by the app; the metrics are read from the app's own exposition text,
the payload windows back from the bucket as the pipeline identity.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, Summary, generate_latest

from components.train import reference_for
from components.watch import (
    CONFIDENCE_BUCKETS,
    PAYLOADS,
    REFERENCE_FILE,
    VERDICT_KEY,
    Reference,
    Window,
    center_of_mass,
    ink,
)
from serving.metrics import observe_counts
from serving.watch import DEFER_BELOW, SUMMARY_BATCH, bucket_counts
from tests.serving.helpers import make_app, operator_registry, v2_body


def sample_value(text: str, name: str, **labels: str) -> float:
    """One sample of the exposition text; 0 when absent."""
    for found, value in re.findall(rf"^{name}{{([^}}]*)}} (\S+)$", text, re.M):
        if dict(re.findall(r'(\w+)="([^"]*)"', found)) == labels:
            return float(value)
    return 0.0


def test_bulk_observation_equals_observing_each_value():
    rng = np.random.default_rng(0)
    # Multiples of 1/64: every sum is exact in any order. Bounds themselves, and +Inf.
    values = np.concatenate([rng.integers(0, 80, 500) / 64, [0.5, 0.9, 1.0, 1.5]])
    one, bulk = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("h", "h", buckets=CONFIDENCE_BUCKETS, registry=one)
    s1 = Summary("s", "s", registry=one)
    for value in values:
        h1.observe(value)
        s1.observe(value)
    h2 = Histogram("h", "h", buckets=CONFIDENCE_BUCKETS, registry=bulk)
    s2 = Summary("s", "s", registry=bulk)
    observe_counts(h2, bucket_counts(values, np.asarray(CONFIDENCE_BUCKETS)), values.sum())
    observe_counts(s2, len(values), values.sum())
    strip = re.compile(rb"^\w+_created .*$", re.M)  # creation times differ
    assert strip.sub(b"", generate_latest(one)) == strip.sub(b"", generate_latest(bulk))
    with pytest.raises(ValueError, match="counts for"):
        observe_counts(h2, [1, 2], 3.0)


@pytest.fixture(scope="module")
def referenced(trained, tiny_dataset, tmp_path_factory):
    """The XGBoost test model with its drift reference, as the train stage stores it."""
    directory = tmp_path_factory.mktemp("with-reference") / "model"
    shutil.copytree(trained["xgboost"].directory, directory)
    reference_for(trained["xgboost"].model, tiny_dataset).save(directory)
    return directory


def test_every_prediction_is_recorded_by_version(s3_server, make_registry, trained,
                                                 referenced, tiny_dataset):
    registry = make_registry()
    version = registry.promote(referenced, {"kind": "xgboost", "metrics": {}}, "test")
    app, server = make_app(s3_server, registry, payload_sample=1.0, payload_window=25)
    try:
        assert server.model.wait_ready(30), server.model.last_error
        assert server.model.current.reference is not None
        client = app.test_client()
        # Eight small requests fill the tally's buffer, a large one counts itself, the
        # next small one counts the full buffer, and the flush counts what still waits.
        sizes = (*[8] * 8, SUMMARY_BATCH // 3, 8, 1, 3)
        assert sum(sizes[:8]) == SUMMARY_BATCH and SUMMARY_BATCH // 3 >= DEFER_BELOW
        count = sum(sizes)
        images = tiny_dataset.x_holdout[:count]
        for start, size in zip(np.cumsum((0, *sizes[:-1])), sizes, strict=True):
            answer = client.post("/v2/models/digits/infer",
                                 json=v2_body(images[start:start + size]))
            assert answer.status_code == 200
        server.model.watch.flush()
        text = server.metrics.render()[0].decode()
    finally:
        server.model.stop()
    proba = trained["xgboost"].proba(images)
    predicted = np.bincount(proba.argmax(axis=1), minlength=10)
    for digit in range(10):
        assert sample_value(text, "digits_predicted_class_total", version=version,
                            **{"class": str(digit)}) == predicted[digit]
    confidence = proba.max(axis=1)
    assert sample_value(text, "digits_prediction_confidence_count", version=version) == count
    assert sample_value(text, "digits_prediction_confidence_sum", version=version) == (
        pytest.approx(confidence.sum(), rel=1e-5))
    assert sample_value(text, "digits_prediction_confidence_bucket", version=version,
                        le="0.9") == (confidence <= 0.9).sum()
    assert sample_value(text, "digits_input_ink_sum", version=version) == pytest.approx(
        ink(images).sum(), rel=1e-5)
    assert sample_value(text, "digits_input_center_sum", version=version,
                        axis="row") == pytest.approx(center_of_mass(images)[:, 0].sum(), rel=1e-5)
    reference = Reference.load(referenced)
    for component in range(reference.components.shape[0]):
        assert sample_value(text, "digits_input_embedding_count", version=version,
                            component=str(component)) == count
        assert sample_value(text, "digits_input_embedding_sum", version=version,
                            component=str(component)) == pytest.approx(
            reference.embed(images)[:, component].sum(), rel=1e-4, abs=1e-3)
    # Every image sampled: windows of 25 as written, the rest at stop; read back in order.
    operator = operator_registry(s3_server, registry.bucket)
    keys = sorted(obj.object_name for obj in operator.client.list_objects(
        registry.bucket, prefix=f"{PAYLOADS}/{version}/"))
    windows = [Window.from_bytes(operator.read(key), key) for key in keys]
    joined = Window.concat(windows)
    assert np.array_equal(joined.images, images)
    assert np.array_equal(joined.predicted, proba.argmax(axis=1))
    assert np.allclose(joined.confidence, confidence, atol=1e-6)


def test_payload_sampling_keeps_its_hourly_cap(s3_server, make_registry, referenced,
                                               tiny_dataset):
    registry = make_registry()
    version = registry.promote(referenced, {"kind": "xgboost", "metrics": {}}, "test")
    app, server = make_app(s3_server, registry, payload_sample=1.0, payload_max_per_hour=10)
    try:
        assert server.model.wait_ready(30), server.model.last_error
        client = app.test_client()
        for _ in range(3):
            assert client.post("/v2/models/digits/infer",
                               json=v2_body(tiny_dataset.x_holdout[:8])).status_code == 200
    finally:
        server.model.stop()
    text = server.metrics.render()[0].decode()
    assert sample_value(text, "digits_payload_images_total", result="written") == 10
    assert sample_value(text, "digits_payload_images_total", result="capped") == 14
    operator = operator_registry(s3_server, registry.bucket)
    [key] = [obj.object_name for obj in operator.client.list_objects(
        registry.bucket, prefix=f"{PAYLOADS}/{version}/")]
    assert len(Window.from_bytes(operator.read(key))) == 10


def test_a_server_without_sampling_or_reference_still_records_metrics(
        s3_server, make_registry, trained, tiny_dataset):
    registry = make_registry()
    version = registry.promote(trained["baseline"].directory,
                               {"kind": "baseline", "metrics": {}}, "no reference")
    app, server = make_app(s3_server, registry, payload_sample=0.0)
    try:
        assert server.model.wait_ready(30), server.model.last_error
        assert server.model.current.reference is None
        assert app.test_client().post("/v2/models/digits/infer",
                                      json=v2_body(tiny_dataset.x_holdout[:3])).status_code == 200
    finally:
        server.model.stop()
    text = server.metrics.render()[0].decode()
    assert sample_value(text, "digits_prediction_confidence_count", version=version) == 3
    assert "digits_input_embedding_count{" not in text
    operator = operator_registry(s3_server, registry.bucket)
    assert not list(operator.client.list_objects(registry.bucket, prefix=f"{PAYLOADS}/"))


def test_the_monitor_verdict_becomes_gauges(s3_server, make_registry, referenced):
    registry = make_registry()
    version = registry.promote(referenced, {"kind": "xgboost", "metrics": {}}, "test")
    _app, server = make_app(s3_server, registry)
    try:
        operator = operator_registry(s3_server, registry.bucket)
        verdict = {"version": version, "drift": True, "timestamp": 1_700_000_000,
                   "tests": {"embedding_mmd": {"p_value": 0.0004, "statistic": 0.2}},
                   "feedback_accuracy": 0.75}
        operator._put(VERDICT_KEY, json.dumps(verdict).encode())
        server.model.watch.flush()
        text = server.metrics.render()[0].decode()
        assert sample_value(text, "digits_drift_detected", version=version) == 1
        assert sample_value(text, "digits_drift_p_value", version=version,
                            test="embedding_mmd") == 0.0004
        assert sample_value(text, "digits_monitor_feedback_accuracy", version=version) == 0.75
        # A garbled verdict is ignored, never a crash of the worker's thread.
        operator._put(VERDICT_KEY, b"{not json")
        server.model.watch._verdict_due = 0
        server.model.watch.flush()
    finally:
        server.model.stop()


def test_a_broken_reference_costs_only_the_embedding(s3_server, make_registry, referenced,
                                                     tmp_path, tiny_dataset):
    directory = tmp_path / "model"
    shutil.copytree(referenced, directory)
    (directory / REFERENCE_FILE).write_text('{"format": 1, "pca": {}}')
    registry = make_registry()
    registry.promote(directory, {"kind": "xgboost", "metrics": {}}, "broken reference")
    app, server = make_app(s3_server, registry)
    try:
        assert server.model.wait_ready(30), server.model.last_error
        assert server.model.current.reference is None
        assert app.test_client().post("/v2/models/digits/infer",
                                      json=v2_body(tiny_dataset.x_holdout[:2])).status_code == 200
    finally:
        server.model.stop()


def test_digits_serve_imports_no_numpy_before_it_sizes_thread_pools():
    """``digits serve`` sets OMP_NUM_THREADS for the workers it forks; numpy's BLAS sizes
    its pool when first imported, so the main process must not import numpy before then
    (the watch's per-request matrix product would otherwise run on every core)."""
    import subprocess
    import sys

    check = subprocess.run([sys.executable, "-c", "import sys, serving.cli; "
                            "print('numpy' in sys.modules)"], capture_output=True, text=True,
                           check=True, timeout=60)
    assert check.stdout.strip() == "False"
