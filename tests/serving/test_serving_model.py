"""Loading from the production pointer, hot swaps, refusals, a dead registry, batching."""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time

import numpy as np
import pytest

from components.registry import POINTER, Registry
from serving.batching import Batcher
from serving.model import DigitsModel, LoadedModel, make_registry
from serving.settings import ServeSettings
from tests.serving.helpers import app_config, make_app, promote, v2_body
from tests.waiting import wait_for

INFER = "/v2/models/digits/infer"


def put(registry: Registry, key: str, data: bytes) -> None:
    registry.client.put_object(registry.bucket, key, io.BytesIO(data), len(data))


def probabilities(response) -> np.ndarray:
    tensor = next(o for o in response.json["outputs"] if o["name"] == "probabilities")
    return np.asarray(tensor["data"]).reshape(tensor["shape"])


def reloads(server, result: str) -> float:
    return server.metrics.reloads.labels(result)._value.get()


def test_not_ready_until_production_exists_then_swaps(s3_server, make_registry, trained,
                                                      tiny_dataset):
    registry = make_registry()
    app, server = make_app(s3_server, registry)
    client = app.test_client()
    model = server.model
    try:
        assert not model.load()
        assert not model.ready
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").json == {"ready": False}
        assert client.get("/v2/health/ready").status_code == 503
        assert client.get("/v2/models/digits/ready").status_code == 503
        not_ready = client.post(INFER, json=v2_body(tiny_dataset.x_holdout[:1]))
        assert not_ready.status_code == 503 and "not ready" in not_ready.json["error"]
        assert client.get("/v2/models/digits").json["versions"] == []

        first = promote(registry, trained["xgboost"])
        assert model.load()
        assert model.ready and model.current.version == first
        images = tiny_dataset.x_holdout[:8]
        answer = client.post(INFER, json=v2_body(images))
        np.testing.assert_allclose(probabilities(answer), trained["xgboost"].proba(images),
                                   atol=1e-6)
        old_dir = model.current.directory

        second = promote(registry, trained["baseline"], "better")
        held = model.current  # a request that started before the swap
        assert model.load()
        assert model.current.version == second and model.current.kind == "baseline"
        assert not old_dir.exists(), "the replaced version's files are cleaned up"
        # The old model object still answers for whoever holds it.
        np.testing.assert_allclose(model.predict(images, held).probabilities,
                                   trained["xgboost"].proba(images), atol=1e-6)
        answer = client.post(INFER, json=v2_body(images))
        assert answer.json["model_version"] == second
        np.testing.assert_allclose(probabilities(answer), trained["baseline"].proba(images),
                                   atol=1e-6)
        assert not model.load(), "an unchanged pointer is a no-op"
        assert reloads(server, "success") == 2

        registry.rollback("bad idea")
        assert model.load() and model.current.version == first
    finally:
        model.stop()


@pytest.fixture
def serving_baseline(s3_server, make_registry, trained):
    """An app serving the baseline model, and its registry, for corrupting."""
    registry = make_registry()
    version = promote(registry, trained["baseline"])
    app, server = make_app(s3_server, registry)
    assert server.model.wait_ready(30)
    yield app, server, registry, version
    server.model.stop()


def assert_still_serving(app, server, version, trained, images):
    assert server.model.current.version == version
    answer = app.test_client().post(INFER, json=v2_body(images))
    assert answer.status_code == 200 and answer.json["model_version"] == version
    np.testing.assert_allclose(probabilities(answer), trained["baseline"].proba(images),
                               atol=1e-6)
    assert app.test_client().get("/v2/health/ready").status_code == 200


def test_corrupted_file_is_refused(serving_baseline, trained, tiny_dataset, caplog):
    app, server, registry, version = serving_baseline
    bad = promote(registry, trained["xgboost"])
    put(registry, f"versions/{bad}/model.ubj", b"\x00garbage" * 100)  # after the checks
    with caplog.at_level(logging.ERROR, logger="serving.model"):
        assert not server.model.load()
    assert_still_serving(app, server, version, trained, tiny_dataset.x_holdout[:4])
    assert "sha256" in server.model.last_error
    assert reloads(server, "failure") == 1
    assert any("refused production model" in r.getMessage() and bad in r.getMessage()
               for r in caplog.records)
    # Refused versions are retried with back-off, not on every poll...
    assert not server.model.load()
    assert reloads(server, "failure") == 1
    # ...and immediately when forced; still refused.
    assert not server.model.load(force=True)
    assert reloads(server, "failure") == 2


