"""POST /feedback through the real app into a real S3 store, and back out for training."""

from __future__ import annotations

import io
import json
import threading

import numpy as np
import pytest

from components.feedback import PREFIX, FeedbackStore, load_feedback
from serving.imaging import image_to_mnist
from tests.serving.helpers import make_app, png_bytes, promote


@pytest.fixture
def feedback_app(s3_server, make_registry, trained):
    """A fresh bucket per test, so every count below is exact."""
    registry = make_registry()
    version = promote(registry, trained["xgboost"])
    app, server = make_app(s3_server, registry, feedback_rate_limit="1000/minute")
    assert server.model.wait_ready(30), server.model.last_error
    yield app, app.test_client(), registry, version
    server.model.stop()


def stored(registry) -> list:
    return load_feedback(registry)


def test_json_feedback_lands_under_feedback_with_what_the_model_saw(feedback_app,
                                                                    tiny_dataset):
    _, client, registry, version = feedback_app
    image = tiny_dataset.x_holdout[0]
    response = client.post("/feedback", json={
        "pixels": image.tolist(), "label": int(tiny_dataset.y_holdout[0]),
        "predicted": 3, "model_version": version})
    assert response.status_code == 201, response.json
    body = response.json
    assert body["stored"] == f"{PREFIX}/{body['id']}.json"
    assert body["agreed"] == ("yes" if tiny_dataset.y_holdout[0] == 3 else "no")
    item, = stored(registry)
    assert np.array_equal(item.image, image)
    assert item.label == tiny_dataset.y_holdout[0] and item.predicted == 3
    assert item.model_version == version and item.source == "api"
    assert item.address == "127.0.0.1" and item.sha256 == body["sha256"]
    metrics = client.get("/metrics").get_data(as_text=True)
    assert f'digits_feedback_total{{agreed="{body["agreed"]}"}} 1.0' in metrics


def test_the_pages_form_is_converted_like_predict(feedback_app, tiny_dataset):
    _, client, registry, _ = feedback_app
    drawing = 255 - np.kron(tiny_dataset.x_holdout[1], np.ones((10, 10), dtype=np.uint8))
    png = png_bytes(drawing)
    response = client.post("/feedback", data={
        "image": (io.BytesIO(png), "drawing.png"), "label": "7"},
        content_type="multipart/form-data")
    assert response.status_code == 201, response.json
    assert response.json["agreed"] == "unknown"
    item, = stored(registry)
    assert item.source == "page" and item.label == 7 and item.predicted is None
    assert np.array_equal(item.image, image_to_mnist(png))


def test_concurrent_posts_all_survive(feedback_app, tiny_dataset):
    app, _, registry, _ = feedback_app
    threads, per_thread, statuses = 6, 5, []
    lock = threading.Lock()

    def post(offset: int) -> None:
        client = app.test_client()
        for i in range(per_thread):
            index = offset * per_thread + i
            response = client.post("/feedback", json={
                "pixels": tiny_dataset.x_train[index].tolist(),
                "label": int(tiny_dataset.y_train[index])})
            with lock:
                statuses.append(response.status_code)

    workers = [threading.Thread(target=post, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert statuses == [201] * threads * per_thread
    items = stored(registry)
    assert len(items) == threads * per_thread
    expected = {tuple(tiny_dataset.x_train[i].ravel()) for i in range(threads * per_thread)}
    assert {tuple(item.image.ravel()) for item in items} == expected


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"label": 3}, 400, "feedback needs 'pixels'"),
    ({"pixels": [0] * 784}, 400, "feedback needs 'pixels'"),
    ({"pixels": [0] * 784, "label": 10}, 400, "'label' must be a whole number 0..9"),
    ({"pixels": [0] * 784, "label": "3"}, 400, "'label' must be a whole number 0..9"),
    ({"pixels": [0] * 784, "label": True}, 400, "'label' must be a whole number 0..9"),
    ({"pixels": [0] * 784, "label": 3, "predicted": -1}, 400, "'predicted' must be"),
    ({"pixels": [0] * 783, "label": 3}, 400, "784"),
    ({"pixels": [256] * 784, "label": 3}, 400, "0..255"),
    ({"pixels": [[0] * 784, [0] * 784], "label": 3}, 413, "limit"),
    ({"pixels": [0] * 784, "label": 3, "model_version": 5}, 400, "'model_version'"),
])
def test_bad_feedback_is_refused_and_nothing_is_stored(feedback_app, body, status, message):
    _, client, registry, _ = feedback_app
    response = client.post("/feedback", json=body)
    assert response.status_code == status, response.json
    assert message in response.json["error"]
    assert stored(registry) == []


