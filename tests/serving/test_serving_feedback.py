"""POST /feedback through the real app into a real S3 store, and back out for training.

Also what keeps it from being an open door: JSON only (no cross-site forms),
foreign browser Origins refused, a token for API clients when one is set, and
no client address stored, only its keyed hash.
"""

from __future__ import annotations

import base64
import io
import json
import threading

import numpy as np
import pytest
from pydantic import SecretStr

from components.feedback import PREFIX, FeedbackStore, address_key, client_id, load_feedback
from serving.imaging import image_to_mnist
from tests.serving.helpers import make_app, png_bytes, promote

#: Where Flask's test client sends requests: the server's own origin in these tests.
OWN_ORIGIN = "http://localhost"
PAGE_HEADERS = {"Origin": OWN_ORIGIN, "X-Digits-Client": "page"}


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


def stored_objects(registry) -> list[dict]:
    """The items exactly as they lie in the bucket (not through our loader)."""
    return [json.loads(registry.read(key)) for key, _ in FeedbackStore(registry).items()]


def server_key(s3_server) -> bytes:
    """The address key a server without DIGITS_FEEDBACK_ADDRESS_KEY uses: derived from
    the S3 secret it holds (the serving identity's)."""
    key = address_key(None, SecretStr(s3_server.credentials["serving"]["secret_key"]))
    assert key is not None
    return key


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def drawing_png(digit: np.ndarray) -> bytes:
    """A digit as the page draws it: large, black on white."""
    return png_bytes(255 - np.kron(digit, np.ones((10, 10), dtype=np.uint8)))


def test_json_feedback_lands_under_feedback_with_what_the_model_saw(feedback_app,
                                                                    tiny_dataset, s3_server):
    app, client, registry, version = feedback_app
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
    assert item.model_version == version and item.source == body["source"] == "api"
    assert item.client == client_id("127.0.0.1", server_key(s3_server))
    assert item.sha256 == body["sha256"]
    metrics = app.extensions["digits"].metrics.render()[0].decode()
    assert f'digits_feedback_total{{agreed="{body["agreed"]}"}} 1.0' in metrics


def test_the_pages_own_json_post_is_converted_like_predict(feedback_app, tiny_dataset):
    _, client, registry, version = feedback_app
    png = drawing_png(tiny_dataset.x_holdout[1])
    response = client.post("/feedback", headers=PAGE_HEADERS, json={
        "image": data_url(png), "label": 7, "predicted": 1, "model_version": version})
    assert response.status_code == 201, response.json
    assert response.json["agreed"] == "no" and response.json["source"] == "page"
    item, = stored(registry)
    assert item.source == "page" and item.label == 7 and item.predicted == 1
    assert item.model_version == version
    assert np.array_equal(item.image, image_to_mnist(png))


def test_a_cross_site_form_post_is_refused(feedback_app, tiny_dataset):
    """What an HTML form on another site can send: no JSON, so 415, and nothing stored."""
    _, client, registry, _ = feedback_app
    png = png_bytes(255 - tiny_dataset.x_holdout[0])
    for origin in ("https://evil.example", OWN_ORIGIN, None):
        headers = {"Origin": origin} if origin else {}
        form = client.post("/feedback", headers=headers, content_type="multipart/form-data",
                           data={"image": (io.BytesIO(png), "d.png"), "label": "3"})
        assert form.status_code == 415, form.json
        assert "application/json" in form.json["error"]
        for content_type in ("application/x-www-form-urlencoded", "text/plain"):
            simple = client.post("/feedback", headers=headers, content_type=content_type,
                                 data=json.dumps({"pixels": [0] * 784, "label": 3}))
            assert simple.status_code == 415, (content_type, simple.json)
    assert stored(registry) == []


@pytest.mark.parametrize("origin", ["https://evil.example", "http://localhost:8081",
                                    "https://localhost", "null", "not an origin"])