def test_unloadable_weights_are_refused(serving_baseline, trained, tiny_dataset, tmp_path):
    app, server, registry, version = serving_baseline
    # Checksums are fine (the registry verified them); the weights are garbage.
    (tmp_path / "model.json").write_text(json.dumps({"kind": "xgboost", "params": {}}))
    (tmp_path / "model.ubj").write_bytes(b"not an xgboost model" * 10)
    bad = registry.promote(tmp_path, {"kind": "xgboost", "metrics": {}}, "garbage")
    assert not server.model.load()
    assert bad in server.model.last_error and "cannot load" in server.model.last_error
    assert_still_serving(app, server, version, trained, tiny_dataset.x_holdout[:4])


def test_pointer_checksum_mismatch_is_refused(serving_baseline, trained, tiny_dataset):
    app, server, registry, version = serving_baseline
    good = promote(registry, trained["xgboost"])
    pointer = json.loads(registry.client.get_object(registry.bucket, POINTER).read())
    assert pointer["version"] == good
    pointer["metadata_sha256"] = "0" * 64
    put(registry, POINTER, json.dumps(pointer).encode())
    assert not server.model.load()
    assert "does not match the production pointer" in server.model.last_error
    assert_still_serving(app, server, version, trained, tiny_dataset.x_holdout[:4])


def test_tampered_metadata_is_refused(serving_baseline, trained, tiny_dataset):
    app, server, registry, version = serving_baseline
    bad = promote(registry, trained["xgboost"])
    key = f"versions/{bad}/metadata.json"
    meta = json.loads(registry.client.get_object(registry.bucket, key).read())
    meta["kind"] = "baseline"
    put(registry, key, json.dumps(meta).encode())
    assert not server.model.load()
    assert_still_serving(app, server, version, trained, tiny_dataset.x_holdout[:4])


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_registry_never_takes_serving_down(serving_baseline, trained, tiny_dataset,
                                                       s3_server):
    app, server, registry, version = serving_baseline
    dead = ServeSettings(**app_config(s3_server, registry, registry_timeout_s=1,
                                      s3_endpoint=f"127.0.0.1:{closed_port()}"))
    server.model._registry = make_registry(dead)
    started = time.monotonic()
    assert not server.model.load()
    assert time.monotonic() - started < 10
    assert server.metrics.registry_errors._value.get() == 1
    assert "registry" in server.model.last_error
    assert_still_serving(app, server, version, trained, tiny_dataset.x_holdout[:4])


def test_server_starts_without_a_registry(s3_server, make_registry):
    """No S3 settings at all, or a dead store: live, not ready, no exception."""
    app, server = make_app(s3_server, make_registry(), s3_endpoint=None)
    try:
        assert not server.model.load()
        client = app.test_client()
        assert client.get("/v2/health/live").status_code == 200
        assert client.get("/v2/health/ready").status_code == 503
        assert "no S3 store configured" in server.model.last_error
    finally:
        server.model.stop()


def test_poller_picks_up_a_new_version(s3_server, make_registry, trained):
    registry = make_registry()
    first = promote(registry, trained["baseline"])
    _app, server = make_app(s3_server, registry, poll_interval_s=0.2)
    try:
        assert server.model.wait_ready(30)
        assert server.model.current.version == first
        second = promote(registry, trained["xgboost"])
        wait_for(lambda: server.model.current.version == second, 20,
                 "the poller to serve the newly promoted version")
    finally:
        server.model.stop()


