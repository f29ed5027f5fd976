"""``digits serve`` (``serving.cli.main``): arguments, and the real server process.

The slow tests run the real thing: ``python -m serving.cli`` → granian with
two worker processes → the real ``weed`` S3 server, under concurrent load
while the production pointer moves.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from email.message import Message
from pathlib import Path

import numpy as np
import pytest

from serving import cli
from serving.settings import ServeSettings
from tests.serving.helpers import png_bytes, promote, serving_environ, v2_body
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


def test_arguments_and_server(monkeypatch):
    assert cli.main(["--workers", "0"]) == 2
    args = cli.build_parser().parse_args(["--port", "9000"])
    assert (args.port, args.host, args.workers) == (9000, "0.0.0.0", None)
    monkeypatch.setenv("DIGITS_WORKERS", "many")
    assert cli.main([]) == 2
    monkeypatch.setenv("DIGITS_WORKERS", "3")
    monkeypatch.setenv("DIGITS_HEADER_TIMEOUT_S", "4")
    assert cli.main(["--port", "9090", "--metrics-port", "9090"]) == 2, "one port for both"
    server = cli.granian_server(ServeSettings(), host="127.0.0.1", port=1234)
    assert (server.bind_addr, server.bind_port, server.workers) == ("127.0.0.1", 1234, 3)
    assert server.target == cli.TARGET and server.factory
    assert server.http1_settings.header_read_timeout == 4000


def test_grpc_port_arguments(monkeypatch):
    monkeypatch.delenv("DIGITS_METRICS_PORT", raising=False)
    assert cli.main(["--port", "9000", "--grpc-port", "9000"]) == 2, "one port for both"
    assert cli.main(["--port", "9000", "--grpc-port", "9090"]) == 2, "the metrics port"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.port_taken("127.0.0.1", port)
        assert cli.main(["--host", "127.0.0.1", "--grpc-port", str(port)]) == 2
    assert cli.port_taken("127.0.0.1", port) is None
    assert ServeSettings(grpc_port=0).grpc_port == 0  # 0: not served


def test_metrics_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with cli.metrics_directory() as directory:
        assert Path(directory).is_dir()
    assert not Path(directory).exists()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "given"))
    with cli.metrics_directory() as directory:
        assert directory == str(tmp_path / "given") and Path(directory).is_dir()
    assert Path(directory).is_dir(), "a given directory is left in place"


# --------------------------------------------------------------------------- the real server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DIGITS_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    return {**env, **extra}


#: The metrics port of each server a test started, by its public port.
METRICS_PORTS: dict[int, int] = {}


def start_serve(port: int, env: dict[str, str], log: Path, workers: int = 2
                ) -> subprocess.Popen:
    """``digits serve`` on ``port``, its metrics (and gRPC, unless ``env`` names a port for
    it) on free ports of their own: never the defaults, which another server may hold."""
    METRICS_PORTS[port] = free_port()
    env = {"DIGITS_GRPC_PORT": str(free_port()), **env,
           "DIGITS_METRICS_PORT": str(METRICS_PORTS[port])}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "--host", "127.0.0.1", "--port", str(port),
             "--workers", str(workers)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def metrics_text(port: int) -> str:
    """The aggregated metrics of the server whose public port is ``port``."""
    return request(METRICS_PORTS[port], "GET", "/metrics")[1].decode()


def request(port: int, method: str, path: str, body: bytes | None = None,
            content_type: str = "application/json") -> tuple[int, bytes, Message]:
    """One request on a new connection: status, body and headers (names in any case)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Content-Type": content_type} if body is not None else {}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read(), response.headers
    finally:
        connection.close()




def model_info(port: int) -> dict[str, str]:
    """``{pid: version}`` for every live worker, from the aggregated /metrics."""
    text = metrics_text(port)
    serving = {}
    for labels, value in re.findall(r"^digits_model_info\{([^}]*)\} (\S+)$", text, re.M):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if float(value) == 1.0:
            serving[fields["pid"]] = fields["version"]
    return serving


