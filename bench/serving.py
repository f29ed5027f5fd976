"""Serving benchmark: our server vs MLServer vs in-process predict (XGBoost), and the CNN.

    python bench/serving.py [--duration 3] [--concurrency 1,8,32] [--batches 1,64]
                            [--no-mlserver] [--no-grpc] [--no-cnn] [--cnn-dir DIR]
                            [--json results.json]

What it does, in one run (about 2-3 minutes on 2 cores; the first run also
trains the model, ~1 minute, and installs MLServer into ``.bench-venv/``):

1. trains an XGBoost model on real MNIST (``DIGITS_MNIST_DIR`` or
   ``../shared/data/mnist``) and writes its inference form as deploy does
   (the kept trees as ONNX, checked on 2,000 test digits), cached under
   ``.digits/bench/``;
2. publishes it to a real registry (an embedded ``weed`` S3 store) and starts
   ``digits serve`` (granian) on it, exactly as in production: the trees on
   onnxruntime;
3. starts MLServer 1.7 (``mlserver-xgboost``) on the same booster file, in its
   own virtualenv (it pins ``uvloop==0.21.0`` and more); it has no ONNX
   runtime, so it serves the booster through XGBoost;
4. checks that both servers and the in-process model return the same
   probabilities for the same digits;
5. measures requests/s and p50/p99 latency for single images and 64-image
   batches at several concurrency levels (closed loop, keep-alive, 127.0.0.1
   only), over HTTP (JSON, and binary for 64-image batches) and over our gRPC
   port (``ModelInfer`` with ``raw_input_contents``, one connection per client),
   plus the in-process ``predict_proba`` limit, and prints a table and the ratios;
6. measures what a well-behaved client gets while slow clients (trickling
   headers or a body a byte every 2 s, or idle) hold 3 and 24 connections,
   against both servers;
7. the model users get: a CNN of the production architecture (trained briefly
   on the same digits and cached, or ``--cnn-dir``: e.g. a downloaded
   production version), exported and checked as deploy does, is served by
   ``digits serve`` through onnxruntime and measured end to end (single
   images and 64-image batches, JSON, binary and gRPC), beside its in-process
   predict on onnxruntime and on Keras (the framework it was trained in).

MLServer runs in its best configuration measured here: ``parallel_workers=0``
(inference in the HTTP process; its default of 1 adds a hop to a worker
process and was ~10-40% slower) and ``OMP_NUM_THREADS=1`` (with XGBoost's
default of all cores, its OpenMP threads fight the HTTP process for the two
cores and latency goes to hundreds of milliseconds). Ours runs as
``digits serve`` does by default (2 worker processes, each working on 2
requests at once, one thread per forward pass).
``BENCH_MLSERVER_PARALLEL_WORKERS`` overrides MLServer's setting; ``DIGITS_*``
variables reach our server.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
#: Connections in the overload row, and the batch size that also gets a binary-payload row.
OVERLOAD_CONCURRENCY = 256
BINARY_BATCH = 64
BENCH = Path(__file__).resolve().parent
for _path in (BENCH, ROOT):  # ROOT first: ``serving`` is the package, not this file
    if str(_path) in sys.path:
        sys.path.remove(str(_path))
    sys.path.insert(0, str(_path))

import loadgen  # noqa: E402

from components.datafiles import load_mnist  # noqa: E402
from components.models import create_model, load_model  # noqa: E402
from components.watch import REFERENCE_FILE  # noqa: E402

MODEL_NAME = "digits"
#: Model size: big enough to be a real model, small enough to train in about a minute here.
TRAIN_SIZE = 6000
ROUNDS = 40
DEPTH = 6
#: The benchmark CNN: the production architecture and test-time views, trained briefly
#: (its speed does not depend on how well it learned).
CNN_EPOCHS = 2
MLSERVER_PACKAGES = ["mlserver==1.7.1", "uvloop==0.21.0", "xgboost-cpu", "scikit-learn"]
MLSERVER_NO_DEPS = ["mlserver-xgboost==1.7.1"]  # it would pull the 500 MB CUDA xgboost
READY_TIMEOUT_S = 120
#: Untimed load each server gets per batch size before the first measured cell.
WARM_UP_S = 2.0
#: Seconds the well-behaved client asks while slow clients hold connections.
HOSTILE_DURATION_S = 10.0


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def mnist_dir() -> Path:
    path = Path(os.environ.get("DIGITS_MNIST_DIR") or ROOT.parent / "shared" / "data" / "mnist")
    if not path.is_dir():
        sys.exit(f"MNIST not found at {path}; set DIGITS_MNIST_DIR")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((loadgen.LOCALHOST, 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{what} exited with {process.returncode} before becoming ready")
        with contextlib.suppress(OSError, urllib.error.HTTPError):
            if urllib.request.urlopen(url, timeout=2).status == 200:
                return
        time.sleep(0.2)
    sys.exit(f"{what} not ready after {READY_TIMEOUT_S}s")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the process we started (its own session), then wait."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# --------------------------------------------------------------------------- model


def trained_model(x_train, y_train, x_test, y_test) -> tuple[Path, float]:
    """Train (or reuse) the benchmark model with its inference form; directory and accuracy.

    The ONNX export is written and checked as deploy does at promotion, so our
    server runs what production runs; MLServer serves the booster file itself
    (it has no ONNX runtime). The two answer the same probabilities (checked
    before measuring).
    """
    from components.export import export_checked

    directory = ROOT / ".digits" / "bench" / f"xgboost-raw-{TRAIN_SIZE}-{ROUNDS}-{DEPTH}"
    info_path = directory / "bench.json"
    if info_path.exists():
        if not (directory / REFERENCE_FILE).exists():  # cached before references existed
            with_reference(load_model(directory), directory, x_train, y_train)
        info = json.loads(info_path.read_text())
        if "export" not in info:  # cached before the bench served exports
            info["export"] = export_checked(directory, x_test[:2000])
            info_path.write_text(json.dumps(info))
        return directory, info["accuracy"]
    log(f"training XGBoost ({ROUNDS} rounds, depth {DEPTH}) on {TRAIN_SIZE} MNIST digits…")
    started = time.perf_counter()
    # Raw pixels: MLServer serves the booster file alone and cannot deskew, and both
    # servers must answer the same request with the same model.
    model = create_model("xgboost", n_estimators=ROUNDS, max_depth=DEPTH, features="raw",
                         colsample_bytree=1.0, max_bin=256, early_stopping_rounds=0)
    with contextlib.redirect_stdout(sys.stderr):
        model.fit(x_train[:TRAIN_SIZE], y_train[:TRAIN_SIZE], x_test[:1000], y_test[:1000])
    accuracy = float((model.predict(x_test) == y_test).mean())
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp)
    with_reference(model, tmp, x_train, y_train)
    record = export_checked(tmp, x_test[:2000])
    (tmp / "bench.json").write_text(json.dumps({"accuracy": accuracy, "export": record}))
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    log(f"trained in {time.perf_counter() - started:.0f}s, test accuracy {accuracy:.4f}")
    return directory, accuracy


def trained_cnn(x_train, y_train, x_test, y_test) -> tuple[Path, float]:
    """Train (or reuse) the benchmark CNN with its inference form; directory and accuracy."""
    from components.export import export_checked

    model = create_model("cnn", epochs=CNN_EPOCHS)
    # The cache is keyed on every setting (architecture, views, epochs): a model cached
    # before the defaults changed would otherwise be benchmarked as if it were today's.
    settings = hashlib.sha256(json.dumps(model.params, sort_keys=True).encode()).hexdigest()
    directory = ROOT / ".digits" / "bench" / f"cnn-{TRAIN_SIZE}-{settings[:12]}"
    info_path = directory / "bench.json"
    if info_path.exists():
        return directory, json.loads(info_path.read_text())["accuracy"]
    log(f"training the CNN ({CNN_EPOCHS} epochs) on {TRAIN_SIZE} MNIST digits…")
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        model.fit(x_train[:TRAIN_SIZE], y_train[:TRAIN_SIZE], x_test[:1000], y_test[:1000])
    accuracy = float((model.predict(x_test) == y_test).mean())
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp)
    record = export_checked(tmp, x_test[:2000])
    (tmp / "bench.json").write_text(json.dumps({"accuracy": accuracy, "export": record}))
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)
    log(f"trained and exported in {time.perf_counter() - started:.0f}s, test accuracy "
        f"{accuracy:.4f}, export max |diff| {record['max_abs_diff']:.1e}")
    return directory, accuracy


# --------------------------------------------------------------------------- servers


@contextlib.contextmanager
def our_server(model_dir: Path, workdir: Path, grpc_port: int = 0, kind: str = "xgboost",
               name: str | None = None, **settings: str) -> Iterator[int]:
    """Registry (embedded S3) + ``digits serve`` (gRPC on ``grpc_port``, 0: none) on a
    ``kind`` model, named ``name`` (default: the kind) in its folders and log;
    ``settings``: extra ``DIGITS_*`` variables. Yields the HTTP port."""
    name = name or kind
    from minio import Minio

    from components.registry import Registry
    from components.s3local import LocalS3

    s3 = LocalS3(workdir / f"s3-{name}").start()
    try:
        registry = Registry(Minio(s3.endpoint, s3.access_key, s3.secret_key, secure=False,
                                  region="us-east-1"), "bench")
        version = registry.promote(model_dir, {"kind": kind, "metrics": {}}, "benchmark")
        port = free_port()
        env = {**os.environ, **s3.environ(), "DIGITS_BUCKET": "bench",
               "DIGITS_MODEL_NAME": MODEL_NAME, "DIGITS_POLL_INTERVAL_S": "30",
               "DIGITS_PREDICT_THREADS": "1", "DIGITS_HOME": str(workdir / f"home-{name}"),
               "DIGITS_METRICS_PORT": str(free_port()), "DIGITS_GRPC_PORT": str(grpc_port),
               **settings}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        with (workdir / f"digits-serve-{name}.log").open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "serving.cli", "--host", loadgen.LOCALHOST,
                 "--port", str(port)],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        try:
            wait_ready(f"http://{loadgen.LOCALHOST}:{port}/v2/health/ready", process,
                       "digits serve")
            log(f"digits serve ({name}) ready on :{port} with {version}")
            yield port
        finally:
            stop(process)
    finally:
        s3.stop()


def mlserver_venv() -> Path | None:
    """MLServer's own virtualenv (created on first use); None if it cannot be installed."""
    venv = Path(os.environ.get("DIGITS_BENCH_VENV", ROOT / ".bench-venv"))
    binary = venv / "bin" / "mlserver"
    if binary.exists():
        return venv
    log(f"installing MLServer into {venv} (once; about a minute)…")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
               "--disable-pip-version-check"]
        subprocess.run([*pip, *MLSERVER_PACKAGES], check=True)
        subprocess.run([*pip, "--no-deps", *MLSERVER_NO_DEPS], check=True)
    except (subprocess.CalledProcessError, OSError) as error:
        log(f"could not install MLServer ({error}); skipping it")
        return None
    return venv if binary.exists() else None


