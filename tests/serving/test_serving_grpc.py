"""Triton's gRPC client (``tritonclient.grpc``) against the real server (``digits serve``).

The Open Inference Protocol's gRPC service on ``DIGITS_GRPC_PORT``, served by every
granian worker from the model its HTTP app uses: health, metadata, inference with raw
and typed contents, bad inputs refused with gRPC status codes and the same messages as
over HTTP, overload shed with ``UNAVAILABLE``, and a new production version answering
over gRPC once promoted.

This process imports ``tritonclient.grpc`` (its own ``inference`` stubs), never the
server's ``serving.oip`` stubs: both register ``inference.*`` in protobuf's pool.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

tritongrpc = pytest.importorskip("tritonclient.grpc")
import grpc  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from serving.oip import GENERATED, ROOT  # noqa: E402 (no stubs imported: see above)
from tests.serving.helpers import promote, serving_environ, v2_body  # noqa: E402
from tests.serving.test_serving_cli import (  # noqa: E402
    clean_env,
    free_port,
    metrics_text,
    model_info,
    request,
    start_serve,
    stop_serve,
    wait_for,
)

MODEL = "digits"
MAX_BODY = 2_000_000  # the 500-digit JSON body HTTP compares with is ~1.2 MB
MAX_BATCH = 1000


@pytest.fixture(scope="module")
def served(s3_server, make_registry, trained, tmp_path_factory):
    """``digits serve`` (2 workers) serving XGBoost over HTTP and gRPC; one work slot per
    worker and no waiting for one, so concurrent requests on a worker are shed."""
    registry = make_registry()
    version = promote(registry, trained["xgboost"])
    port, grpc_port = free_port(), free_port()
    env = clean_env(**serving_environ(s3_server, registry.bucket), DIGITS_ACCESS_LOG="false",
                    DIGITS_GRPC_PORT=str(grpc_port), DIGITS_POLL_INTERVAL_S="0.3",
                    DIGITS_MAX_BODY_BYTES=str(MAX_BODY), DIGITS_MAX_BATCH=str(MAX_BATCH),
                    DIGITS_CONCURRENCY="1", DIGITS_MAX_WAIT_MS="0")
    log = tmp_path_factory.mktemp("grpc") / "serve.log"
    process = start_serve(port, env, log)
    try:
        wait_for(lambda: set(model_info(port).values()) == {version}
                 and len(model_info(port)) == 2, 60, "both workers to load the model")
        client = tritongrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        wait_for(client.is_server_ready, 30, "gRPC ready")
        yield {"client": client, "version": version, "port": port, "grpc_port": grpc_port,
               "registry": registry, "log": log}
        client.close()
    finally:
        assert stop_serve(process) == 0, log.read_text()[-3000:]


def images_input(images: np.ndarray, datatype: str = "UINT8", shape: list[int] | None = None):
    """The images as Triton's client sends them: raw bytes of ``datatype``, ``[N, 784]``."""
    array = images.reshape(shape or (len(images), -1))
    array = array.astype(datatype.lower().replace("fp", "float"))
    tensor = tritongrpc.InferInput("images", list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def refusal(call) -> tuple[str, str]:
    """``(status code name, message)`` of a call the server must refuse."""
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value.status().removeprefix("StatusCode."), caught.value.message()


def http_error(port: int, body: dict) -> tuple[int, str]:
    status, raw, _ = request(port, "POST", f"/v2/models/{MODEL}/infer", json.dumps(body).encode())
    return status, json.loads(raw)["error"]


# --------------------------------------------------------------------------- health, metadata


def test_health_and_metadata(served):
    client, version = served["client"], served["version"]
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, version)
    assert not client.is_model_ready(MODEL, "v-not-served")
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "digits-serving" and server["version"]
    meta = client.get_model_metadata(MODEL, as_json=True)
    assert meta["name"] == MODEL and meta["versions"] == [version]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("images", "UINT8", ["-1", "28", "28"])]
    assert {(t["name"], t["datatype"]) for t in meta["outputs"]} == {
        ("label", "INT64"), ("probabilities", "FP32")}
    # The same document as HTTP's (JSON numbers there, protobuf's int64-as-string here).
    _, raw, _ = request(served["port"], "GET", f"/v2/models/{MODEL}")
    http = json.loads(raw)
    assert (http["name"], http["versions"], http["platform"]) == (
        meta["name"], meta["versions"], meta["platform"])
    assert client.get_model_metadata(MODEL, version, as_json=True)["versions"] == [version]
    assert refusal(lambda: client.get_model_metadata("mnist"))[0] == "NOT_FOUND"
    assert refusal(lambda: client.get_model_metadata(MODEL, "v-not-served"))[0] == "NOT_FOUND"
    assert refusal(lambda: client.is_model_ready("mnist"))[0] == "NOT_FOUND"


