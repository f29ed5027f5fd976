"""Triton's own v2 client (``tritonclient.http``) against the real server (``digits serve``).

An independent implementation of the Open Inference Protocol: it sends no
Content-Type, uses the binary tensor extension by default and asks for binary
outputs when it names none. Every call here is one a Triton user would make.
"""

from __future__ import annotations

import numpy as np
import pytest

tritonhttp = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.serving.helpers import promote, serving_environ  # noqa: E402
from tests.serving.test_serving_cli import (  # noqa: E402
    clean_env,
    free_port,
    model_info,
    start_serve,
    stop_serve,
    wait_for,
)

MODEL = "digits"


@pytest.fixture(scope="module")
def triton(s3_server, make_registry, trained, tmp_path_factory):
    """``(client, version, trained model)`` for ``digits serve`` serving XGBoost."""
    registry = make_registry()
    version = promote(registry, trained["xgboost"])
    port = free_port()
    env = clean_env(**serving_environ(s3_server, registry.bucket), DIGITS_ACCESS_LOG="false")
    process = start_serve(port, env, tmp_path_factory.mktemp("triton") / "serve.log")
    try:
        # Both workers, not just the first to answer, must have loaded the model.
        wait_for(lambda: set(model_info(port).values()) == {version}
                 and len(model_info(port)) == 2, 60, "both workers to load the model")
        client = tritonhttp.InferenceServerClient(f"127.0.0.1:{port}")
        yield client, version, trained["xgboost"]
        client.close()
    finally:
        stop_serve(process)


def images_input(images: np.ndarray, datatype: str = "UINT8", *, binary: bool = True,
                 flat: bool = True):
    array = images.reshape(len(images), -1) if flat else images
    tensor = tritonhttp.InferInput("images", list(array.shape), datatype)
    tensor.set_data_from_numpy(array.astype(_NUMPY[datatype]), binary_data=binary)
    return tensor


_NUMPY = {"UINT8": np.uint8, "INT64": np.int64, "FP32": np.float32, "FP16": np.float16}


def test_health_and_metadata_as_the_client_reads_them(triton):
    client, version, _ = triton
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, version)
    server = client.get_server_metadata()
    assert "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata(MODEL)
    assert meta["name"] == MODEL and meta["versions"] == [version]
    assert [(t["name"], t["datatype"]) for t in meta["inputs"]] == [("images", "UINT8")]
    assert {(t["name"], t["datatype"], tuple(t["shape"])) for t in meta["outputs"]} == {
        ("label", "INT64", (-1,)), ("probabilities", "FP32", (-1, 10))}


@pytest.mark.parametrize("datatype", ["UINT8", "INT64", "FP32", "FP16"])
@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_inputs_and_outputs_in_either_form(triton, tiny_dataset, datatype, binary_in,
                                           binary_out):
    client, version, model = triton
    images = tiny_dataset.x_holdout[:16]
    outputs = [tritonhttp.InferRequestedOutput("probabilities", binary_data=binary_out),
               tritonhttp.InferRequestedOutput("label", binary_data=binary_out)]
    result = client.infer(MODEL, [images_input(images, datatype, binary=binary_in)],
                          outputs=outputs, request_id="req-7")
    expected = model.proba(images)
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (16, 10)
    # Binary outputs are the model's float32s bit for bit; JSON ones are rounded to 7 places.
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=0 if binary_out else 1e-7)
    np.testing.assert_array_equal(result.as_numpy("label"), expected.argmax(axis=1))
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_version"] == version


def test_no_outputs_named_gets_every_output_in_binary(triton, tiny_dataset):
    client, _, model = triton
    images = tiny_dataset.x_holdout[:3]
    result = client.infer(MODEL, [images_input(images, flat=False)])
    assert {o["name"] for o in result.get_response()["outputs"]} == {"label", "probabilities"}
    assert all("binary_data_size" in o["parameters"] for o in result.get_response()["outputs"])
    np.testing.assert_array_equal(result.as_numpy("probabilities"), model.proba(images))


def test_one_output_selected_and_a_version_route(triton, tiny_dataset):
    client, version, model = triton
    images = tiny_dataset.x_holdout[:5]
    result = client.infer(MODEL, [images_input(images)], model_version=version,
                          outputs=[tritonhttp.InferRequestedOutput("label")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label"]
    assert result.as_numpy("probabilities") is None
    np.testing.assert_array_equal(result.as_numpy("label"), model.model.predict(images))


def test_a_batch_of_500_real_digits(triton, mnist):
    client, _, model = triton
    _, _, x_test, y_test, _ = mnist
    images, labels = x_test[-500:], y_test[-500:]  # not in the tiny training set
    result = client.infer(MODEL, [images_input(images)])
    predicted = result.as_numpy("label")
    np.testing.assert_array_equal(predicted, model.model.predict(images))
    assert np.mean(predicted == labels) > 0.8  # XGBoost on 600 digits scores ~0.85 here


def test_bad_requests_come_back_as_the_clients_exception(triton, tiny_dataset):
    client, _, _ = triton
    wrong = tritonhttp.InferInput("images", [1, 783], "UINT8")
    wrong.set_data_from_numpy(np.zeros((1, 783), dtype=np.uint8))
    with pytest.raises(InferenceServerException, match="expected shape"):
        client.infer(MODEL, [wrong])
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("mnist", [images_input(tiny_dataset.x_holdout[:1])])
    scaled = tritonhttp.InferInput("images", [1, 784], "FP32")
    scaled.set_data_from_numpy(tiny_dataset.x_holdout[:1].reshape(1, -1).astype(np.float32)
                               / 255)
    with pytest.raises(InferenceServerException, match="whole numbers"):
        client.infer(MODEL, [scaled])