@contextlib.contextmanager
def mlserver(model_dir: Path, workdir: Path, venv: Path) -> Iterator[int]:
    """MLServer serving the same ``model.ubj`` with ``mlserver_xgboost``; yields the port."""
    repo = workdir / "mlserver"
    repo.mkdir()
    shutil.copy(model_dir / "model.ubj", repo / "model.ubj")
    (repo / "model-settings.json").write_text(json.dumps({
        "name": MODEL_NAME, "implementation": "mlserver_xgboost.XGBoostModel",
        "parameters": {"uri": "./model.ubj", "version": "v1"}}))
    port, grpc, metrics = free_port(), free_port(), free_port()
    settings = {"http_port": port, "grpc_port": grpc, "metrics_port": metrics,
                "host": loadgen.LOCALHOST,
                "parallel_workers": int(os.environ.get("BENCH_MLSERVER_PARALLEL_WORKERS", "0"))}
    (repo / "settings.json").write_text(json.dumps(settings))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with (workdir / "mlserver.log").open("wb") as out:
        process = subprocess.Popen([str(venv / "bin" / "mlserver"), "start", str(repo)],
                                   cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        wait_ready(f"http://{loadgen.LOCALHOST}:{port}/v2/models/{MODEL_NAME}/ready", process,
                   "MLServer")
        log(f"MLServer ready on :{port}")
        yield port
    finally:
        stop(process)


# --------------------------------------------------------------------------- requests


def our_body(images: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{
        "name": "images", "shape": [len(images), 784], "datatype": "UINT8",
        "data": images.reshape(len(images), -1).ravel().tolist()}],
        "outputs": [{"name": "probabilities"}]}, separators=(",", ":")).encode()


