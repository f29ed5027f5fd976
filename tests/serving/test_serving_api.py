"""The HTTP API against a real model loaded from a real registry (Flask test client)."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest

from tests.serving.helpers import jpeg_bytes, png_bytes, v2_body

ATOL = 1e-6  # probabilities are sent with 7 decimals


def outputs_by_name(answer: dict) -> dict[str, dict]:
    return {tensor["name"]: tensor for tensor in answer["outputs"]}


# --------------------------------------------------------------------------- health, metadata


def test_health_and_metadata(served):
    _, client, version, _model = served
    assert client.get("/v2/health/live").json == {"live": True}
    assert client.get("/v2/health/ready").json == {"ready": True}
    assert client.get("/v2/models/digits/ready").json == {"name": "digits", "ready": True}
    assert client.get(f"/v2/models/digits/versions/{version}/ready").status_code == 200
    assert client.get("/v2/models/digits/versions/nope/ready").status_code == 503
    server = client.get("/v2").json
    assert server["name"] and isinstance(server["extensions"], list)

    meta = client.get("/v2/models/digits").json
    assert meta["name"] == "digits"
    assert meta["versions"] == [version]
    assert meta["platform"] == "xgboost"
    assert meta["inputs"][0]["datatype"] == "UINT8"
    assert {o["name"] for o in meta["outputs"]} == {"label", "probabilities"}
    assert client.get(f"/v2/models/digits/versions/{version}").json["versions"] == [version]
    assert client.get("/v1/models/digits").json == {"name": "digits", "ready": True}


# --------------------------------------------------------------------------- v2 inference


@pytest.mark.parametrize("layout", ["flat", "nested"])
@pytest.mark.parametrize("datatype", ["UINT8", "INT64", "FP32"])
def test_v2_infer_matches_the_model(served, tiny_dataset, layout, datatype):
    _, client, version, model = served
    images = tiny_dataset.x_holdout[:16]
    body = v2_body(images, datatype=datatype, nested=layout == "nested", id="req-42")
    response = client.post("/v2/models/digits/infer", json=body)
    assert response.status_code == 200, response.json
    answer = response.json
    assert answer["model_name"] == "digits"
    assert answer["model_version"] == version
    assert answer["id"] == "req-42"
    assert response.headers["X-Model-Version"] == version
    assert [o["name"] for o in answer["outputs"]] == ["label", "probabilities"]
    tensors = outputs_by_name(answer)
    expected = model.proba(images)
    assert tensors["probabilities"]["shape"] == [16, 10]
    assert tensors["probabilities"]["datatype"] == "FP32"
    got = np.asarray(tensors["probabilities"]["data"]).reshape(16, 10)
    np.testing.assert_allclose(got, expected, atol=ATOL)
    assert tensors["label"] == {"name": "label", "shape": [16], "datatype": "INT64",
                                "data": expected.argmax(axis=1).tolist()}


def test_v2_requested_outputs_and_aliases(served, tiny_dataset):
    _, client, _, model = served
    images = tiny_dataset.x_holdout[:3]
    answer = client.post("/v2/models/digits/infer", json=v2_body(
        images, outputs=[{"name": "probabilities"}])).json
    assert [o["name"] for o in answer["outputs"]] == ["probabilities"]
    assert "id" not in answer

    # MLServer's XGBoost runtime names, so its clients work unchanged.
    answer = client.post("/v2/models/digits/infer", json=v2_body(
        images, outputs=[{"name": "predict_proba"}, {"name": "predict"}])).json
    tensors = outputs_by_name(answer)
    assert tensors["predict"]["shape"] == [3, 1]
    assert tensors["predict"]["data"] == model.proba(images).argmax(axis=1).tolist()
    assert tensors["predict_proba"]["shape"] == [3, 10]


def test_v2_single_image_and_pinned_version(served, tiny_dataset):
    _, client, version, model = served
    image = tiny_dataset.x_holdout[5]
    body = {"inputs": [{"name": "x", "shape": [784], "datatype": "UINT8",
                        "data": image.ravel().tolist()}]}
    answer = client.post(f"/v2/models/digits/versions/{version}/infer", json=body).json
    assert outputs_by_name(answer)["label"]["data"] == [int(model.proba(image[None]).argmax())]


def test_v2_large_batch_uses_the_fast_parser(served, tiny_dataset):
    _, client, _, model = served
    images = tiny_dataset.x_holdout[:200]
    raw = json.dumps(v2_body(images)).encode()
    response = client.post("/v2/models/digits/infer", data=raw,
                           content_type="application/json")
    got = np.asarray(outputs_by_name(response.json)["probabilities"]["data"]).reshape(200, 10)
    np.testing.assert_allclose(got, model.proba(images), atol=ATOL)


# --------------------------------------------------------------------------- v1, /predict


def test_v1_predict(served, tiny_dataset):
    _, client, version, model = served
    images = tiny_dataset.x_holdout[:4]
    answer = client.post("/v1/models/digits:predict",
                         json={"instances": images.tolist()}).json
    assert answer["model_version"] == version
    expected = model.proba(images)
    assert [p["label"] for p in answer["predictions"]] == expected.argmax(axis=1).tolist()
    np.testing.assert_allclose([p["probabilities"] for p in answer["predictions"]], expected,
                               atol=ATOL)
    flat = client.post("/v1/models/digits:predict",
                       json={"instances": images.reshape(4, -1).tolist()}).json
    assert flat["predictions"] == answer["predictions"]


def test_predict_pixels_json(served, tiny_dataset):
    _, client, version, model = served
    images = tiny_dataset.x_holdout[:5]
    one = client.post("/predict", json={"pixels": images[0].tolist()}).json
    assert one["model_version"] == version and one["model_kind"] == "xgboost"
    assert len(one["predictions"]) == 1
    batch = client.post("/predict", json={"pixels": images.tolist()}).json
    assert [p["label"] for p in batch["predictions"]] == \
        model.proba(images).argmax(axis=1).tolist()


def test_predict_uploads_single_and_batch(served, tiny_dataset):
    _, client, version, model = served
    images = tiny_dataset.x_holdout[:3]
    expected = model.proba(images).argmax(axis=1).tolist()
    raw = client.post("/predict", data=png_bytes(images[0]), content_type="image/png")
    assert raw.status_code == 200 and raw.headers["X-Model-Version"] == version
    assert raw.json["predictions"][0]["label"] == expected[0]

    files = {"file": [(io.BytesIO(png_bytes(img)), f"digit{i}.png")
                      for i, img in enumerate(images)]}
    answer = client.post("/predict", data=files, content_type="multipart/form-data").json
    assert [p["label"] for p in answer["predictions"]] == expected
    assert [p["source"] for p in answer["predictions"]] == ["digit0.png", "digit1.png",
                                                            "digit2.png"]
    jpeg = client.post("/predict", data=jpeg_bytes(255 - images[1]), content_type="image/jpeg")
    assert jpeg.status_code == 200


def test_image_path_agrees_with_pixel_path(served, mnist):
    """MNIST test digits saved as PNG classify as their raw pixels do."""
    _, client, _, model = served
    images = mnist[2][:64]  # DIGITS_MAX_UPLOAD_IMAGES
    pixel_labels = model.proba(images).argmax(axis=1)
    files = {"file": [(io.BytesIO(png_bytes(img)), f"{i}.png") for i, img in enumerate(images)]}
    answer = client.post("/predict", data=files, content_type="multipart/form-data").json
    image_labels = np.array([p["label"] for p in answer["predictions"]])
    assert (image_labels == pixel_labels).mean() >= 0.97


# --------------------------------------------------------------------------- docs, metrics, page


def test_openapi_documents_every_route(served):
    app, client, _, _ = served
    spec = client.get("/openapi.json").json
    assert spec["openapi"].startswith("3.")
    documented = {f"{method.upper()} {path}" for path, item in spec["paths"].items()
                  for method in item if method in ("get", "post", "put", "delete")}
    # Every route is Flask's: the document describes exactly the router.
    rules = [(rule.rule, rule.methods - {"HEAD", "OPTIONS"}) for rule in app.url_map.iter_rules()
             if rule.endpoint != "static"]
    routes = {method + " " + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)
              for rule, methods in rules for method in methods}
    assert routes == documented
    refs = set(re.findall(r'"#/components/(?:schemas|responses)/(\w+)"', json.dumps(spec)))
    defined = set(spec["components"]["schemas"]) | set(spec["components"]["responses"])
    assert refs <= defined


def test_metrics(served, tiny_dataset):
    app, client, version, _ = served
    client.post("/v2/models/digits/infer", json=v2_body(tiny_dataset.x_holdout[:7]))
    client.post("/v2/models/nope/infer", json=v2_body(tiny_dataset.x_holdout[:1]))
    assert client.get("/metrics").status_code == 404, "metrics are not on the public port"
    text = app.extensions["digits"].metrics.render()[0].decode()
    assert re.search(r'digits_http_requests_total\{method="POST",'
                     r'route="/v2/models/<name>/infer",status="200"\} [1-9]', text)
    assert 'status="404"' in text
    assert "digits_http_request_duration_seconds_bucket" in text
    assert re.search(r"digits_request_batch_size_bucket\{le=\"8.0\"\} [1-9]", text)
    assert f'digits_model_info{{kind="xgboost",version="{version}"}} 1.0' in text
    assert 'digits_model_reloads_total{result="success"} 1.0' in text
    assert "digits_model_ready 1.0" in text


def test_access_log_is_json(s3_server, make_registry, trained, tiny_dataset, capfd):
    from tests.serving.helpers import make_app, promote

    registry = make_registry()
    version = promote(registry, trained["baseline"])
    app, server = make_app(s3_server, registry, access_log=True)
    assert server.model.wait_ready(30)
    capfd.readouterr()
    app.test_client().post("/v2/models/digits/infer", json=v2_body(tiny_dataset.x_holdout[:2]),
                           headers={"X-Request-Id": "abc"})
    server.model.stop()
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines()
             if '"event":"access"' in line]
    assert lines, "no access line written"
    entry = lines[-1]
    assert entry["route"] == "/v2/models/<name>/infer" and entry["status"] == 200
    assert entry["model_version"] == version and entry["batch"] == 2
    assert entry["request_id"] == "abc" and entry["duration_ms"] > 0


def test_page_and_static_assets_are_self_contained(served):
    _, client, _, _ = served
    page = client.get("/")
    assert page.status_code == 200 and b"<canvas" in page.data
    for asset in re.findall(rb'(?:src|href)="(/static/[^"]+)"', page.data):
        response = client.get(asset.decode())
        assert response.status_code == 200
        assert not re.search(rb"https?://", response.data), f"{asset} loads something external"
    assert not re.search(rb'(?:src|href)="https?://', page.data)
