"""The fast JSON reader gives what ``json.loads`` gives, and refuses what it refuses."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest

from serving import protocol
from serving.protocol import ApiError


def plain(value):
    """Numpy arrays → lists, for comparing with ``json.loads``."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


PIXELS = list(range(256)) * 4  # long enough for the fast path
BODIES = [
    {"inputs": [{"name": "a", "shape": [1, 1024], "datatype": "UINT8", "data": PIXELS}]},
    {"id": "x", "inputs": [{"name": "a", "data": PIXELS, "shape": [1024], "datatype": "INT64"}],
     "outputs": [{"name": "label"}]},
    # a key named "data" elsewhere, and strings that look like it
    {"parameters": {"data": [1, 2, 3]}, "id": '"data": [1, 2]',
     "inputs": [{"name": "data", "data": PIXELS, "shape": [1024], "datatype": "UINT8"}]},
    # floats, signs, nesting, empty: all through json
    {"inputs": [{"data": [0.5] * 600}]},
    {"inputs": [{"data": [-1] * 600}]},
    {"inputs": [{"data": [[1, 2]] * 600}]},
    {"inputs": [{"data": []}], "pad": "x" * 3000},
    {"inputs": [{"data": [1] * 600}, {"data": [2] * 600}]},
    {"inputs": [{"data": [10**30] + [1] * 600}]},
]


@pytest.mark.parametrize("body", BODIES)
def test_fast_reader_matches_json(body):
    """The fast reader answers what the JSON parser alone does (orjson: an integer past
    64 bits becomes a float, as it would without the fast path)."""
    raw = json.dumps(body).encode()
    assert plain(protocol.loads(raw)) == orjson.loads(raw)
    compact = json.dumps(body, separators=(",", ":")).encode()
    assert plain(protocol.loads(compact)) == orjson.loads(compact)


def test_fast_reader_returns_numpy_for_big_integer_arrays():
    raw = json.dumps(BODIES[0]).encode()
    data = protocol.loads(raw)["inputs"][0]["data"]
    assert isinstance(data, np.ndarray) and data.dtype == np.int64


@pytest.mark.parametrize("raw", [
    b'{"inputs": [{"data": [1, 2,, 3]}], "pad": "' + b"x" * 3000 + b'"}',
    b'{"inputs": [{"data": [1, 2, 3,]}], "pad": "' + b"x" * 3000 + b'"}',
    b'{"inputs": [{"data": [1, 2, 3]}, "pad": "' + b"x" * 3000 + b'"}',
    b'{"inputs": [{"data": [' + b"1," * 2000 + b"1",
    b"\xff\xfe" + b"[1]" * 1000,
])
def test_fast_reader_refuses_invalid_json(raw):
    with pytest.raises(ApiError) as caught:
        protocol.loads(raw)
    assert caught.value.status == 400


def test_response_shapes():
    proba = np.array([[0.1] * 10, [0.0] * 9 + [1.0]], dtype=np.float32)
    answer, raw = protocol.v2_response(
        model_name="m", version="v", probabilities=proba, request_id="7",
        outputs=[protocol.Output("probabilities"), protocol.Output("label")])
    assert raw == b""
    assert answer["id"] == "7" and answer["model_version"] == "v"
    assert answer["outputs"][0]["shape"] == [2, 10]
    assert answer["outputs"][0]["data"][:2] == [0.1, 0.1]
    assert answer["outputs"][1] == {"name": "label", "shape": [2], "datatype": "INT64",
                                    "data": [0, 9]}


def test_binary_outputs_are_raw_little_endian_bytes_in_order():
    proba = np.array([[0.1] * 10, [0.0] * 9 + [1.0]], dtype=np.float32)
    answer, raw = protocol.v2_response(
        model_name="m", version="v", probabilities=proba, request_id=None,
        outputs=[protocol.Output("label", binary=True), protocol.Output("probabilities"),
                 protocol.Output("predict_proba", binary=True)])
    label, probabilities, alias = answer["outputs"]
    assert label["parameters"] == {"binary_data_size": 16} and "data" not in label
    assert "parameters" not in probabilities and len(probabilities["data"]) == 20
    assert alias["parameters"] == {"binary_data_size": 80}
    assert np.frombuffer(raw[:16], "<i8").tolist() == [0, 9]
    np.testing.assert_array_equal(np.frombuffer(raw[16:], "<f4").reshape(2, 10), proba)


def test_binary_inputs_are_read_by_datatype_and_order():
    images = (np.arange(784 * 2) % 256).astype(np.uint8).reshape(2, 28, 28)
    for datatype, dtype in (("UINT8", "<u1"), ("INT16", "<i2"), ("FP32", "<f4"),
                            ("FP64", "<f8")):
        raw = images.astype(dtype).tobytes()
        request = {"inputs": [{"name": "images", "shape": [2, 784], "datatype": datatype,
                               "parameters": {"binary_data_size": len(raw)}}],
                   "parameters": {"binary_data_output": True}}
        parsed = protocol.v2_request(request, max_batch=8, binary=raw)
        np.testing.assert_array_equal(parsed.images, images)
        assert all(output.binary for output in parsed.outputs)