def our_binary_request(images: np.ndarray, port: int) -> bytes:
    """The same request in the binary tensor extension, as Triton's client sends it."""
    header = json.dumps({"inputs": [{
        "name": "images", "shape": [len(images), 784], "datatype": "UINT8",
        "parameters": {"binary_data_size": images.size}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]},
        separators=(",", ":")).encode()
    return loadgen.build_request(
        f"/v2/models/{MODEL_NAME}/infer", header + images.tobytes(),
        content_type="application/octet-stream", port=port,
        headers={"Inference-Header-Content-Length": str(len(header))})


def mlserver_body(images: np.ndarray) -> bytes:
    """MLServer gets what the model was trained on: pixels / 255 as FP32 (exactly the
    stem's values: rounding them would move some pixels across split thresholds)."""
    data = (images.reshape(len(images), -1).astype(np.float32) / np.float32(255)).ravel().tolist()
    return json.dumps({"inputs": [{
        "name": "input-0", "shape": [len(images), 784], "datatype": "FP32", "data": data}],
        "outputs": [{"name": "predict_proba"}]}, separators=(",", ":")).encode()


def our_grpc_request(images: np.ndarray) -> bytes:
    """A serialized ``ModelInferRequest``: the images as ``raw_input_contents``, as
    ``tritonclient.grpc`` sends them (this process uses our stubs, never Triton's)."""
    from serving.oip import inference_pb2 as pb

    request = pb.ModelInferRequest(model_name=MODEL_NAME,
                                   raw_input_contents=[images.tobytes()])
    request.inputs.add(name="images", datatype="UINT8", shape=[len(images), 784])
    request.outputs.add(name="probabilities")
    return request.SerializeToString()


def grpc_pool(images: np.ndarray, batch: int, count: int = 32) -> list[bytes]:
    return [our_grpc_request(images[i * batch:(i + 1) * batch]) for i in range(count)]


def grpc_probabilities(port: int, images: np.ndarray) -> np.ndarray:
    """Our gRPC port's answer for ``images``, for the same-answers check."""
    import grpc

    from serving.oip import inference_pb2 as pb

    with grpc.insecure_channel(f"{loadgen.LOCALHOST}:{port}") as channel:
        raw = channel.unary_unary(loadgen.GRPC_INFER)(our_grpc_request(images), timeout=30)
    answer = pb.ModelInferResponse.FromString(raw)
    [output] = answer.outputs
    return np.frombuffer(answer.raw_output_contents[0], dtype="<f4").reshape(
        list(output.shape)).astype(np.float64)


def request_pool(images: np.ndarray, batch: int, make_body, port: int, count: int = 32
                 ) -> list[bytes]:
    path = f"/v2/models/{MODEL_NAME}/infer"
    return [loadgen.build_request(path, make_body(images[i * batch:(i + 1) * batch]), port=port)
            for i in range(count)]


def probabilities(port: int, body: bytes) -> np.ndarray:
    request = urllib.request.Request(
        f"http://{loadgen.LOCALHOST}:{port}/v2/models/{MODEL_NAME}/infer", data=body,
        headers={"Content-Type": "application/json"})
    answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
    output = next(o for o in answer["outputs"] if o["name"] in ("probabilities",
                                                                 "predict_proba"))
    return np.asarray(output["data"], dtype=np.float64).reshape(output["shape"])


# --------------------------------------------------------------------------- measuring


def in_process(model_dir: Path, images: np.ndarray, batch: int, duration: float, *,
               server: str = "in-process", exported: bool = True) -> dict:
    """The model's own ``predict_proba`` in a loop, one thread: the cost of the math alone.

    ``exported``: through the inference form when the directory has one (what the
    server runs), else the training framework. TensorFlow fixes its thread pools at
    start-up (digits serve sets them through the environment), so a Keras row runs on
    the process's pools, whatever ``set_threads`` asks.
    """
    model = load_model(model_dir, exported=exported)
    model.set_threads(1)
    model.predict_proba(images[:batch])  # first-call paths (graph tracing) are not the cost
    latencies = []
    index, deadline = 0, time.perf_counter() + duration
    while time.perf_counter() < deadline:
        chunk = images[(index * batch) % (len(images) - batch):][:batch]
        started = time.perf_counter()
        model.predict_proba(chunk)
        latencies.append(time.perf_counter() - started)
        index += 1
    total = sum(latencies)
    log(f"{server:13s} batch {batch:3d} ({model.platform}) p50 "
        f"{1000 * float(np.percentile(latencies, 50)):.3f} ms")
    return {"server": server, "batch": batch, "concurrency": 1, "platform": model.platform,
            "rps": len(latencies) / total, "p50_ms": 1000 * float(np.percentile(latencies, 50)),
            "p99_ms": 1000 * float(np.percentile(latencies, 99)), "errors": 0}


def with_reference(model, directory: Path, x_train, y_train) -> None:
    """The drift reference the train stage stores with every model, so the server does
    all its per-request watch work (the PCA embedding too) as in production."""
    from components.watch import build_reference

    held_out = x_train[TRAIN_SIZE:TRAIN_SIZE + 2000]  # digits it was not trained on
    build_reference(x_train[:TRAIN_SIZE], y_train[:TRAIN_SIZE], held_out,
                    model.predict_proba(held_out)).save(directory)


def measure(server: str, port: int, pool: list[bytes], batch: int, concurrency: int,
            duration: float, *, grpc: bool = False) -> dict:
    run = loadgen.run_grpc if grpc else loadgen.run
    result = run(port, pool, concurrency=concurrency, duration=duration,
                 warmup=min(1.0, duration / 4))
    row = {"server": server, "batch": batch, "concurrency": concurrency, "rps": result.rps,
           "p50_ms": 1000 * result.percentile(50), "p99_ms": 1000 * result.percentile(99),
           "errors": result.errors, "requests": result.count,
           "shed": result.statuses.get(503, 0)}
    log(f"{server:10s} batch {batch:3d} x{concurrency:<3d} {row['rps']:8.1f} req/s  "
        f"p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms  errors {row['errors']}")
    return row


def markdown(rows: list[dict]) -> str:
    """The MLServer comparison as a Markdown table (what the README shows)."""
    rows = [r for r in rows if not r.get("hostile")]
    ours = {(r["batch"], r["concurrency"]): r for r in rows if r["server"] == "digits"
            and not r.get("overload")}
    theirs = {(r["batch"], r["concurrency"]): r for r in rows if r["server"] == "mlserver"}
    binary = {(r["batch"], r["concurrency"]): r for r in rows if r["server"] == "digits-bin"}
    grpc = {(r["batch"], r["concurrency"]): r for r in rows if r["server"] == "digits-grpc"}
    limit = {r["batch"]: r for r in rows if r["server"] == "in-process"}
    lines = ["| batch, concurrency | digits req/s | MLServer req/s | throughput | "
             "digits p99 ms | MLServer p99 ms | p99, MLServer ÷ digits | binary req/s | "
             "gRPC req/s | gRPC p99 ms | share of in-process limit: JSON, binary |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key in sorted(ours):
        a, b, c, d = ours[key], theirs.get(key), binary.get(key), grpc.get(key)
        lines.append(
            f"| {key[0]}, {key[1]} | {rate(a)} | "
            + (f"{rate(b)} | {a['rps'] / b['rps']:.2f}× | " if b else "– | – | ")
            + f"{a['p99_ms']:.2f} | "
            + (f"{b['p99_ms']:.2f} | {b['p99_ms'] / a['p99_ms']:.2f}× | " if b else "– | – | ")
            + (f"{rate(c)} | " if c else "– | ")
            + (f"{rate(d)} | {d['p99_ms']:.2f} | " if d else "– | – | ")
            + (share(a, c, limit.get(key[0])) + " |"))
    for row in rows:
        if row.get("overload"):
            lines += ["", f"Overload ({row['concurrency']} connections, single images): "
                      f"{row['ok_rps']:,.0f} answered/s with p99 {row['p99_ok_ms']:.1f} ms, "
                      f"{row['shed_rps']:,.0f}/s shed with 503 + Retry-After, p99 of every "
                      f"answer {row['p99_all_ms']:.1f} ms, {row['connection_errors']} "
                      "connection errors."]
    return "\n".join(lines)


def rate(row: dict) -> str:
    """Answered requests/s, and what share of the requests was refused, if any: a server
    that sheds answers fewer requests faster, and the table must say so."""
    text = f"{row['rps']:,.0f}"
    refused = row.get("errors", 0)
    if refused:
        shed = row.get("shed", 0)
        percent = f"{100 * refused / (refused + row['requests']):.0f}%"
        text += (f" ({percent} shed)" if shed == refused else
                 f" ({percent} refused: {shed} shed, {refused - shed} other)")
    return text


def share(json_row: dict, binary_row: dict | None, limit: dict | None) -> str:
    """Requests/s served as a share of the in-process limit, JSON and (if measured) binary."""
    if limit is None:
        return "–"
    shares = [f"{json_row['rps'] / limit['rps']:.2f}×"]
    if binary_row is not None:
        shares.append(f"{binary_row['rps'] / limit['rps']:.2f}×")
    return ", ".join(shares)


#: The CNN's rows: servers as the tables name them.
CNN_SERVERS = ("cnn", "cnn-bin", "cnn-grpc", "cnn-onnx", "cnn-keras")


def cnn_markdown(rows: list[dict]) -> str:
    """The CNN served end to end (JSON and binary) against its in-process predict."""
    by = {(r["server"], r["batch"], r["concurrency"]): r for r in rows
          if r.get("server") in CNN_SERVERS}
    if not by:
        return ""
    limit = {key[1]: row for key, row in by.items() if key[0] == "cnn-onnx"}
    keras = {key[1]: row for key, row in by.items() if key[0] == "cnn-keras"}
    lines = ["| batch | in-process onnxruntime p50 ms | in-process Keras p50 ms | "
             "onnxruntime ÷ Keras time |", "| --- | --- | --- | --- |"]
    for batch in sorted(limit):
        a, b = limit[batch], keras.get(batch)
        lines.append(f"| {batch} | {a['p50_ms']:.3f} | "
                     + (f"{b['p50_ms']:.3f} | {a['p50_ms'] / b['p50_ms']:.2f}× |" if b
                        else "– | – |"))
    lines += ["", "| batch, concurrency | JSON req/s | JSON p99 ms | binary req/s | "
              "binary p99 ms | gRPC req/s | gRPC p99 ms | share of in-process limit: "
              "JSON, binary |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for _, batch, concurrency in sorted(key for key in by if key[0] == "cnn"):
        a, b = by[("cnn", batch, concurrency)], by.get(("cnn-bin", batch, concurrency))
        c = by.get(("cnn-grpc", batch, concurrency))
        lines.append(f"| {batch}, {concurrency} | {rate(a)} | {a['p99_ms']:.2f} | "
                     + (f"{rate(b)} | {b['p99_ms']:.2f} | " if b else "– | – | ")
                     + (f"{rate(c)} | {c['p99_ms']:.2f} | " if c else "– | – | ")
                     + share(a, b, limit.get(batch)) + " |")
    return "\n".join(lines)


def print_table(rows: list[dict], accuracy: float) -> None:
    from serving.settings import ServeSettings

    config = ServeSettings()
    print(f"\nXGBoost, {ROUNDS} rounds x 10 classes, depth {DEPTH}, trained on {TRAIN_SIZE} "
          f"MNIST digits (test accuracy {accuracy:.4f}); {os.cpu_count()} CPUs")
    print(f"digits serve: granian, {config.workers} workers x {config.concurrency} requests "
          f"at once ({config.threads} threads); MLServer "
          f"parallel_workers={os.environ.get('BENCH_MLSERVER_PARALLEL_WORKERS', '0')}, "
          "OMP_NUM_THREADS=1; closed-loop clients on 127.0.0.1\n")
    header = (f"{'server':<12}{'batch':>6}{'conc':>6}{'req/s':>10}{'img/s':>10}"
              f"{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['server']:<12}{row['batch']:>6}{row['concurrency']:>6}{row['rps']:>10.1f}"
              f"{row['rps'] * row['batch']:>10.0f}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}"
              f"{row['errors']:>8}")
    ours = {(r["batch"], r["concurrency"]): r for r in rows if r["server"] == "digits"}
    theirs = {(r["batch"], r["concurrency"]): r for r in rows if r["server"] == "mlserver"}
    if theirs:
        print("\ndigits vs MLServer: throughput ratio (higher is better for digits), "
              "p99 ratio (MLServer p99 / digits p99, higher is better for digits)")
        for key in sorted(ours):
            if key in theirs:
                a, b = ours[key], theirs[key]
                print(f"  batch {key[0]:>3}, concurrency {key[1]:>3}: throughput x"
                      f"{a['rps'] / b['rps']:.2f}, p99 x{b['p99_ms'] / a['p99_ms']:.2f}")
    limit = {r["batch"]: r for r in rows if r["server"] == "in-process"}
    if limit:
        print("\ndigits vs the in-process limit (one thread; the server has "
              f"{os.cpu_count()} cores): throughput as a share of it")
        for key in sorted(ours):
            if key[0] in limit:
                print(f"  batch {key[0]:>3}, concurrency {key[1]:>3}: "
                      f"{ours[key]['rps'] / limit[key[0]]['rps']:.2f}x")


def measure_overload(port: int, pool: list[bytes], concurrency: int, duration: float) -> dict:
    """Far more connections than workers: does the server shed (fast 503s) or queue?"""
    result = loadgen.run(port, pool, concurrency=concurrency, duration=duration)
    answered = sorted(result.answered)
    row = {"server": "digits", "batch": 1, "concurrency": concurrency, "overload": True,
           "ok_rps": result.rps,
           "shed_rps": result.statuses.get(503, 0) / result.elapsed if result.elapsed else 0,
           "connection_errors": result.statuses.get(0, 0),
           "other_statuses": {k: v for k, v in result.statuses.items() if k not in (0, 200, 503)},
           "p99_ok_ms": result.percentile(99) * 1000,
           "p99_all_ms": float(np.percentile(answered, 99)) * 1000 if answered else float("nan")}
    log(f"overload x{concurrency}: {row['ok_rps']:.0f} answered/s, {row['shed_rps']:.0f} shed/s, "
        f"p99 {row['p99_ok_ms']:.1f} ms (all answers {row['p99_all_ms']:.1f} ms), "
        f"{row['connection_errors']} connection errors")
    return row


def measure_hostile(server: str, port: int, requests: list[bytes], slow_clients: int,
                    duration: float) -> dict:
    """A well-behaved client (probe, then a single-image prediction, each on a new
    connection, 2 s timeout) while ``slow_clients`` connections trickle headers or a body
    a byte every 2 s, or sit idle."""
    result = loadgen.hostile(port, requests, slow_clients=slow_clients, duration=duration)
    row = {"server": server, "hostile": True, "slow_clients": slow_clients,
           "sent": result.sent, "answered": result.answered,
           "p99_ms": result.percentile(99) * 1000}
    log(f"{server:10s} {slow_clients:3d} slow clients: {result.answered}/{result.sent} "
        f"answered within 2 s, p99 {row['p99_ms']:.1f} ms")
    return row


def hostile_markdown(rows: list[dict]) -> str:
    """Slow clients: the good client's share answered and p99, both servers side by side."""
    by = {(r["server"], r["slow_clients"]): r for r in rows if r.get("hostile")}
    lines = ["| slow clients | digits answered | digits p99 ms | MLServer answered | "
             "MLServer p99 ms |", "| --- | --- | --- | --- | --- |"]
    for count in sorted({key[1] for key in by}):
        cells = []
        for server in ("digits", "mlserver"):
            row = by.get((server, count))
            cells += ([f"{row['answered']}/{row['sent']}", f"{row['p99_ms']:.1f}"]
                      if row else ["–", "–"])
        lines.append(f"| {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_overload(row: dict) -> None:
    print(f"\nOverload, single images, {row['concurrency']} connections (a request that "
          "waited past DIGITS_MAX_WAIT_MS for a work slot gets a fast 503 + Retry-After):")
    print(f"  {row['ok_rps']:.0f} answered/s with p99 {row['p99_ok_ms']:.1f} ms; "
          f"{row['shed_rps']:.0f} shed/s; p99 of every answer {row['p99_all_ms']:.1f} ms; "
          f"{row['connection_errors']} connection errors; other statuses "
          f"{row['other_statuses'] or 'none'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0,
                        help="seconds measured per cell (default 3)")
    parser.add_argument("--concurrency", default="1,8,32",
                        help="comma-separated concurrency levels (default 1,8,32)")
    parser.add_argument("--batches", default="1,64", help="images per request (default 1,64)")
    parser.add_argument("--no-mlserver", action="store_true", help="skip MLServer")
    parser.add_argument("--no-grpc", action="store_true", help="skip our gRPC rows")
    parser.add_argument("--overload", type=int, default=OVERLOAD_CONCURRENCY,
                        help="connections for the overload row, far above what the "
                             f"workers answer at once (default {OVERLOAD_CONCURRENCY}; 0: skip)")
    parser.add_argument("--slow-clients", default="3,24",
                        help="slow-client counts for the hostile rows (default 3,24; '': skip)")
    parser.add_argument("--no-cnn", action="store_true", help="skip the CNN section")
    parser.add_argument("--cnn-dir", type=Path,
                        help="a CNN model directory with its inference form (e.g. a "
                        "downloaded production version; default: train one, cached)")
    parser.add_argument("--watch-cost", action="store_true",
                        help="also run digits serve with DIGITS_WATCH=false (no per-request "
                             "drift statistics, no payload sample) and compare, cell by cell")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    levels = [int(v) for v in args.concurrency.split(",")]
    batches = [int(v) for v in args.batches.split(",")]
    started = time.monotonic()

    x_train, y_train, x_test, y_test, _ = load_mnist(mnist_dir())
    model_dir, accuracy = trained_model(x_train, y_train, x_test, y_test)
    images = x_test[:64 * 32]
    venv = None if args.no_mlserver else mlserver_venv()

    rows = [in_process(model_dir, images, batch, min(args.duration, 2.0)) for batch in batches]
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="digits-bench-")))
        grpc_port = 0 if args.no_grpc else free_port()
        ours = stack.enter_context(our_server(model_dir, workdir, grpc_port))
        theirs = stack.enter_context(mlserver(model_dir, workdir, venv)) if venv else None
        unwatched = (stack.enter_context(our_server(model_dir, workdir, name="nowatch",
                                                    DIGITS_WATCH="false"))
                     if args.watch_cost else None)

        reference = load_model(model_dir).predict_proba(images[:64]).astype(np.float64)
        ours_p = probabilities(ours, our_body(images[:64]))
        log(f"same answers: digits vs in-process max |diff| {np.abs(ours_p - reference).max():.2e}")
        if grpc_port:
            grpc_p = grpc_probabilities(grpc_port, images[:64])
            log(f"same answers: digits gRPC vs in-process max |diff| "
                f"{np.abs(grpc_p - reference).max():.2e}")
        if theirs:
            theirs_p = probabilities(theirs, mlserver_body(images[:64]))
            log(f"same answers: MLServer vs in-process max |diff| "
                f"{np.abs(theirs_p - reference).max():.2e}")

        # Both servers get the same untimed warm-up first: right after start-up one of
        # them may still be finishing its own start (imports, first-call paths), and
        # the first cell measured would pay for it.
        for port, body in ((ours, our_body), (theirs, mlserver_body), (unwatched, our_body)):
            if port:
                for batch in batches:
                    loadgen.run(port, request_pool(images, batch, body, port), concurrency=4,
                                duration=WARM_UP_S, warmup=0)
        if grpc_port:
            for batch in batches:
                loadgen.run_grpc(grpc_port, grpc_pool(images, batch), concurrency=4,
                                 duration=WARM_UP_S, warmup=0)
        for batch in batches:
            our_pool = request_pool(images, batch, our_body, ours)
            their_pool = request_pool(images, batch, mlserver_body, theirs) if theirs else None
            for concurrency in levels:
                # Alternate the servers cell by cell, so background load hits both alike.
                rows.append(measure("digits", ours, our_pool, batch, concurrency,
                                    args.duration))
                if unwatched:
                    rows.append(measure("unwatched", unwatched,
                                        request_pool(images, batch, our_body, unwatched),
                                        batch, concurrency, args.duration))
                if theirs:
                    rows.append(measure("mlserver", theirs, their_pool, batch, concurrency,
                                        args.duration))
                if batch == BINARY_BATCH:
                    binary_pool = [our_binary_request(images[i * batch:(i + 1) * batch], ours)
                                   for i in range(32)]
                    rows.append(measure("digits-bin", ours, binary_pool, batch, concurrency,
                                        args.duration))
                if grpc_port:
                    rows.append(measure("digits-grpc", grpc_port, grpc_pool(images, batch),
                                        batch, concurrency, args.duration, grpc=True))
        if args.overload:
            overload = measure_overload(ours, request_pool(images, 1, our_body, ours),
                                        args.overload, args.duration)
        hostile = []
        for count in ([int(v) for v in args.slow_clients.split(",")]
                      if args.slow_clients else []):
            for name, port, body in (("digits", ours, our_body),
                                     ("mlserver", theirs, mlserver_body)):
                if port:
                    good = [loadgen.get_request("/v2/health/ready", port),
                            request_pool(images, 1, body, port, count=1)[0]]
                    hostile.append(measure_hostile(name, port, good, count,
                                                   HOSTILE_DURATION_S))

    if not args.no_cnn:
        rows += cnn_section(args, x_train, y_train, x_test, y_test, levels, batches)
    rows.sort(key=lambda r: (r["batch"], r["concurrency"], r["server"]))
    print_table([r for r in rows if r["server"] not in CNN_SERVERS], accuracy)
    if not args.no_cnn:
        print("\nThe CNN (production architecture, test-time views included), served by "
              "digits serve through onnxruntime, and in process:\n" + cnn_markdown(rows))
    if args.overload:
        print_overload(overload)
        rows.append(overload)
    if hostile:
        print("\nSlow clients (a byte every 2 s, or idle) while a good client asks, "
              "2 s timeout:\n" + hostile_markdown(hostile))
        rows += hostile
    if args.watch_cost:
        print("\nCost of recording what the server sees (DIGITS_WATCH on vs off, same run):")
        cells = {(r["server"], r["batch"], r["concurrency"]): r for r in rows
                 if "rps" in r and not r.get("overload")}
        for (server, batch, concurrency), row in sorted(cells.items()):
            off = cells.get(("unwatched", batch, concurrency))
            if server == "digits" and off:
                print(f"  batch {batch:3d} x{concurrency:<3d} req/s {row['rps'] / off['rps']:.2f}x"
                      f"  p50 {row['p50_ms'] / off['p50_ms']:.2f}x"
                      f"  p99 {row['p99_ms'] / off['p99_ms']:.2f}x  (watched / unwatched)")
    print(f"\n(total {time.monotonic() - started:.0f}s)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


def cnn_section(args, x_train, y_train, x_test, y_test, levels: list[int],
                batches: list[int]) -> list[dict]:
    """The CNN: in process (onnxruntime, Keras), then served end to end: JSON, binary, gRPC."""
    if args.cnn_dir:
        model_dir = args.cnn_dir
    else:
        model_dir, accuracy = trained_cnn(x_train, y_train, x_test, y_test)
        log(f"bench CNN: test accuracy {accuracy:.4f}")
    if not (model_dir / "model.onnx").is_file():
        sys.exit(f"{model_dir} has no model.onnx: export it first (digits registry export)")
    images = x_test[:64 * 32]
    duration = min(args.duration, 2.0)
    rows = [in_process(model_dir, images, batch, duration, server=server, exported=exported)
            for batch in batches
            for server, exported in (("cnn-onnx", True), ("cnn-keras", False))]
    grpc_port = 0 if args.no_grpc else free_port()
    with (tempfile.TemporaryDirectory(prefix="digits-bench-cnn-") as workdir,
          our_server(model_dir, Path(workdir), grpc_port, kind="cnn") as port):
        reference = load_model(model_dir).predict_proba(images[:64]).astype(np.float64)
        served = probabilities(port, our_body(images[:64]))
        log(f"same answers: served CNN vs in-process max |diff| "
            f"{np.abs(served - reference).max():.2e}")
        for batch in batches:
            loadgen.run(port, request_pool(images, batch, our_body, port), concurrency=4,
                        duration=WARM_UP_S, warmup=0)
        for batch in batches:
            json_pool = request_pool(images, batch, our_body, port)
            binary_pool = [our_binary_request(images[i * batch:(i + 1) * batch], port)
                           for i in range(32)]
            for concurrency in levels:
                rows.append(measure("cnn", port, json_pool, batch, concurrency,
                                    args.duration))
                rows.append(measure("cnn-bin", port, binary_pool, batch, concurrency,
                                    args.duration))
                if grpc_port:
                    rows.append(measure("cnn-grpc", grpc_port, grpc_pool(images, batch),
                                        batch, concurrency, args.duration, grpc=True))
    return rows


if __name__ == "__main__":
    sys.exit(main())
