"""Bad input: every case is a clear 4xx with ``{"error": ...}``, never a 500, never a crash.

The ``served`` app has ``max_body_bytes=1_000_000``, ``max_batch=256`` and
``max_image_pixels=4_000_000``.
"""

from __future__ import annotations

import io
import json
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.serving.helpers import png_bytes, schema_validator

INFER = "/v2/models/digits/infer"
V1 = "/v1/models/digits:predict"
DIGIT = np.zeros((28, 28), dtype=np.uint8)
DIGIT[6:22, 12:16] = 255  # a "1"
DIGIT[6:22, 11] = 128  # with an anti-aliased edge
PIXELS = DIGIT.ravel().tolist()


def tensor(**override) -> bytes:
    item = {"name": "images", "shape": [1, 784], "datatype": "UINT8", "data": PIXELS}
    item.update(override)
    return json.dumps({"inputs": [item]}).encode()


def big_blank_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 255).save(buffer, "PNG")
    return buffer.getvalue()


def gif_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(DIGIT).save(buffer, "GIF")
    return buffer.getvalue()


JSON = "application/json"
CASES = [
    # (id, method, path, content type, body, status, words in the error)
    ("invalid json", "POST", INFER, JSON, b"{not json", 400, "invalid JSON"),
    ("json not an object", "POST", INFER, JSON, b"[1, 2]", 400, "object"),
    ("no inputs", "POST", INFER, JSON, b"{}", 400, "inputs"),
    ("empty inputs", "POST", INFER, JSON, b'{"inputs": []}', 400, "inputs"),
    ("two inputs", "POST", INFER, JSON,
     json.dumps({"inputs": [json.loads(tensor())["inputs"][0]] * 2}).encode(), 400, "one input"),
    ("input missing shape", "POST", INFER, JSON,
     json.dumps({"inputs": [{"name": "x", "datatype": "UINT8", "data": PIXELS}]}).encode(),
     400, "shape"),
    ("negative shape", "POST", INFER, JSON, tensor(shape=[-1, 784]), 400, "shape"),
    ("shape/data mismatch", "POST", INFER, JSON, tensor(shape=[2, 784]), 400, "needs 1568"),
    ("wrong shape", "POST", INFER, JSON,
     tensor(shape=[7, 112], data=PIXELS), 400, "expected shape"),
    ("bytes datatype", "POST", INFER, JSON, tensor(datatype="BYTES"), 400, "datatype"),
    ("unknown datatype", "POST", INFER, JSON, tensor(datatype="FLOAT"), 400, "datatype"),
    ("uint8 out of range", "POST", INFER, JSON,
     tensor(data=[300, *PIXELS[1:]]), 400, "out of range for UINT8"),
    ("negative pixel", "POST", INFER, JSON,
     tensor(datatype="INT32", data=[-5, *PIXELS[1:]]), 400, "0..255"),
    ("scaled floats", "POST", INFER, JSON,
     tensor(datatype="FP32", data=[v / 255 for v in PIXELS]), 400, "whole numbers"),
    ("fractional ints", "POST", INFER, JSON,
     tensor(data=[0.5, *PIXELS[1:]]), 400, "integers"),
    ("nan", "POST", INFER, JSON,
     tensor(datatype="FP32", data=[float("nan"), *PIXELS[1:]]), 400, "NaN"),
    ("infinity", "POST", INFER, JSON,
     tensor(datatype="FP64", data=[float("inf"), *PIXELS[1:]]), 400, "NaN or infinity"),
    ("strings", "POST", INFER, JSON, tensor(data=["1"] * 784), 400, "integers"),
    ("nulls", "POST", INFER, JSON, tensor(data=[None] * 784), 400, "integers"),
    ("booleans", "POST", INFER, JSON, tensor(data=[True] * 784), 400, "integers"),
    ("ragged nested", "POST", INFER, JSON,
     tensor(shape=[1, 28, 28], data=[[0] * 28] * 27 + [[0] * 27]), 400, "regular"),
    ("huge integer", "POST", INFER, JSON,
     tensor(datatype="INT64", data=[10 ** 30, *PIXELS[1:]]), 400, "out of range"),
    ("empty batch", "POST", INFER, JSON, tensor(shape=[0, 784], data=[]), 400, "empty batch"),
    ("data not a list", "POST", INFER, JSON, tensor(data=5), 400, "array"),
    ("id not a string", "POST", INFER, JSON,
     json.dumps({"id": 5, **json.loads(tensor())}).encode(), 400, "'id'"),
    ("unknown output", "POST", INFER, JSON,
     json.dumps({"outputs": [{"name": "logits"}], **json.loads(tensor())}).encode(),
     400, "unknown output"),
    ("outputs not a list", "POST", INFER, JSON,
     json.dumps({"outputs": "label", **json.loads(tensor())}).encode(), 400, "outputs"),
    ("deeply nested json", "POST", INFER, JSON, b"[" * 100_000 + b"]" * 100_000, 400,
     "invalid JSON"),
    ("batch over the limit", "POST", INFER, JSON, tensor(shape=[300, 784]), 413, "limit"),
    ("body over the limit", "POST", INFER, JSON, b" " * 1_100_000, 413, "1000000 bytes"),
    ("text/plain", "POST", INFER, "text/plain", tensor(), 415, "application/json"),
    ("form encoded", "POST", INFER, "application/x-www-form-urlencoded", tensor(), 415,
     "application/json"),
    ("binary without its header", "POST", INFER, "application/octet-stream", tensor(), 400,
     "Inference-Header-Content-Length"),
    ("unknown model", "POST", "/v2/models/mnist/infer", JSON, tensor(), 404, "unknown model"),
    ("unknown version", "POST", "/v2/models/digits/versions/v0/infer", JSON, tensor(), 404,
     "version"),
    ("unknown model metadata", "GET", "/v2/models/mnist", None, b"", 404, "unknown model"),
    ("unknown model ready", "GET", "/v2/models/mnist/ready", None, b"", 404, "unknown model"),
    ("get on infer", "GET", INFER, None, b"", 405, "not allowed"),
    ("no such path", "GET", "/v3/whatever", None, b"", 404, "no such endpoint"),
    # v1
    ("v1 no instances", "POST", V1, JSON, b'{"inputs": []}', 400, "instances"),
    ("v1 empty instances", "POST", V1, JSON, b'{"instances": []}', 400, "instances"),
    ("v1 bad shape", "POST", V1, JSON, b'{"instances": [[1, 2, 3]]}', 400, "expected shape"),
    ("v1 wrong content type", "POST", V1, "text/csv", b"1,2", 415, "application/json"),
    ("v1 unknown model", "POST", "/v1/models/x:predict", JSON, b'{"instances": []}', 404,
     "unknown model"),
    # /predict
    ("not an image", "POST", "/predict", "image/png", b"hello, world", 400, "not a PNG"),
    ("truncated png", "POST", "/predict", "image/png", png_bytes(DIGIT)[:60], 400, "decode"),
    ("corrupt png data", "POST", "/predict", "image/png",
     png_bytes(DIGIT)[:33] + zlib.compress(b"x" * 50) + png_bytes(DIGIT)[-12:], 400, "decode"),
    ("empty image", "POST", "/predict", "image/png", b"", 400, "empty"),
    ("gif", "POST", "/predict", "image/png", gif_bytes(), 400, "not a PNG or JPEG"),
    ("blank image", "POST", "/predict", "image/png", big_blank_png(50, 50), 400, "no digit"),
    ("too many pixels", "POST", "/predict", "image/png", big_blank_png(4000, 2000), 413,
     "too large"),
    ("unsupported type", "POST", "/predict", "text/plain", b"7", 415, "multipart"),
    ("gif content type", "POST", "/predict", "image/gif", gif_bytes(), 415, "image/png"),
    ("json without pixels", "POST", "/predict", JSON, b'{"image": []}', 400, "pixels"),
    ("json bad pixels", "POST", "/predict", JSON, b'{"pixels": [1, 2]}', 400, "shape"),
    ("json pixels in 0..1", "POST", "/predict", JSON,
     json.dumps({"pixels": [v / 255 for v in PIXELS]}).encode(), 400, "whole numbers"),
]