# --------------------------------------------------------------------------- inference


def test_500_test_digits_over_grpc_answer_as_http_does(served, trained, mnist):
    client, version = served["client"], served["version"]
    _, _, x_test, y_test, _ = mnist
    images, labels = x_test[-500:], y_test[-500:]
    result = client.infer(MODEL, [images_input(images)], request_id="batch-500")
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == (
        MODEL, version, "batch-500")
    assert len(response.raw_output_contents) == 2  # raw, as Triton answers
    predicted, probabilities = result.as_numpy("label"), result.as_numpy("probabilities")
    assert predicted.dtype == np.int64 and predicted.shape == (500,)
    assert probabilities.dtype == np.float32 and probabilities.shape == (500, 10)
    # The model's float32s bit for bit, and the labels HTTP gives for the same digits.
    np.testing.assert_array_equal(probabilities, trained["xgboost"].proba(images))
    status, raw, _ = request(served["port"], "POST", f"/v2/models/{MODEL}/infer",
                             json.dumps(v2_body(images)).encode())
    assert status == 200
    http = {o["name"]: o["data"] for o in json.loads(raw)["outputs"]}
    np.testing.assert_array_equal(predicted, http["label"])
    assert np.mean(predicted == labels) > 0.8  # XGBoost on 600 digits scores ~0.85 here


def test_grpc_predictions_are_recorded_as_http_ones_are(served, tiny_dataset):
    """The drift metrics are taken where every prediction passes (DigitsModel.predict):
    once the workers have flushed, every image classified (over either transport) is in
    digits_predicted_class_total."""
    import re

    def counts() -> tuple[float, float]:
        text = metrics_text(served["port"])
        recorded = sum(float(value) for value in re.findall(
            r'^digits_predicted_class_total\{class="\d",version="[^"]*"\} (\S+)$', text, re.M))
        found = re.search(r"^digits_predicted_images_total (\S+)$", text, re.M)
        return recorded, float(found.group(1)) if found else 0.0

    wait_for(lambda: counts()[0] == counts()[1], 30, "earlier predictions recorded")
    before = counts()[1]
    served["client"].infer(MODEL, [images_input(tiny_dataset.x_holdout[:37])])
    wait_for(lambda: counts() == (before + 37, before + 37), 30, "37 more images recorded")


@pytest.mark.parametrize("datatype", ["UINT8", "INT64", "FP32", "FP16", "FP64", "UINT16"])
def test_raw_inputs_of_every_numeric_type(served, trained, tiny_dataset, datatype):
    images = tiny_dataset.x_holdout[:8]
    result = served["client"].infer(
        MODEL, [images_input(images, datatype, [8, 28, 28])],
        outputs=[tritongrpc.InferRequestedOutput("probabilities")])
    assert [o.name for o in result.get_response().outputs] == ["probabilities"]
    assert result.as_numpy("label") is None
    np.testing.assert_array_equal(result.as_numpy("probabilities"),
                                  trained["xgboost"].proba(images))


