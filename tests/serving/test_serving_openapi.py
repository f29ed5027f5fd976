"""The OpenAPI document is exact: what the server refuses, its schemas refuse too.

Crafted JSON bodies for every route that takes JSON are posted to the real app
and checked with a real JSON Schema validator (``jsonschema``, draft 2020-12 as
OpenAPI 3.1 uses) against the schema ``/openapi.json`` gives that route: every
body the server refuses is invalid, every valid one is accepted. A few refusals
are beyond what a schema can state; they are listed, and checked to stay so.
"""

from __future__ import annotations

import base64
import copy

import numpy as np
import pytest

from tests.serving.helpers import make_app, png_bytes, promote
from tests.serving.helpers import schema_validator as validator

jsonschema = pytest.importorskip("jsonschema")
referencing = pytest.importorskip("referencing")

MAX_BATCH = 8

DIGIT = np.zeros((28, 28), dtype=np.uint8)
DIGIT[6:22, 12:16] = 255
FLAT = DIGIT.ravel().tolist()
SQUARE = DIGIT.tolist()


def with_pixel(value, at: int = 100) -> list:
    flat = list(FLAT)
    flat[at] = value
    return flat


def tensor(**override) -> dict:
    item = {"name": "images", "shape": [1, 784], "datatype": "UINT8", "data": FLAT}
    item.update(override)
    return {"inputs": [item]}