def test_no_request_mixes_versions_during_swaps(s3_server, make_registry, trained,
                                                tiny_dataset):
    """In-process: threads hammer the app while the pointer flips back and forth.

    Four requests at once in the worker, so concurrent requests also go through the batcher.
    """
    registry = make_registry()
    versions = {promote(registry, trained["baseline"]): "baseline"}
    app, server = make_app(s3_server, registry, threads=4, concurrency=4)
    assert server.model._batcher is not None
    assert server.model.wait_ready(30)
    versions[promote(registry, trained["xgboost"])] = "xgboost"
    images = tiny_dataset.x_holdout[:5]
    expected = {kind: trained[kind].proba(images) for kind in ("baseline", "xgboost")}
    body = json.dumps(v2_body(images)).encode()
    failures: list[str] = []
    seen: set[str] = set()
    stop = threading.Event()

    def client_loop() -> None:
        client = app.test_client()
        while not stop.is_set():
            response = client.post(INFER, data=body, content_type="application/json")
            if response.status_code != 200:
                failures.append(f"status {response.status_code}")
                continue
            version = response.json["model_version"]
            seen.add(version)
            if response.headers["X-Model-Version"] != version:
                failures.append("header and body disagree")
            if not np.allclose(probabilities(response), expected[versions[version]], atol=1e-6):
                failures.append(f"answer of {version} is not that model's")

    threads = [threading.Thread(target=client_loop) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for index in range(6):
            time.sleep(0.05)
            assert server.model.load(force=True)
            registry.set_production(list(versions)[index % 2], "flip")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        server.model.stop()
    assert not failures, failures[:5]
    assert seen == set(versions)


def test_batcher_groups_by_model_and_returns_each_its_rows(trained, tiny_dataset, tmp_path):
    loaded = {
        kind: LoadedModel(kind, kind, trained[kind].model, {}, "", 0.0, tmp_path)
        for kind in ("baseline", "xgboost")
    }
    batcher = Batcher(max_rows=64)
    images = tiny_dataset.x_holdout[:40]
    errors: list[str] = []

    def worker(index: int) -> None:
        kind = ("baseline", "xgboost")[index % 2]
        chunk = images[index % 30:index % 30 + 1 + index % 7]
        for _ in range(20):
            got = batcher.predict(loaded[kind], chunk)
            if not np.allclose(got, trained[kind].proba(chunk), atol=1e-6):
                errors.append(f"{kind} rows wrong")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors


def test_batcher_passes_errors_to_their_requests(tmp_path):
    class Broken:
        kind = "broken"

        def predict_proba(self, images):
            raise ValueError("boom")

    loaded = LoadedModel("v", "broken", Broken(), {}, "", 0.0, tmp_path)
    batcher = Batcher()
    with pytest.raises(ValueError, match="boom"):
        batcher.predict(loaded, np.zeros((1, 28, 28), np.uint8))
    assert not batcher._busy, "the batcher is free again after a failure"


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("DIGITS_POLL_INTERVAL_S", "2.5")
    monkeypatch.setenv("DIGITS_MAX_BODY_BYTES", "1234")
    monkeypatch.setenv("DIGITS_MODEL_NAME", "mnist")
    monkeypatch.setenv("DIGITS_WORKERS", "3")
    settings = ServeSettings()
    assert (settings.poll_interval_s, settings.max_body_bytes, settings.model_name,
            settings.workers) == (2.5, 1234, "mnist", 3)
    assert DigitsModel(settings).name == "mnist"


@pytest.mark.slow
def test_a_keras_cnn_serves_too(s3_server, make_registry, tiny_dataset, tmp_path):
    from components.models import create_model

    model = create_model("cnn", epochs=1, batch_size=64)
    model.fit(tiny_dataset.x_train, tiny_dataset.y_train,
              tiny_dataset.x_validation[:100], tiny_dataset.y_validation[:100])
    model.save(tmp_path)
    registry = make_registry()
    version = registry.promote(tmp_path, {"kind": "cnn", "metrics": {}}, "cnn")
    app, server = make_app(s3_server, registry)
    try:
        assert server.model.wait_ready(60), server.model.last_error
        assert server.model.current.platform == "keras"
        images = tiny_dataset.x_holdout[:6]
        answer = app.test_client().post(INFER, json=v2_body(images))
        assert answer.json["model_version"] == version
        np.testing.assert_allclose(probabilities(answer), model.predict_proba(images),
                                   atol=1e-5)
    finally:
        server.model.stop()