def reload_failures(port: int) -> float:
    text = metrics_text(port)
    found = re.search(r'^digits_model_reloads_total\{result="failure"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def stop_serve(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)  # granian stops its workers gracefully
    try:
        return process.wait(40)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise


@pytest.mark.slow
def test_hot_rollover_under_load_with_the_real_server(s3_server, make_registry, trained,
                                                    tiny_dataset, tmp_path):
    registry = make_registry()
    first = promote(registry, trained["baseline"])
    port = free_port()
    env = clean_env(**serving_environ(s3_server, registry.bucket),
                    DIGITS_POLL_INTERVAL_S="0.3", DIGITS_HOME=str(tmp_path / "home"))
    process = start_serve(port, env, tmp_path / "serve.log")
    try:
        wait_for(lambda: request(port, "GET", "/v2/health/ready")[0] == 200, 60, "ready")
        wait_for(lambda: len(model_info(port)) == 2, 30, "both workers loaded")
        assert set(model_info(port).values()) == {first}
        workers = set(model_info(port))

        images = tiny_dataset.x_holdout[:4]
        body = json.dumps(v2_body(images)).encode()
        kinds = {first: "baseline"}
        expected = {kind: trained[kind].proba(images) for kind in ("baseline", "xgboost")}
        # (request start, status, version or error, answer consistent with that version)
        results: list[tuple[float, int, str | None, bool]] = []
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    status, raw, headers = request(port, "POST", "/v2/models/digits/infer", body)
                except OSError as error:  # a refused or reset connection is a failure too
                    results.append((started, 0, repr(error), False))
                    continue
                if status != 200:
                    results.append((started, status, raw.decode()[:200], False))
                    continue
                answer = json.loads(raw)
                version = answer["model_version"]
                proba = np.asarray(answer["outputs"][1]["data"]).reshape(4, 10)
                kind = kinds.get(version)
                consistent = (headers.get("X-Model-Version") == version and kind is not None
                              and np.allclose(proba, expected[kind], atol=1e-6))
                results.append((started, status, version, consistent))

        threads = [threading.Thread(target=load) for _ in range(6)]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: len(results) >= 20, 30, "traffic on the first version")
            second = promote(registry, trained["xgboost"], "better model")
            kinds[second] = "xgboost"
            wait_for(lambda: set(model_info(port).values()) == {second}, 30,
                     "every worker on the new version")
            switched_at = time.monotonic()
            answered = len(results)
            wait_for(lambda: len(results) >= answered + 20, 30, "traffic on the new version")

            # A corrupted new version is refused by every worker; the old keeps serving.
            bad = promote(registry, trained["xgboost"], "corrupted later")
            data = b"corrupt" * 100
            registry.client.put_object(registry.bucket, f"versions/{bad}/model.ubj",
                                       io.BytesIO(data), len(data))
            wait_for(lambda: reload_failures(port) >= 2, 30, "both workers refusing")
            answered = len(results)
            wait_for(lambda: len(results) >= answered + 10, 30, "traffic after the refusal")
        finally:
            stop.set()
            for thread in threads:
                thread.join()

        failures = [r for r in results if r[1] != 200 or not r[3]]
        assert not failures, failures[:5]
        assert len(results) > 100
        versions = [r[2] for r in results]
        assert first in versions and second in versions
        assert set(versions) == {first, second}, "the corrupted version never answered"
        after = [r[2] for r in results if r[0] > switched_at]
        assert after and set(after) == {second}
        assert model_info(port) == {pid: second for pid in workers}, "same workers, new model"

        # Bad input against the real workers: 4xx, and no worker dies.
        for path, payload, content_type, status in [
            ("/v2/models/digits/infer", b"{oops", "application/json", 400),
            ("/v2/models/digits/infer", b"x" * 17_000_000, "application/json", 413),
            ("/predict", png_bytes(images[0])[:50], "image/png", 400),
            ("/predict", b"hello", "text/plain", 415),
        ]:
            try:
                got = request(port, "POST", path, payload, content_type)[0]
            except OSError:  # an oversized body may be refused before it is all sent
                got = 413 if status == 413 else 0
            assert got == status, path
        assert set(model_info(port)) == workers
    finally:
        code = stop_serve(process)
    assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]
    log_lines = (tmp_path / "serve.log").read_text().splitlines()
    access = [json.loads(line) for line in log_lines if '"event":"access"' in line]
    server_errors = [entry for entry in access if entry["status"] >= 500
                     and entry["route"] != "/v2/health/ready"]  # 503 before the first load
    assert access and not server_errors
    refused = [json.loads(line) for line in log_lines if '"event":"model_refused"' in line]
    assert refused and "sha256" in refused[0]["error"]


@pytest.mark.slow
def test_digits_serve_starts_the_embedded_store(tmp_path):
    """No S3 configured: ``digits serve`` starts (or joins) the store under DIGITS_HOME."""
    port = free_port()
    home = tmp_path / "home"
    env = clean_env(DIGITS_HOME=str(home))
    process = start_serve(port, env, tmp_path / "serve.log")
    try:
        wait_for(lambda: request(port, "GET", "/v2/health/live")[0] == 200, 60, "live")
        assert (home / "s3" / "server.json").exists()
        status, raw, _ = request(port, "GET", "/v2/health/ready")
        assert status == 503 and json.loads(raw) == {"ready": False}
        status, raw, _ = request(port, "POST", "/v2/models/digits/infer", b"{}")
        assert status == 503 and "not ready" in json.loads(raw)["error"]
    finally:
        code = stop_serve(process)
    assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]
    assert not (home / "s3" / "server.json").exists(), "the store it started is stopped"