def data_url(blob: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(blob).decode()


PNG = png_bytes(DIGIT)

#: (route, schema, valid bodies, bodies the server refuses)
CASES = {
    "/predict": ("PredictRequest", [
        {"pixels": FLAT}, {"pixels": SQUARE}, {"pixels": [FLAT, FLAT]}, {"pixels": [SQUARE]},
        {"pixels": [float(v) for v in FLAT]}, {"pixels": FLAT, "other": "ignored"},
    ], [
        {"pixels": [[None, None]]}, {}, {"pixels": "x"}, {"pixels": FLAT[:783]},
        {"pixels": [FLAT[:783]]}, {"pixels": with_pixel(256)}, {"pixels": with_pixel(-1)},
        {"pixels": with_pixel(3.5)}, {"pixels": []}, {"pixels": [FLAT] * (MAX_BATCH + 1)},
        {"pixels": [FLAT, FLAT[:-1]]}, {"pixels": [[SQUARE]]}, {"pixels": SQUARE[:27]},
        {"pixels": ["1"] * 784}, {"pixels": {"a": 1}}, [1, 2], {"pixels": [None] * 784},
        {"pixels": with_pixel("7")}, {"pixels": [row[:27] for row in SQUARE]},
    ]),
    "/v1/models/digits:predict": ("V1Request", [
        {"instances": [FLAT]}, {"instances": SQUARE}, {"instances": [SQUARE, SQUARE]},
    ], [
        {"instances": []}, {"instances": None}, {"instances": [[None]]}, {"pixels": [FLAT]},
        {"instances": [with_pixel(1000)]}, {"instances": [FLAT] * (MAX_BATCH + 1)},
    ]),
    "/feedback": ("FeedbackRequest", [
        {"pixels": FLAT, "label": 3}, {"pixels": [SQUARE], "label": 0, "predicted": 1,
                                       "model_version": "v1"},
        {"pixels": SQUARE, "label": 9, "predicted": None, "model_version": None},
        {"image": data_url(PNG), "label": 1}, {"image": data_url(PNG).upper()[:22]
                                               + data_url(PNG)[22:], "label": 1},
    ], [
        {"pixels": FLAT}, {"label": 3}, {"pixels": FLAT, "image": data_url(PNG), "label": 3},
        {"pixels": [FLAT, FLAT], "label": 1}, {"pixels": FLAT, "label": 10},
        {"pixels": FLAT, "label": -1}, {"pixels": FLAT, "label": "3"},
        {"pixels": FLAT, "label": True}, {"pixels": FLAT, "label": 3.5},
        {"pixels": FLAT, "label": 3, "predicted": 10},
        {"pixels": FLAT, "label": 3, "model_version": "x" * 201},
        {"pixels": FLAT, "label": 3, "model_version": 5}, {"pixels": with_pixel(300), "label": 3},
        {"image": "data:text/plain;base64,AAAA", "label": 3},
        {"image": "data:image/png;base64,abc", "label": 3},
        {"image": "data:image/png;base64,!!!!", "label": 3}, {"image": 5, "label": 3},
        {"pixels": None, "label": 3},
    ]),
    "/v2/models/digits/infer": ("InferenceRequest", [
        tensor(), tensor(shape=[28, 28], data=SQUARE), tensor(shape=[784]),
        tensor(shape=[1, 28, 28], data=[SQUARE], datatype="INT32"),
        tensor(shape=[2, 784], data=FLAT + FLAT, datatype="FP32"),
        {**tensor(datatype="FP64", data=[float(v) for v in FLAT]), "id": "a",
         "outputs": [{"name": "predict_proba", "parameters": {"binary_data": False}}],
         "parameters": {"binary_data_output": False}},
    ], [
        tensor(shape=[1, 783], data=FLAT[:783]), tensor(shape=[2, 392]),
        tensor(shape=[0, 784], data=[]), tensor(shape=[1, 1, 784]), tensor(shape=[-1, 784]),
        tensor(shape=[MAX_BATCH + 1, 784], data=FLAT * (MAX_BATCH + 1)),
        tensor(shape=[], data=FLAT), tensor(shape="1,784"), tensor(shape=[1, "784"]),
        tensor(data=[[None, None]]), tensor(data=with_pixel(300)),
        tensor(data=with_pixel(3.5)), tensor(data="x"), tensor(data=[]),
        tensor(data=[1, [2]]), tensor(data=with_pixel(None)), tensor(datatype="BOOL"),
        tensor(datatype="FP8"), tensor(datatype="BYTES"), tensor(name=5),
        {"inputs": []}, {"inputs": [tensor()["inputs"][0]] * 2}, {}, {"inputs": "x"},
        {**tensor(), "outputs": [{"name": "x"}]}, {**tensor(), "outputs": "label"},
        {**tensor(), "outputs": [{"name": "label", "parameters": {"binary_data": "yes"}}]},
        {**tensor(), "parameters": {"binary_data_output": "yes"}},
        {**tensor(), "id": 5}, {**tensor(), "parameters": "x"},
        tensor(parameters="x"), tensor(parameters={"binary_data_size": 784}),
        {"inputs": [{k: v for k, v in tensor()["inputs"][0].items() if k != "shape"}]},
        {"inputs": [{k: v for k, v in tensor()["inputs"][0].items() if k != "datatype"}]},
        {"inputs": [{k: v for k, v in tensor()["inputs"][0].items() if k != "name"}]},
    ]),
}

#: Refused, yet valid by any JSON Schema: the rules a schema cannot state.
BEYOND_A_SCHEMA = {
    "/v2/models/digits/infer": [
        tensor(shape=[2, 784]),  # 784 values for a shape that needs 1568
        tensor(shape=[1, 784.0]),  # 784.0 is JSON Schema's integer, not the server's
        tensor(data=[[0] * 392, [0] * 391]),  # a ragged nesting
    ],
    "/feedback": [
        {"pixels": FLAT, "label": 3.0},  # an integer to JSON Schema, a float to the server
        {"image": data_url(b"not a picture"), "label": 3},  # valid base64, no image in it
    ],
}


@pytest.fixture(scope="module")
def app_and_spec(s3_server, make_registry, trained):
    registry = make_registry()
    promote(registry, trained["xgboost"])
    app, server = make_app(s3_server, registry, max_batch=MAX_BATCH,
                           predict_rate_limit="100000/minute",
                           feedback_rate_limit="100000/minute")
    assert server.model.wait_ready(30), server.model.last_error
    client = app.test_client()
    yield client, client.get("/openapi.json").json
    server.model.stop()


def test_every_schema_is_valid_json_schema(app_and_spec):
    _, spec = app_and_spec
    assert spec["openapi"] == "3.1.0"
    for schema in spec["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)
    assert spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"][
        "schema"] == {"$ref": "#/components/schemas/PredictRequest"}
    shape = validator(spec, "Shape")
    assert shape.is_valid([MAX_BATCH, 784]) and not shape.is_valid([MAX_BATCH + 1, 784])


@pytest.mark.parametrize("route", CASES)
def test_valid_bodies_are_accepted(app_and_spec, route):
    client, spec = app_and_spec
    name, valid, _ = CASES[route]
    check = validator(spec, name)
    for body in valid:
        errors = [e.message[:200] for e in check.iter_errors(body)]
        assert not errors, (route, errors)
        answer = client.post(route, json=copy.deepcopy(body))
        assert answer.status_code in (200, 201), (route, answer.status_code, answer.json)


@pytest.mark.parametrize("route", CASES)
def test_bodies_the_server_refuses_are_schema_invalid(app_and_spec, route):
    client, spec = app_and_spec
    name, _, refused = CASES[route]
    check = validator(spec, name)
    for body in refused:
        answer = client.post(route, json=copy.deepcopy(body))
        assert 400 <= answer.status_code < 500 and answer.status_code != 429, (
            route, body, answer.status_code)
        assert not check.is_valid(body), (route, answer.status_code, answer.json["error"])


@pytest.mark.parametrize("route", BEYOND_A_SCHEMA)
def test_what_no_schema_can_state_is_still_refused(app_and_spec, route):
    client, spec = app_and_spec
    check = validator(spec, CASES[route][0])
    for body in BEYOND_A_SCHEMA[route]:
        assert check.is_valid(body), body
        assert 400 <= client.post(route, json=body).status_code < 500, body


def test_the_batch_limit_is_the_server_s(s3_server, make_registry):
    """``maxItems``/``maximum`` come from DIGITS_MAX_BATCH, whatever it is set to."""
    from serving.app import create_app
    from tests.serving.helpers import app_config

    registry = make_registry()
    spec = create_app(app_config(s3_server, registry, max_batch=3)).test_client().get(
        "/openapi.json").json
    check = validator(spec, "PredictRequest")
    assert check.is_valid({"pixels": [FLAT] * 3})
    assert not check.is_valid({"pixels": [FLAT] * 4})
    shape = validator(spec, "Shape")
    assert shape.is_valid([3, 784]) and not shape.is_valid([4, 28, 28])
