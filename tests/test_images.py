"""The two container images, built with the real Docker engine and run.

``scripts/build-images.sh`` builds both (BuildKit; the base image is made
locally with debootstrap when no registry is reachable). Then the training
image must run the CLI and import the whole ML stack as the non-root user on
a read-only root (as the Kubernetes manifests run it), and the serving image
must come up live but not ready when the registry cannot be reached.

Skipped only when no Docker engine answers.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from components.images import SERVE_IMAGE, TRAIN_IMAGE
from components.models import Baseline
from components.registry import Registry
from tests.conftest import missing_prerequisite
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT_S = 3600
# A cold build (base image + ~1 GB of wheels) takes minutes; it runs in the first test's setup.
pytestmark = [pytest.mark.docker, pytest.mark.timeout(BUILD_TIMEOUT_S + 600)]
#: Both images carry TensorFlow, XGBoost and scikit-learn; keep them from creeping up.
MAX_IMAGE_BYTES = 3_000_000_000


def writable(path: str) -> list[str]:
    """``docker run`` flags for an emptyDir at ``path``: a tmpfs for /tmp (1777), else an
    anonymous volume, which starts with the image directory's owner (the engine here
    ignores tmpfs modes, so a tmpfs elsewhere would be root's alone)."""
    return ["--tmpfs", path] if path == "/tmp" else ["--mount", f"type=volume,dst={path}"]


#: How the manifests run every container: its own uid, read-only root, writable emptyDirs.
LOCKED_DOWN = ["--user", "10001:10001", "--read-only", "--cap-drop", "ALL",
               "--security-opt", "no-new-privileges", "-e", "HOME=/tmp",
               *writable("/tmp"), *writable("/var/cache/digits"), *writable("/var/lib/digits")]


def _docker_client() -> str | None:
    # The Debian client drives BuildKit through DOCKER_BUILDKIT=1; a newer client
    # without buildx cannot, so prefer it when present.
    return "/usr/bin/docker" if Path("/usr/bin/docker").exists() else shutil.which("docker")


@pytest.fixture(scope="session")
def docker() -> str:
    client = _docker_client()
    if not client:
        missing_prerequisite("no docker client is installed")
    probe = subprocess.run([client, "version", "--format", "{{.Server.Version}}"],
                           capture_output=True, text=True, timeout=30, check=False)
    if probe.returncode != 0:
        missing_prerequisite(f"no Docker engine is reachable: {probe.stderr.strip()[:200]}")
    return client


@pytest.fixture(scope="session")
def images(docker, tmp_path_factory) -> dict[str, str]:
    """Build both images once per session (layers are cached between sessions)."""
    log = tmp_path_factory.mktemp("docker") / "build.log"
    env = {**os.environ, "DOCKER": docker, "DOCKER_BUILDKIT": "1"}
    with log.open("w") as out:
        script = str(ROOT / "scripts" / "build-images.sh")
        proc = subprocess.run([script, "all", "--progress=plain"], cwd=ROOT, env=env,
                              stdout=out, stderr=subprocess.STDOUT,
                              timeout=BUILD_TIMEOUT_S, check=False)
    tail = log.read_text()[-6000:]
    assert proc.returncode == 0, f"scripts/build-images.sh failed:\n{tail}"
    return {"train": TRAIN_IMAGE, "serve": SERVE_IMAGE}


