"""The real server (``digits serve``) under hostile traffic: slow clients, floods, work
bombs, and every route refusing bad requests the same way."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from bench import loadgen
from serving.hooks import RETRY_AFTER_S, SECURITY_HEADERS
from tests.serving.helpers import make_app, png_bytes, promote, serving_environ, v2_body
from tests.serving.test_serving_cli import (
    clean_env,
    free_port,
    metrics_text,
    model_info,
    request,
    start_serve,
    stop_serve,
    wait_for,
)

INFER = "/v2/models/digits/infer"
#: Every route that does work, with a well-formed body for it.
WORK_ROUTES = {
    INFER: "application/json",
    "/v1/models/digits:predict": "application/json",
    "/predict": "application/json",
    "/feedback": "application/json",
}


def shed_count(port: int) -> float:
    return sum(float(line.split()[1]) for line in metrics_text(port).splitlines()
               if line.startswith("digits_http_shed_total "))


@contextlib.contextmanager
def serving(s3_server, registry, model_dir, log_path, workers: int = 1,
            **env: str) -> Iterator[int]:
    """``digits serve`` on a freshly promoted model; yields its port once every worker loaded."""
    version = promote(registry, model_dir)
    port = free_port()
    environ = clean_env(**serving_environ(s3_server, registry.bucket),
                        DIGITS_ACCESS_LOG="false", **env)
    process = start_serve(port, environ, log_path, workers=workers)
    try:
        wait_for(lambda: len(model_info(port)) == workers
                 and set(model_info(port).values()) == {version}, 60, "the model to load")
        yield port
    finally:
        stop_serve(process)


# --------------------------------------------------------------------------- slow clients


def test_slow_and_idle_clients_never_hold_what_others_need(
        s3_server, make_registry, trained, tiny_dataset, tmp_path):
    """Far more slow connections than workers x threads: a good client and the probes are
    still answered, each within a second."""
    with serving(s3_server, make_registry(), trained["xgboost"], tmp_path / "serve.log",
                 workers=2, DIGITS_THREADS="4") as port:
        body = json.dumps(v2_body(tiny_dataset.x_holdout[:1])).encode()
        requests = [loadgen.get_request("/v2/health/ready", port),
                    loadgen.get_request("/v2/health/live", port),
                    loadgen.build_request(INFER, body, port=port)]
        # 48 connections trickling headers, a body, or saying nothing: 6x the threads.
        result = loadgen.hostile(port, requests, slow_clients=48, duration=6, interval=1.0,
                                 timeout=1.0)
        assert result.sent >= 30
        assert result.answered == result.sent, f"{result.answered}/{result.sent} answered"
        assert result.percentile(100) < 1.0


def test_a_body_slower_than_the_timeout_gets_408_and_frees_nothing_it_held(
        s3_server, make_registry, trained, tiny_dataset, tmp_path):
    with serving(s3_server, make_registry(), trained["xgboost"], tmp_path / "serve.log",
                 DIGITS_BODY_TIMEOUT_S="1") as port, socket.create_connection(
            ("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     "Content-Length: 1000\r\n\r\n{".encode())
        started = time.monotonic()
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert 0.9 < time.monotonic() - started < 5
        assert b"DIGITS_BODY_TIMEOUT_S" in answer
        assert request(port, "GET", "/v2/health/ready")[0] == 200


# --------------------------------------------------------------------------- floods


def test_a_flood_gets_fast_503s_with_retry_after_and_every_request_an_answer(
        s3_server, make_registry, trained, tiny_dataset, tmp_path):
    with serving(s3_server, make_registry(), trained["xgboost"], tmp_path / "serve.log",
                 DIGITS_MAX_WAIT_MS="20", DIGITS_CONCURRENCY="1") as port:
        body = json.dumps(v2_body(np.repeat(tiny_dataset.x_holdout, 8, axis=0)[:2048])).encode()
        shed_before = shed_count(port)

        def infer(_):
            return request(port, "POST", INFER, body)

        with ThreadPoolExecutor(48) as pool:
            answers = list(pool.map(infer, range(96)))
        statuses = [status for status, _, _ in answers]
        assert set(statuses) <= {200, 503}, statuses
        assert statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses
        for status, payload, headers in answers:
            if status == 503:
                assert headers["Retry-After"] == str(RETRY_AFTER_S)
                assert "overloaded" in json.loads(payload)["error"]
        assert shed_count(port) - shed_before == statuses.count(503)
        # Shed requests are requests like any other: counted by route and status.
        assert 'route="/v2/models/<name>/infer",status="503"' in metrics_text(port)


def test_a_kept_connection_serves_many_requests_and_blocks_no_one(
        s3_server, make_registry, trained, tiny_dataset, tmp_path):
    body = json.dumps(v2_body(tiny_dataset.x_holdout[:1])).encode()
    headers = {"Content-Type": "application/json"}
    with serving(s3_server, make_registry(), trained["xgboost"],
                 tmp_path / "serve.log") as port:
        kept = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        sockets = set()
        for _ in range(20):
            kept.request("POST", INFER, body=body, headers=headers)
            response = kept.getresponse()
            assert response.status == 200 and response.read()
            sockets.add(kept.sock)
        assert len(sockets) == 1, "the connection was not kept between requests"
        # While that connection sits open, another client is answered at once.
        started = time.monotonic()
        assert request(port, "POST", INFER, body)[0] == 200
        assert time.monotonic() - started < 1
        kept.close()


def binary_infer_request(images: np.ndarray, port: int) -> bytes:
    """A v2 inference request in the binary tensor extension, as Triton's client sends it."""
    header = json.dumps({"inputs": [{
        "name": "images", "shape": [len(images), 784], "datatype": "UINT8",
        "parameters": {"binary_data_size": images.size}}]}).encode()
    return loadgen.build_request(INFER, header + images.astype(np.uint8).tobytes(),
                                 content_type="application/octet-stream", port=port,
                                 headers={"Inference-Header-Content-Length": str(len(header))})


