"""The sync worker under a real gunicorn: a flood gets fast 503s (never an error), a light
client keeps its connection."""

from __future__ import annotations

import contextlib
import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tests.serving.helpers import promote, v2_body
from tests.serving.test_serving_cli import (
    ROOT,
    clean_env,
    free_port,
    model_info,
    request,
    stop_serve,
    wait_for,
)


def shed_count(port: int) -> float:
    metrics = request(port, "GET", "/metrics")[1].decode()
    return sum(float(line.split()[1]) for line in metrics.splitlines()
               if line.startswith("digits_http_shed_total "))


@contextlib.contextmanager
def one_worker(s3_server, registry, model_dir, log_path, **env: str) -> Iterator[int]:
    """``digits serve --workers 1`` on a freshly promoted model; yields its port once loaded."""
    version = promote(registry, model_dir)
    port = free_port()
    environ = clean_env(DIGITS_S3_ENDPOINT=s3_server.endpoint,
                        DIGITS_S3_ACCESS_KEY=s3_server.access_key,
                        DIGITS_S3_SECRET_KEY=s3_server.secret_key,
                        DIGITS_BUCKET=registry.bucket, DIGITS_ACCESS_LOG="false", **env)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"], cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        wait_for(lambda: model_info(port) and set(model_info(port).values()) == {version},
                 60, "the worker to load the model")
        yield port
    finally:
        stop_serve(process)


def test_a_flood_gets_fast_503s_with_retry_after_and_every_request_an_answer(
        s3_server, make_registry, trained, tiny_dataset, tmp_path):
    with one_worker(s3_server, make_registry(), trained["xgboost"], tmp_path / "serve.log",
                    DIGITS_MAX_WAIT_MS="20") as port:
        body = json.dumps(v2_body(np.repeat(tiny_dataset.x_holdout, 8, axis=0)[:2048])).encode()
        shed_before = shed_count(port)  # the readiness polls may have waited too

        def infer(_):
            return request(port, "POST", "/v2/models/digits/infer", body)

        with ThreadPoolExecutor(48) as pool:
            answers = list(pool.map(infer, range(96)))
        statuses = [status for status, _, _ in answers]
        assert set(statuses) <= {200, 503}, statuses
        assert statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses
        for status, payload, headers in answers:
            if status == 503:
                assert headers["Retry-After"] == "1"
                assert "overloaded" in json.loads(payload)["error"]
        assert shed_count(port) - shed_before == statuses.count(503)


def test_a_light_client_keeps_its_connection_and_never_blocks_another(
        s3_server, make_registry, trained, tiny_dataset, tmp_path):
    """Sync workers keep one idle connection open, and still answer new ones at once."""
    body = json.dumps(v2_body(tiny_dataset.x_holdout[:1])).encode()
    headers = {"Content-Type": "application/json"}
    with one_worker(s3_server, make_registry(), trained["xgboost"],
                    tmp_path / "serve.log") as port:
        kept = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        sockets = set()
        for _ in range(20):
            kept.request("POST", "/v2/models/digits/infer", body=body, headers=headers)
            response = kept.getresponse()
            assert response.status == 200 and response.read()
            assert response.getheader("Connection") != "close"
            sockets.add(kept.sock)
        assert len(sockets) == 1, "the connection was not kept between requests"

        # The one worker holds that idle connection; a second client is answered at
        # once (not after the keep-alive time) and, one kept connection being the
        # limit, told the connection closes.
        started = time.monotonic()
        status, _, answer_headers = request(port, "POST", "/v2/models/digits/infer", body)
        assert status == 200 and time.monotonic() - started < 2
        assert answer_headers.get("Connection") == "close"
        kept.request("POST", "/v2/models/digits/infer", body=body, headers=headers)
        response = kept.getresponse()
        assert response.status == 200 and response.read() and kept.sock in sockets
        kept.close()