def manifest_container(manifests_dir: Path, kind: str, name: str) -> dict:
    """The container spec the Kubernetes manifests give ``kind/name`` (base rendering)."""
    out = subprocess.run(["kubectl", "kustomize", str(manifests_dir)], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    [obj] = [d for d in yaml.safe_load_all(out)
             if d and d["kind"] == kind and d["metadata"]["name"] == name]
    spec = obj["spec"]["jobTemplate"]["spec"] if kind == "CronJob" else obj["spec"]
    [container] = spec["template"]["spec"]["containers"]
    return container


def as_in_manifest(container: dict) -> list[str]:
    """``docker run`` flags reproducing the manifest: literal env, a writable dir per mount."""
    flags = ["--user", "10001:10001", "--read-only", "--cap-drop", "ALL",
             "--security-opt", "no-new-privileges"]
    for env in container.get("env", []):
        if "value" in env:
            flags += ["-e", f"{env['name']}={env['value']}"]
    for mount in container.get("volumeMounts", []):
        if not mount.get("readOnly"):
            flags += writable(mount["mountPath"])
    return flags


def run(docker: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([docker, "run", "--rm", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def inspect(docker: str, image: str) -> dict:
    out = subprocess.run([docker, "image", "inspect", image], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)[0]


# --------------------------------------------------------------------------- both


@pytest.mark.parametrize("kind", ["train", "serve"])
def test_image_is_non_root_pinned_and_lean(docker, images, kind):
    meta = inspect(docker, images[kind])
    assert meta["Config"]["User"] == "10001:10001"
    assert not images[kind].endswith(":latest")
    assert meta["Size"] < MAX_IMAGE_BYTES, f"{images[kind]} is {meta['Size'] / 1e9:.2f} GB"
    # only the installed package, no checkout, tests, venv or git history
    proc = run(docker, images[kind], "sh", "-c",
               "ls -d /src /work /tests /.git /opt/venv/bin/pytest 2>/dev/null; true")
    assert proc.stdout.strip() == "", f"unexpected files in {images[kind]}: {proc.stdout}"
    labels = meta["Config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()
    assert labels["org.opencontainers.image.revision"].removesuffix("-dirty") == head


# --------------------------------------------------------------------------- train


def test_train_image_runs_the_cli(docker, images):
    proc = run(docker, *LOCKED_DOWN, images["train"], "digits", "--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "usage: digits" in proc.stdout


def test_train_image_imports_the_ml_stack(docker, images):
    code = ("import kfp, tensorflow, xgboost, sklearn, components, pipelines; "
            "print(kfp.__version__)")
    proc = run(docker, *LOCKED_DOWN, images["train"], "python3", "-c", code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import kfp

    # KFP tasks start with `pip install kfp==<compiler's version> --no-deps`: the
    # image must already hold that exact version, or a non-root task cannot start.
    assert proc.stdout.strip().splitlines()[-1] == kfp.__version__


def test_train_image_survives_the_kfp_launcher_preamble(docker, images):
    """What KFP runs before every task, as the manifests' locked-down user."""
    import kfp

    script = (
        "set -e; "
        f"python3 -m pip install --quiet --no-warn-script-location 'kfp=={kfp.__version__}' "
        "--no-deps; "
        # the v2 launcher stages artifacts under /minio, /s3, /gcs
        "for d in /minio /s3 /gcs; do mkdir -p $d/mlpipeline/x && rmdir $d/mlpipeline/x; done; "
        "command -v python3"
    )
    proc = run(docker, "--user", "10001:10001", "-e", "HOME=/tmp", *writable("/tmp"),
               images["train"], "sh", "-c", script)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("/opt/venv/bin/python3")


def test_train_image_runs_the_retraining_cronjob_command(docker, images, manifests_dir):
    """The CronJob's exact command line is accepted by the CLI in the image."""
    container = manifest_container(manifests_dir, "CronJob", "digits-retrain")
    assert container["image"] == images["train"]
    proc = run(docker, *as_in_manifest(container), images["train"], *container["command"],
               "--help")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--experiment" in proc.stdout


# --------------------------------------------------------------------------- serve


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


@pytest.fixture
def serve_container(docker, images, manifests_dir):
    """The serving container as the Deployment runs it (command, env, read-only root,
    writable mounts), with a registry that refuses connections; yields name and URL."""
    container = manifest_container(manifests_dir, "Deployment", "digits-serving")
    assert container["image"] == images["serve"]
    name = f"digits-serve-test-{uuid.uuid4().hex[:8]}"
    started = subprocess.run(
        [docker, "run", "-d", "--name", name, "-p", "127.0.0.1::8080", "-p", "127.0.0.1::9090",
         *as_in_manifest(container),
         "-e", "DIGITS_S3_ENDPOINT=127.0.0.1:9",  # nothing listens there
         "-e", "DIGITS_S3_ACCESS_KEY=test", "-e", "DIGITS_S3_SECRET_KEY=test-secret",
         "-e", "DIGITS_S3_SECURE=false",
         "--entrypoint", container["command"][0], images["serve"], *container["command"][1:]],
        capture_output=True, text=True, timeout=60, check=False)
    assert started.returncode == 0, started.stderr
    try:
        port, metrics = (
            subprocess.run([docker, "port", name, f"{inside}/tcp"], capture_output=True,
                           text=True, check=True).stdout.split()[0].rsplit(":", 1)[1]
            for inside in (8080, 9090))
        yield name, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics}"
    finally:
        subprocess.run([docker, "rm", "-f", "-v", name], capture_output=True, check=False)


def _logs(docker: str, name: str) -> str:
    """The container's log, less the access lines (health polls would drown the rest)."""
    proc = subprocess.run([docker, "logs", name], capture_output=True, text=True, check=False)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines()
             if '"serving.access"' not in line]
    return "\n".join(lines[-60:])[-6000:]


def test_serve_image_is_live_but_not_ready_without_a_registry(docker, serve_container):
    name, url, metrics_url = serve_container
    deadline = time.monotonic() + 180
    status = None
    while time.monotonic() < deadline:
        state = subprocess.run([docker, "inspect", "-f", "{{.State.Running}}", name],
                               capture_output=True, text=True, check=False).stdout.strip()
        assert state == "true", f"the server exited:\n{_logs(docker, name)}"
        try:
            status, _ = _get(f"{url}/v2/health/live")
        except OSError:  # not listening yet
            status = None
        if status == 200:
            break
        time.sleep(1)
    assert status == 200, f"/v2/health/live never answered 200:\n{_logs(docker, name)}"

    # Wait until the model loader has met the dead registry (its log says so), not a while.
    def registry_error_logged() -> bool:
        logs = subprocess.run([docker, "logs", name], capture_output=True, text=True,
                              check=False)
        return "registry_error" in logs.stdout + logs.stderr

    wait_for(registry_error_logged, 60, "a registry_error logged by the model loader")
    ready, body = _get(f"{url}/v2/health/ready")
    assert ready != 200, f"ready without a model: {body}"
    assert 400 <= ready < 600
    live, _ = _get(f"{url}/v2/health/live")
    assert live == 200, "a registry outage must not fail liveness"

    assert _get(f"{url}/metrics")[0] == 404, "metrics are not on the public port"
    metrics, text = _get(f"{metrics_url}/metrics")
    assert metrics == 200
    assert "digits_model_ready" in text


def _wait_for(url: str, docker: str, name: str, status: int = 200, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = subprocess.run([docker, "inspect", "-f", "{{.State.Running}}", name],
                               capture_output=True, text=True, check=False).stdout.strip()
        assert state == "true", f"the server exited:\n{_logs(docker, name)}"
        try:
            if _get(url)[0] == status:
                return
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"{url} never answered {status}:\n{_logs(docker, name)}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_image_serves_a_promoted_model(docker, images, tiny_dataset, s3_server,
                                            minio_client, tmp_path, manifests_dir):
    """End to end: a real model promoted to a real S3 store, loaded and served by the image."""
    model = Baseline(max_iter=200)
    model.fit(tiny_dataset.x_train, tiny_dataset.y_train,
              tiny_dataset.x_validation, tiny_dataset.y_validation)
    model.save(tmp_path / "model")
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    version = Registry(minio_client, bucket).promote(
        tmp_path / "model", {"kind": "baseline"}, reason="docker image test")

    container = manifest_container(manifests_dir, "Deployment", "digits-serving")
    port, metrics_port = _free_port(), _free_port()  # host network (S3 listens on loopback)
    command = [*container["command"][:-2], "--port", str(port)]
    assert container["command"][-2:] == ["--port", "8080"]
    name = f"digits-serve-test-{uuid.uuid4().hex[:8]}"
    started = subprocess.run(
        [docker, "run", "-d", "--name", name, "--network", "host", *as_in_manifest(container),
         *[arg for item in s3_server.environ().items() for arg in ("-e", "=".join(item))],
         "-e", f"DIGITS_BUCKET={bucket}", "-e", "DIGITS_POLL_INTERVAL_S=1",
         "-e", f"DIGITS_METRICS_PORT={metrics_port}",
         "-e", f"DIGITS_GRPC_PORT={_free_port()}",  # host network: 8081 may be taken
         "--entrypoint", command[0], images["serve"], *command[1:]],
        capture_output=True, text=True, timeout=60, check=False)
    assert started.returncode == 0, started.stderr
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{url}/v2/health/ready", docker, name)
        x, y = tiny_dataset.x_holdout[:100], tiny_dataset.y_holdout[:100]
        body = json.dumps({"inputs": [{"name": "images", "shape": list(x.shape),
                                       "datatype": "UINT8", "data": x.ravel().tolist()}]})
        request = urllib.request.Request(f"{url}/v2/models/digits/infer", data=body.encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            answer = json.loads(resp.read())
        assert answer["model_version"] == version
        labels = next(o for o in answer["outputs"] if o["name"] == "label")["data"]
        accuracy = sum(int(a == b) for a, b in zip(labels, y.tolist(), strict=True)) / len(y)
        expected = float((model.predict(x) == y).mean())
        assert accuracy == pytest.approx(expected, abs=0.02), "served != in-process predictions"
        assert accuracy > 0.7
        metrics = _get(f"http://127.0.0.1:{metrics_port}/metrics")[1]
        assert "digits_model_info{" in metrics and 'kind="baseline"' in metrics
    finally:
        subprocess.run([docker, "rm", "-f", "-v", name], capture_output=True, check=False)


# --------------------------------------------------------------------------- the pipeline


def run_in_containers(env: dict[str, str], *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "run", "--quick", "--runner", "docker",
         "--json", *args], env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


@pytest.mark.slow
def test_every_stage_runs_in_its_own_container(docker, images, mnist_dir, tmp_path):
    """kfp.local's DockerRunner: each task in the image a cluster would use, twice."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITS_")}
    env.update(DIGITS_HOME=str(tmp_path / "home"), DIGITS_MNIST_DIR=str(mnist_dir))

    first = run_in_containers(env, "--models", "xgboost,baseline")
    assert first["runner"] == "docker"
    assert first["gate"]["decision"] == "promote" and first["production"] == first["version"]
    assert first["kaggle"]["mode"] == "offline" and first["kaggle"]["rows"] == 10_000
    logs = Path(first["logs"])
    for stage in ("ingest", "train-xgboost", "evaluate-baseline", "gate", "deploy"):
        assert f"Found image '{TRAIN_IMAGE}'" in (logs / f"{stage}.log").read_text(), stage
    assert f"Found image '{TRAIN_IMAGE}'" in (logs / "kaggle-submit.log").read_text()

    weaker = run_in_containers(env, "--models", "baseline", "--train-size", "200")
    assert weaker["gate"]["decision"] == "reject"
    assert weaker["gate"]["champion"] == first["version"]
    assert weaker["production"] == first["version"]  # production unchanged
    assert weaker["kaggle"] is None


# --------------------------------------------------------------------------- runtime-only serve

#: The serving image holds the runtime alone (issue 22's goal: 400 MB; it was 2.13 GB).
MAX_SERVE_IMAGE_BYTES = 400_000_000


@pytest.fixture(scope="session")
def serve_image(docker, tmp_path_factory) -> str:
    """Only the serving image, built from requirements-serve.lock (cached between sessions)."""
    log = tmp_path_factory.mktemp("docker-serve") / "build.log"
    env = {**os.environ, "DOCKER": docker, "DOCKER_BUILDKIT": "1"}
    with log.open("w") as out:
        proc = subprocess.run([str(ROOT / "scripts" / "build-images.sh"), "serve",
                               "--progress=plain"], cwd=ROOT, env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_S, check=False)
    assert proc.returncode == 0, f"scripts/build-images.sh serve failed:\n{log.read_text()[-6000:]}"
    return SERVE_IMAGE


def test_serve_image_has_no_training_framework(docker, serve_image):
    for module in ("tensorflow", "keras", "xgboost", "treelite", "scipy", "sklearn", "kfp",
                   "matplotlib", "docker"):
        proc = run(docker, *LOCKED_DOWN, serve_image, "python3", "-c", f"import {module}")
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, module
    assert run(docker, serve_image, "sh", "-c", "command -v weed").returncode != 0
    size = inspect(docker, serve_image)["Size"]
    print(f"\n{serve_image}: {size / 1e6:.0f} MB")
    assert size <= MAX_SERVE_IMAGE_BYTES, f"{serve_image} is {size / 1e6:.0f} MB"


@pytest.fixture
def promoted_cnn(tiny_dataset, minio_client, tmp_path):
    """A tiny real CNN, exported and checked as deploy does, promoted to a fresh bucket."""
    from components.export import export_checked
    from components.train import train

    # Two epochs: after one, two members this narrow score 43% on MNIST's test digits,
    # under the Kaggle dry run's sanity floor; after two, 91%.
    model, info = train("cnn", tiny_dataset, epochs=2, batch_size=64, width=8)
    model.save(tmp_path / "cnn", **info)
    record = export_checked(tmp_path / "cnn", tiny_dataset.x_holdout)
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    version = Registry(minio_client, bucket).promote(
        tmp_path / "cnn", {"kind": "cnn", "export": record}, reason="serve image test")
    return model, bucket, version


def test_serve_image_serves_an_exported_cnn(docker, serve_image, promoted_cnn, tiny_dataset,
                                           s3_server, manifests_dir):
    """The Deployment's container, no TensorFlow inside, serving a promoted CNN through
    onnxruntime: the same answers as the trained model. Prints the time from
    ``docker run`` to ready (issue 22's goal: 3 s)."""
    model, bucket, version = promoted_cnn
    container = manifest_container(manifests_dir, "Deployment", "digits-serving")
    port, metrics_port = _free_port(), _free_port()
    command = [*container["command"][:-2], "--port", str(port)]
    name = f"digits-serve-test-{uuid.uuid4().hex[:8]}"
    url = f"http://127.0.0.1:{port}"
    started_at = time.monotonic()
    started = subprocess.run(
        [docker, "run", "-d", "--name", name, "--network", "host", *as_in_manifest(container),
         *[arg for item in s3_server.environ().items() for arg in ("-e", "=".join(item))],
         "-e", f"DIGITS_BUCKET={bucket}", "-e", f"DIGITS_METRICS_PORT={metrics_port}",
         "-e", f"DIGITS_GRPC_PORT={_free_port()}",  # host network: 8081 may be taken
         "--entrypoint", command[0], serve_image, *command[1:]],
        capture_output=True, text=True, timeout=60, check=False)
    assert started.returncode == 0, started.stderr
    try:
        while time.monotonic() - started_at < 180:
            try:
                if _get(f"{url}/v2/health/ready")[0] == 200:
                    break
            except OSError:  # not listening yet
                pass
            time.sleep(0.05)
        ready_s = time.monotonic() - started_at
        _wait_for(f"{url}/v2/health/ready", docker, name, timeout_s=1)
        print(f"\n{serve_image}: docker run to ready {ready_s:.2f} s")
        status, text = _get(f"{url}/v2/models/digits")
        assert status == 200 and json.loads(text)["platform"] == "onnxruntime_onnx", text
        x = tiny_dataset.x_holdout[:100]
        body = json.dumps({"inputs": [{"name": "images", "shape": list(x.shape),
                                       "datatype": "UINT8", "data": x.ravel().tolist()}]})
        request = urllib.request.Request(f"{url}/v2/models/digits/infer", data=body.encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            answer = json.loads(resp.read())
        assert answer["model_version"] == version
        outputs = {o["name"]: o for o in answer["outputs"]}
        served = np.asarray(outputs["probabilities"]["data"], np.float32).reshape(len(x), 10)
        np.testing.assert_allclose(served, model.predict_proba(x), atol=1e-4)
        assert outputs["label"]["data"] == model.predict(x).tolist()
    finally:
        subprocess.run([docker, "rm", "-f", "-v", name], capture_output=True, check=False)


def test_serve_image_runs_the_kaggle_dry_run(docker, serve_image, promoted_cnn, mnist_dir,
                                             s3_server, manifests_dir):
    """The Kaggle Job's image and identity flags: production's exported CNN predicts the
    10,000 MNIST test digits, the submission is validated, scored and archived."""
    _, bucket, version = promoted_cnn
    container = manifest_container(manifests_dir / "overlays" / "kaggle", "Job",
                                   "digits-kaggle-submit")
    assert container["image"] == serve_image
    proc = run(docker, "--network", "host", *as_in_manifest(container),
               *[arg for item in s3_server.environ().items() for arg in ("-e", "=".join(item))],
               "-e", f"DIGITS_BUCKET={bucket}", "-e", "DIGITS_MNIST_DIR=/mnist",
               "--mount", f"type=bind,src={mnist_dir},dst=/mnist,readonly",
               serve_image, "digits", "kaggle", "run", "--dry-run",
               "--output", "/tmp/submission.csv", timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["version"] == version and result["rows"] == 10_000
    assert result["local_score"] > 0.5, result
    assert not result["submitted"]