def test_probes_never_wait_behind_inference(s3_server, make_registry, tiny_models,
                                            tiny_dataset, tmp_path):
    """Far more clients than a worker works on at once, each sending batches that take the
    CNN tens of milliseconds (bodies of ~235 KB, which the event loop used to run itself,
    one after another, so a probe waited behind all of them): every probe is answered
    within a second, and every batch is answered or shed, none lost."""
    batch = np.resize(tiny_dataset.x_holdout, (300, 28, 28))
    with serving(s3_server, make_registry(), tiny_models["cnn"], tmp_path / "serve.log",
                 workers=1) as port:
        flood = [binary_infer_request(batch, port)]
        with ThreadPoolExecutor(1) as pool:
            result = pool.submit(loadgen.run, port, flood, concurrency=32, duration=5.0,
                                 warmup=0)
            time.sleep(1.0)  # every flood client has a batch in the worker by now
            waits = []
            while not result.done():
                started = time.monotonic()
                assert request(port, "GET", "/v2/health/ready")[0] == 200
                waits.append(time.monotonic() - started)
                time.sleep(0.05)
            statuses = result.result().statuses
    assert max(waits) < 1.0, f"a probe waited {max(waits):.2f} s behind inference: {waits}"
    assert len(waits) >= 10, waits
    assert set(statuses) <= {200, 503} and statuses.get(200), statuses


def test_each_request_runs_where_nothing_waits_behind_it(s3_server, make_registry):
    """The front's choice, request by request: a probe always on the event loop; one
    image there only while no thread of the worker is busy; batches on the lane, one
    after another; uploads and reads while busy on the pool."""
    from types import SimpleNamespace

    from serving.front import Front

    app, server = make_app(s3_server, make_registry())
    front = Front(app)
    try:
        def place(method: str, path: str, body: bytes = b""):
            return front.place(SimpleNamespace(method=method, path=path), body)

        one = json.dumps(v2_body(np.full((1, 28, 28), 255, np.uint8))).encode()
        batch = json.dumps(v2_body(np.full((64, 28, 28), 255, np.uint8))).encode()
        loop = None
        assert place("GET", "/v2/health/ready") is loop and place("POST", INFER, one) is loop
        assert place("GET", "/v2/models/digits") is loop
        assert place("POST", INFER, batch) is front.lane
        assert place("POST", "/predict", one) is front.pool
        front.pooled = 1  # a thread of the worker is busy: work waits its turn off the loop
        assert place("POST", INFER, one) is front.lane
        assert place("GET", "/v2/models/digits") is front.pool
        assert place("GET", "/v2/health/ready") is loop and place("GET", "/v2/health/live") is loop
    finally:
        front.pool.shutdown()
        front.lane.shutdown()
        server.model.stop()