def test_bad_forms_and_content_types_are_refused(feedback_app, tiny_dataset):
    _, client, registry, _ = feedback_app
    png = png_bytes(255 - tiny_dataset.x_holdout[0])
    no_image = client.post("/feedback", data={"label": "3"}, content_type="multipart/form-data")
    assert no_image.status_code == 400 and "'image' file" in no_image.json["error"]
    bad_label = client.post("/feedback", data={"image": (io.BytesIO(png), "d.png"),
                                               "label": "seven"},
                            content_type="multipart/form-data")
    assert bad_label.status_code == 400 and "'label'" in bad_label.json["error"]
    not_an_image = client.post("/feedback", data={"image": (io.BytesIO(b"nope"), "d.png"),
                                                  "label": "3"},
                               content_type="multipart/form-data")
    assert not_an_image.status_code == 400
    text = client.post("/feedback", data="3", content_type="text/plain")
    assert text.status_code == 415
    assert stored(registry) == []


def test_an_unreachable_store_is_a_503_not_a_500(s3_server, make_registry, trained,
                                                 tiny_dataset):
    registry = make_registry()
    promote(registry, trained["xgboost"])
    app, server = make_app(s3_server, registry)
    assert server.model.wait_ready(30)
    try:
        server.model._registry = type(registry)(  # the same bucket behind a closed port
            _closed_client(), registry.bucket)
        response = app.test_client().post("/feedback", json={
            "pixels": tiny_dataset.x_holdout[0].tolist(), "label": 1})
        assert response.status_code == 503
        assert "try again later" in response.json["error"]
    finally:
        server.model.stop()


def _closed_client():
    import socket

    import urllib3
    from minio import Minio

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=1, read=1),
                               retries=urllib3.Retry(total=0))
    return Minio(f"127.0.0.1:{port}", "k", "s", secure=False, region="us-east-1",
                 http_client=http)


def test_purge_deletes_for_good(feedback_app, tiny_dataset):
    _, client, registry, version = feedback_app
    for index, model_version in ((0, version), (1, "other"), (2, version)):
        assert client.post("/feedback", json={
            "pixels": tiny_dataset.x_holdout[index].tolist(), "label": 1,
            "model_version": model_version}).status_code == 201
    store = FeedbackStore(registry)
    doomed = store.select(model_version=version)
    assert len(doomed) == 2
    assert store.purge([key for key, _ in doomed]) == 2
    left, = stored(registry)
    assert left.model_version == "other"
    assert json.loads(registry.read(store.items()[0][0]))["model_version"] == "other"


def test_one_client_cannot_flood_the_bucket(s3_server, make_registry, trained, tiny_dataset):
    registry = make_registry()
    promote(registry, trained["xgboost"])
    app, server = make_app(s3_server, registry, feedback_rate_limit="3/minute")
    assert server.model.wait_ready(30)
    try:
        client = app.test_client()
        body = {"pixels": tiny_dataset.x_holdout[0].tolist(), "label": 1}
        assert [client.post("/feedback", json=body).status_code for _ in range(3)] == [201] * 3
        refused = client.post("/feedback", json=body)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
        assert "error" in refused.json
        other = client.post("/feedback", json=body, environ_base={"REMOTE_ADDR": "10.0.0.2"})
        assert other.status_code == 201  # the limit is per client, not global
        assert len(stored(registry)) == 4
        assert client.post("/predict", json={"pixels": body["pixels"]}).status_code == 200
    finally:
        server.model.stop()


def test_an_oversized_body_is_a_413_and_stores_nothing(s3_server, make_registry, trained):
    registry = make_registry()
    promote(registry, trained["xgboost"])
    app, server = make_app(s3_server, registry, max_body_bytes=20_000)
    assert server.model.wait_ready(30)
    try:
        body = {"pixels": [0] * 784, "label": 1, "model_version": "x" * 30_000}
        response = app.test_client().post("/feedback", json=body)
        assert response.status_code == 413 and "DIGITS_MAX_BODY_BYTES" in response.json["error"]
        assert stored(registry) == []
    finally:
        server.model.stop()