def test_typed_contents_in_and_out(served, trained, tiny_dataset):
    """Values in ``contents`` rather than raw bytes, and typed outputs on request."""
    images = tiny_dataset.x_holdout[:5]
    infer = service_pb2.ModelInferRequest(model_name=MODEL, id="typed")
    tensor = infer.inputs.add(name="images", datatype="UINT8", shape=[5, 784])
    tensor.contents.uint_contents.extend(images.ravel().tolist())
    infer.parameters["binary_data_output"].bool_param = False
    with grpc.insecure_channel(f"127.0.0.1:{served['grpc_port']}") as channel:
        answer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer)
    assert not answer.raw_output_contents and answer.id == "typed"
    outputs = {o.name: o for o in answer.outputs}
    expected = trained["xgboost"].proba(images)
    np.testing.assert_array_equal(outputs["label"].contents.int64_contents,
                                  expected.argmax(axis=1))
    assert list(outputs["probabilities"].shape) == [5, 10]
    np.testing.assert_allclose(np.reshape(outputs["probabilities"].contents.fp32_contents,
                                          (5, 10)), expected, atol=1e-6)


def test_bad_inputs_are_status_codes_with_http_s_messages(served, tiny_dataset):
    client, port = served["client"], served["port"]
    one = tiny_dataset.x_holdout[:1]

    # Wrong shape: the same message as over HTTP.
    wrong = images_input(one.reshape(1, -1)[:, :783].copy())
    code, message = refusal(lambda: client.infer(MODEL, [wrong]))
    assert code == "INVALID_ARGUMENT" and "expected shape" in message
    body = {"inputs": [{"name": "images", "shape": [1, 783], "datatype": "UINT8",
                        "data": [0] * 783}]}
    assert http_error(port, body) == (400, message)

    # Pixels scaled to 0..1: not whole numbers.
    code, message = refusal(lambda: client.infer(MODEL, [
        images_input(one.astype(np.float32) / 255, "FP32")]))
    assert code == "INVALID_ARGUMENT" and "whole numbers" in message

    # A datatype that cannot hold pixels.
    strings = tritongrpc.InferInput("images", [1, 784], "BYTES")
    strings.set_data_from_numpy(np.array([[b"0"] * 784], dtype=np.object_))
    code, message = refusal(lambda: client.infer(MODEL, [strings]))
    assert code == "INVALID_ARGUMENT" and "unsupported datatype 'BYTES'" in message

    # Raw bytes that do not match the shape.
    short = images_input(one)
    short.set_shape([2, 784])  # after the data: the client checks it against them only then
    code, message = refusal(lambda: client.infer(MODEL, [short]))
    assert code == "INVALID_ARGUMENT" and "needs 1568" in message

    # Typed values out of UINT8's range, and in the wrong contents field.
    infer = service_pb2.ModelInferRequest(model_name=MODEL)
    tensor = infer.inputs.add(name="images", datatype="UINT8", shape=[1, 784])
    tensor.contents.uint_contents.extend([300] * 784)
    wrong_field = service_pb2.ModelInferRequest(model_name=MODEL)
    wrong_field.inputs.add(name="images", datatype="UINT8", shape=[1, 784]
                           ).contents.fp32_contents.extend([0.0] * 784)
    with grpc.insecure_channel(f"127.0.0.1:{served['grpc_port']}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for bad, expected in ((infer, "out of range for UINT8"),
                              (wrong_field, "go in contents.uint_contents")):
            with pytest.raises(grpc.RpcError) as caught:
                stub.ModelInfer(bad)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert expected in caught.value.details()

    # Unknown model and version.
    code, message = refusal(lambda: client.infer("mnist", [images_input(one)]))
    assert code == "NOT_FOUND" and "unknown model 'mnist'" in message
    code, message = refusal(lambda: client.infer(MODEL, [images_input(one)],
                                                 model_version="v-not-served"))
    assert code == "NOT_FOUND" and "is not served" in message

    # Over the batch limit, and a message over DIGITS_MAX_BODY_BYTES.
    many = np.zeros((MAX_BATCH + 1, 784), dtype=np.uint8)
    code, message = refusal(lambda: client.infer(MODEL, [images_input(many)]))
    assert code == "RESOURCE_EXHAUSTED" and f"more than {MAX_BATCH} images" in message
    huge = np.zeros((MAX_BODY // 784 + 1, 784), dtype=np.uint8)
    code, message = refusal(lambda: client.infer(MODEL, [images_input(huge)]))
    assert code == "RESOURCE_EXHAUSTED" and "larger than max" in message

    # Still answering, both transports.
    assert client.is_server_live() and client.is_server_ready()
    assert client.infer(MODEL, [images_input(one)]).as_numpy("label").shape == (1,)
    assert request(port, "GET", "/v2/health/ready")[0] == 200
    assert "Traceback" not in served["log"].read_text()


def test_overload_is_unavailable_and_the_server_recovers(served, tiny_dataset):
    """One work slot per worker and no waiting: concurrent calls on a worker are shed."""
    client = served["client"]
    batch = images_input(np.repeat(tiny_dataset.x_holdout[:50], 20, axis=0))  # 1000 images
    stop = threading.Event()

    def call(_: int) -> str:
        try:
            client.infer(MODEL, [batch])
            return "OK"
        except InferenceServerException as error:
            if "overloaded" not in error.message():
                return f"{error.status()}: {error.message()}"
            stop.set()
            return error.status().removeprefix("StatusCode.")

    with ThreadPoolExecutor(8) as pool:
        outcomes: set[str] = set()
        for _ in range(20):
            outcomes |= set(pool.map(call, range(16)))
            if stop.is_set():
                break
    assert outcomes <= {"OK", "UNAVAILABLE"} and "UNAVAILABLE" in outcomes, outcomes
    assert client.infer(MODEL, [images_input(tiny_dataset.x_holdout[:1])]).as_numpy("label").size


def test_a_promoted_version_answers_over_grpc(served, trained, tiny_dataset):
    """Hot swap: the workers load the new production version; gRPC answers with it."""
    client, port = served["client"], served["port"]
    images = tiny_dataset.x_holdout[:10]
    second = promote(served["registry"], trained["baseline"], "better model")
    try:
        wait_for(lambda: set(model_info(port).values()) == {second}, 60,
                 "every worker on the new version")
        result = client.infer(MODEL, [images_input(images)])
        assert result.get_response().model_version == second
        np.testing.assert_allclose(result.as_numpy("probabilities"),
                                   trained["baseline"].proba(images), rtol=0, atol=1e-6)
        assert client.get_model_metadata(MODEL, as_json=True)["versions"] == [second]
        assert client.is_model_ready(MODEL, second)
        assert not client.is_model_ready(MODEL, served["version"])
    finally:  # the module's server serves the XGBoost version again, whatever runs next
        served["registry"].rollback("test over")
        wait_for(lambda: set(model_info(port).values()) == {served["version"]}, 60,
                 "every worker back on the first version")


# --------------------------------------------------------------------------- no model yet


def test_not_ready_until_a_model_is_loaded(s3_server, make_registry, tmp_path):
    registry = make_registry()
    port, grpc_port = free_port(), free_port()
    env = clean_env(**serving_environ(s3_server, registry.bucket), DIGITS_ACCESS_LOG="false",
                    DIGITS_GRPC_PORT=str(grpc_port))
    process = start_serve(port, env, tmp_path / "serve.log", workers=1)
    try:
        client = tritongrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        wait_for(lambda: _live(client), 30, "gRPC live")
        assert not client.is_server_ready() and not client.is_model_ready(MODEL)
        assert client.get_model_metadata(MODEL, as_json=True).get("versions", []) == []
        code, message = refusal(lambda: client.infer(
            MODEL, [images_input(np.zeros((1, 784), dtype=np.uint8))]))
        assert code == "UNAVAILABLE" and "not ready" in message
        client.close()
    finally:
        assert stop_serve(process) == 0


def _live(client) -> bool:
    try:
        return client.is_server_live()
    except InferenceServerException:
        return False


# --------------------------------------------------------------------------- the stubs


def test_committed_stubs_are_what_make_grpc_stubs_writes(tmp_path):
    """``make grpc-stubs`` on the committed proto reproduces the committed modules."""
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) generates the stubs")
    # In a process of its own: protoc in this one, after the server's and Triton's
    # descriptors were loaded by other tests, crashed it.
    subprocess.run([sys.executable, "-m", "serving.oip", str(tmp_path)], cwd=ROOT, check=True,
                   capture_output=True, timeout=120)
    for name in GENERATED:
        assert (tmp_path / name).read_bytes() == (ROOT / name).read_bytes(), f"{name} is stale"