# --------------------------------------------------------------------------- work bombs


def bomb_png(side: int = 5000) -> bytes:
    """A 1-bit PNG that declares ``side`` x ``side`` pixels in a few kilobytes."""
    buffer = io.BytesIO()
    Image.new("1", (side, side), 0).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def multipart(files: list[bytes]) -> tuple[bytes, str]:
    boundary = "digitsboundary"
    parts = [(f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
              f"filename=\"{i}.png\"\r\nContent-Type: image/png\r\n\r\n").encode()
             + data + b"\r\n" for i, data in enumerate(files)]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), \
        f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize(("files", "words"), [
    ([bomb_png()] * 1000, "images exceed the limit"),           # the 16 MiB of bombs
    ([bomb_png()] * 3, "image too large"),                      # each over the image limit
    ([bomb_png(3000)] * 2, "DIGITS_MAX_REQUEST_PIXELS"),        # each fine, together not
], ids=["thousand-bombs", "giant-images", "over-the-request-budget"])
def test_a_work_bomb_is_refused_fast_and_the_server_keeps_serving(
        s3_server, make_registry, trained, tiny_dataset, tmp_path, files, words):
    with serving(s3_server, make_registry(), trained["xgboost"],
                 tmp_path / "serve.log") as port:
        body, content_type = multipart(files)
        started = time.perf_counter()
        status, payload, _ = request(port, "POST", "/predict", body, content_type)
        elapsed = time.perf_counter() - started
        assert status == 413, payload[:300]
        assert words in json.loads(payload)["error"]
        assert elapsed < 0.5, f"refusing took {elapsed:.2f} s"
        digit = png_bytes(tiny_dataset.x_holdout[0])
        assert request(port, "POST", "/predict", digit, "image/png")[0] == 200
        assert request(port, "GET", "/v2/health/live")[0] == 200


# --------------------------------------------------------------------------- one path


def test_every_route_refuses_malformed_and_oversized_requests_the_same_way(
        s3_server, make_registry, trained, tmp_path):
    """Through the real transport: the same statuses, the same error body, the same headers."""
    with serving(s3_server, make_registry(), trained["xgboost"], tmp_path / "serve.log",
                 DIGITS_MAX_BODY_BYTES="100000") as port:
        for path, content_type in WORK_ROUTES.items():
            for body, status in ((b"{oops", 400), (b"x" * 200_000, 413)):
                try:
                    got, payload, headers = request(port, "POST", path, body, content_type)
                except OSError:  # refused before it was all sent: the status was sent first
                    pytest.fail(f"{path}: the connection broke instead of a {status}")
                assert got == status, (path, payload[:200])
                assert set(json.loads(payload)) == {"error"}, path
                assert headers["Content-Type"] == "application/json", path
                for name, value in SECURITY_HEADERS:
                    assert headers[name] == value, (path, name)