def test_json_from_a_foreign_page_is_refused(feedback_app, tiny_dataset, origin):
    """Even with the page's header: only the server's own origin is its page."""
    _, client, registry, _ = feedback_app
    png = png_bytes(255 - tiny_dataset.x_holdout[0])
    response = client.post("/feedback", headers={"Origin": origin, "X-Digits-Client": "page"},
                           json={"image": data_url(png), "label": 3})
    assert response.status_code == 403, response.json
    assert "only this server's own page" in response.json["error"]
    assert "Access-Control-Allow-Origin" not in response.headers
    assert stored(registry) == []


def test_no_preflight_is_ever_granted(feedback_app):
    """A foreign page's JSON fetch needs a CORS preflight first; it never succeeds."""
    _, client, _, _ = feedback_app
    preflight = client.options("/feedback", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, x-digits-client"})
    assert not any(name.startswith("Access-Control-Allow") for name, _ in preflight.headers)


def test_allowed_origins_replace_the_servers_own(s3_server, make_registry, trained,
                                                 tiny_dataset):
    registry = make_registry()
    promote(registry, trained["xgboost"])
    app, server = make_app(s3_server, registry, allowed_origins="https://Digits.Example.com, "
                                                                "https://labels.example.com:8443")
    assert server.model.wait_ready(30)
    try:
        client = app.test_client()
        body = {"pixels": tiny_dataset.x_holdout[0].tolist(), "label": 1}
        for origin, status in (("https://digits.example.com", 201),
                               ("https://labels.example.com:8443", 201),
                               ("https://labels.example.com", 403),
                               (OWN_ORIGIN, 403)):  # the list is the whole truth once set
            response = client.post("/feedback", json=body,
                                   headers={"Origin": origin, "X-Digits-Client": "page"})
            assert response.status_code == status, (origin, response.json)
        assert [item.source for item in stored(registry)] == ["page", "page"]
    finally:
        server.model.stop()


@pytest.fixture
def token_app(s3_server, make_registry, trained):
    registry = make_registry()
    promote(registry, trained["xgboost"])
    app, server = make_app(s3_server, registry, feedback_token="s3cret-token",
                           feedback_rate_limit="1000/minute")
    assert server.model.wait_ready(30)
    yield app.test_client(), registry
    server.model.stop()


def test_a_token_is_required_of_api_clients_when_set(token_app, tiny_dataset):
    client, registry = token_app
    body = {"pixels": tiny_dataset.x_holdout[0].tolist(), "label": 1}
    missing = client.post("/feedback", json=body)
    assert missing.status_code == 401, missing.json
    assert "Authorization: Bearer" in missing.json["error"]
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    for wrong in ("Bearer s3cret-tokeN", "Bearer s3cret", "Basic czNjcmV0LXRva2Vu",
                  "s3cret-token"):
        refused = client.post("/feedback", json=body, headers={"Authorization": wrong})
        assert refused.status_code == 401, (wrong, refused.json)
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    # The page's header without the page's Origin is just another API client.
    assert client.post("/feedback", json=body,
                       headers={"X-Digits-Client": "page"}).status_code == 401
    assert client.post("/feedback", json=body,
                       headers={"Origin": OWN_ORIGIN}).status_code == 401
    assert stored(registry) == []

    accepted = client.post("/feedback", json=body,
                           headers={"Authorization": "Bearer s3cret-token"})
    assert accepted.status_code == 201, accepted.json
    item, = stored(registry)
    assert item.source == accepted.json["source"] == "api"


def test_the_page_needs_no_token(token_app, tiny_dataset):
    client, registry = token_app
    png = drawing_png(tiny_dataset.x_holdout[2])
    response = client.post("/feedback", headers=PAGE_HEADERS,
                           json={"image": data_url(png), "label": 4})
    assert response.status_code == 201, response.json
    item, = stored(registry)
    assert item.source == "page" and item.label == 4


def test_stored_items_hold_a_keyed_hash_never_the_address(s3_server, make_registry, trained,
                                                          tiny_dataset):
    registry = make_registry()
    promote(registry, trained["xgboost"])
    app, server = make_app(s3_server, registry, feedback_address_key="a-key-of-our-own")
    assert server.model.wait_ready(30)
    try:
        client = app.test_client()
        for index, address in enumerate(("203.0.113.7", "203.0.113.7", "2001:db8::42")):
            response = client.post("/feedback", environ_base={"REMOTE_ADDR": address}, json={
                "pixels": tiny_dataset.x_holdout[index].tolist(), "label": 1})
            assert response.status_code == 201, response.json
    finally:
        server.model.stop()
    objects = stored_objects(registry)
    assert len(objects) == 3
    for raw in objects:
        assert "address" not in raw
        text = json.dumps(raw)
        assert "203.0.113" not in text and "2001:db8" not in text
    clients = {raw["client"] for raw in objects}
    assert clients == {client_id(address, b"a-key-of-our-own")
                       for address in ("203.0.113.7", "2001:db8::42")}
    assert client_id("203.0.113.7", server_key(s3_server)) not in clients  # the key counts


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
    ({"label": 3}, 400, "feedback needs 'label'"),
    ({"pixels": [0] * 784}, 400, "feedback needs 'label'"),
    ({"pixels": [0] * 784, "image": "data:image/png;base64,", "label": 3}, 400,
     "either 'pixels'"),
    ({"image": "iVBORw0KGgo=", "label": 3}, 400, "data URL"),
    ({"image": ["data:image/png;base64,"], "label": 3}, 400, "data URL"),
    ({"image": "data:image/png;base64,@@@", "label": 3}, 400, "not valid base64"),
    ({"image": "data:image/png;base64," + base64.b64encode(b"nope").decode(), "label": 3},
     400, "image"),
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


def test_bad_content_types_are_refused(feedback_app):
    _, client, registry, _ = feedback_app
    for content_type in ("text/plain", "application/octet-stream", "image/png"):
        response = client.post("/feedback", data="3", content_type=content_type)
        assert response.status_code == 415 and "application/json" in response.json["error"]
    assert client.post("/feedback").status_code == 415  # no Content-Type at all
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
        answers = [client.post("/feedback", json=body) for _ in range(3)]
        assert [answer.status_code for answer in answers] == [201] * 3
        # Each answer says where the client stands: 2, 1, 0 posts left in this window.
        assert [answer.headers["X-RateLimit-Remaining"] for answer in answers] == ["2", "1", "0"]
        assert {answer.headers["X-RateLimit-Limit"] for answer in answers} == {"3"}
        refused = client.post("/feedback", json=body)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
        assert "error" in refused.json
        other = client.post("/feedback", json=body, environ_base={"REMOTE_ADDR": "10.0.0.2"})
        assert other.status_code == 201  # the limit is per client, not global
        assert len(stored(registry)) == 4
        answer = client.post("/predict", json={"pixels": body["pixels"]})
        assert answer.status_code == 200 and "X-RateLimit-Limit" in answer.headers
        # A route without a limit counts nothing and says nothing about limits.
        unlimited = client.post("/v2/models/digits/infer", json={"inputs": [{
            "name": "images", "shape": [1, 784], "datatype": "UINT8", "data": body["pixels"]}]})
        assert unlimited.status_code == 200 and "X-RateLimit-Limit" not in unlimited.headers
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


def test_the_pages_drawing_is_decoded_within_the_pixel_budget(s3_server, make_registry,
                                                              trained, tiny_dataset):
    """The data URL goes through /predict's bounded decoding: too many pixels is a 413."""
    registry = make_registry()
    promote(registry, trained["xgboost"])
    app, server = make_app(s3_server, registry, max_request_pixels=10_000)
    assert server.model.wait_ready(30)
    try:
        response = app.test_client().post("/feedback", headers=PAGE_HEADERS, json={
            "image": data_url(drawing_png(tiny_dataset.x_holdout[0])), "label": 1})
        assert response.status_code == 413, response.json
        assert stored(registry) == []
    finally:
        server.model.stop()