@pytest.mark.parametrize(("method", "path", "content_type", "body", "status", "words"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_a_clear_4xx(served, method, path, content_type, body, status, words):
    _, client, _, _ = served
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.open(path, method=method, data=body, headers=headers)
    assert response.status_code == status, response.data[:300]
    assert response.mimetype == "application/json"
    assert "X-Model-Version" not in response.headers, "no model answered"
    error = response.json["error"]
    assert isinstance(error, str) and error
    assert words.lower() in error.lower()


def test_multipart_errors_name_the_file(served):
    _, client, _, _ = served
    files = {"file": [(io.BytesIO(png_bytes(DIGIT)), "good.png"),
                      (io.BytesIO(b"GIF89a..."), "bad.gif")]}
    response = client.post("/predict", data=files, content_type="multipart/form-data")
    assert response.status_code == 400
    assert response.json["error"].startswith("bad.gif: ")
    empty = client.post("/predict", data={"field": "value"}, content_type="multipart/form-data")
    assert empty.status_code == 400 and "no file" in empty.json["error"]


def test_server_still_answers_after_the_bad_inputs(served):
    """Every bad input, one after another on one server; then it is ready and answers."""
    app, client, _, _ = served
    for _, method, path, content_type, body, status, _ in CASES:
        headers = {"Content-Type": content_type} if content_type else {}
        assert client.open(path, method=method, data=body, headers=headers).status_code == status
    assert client.get("/v2/health/ready").status_code == 200
    assert client.post(INFER, data=tensor(), content_type=JSON).status_code == 200
    text = app.extensions["digits"].metrics.render()[0].decode()
    assert 'status="500"' not in text


def binary_request(header: dict, raw: bytes, length: int | None = None) -> tuple[bytes, dict]:
    head = json.dumps(header).encode()
    return head + raw, {"Inference-Header-Content-Length":
                        str(len(head) if length is None else length)}


def binary_tensor(size: int, **override) -> dict:
    item = {"name": "images", "shape": [1, 784], "datatype": "UINT8",
            "parameters": {"binary_data_size": size}}
    item.update(override)
    return {"inputs": [item]}


RAW = DIGIT.tobytes()
BINARY_CASES = [
    # (id, request body and headers, status, words in the error)
    ("header length beyond the body", binary_request(binary_tensor(784), RAW, 10_000), 400,
     "has only"),
    ("header length not a number", (RAW, {"Inference-Header-Content-Length": "ten"}), 400,
     "whole number"),
    ("size not shape x datatype", binary_request(binary_tensor(700), RAW[:700]), 400,
     "needs 784"),
    ("fewer bytes than declared", binary_request(binary_tensor(784), RAW[:500]), 400,
     "only 500 bytes"),
    ("bytes left over", binary_request(binary_tensor(784), RAW + b"\0" * 16), 400,
     "16 bytes follow"),
    ("fp32 bytes for uint8 shape", binary_request(
        binary_tensor(784 * 4, datatype="FP32"), DIGIT.astype("<f4").tobytes()[:784]), 400,
     "only 784 bytes"),
    ("unknown datatype", binary_request(binary_tensor(784, datatype="FLOAT8"), RAW), 400,
     "unsupported datatype"),
    ("bytes datatype", binary_request(binary_tensor(784, datatype="BYTES"), RAW), 400,
     "unsupported datatype"),
    ("size and data both", binary_request(binary_tensor(784, data=PIXELS), RAW), 400,
     "must not also carry"),
    ("size not a number", binary_request(binary_tensor("784"), RAW), 400,
     "binary_data_size"),
    ("header not json", (b"{oops" + RAW, {"Inference-Header-Content-Length": "5"}), 400,
     "invalid JSON"),
    ("binary output flag not a bool", binary_request(
        {**binary_tensor(784), "parameters": {"binary_data_output": "yes"}}, RAW), 400,
     "true or false"),
    ("negative pixels as int16", binary_request(
        binary_tensor(784 * 2, datatype="INT16"), (DIGIT.astype("<i2") - 1).tobytes()), 400,
     "0..255"),
]


@pytest.mark.parametrize(("request_", "status", "words"), [c[1:] for c in BINARY_CASES],
                         ids=[c[0] for c in BINARY_CASES])
@pytest.mark.parametrize("content_type", [None, "application/octet-stream"])
def test_malformed_binary_framing_is_a_clear_400(served, request_, status, words,
                                                content_type):
    _, client, _, _ = served
    body, headers = request_
    if content_type:
        headers = {**headers, "Content-Type": content_type}
    response = client.post(INFER, data=body, headers=headers)
    assert response.status_code == status, response.data[:300]
    assert words in response.get_json()["error"]


def test_a_405_names_the_allowed_methods(served):
    _, client, _, _ = served
    response = client.get(INFER)
    assert response.status_code == 405
    assert set(response.headers["Allow"].replace(" ", "").split(",")) >= {"POST"}
    assert "GET" not in response.headers["Allow"].split(", ")
    response = client.delete("/v2/health/live")
    assert response.status_code == 405 and "GET" in response.headers["Allow"]
    response = client.options(INFER)
    assert response.status_code == 200 and "POST" in response.headers["Allow"]


# --------------------------------------------------------------------------- the OpenAPI schema


@pytest.fixture
def request_schema(served):
    pytest.importorskip("jsonschema")
    _, client, _, _ = served
    return schema_validator(client.get("/openapi.json").json, "InferenceRequest")


VALID = [
    json.loads(tensor()),
    json.loads(tensor(shape=[1, 28, 28], data=DIGIT.tolist(), datatype="INT32")),
    {**json.loads(tensor(datatype="FP32")), "id": "a",
     "outputs": [{"name": "label", "parameters": {"binary_data": False}}],
     "parameters": {"binary_data_output": False}},
]


@pytest.mark.parametrize("body", VALID)
def test_requests_valid_by_the_schema_are_accepted(served, request_schema, body):
    _, client, _, _ = served
    assert request_schema.is_valid(body)
    assert client.post(INFER, json=body).status_code == 200


def test_requests_the_schema_rejects_are_rejected_by_the_server(served, request_schema):
    """Every malformed JSON request above that the schema can see as invalid is refused.

    (The reverse is tests/serving/test_serving_openapi.py's: "data has as many values
    as the shape needs" is beyond what a JSON Schema can state.)
    """
    _, client, _, _ = served
    bodies = []
    for case in CASES:
        if case[2] == INFER and case[3] == JSON:
            try:
                bodies.append(json.loads(case[4]))
            except (ValueError, RecursionError):
                continue
    bodies += [json.loads(c[1][0][:int(c[1][1]["Inference-Header-Content-Length"])])
               for c in BINARY_CASES if c[1][0].startswith(b"{") and c[0] != "header not json"
               and c[0] != "header length beyond the body"]
    seen_invalid = 0
    for body in bodies:
        if not request_schema.is_valid(body):
            seen_invalid += 1
            assert client.post(INFER, json=body).status_code in (400, 413), body
    assert seen_invalid >= 12