def chunked(port: int, path: str, pieces: list[bytes]) -> tuple[int, bytes]:
    """POST ``pieces`` with ``Transfer-Encoding: chunked`` (no Content-Length)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", path, body=iter(pieces), encode_chunked=True,
                           headers={"Content-Type": "application/json",
                                    "Transfer-Encoding": "chunked"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_a_body_is_read_whatever_its_framing(s3_server, make_registry, trained,
                                             tiny_dataset, tmp_path):
    """A declared length (read whole), chunks (counted as they come, and refused past the
    limit) and no body at all (a probe) all reach the same route."""
    body = json.dumps(v2_body(tiny_dataset.x_holdout[:3])).encode()
    with serving(s3_server, make_registry(), trained["xgboost"], tmp_path / "serve.log",
                 DIGITS_MAX_BODY_BYTES="100000") as port:
        status, declared, _ = request(port, "POST", INFER, body)
        assert status == 200
        pieces = [body[start:start + 1000] for start in range(0, len(body), 1000)]
        assert len(pieces) > 2
        assert chunked(port, INFER, pieces) == (200, declared)
        status, refusal = chunked(port, INFER, [b" " * 60_000, b" " * 60_000, body])
        assert status == 413 and "too large" in json.loads(refusal)["error"]
        assert request(port, "GET", "/v2/health/ready")[0] == 200


def test_every_route_sheds_the_same_way_when_no_slot_comes_free(
        s3_server, make_registry, trained):
    app, server = make_app(s3_server, make_registry(), concurrency=1, max_wait_ms=0)
    client = app.test_client()
    server.admission.enter(time.monotonic())  # the one work slot is taken
    try:
        for path, content_type in WORK_ROUTES.items():
            response = client.post(path, data=b"{}", content_type=content_type)
            assert response.status_code == 503, path
            assert response.headers["Retry-After"] == str(RETRY_AFTER_S), path
            assert "overloaded" in response.json["error"], path
        assert client.get("/v2/health/live").status_code == 200, "probes are never shed"
    finally:
        server.admission.leave()
        server.model.stop()
    text = server.metrics.render()[0].decode()
    assert f"digits_http_shed_total {float(len(WORK_ROUTES))}" in text


# --------------------------------------------------------------------------- rate limits


def test_a_clients_rate_limit_holds_whichever_worker_answers(
        s3_server, make_registry, trained, tiny_dataset, tmp_path):
    """Two workers, one SQLite file of counts (digits serve makes it): a limit of 5 lets
    exactly 5 requests through, over connections the kernel spreads across both."""
    digit = png_bytes(tiny_dataset.x_holdout[0])
    with serving(s3_server, make_registry(), trained["xgboost"], tmp_path / "serve.log",
                 workers=2, DIGITS_PREDICT_RATE_LIMIT="5/minute") as port:
        answers = [request(port, "POST", "/predict", digit, "image/png") for _ in range(12)]
    statuses = [status for status, _, _ in answers]
    assert statuses.count(200) == 5 and statuses.count(429) == 7, statuses
    refused = next(answer for answer in answers if answer[0] == 429)
    assert int(refused[2]["Retry-After"]) > 0
    assert "too many requests" in json.loads(refused[1])["error"]


def _open_and_count(uri: str, start, results) -> None:
    from serving.ratelimit import SQLiteStorage

    start.wait()
    try:
        results.put(SQLiteStorage(uri).incr("client", 60))
    except Exception as error:  # reported to the test, which names it
        results.put(repr(error))


def test_workers_starting_together_all_open_the_shared_count_file(tmp_path):
    """Workers start at once and all switch a fresh SQLite file to WAL; none may die of
    "database is locked" (one did in CI: SQLite skips its busy timeout for that switch).
    Before the fix this stress failed 2-7 of 480 opens."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for trial in range(40):
        start, results = context.Barrier(12), context.Queue()
        uri = f"sqlite://{tmp_path}/limits-{trial}.db"
        workers = [context.Process(target=_open_and_count, args=(uri, start, results))
                   for _ in range(12)]
        for worker in workers:
            worker.start()
        counts = [results.get(timeout=30) for _ in workers]
        for worker in workers:
            worker.join()
        assert sorted(counts) == list(range(1, 13)), counts


def test_the_client_is_the_address_the_trusted_proxies_saw(s3_server, make_registry, trained):
    """Behind one trusted proxy the limit keys on X-Forwarded-For's last hop; without a
    trusted proxy that header is the client's own word and changes nothing."""
    registry = make_registry()
    promote(registry, trained["xgboost"])
    for hops, spoofed_limited in ((1, False), (0, True)):
        app, server = make_app(s3_server, registry, trusted_proxy_hops=hops,
                               predict_rate_limit="2/minute")
        client = app.test_client()
        try:
            assert server.model.wait_ready(30)
            for index in range(3):  # a new address each time: never over its limit
                response = client.post("/predict", json={"pixels": [0] * 784},
                                       headers={"X-Forwarded-For": f"203.0.113.{index}"})
                assert (response.status_code == 429) == (spoofed_limited and index == 2), \
                    (hops, index, response.status_code)
        finally:
            server.model.stop()
