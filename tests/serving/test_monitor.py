"""``digits monitor`` on what a real server sampled: clean traffic passes, drifted is caught.

The server (the app, serving identity, real S3 store) classifies genuine MNIST
digits the model never saw, sampling every image into payload windows; the
monitor, as the pipeline identity, reads them back and judges them against the
reference the train stage stored with the version. The tests are seeded, so
each verdict here is reproducible (a clean stream's false-alarm rate is
measured on many windows by ``bench/watch.py``).
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from components.feedback import FeedbackItem, FeedbackStore
from components.monitor import (
    TESTS,
    class_priors_test,
    mmd_test,
    monitor,
    read_windows,
)
from components.train import reference_for
from components.watch import VERDICT_KEY, Reference, Window, window_key
from pipelines.monitor import main
from tests.serving.helpers import make_app, operator_registry, v2_body

#: Small windows keep the test cheap; the bench measures the real sizes.
WINDOW = 60
#: Enough for the embedding test alone to reach alpha/4 = 0.0025 (1/500 = 0.002).
PERMUTATIONS = 499


@pytest.fixture(scope="module")
def referenced(trained, tiny_dataset, tmp_path_factory):
    directory = tmp_path_factory.mktemp("monitored") / "model"
    shutil.copytree(trained["xgboost"].directory, directory)
    reference_for(trained["xgboost"].model, tiny_dataset).save(directory)
    return directory


@pytest.fixture(scope="module")
def unseen(mnist):
    """Official test digits beyond the tiny holdout, shuffled: never trained or validated on."""
    x_test = mnist[2]
    return x_test[300:][np.random.default_rng(7).permutation(len(x_test) - 300)][:360]


def serve_stream(s3_server, registry, images: np.ndarray) -> str:
    """Promote the model, send ``images`` through the app in requests of 12; the version."""
    app, server = make_app(s3_server, registry, payload_sample=1.0, payload_window=WINDOW)
    try:
        assert server.model.wait_ready(30), server.model.last_error
        client = app.test_client()
        for start in range(0, len(images), 12):
            answer = client.post("/v2/models/digits/infer",
                                 json=v2_body(images[start:start + 12]))
            assert answer.status_code == 200, answer.get_json()
        return server.model.current.version
    finally:
        server.model.stop()  # writes the last window


def judged(s3_server, registry, tmp_path, **options):
    operator = operator_registry(s3_server, registry.bucket)
    return operator, monitor(operator, report=tmp_path / "report.html", window_size=WINDOW,
                             pooled=360, permutations=PERMUTATIONS, **options)


def test_clean_traffic_raises_no_alarm(s3_server, make_registry, referenced, unseen,
                                       tmp_path):
    registry = make_registry()
    registry.promote(referenced, {"kind": "xgboost", "metrics": {}}, "test")
    version = serve_stream(s3_server, registry, unseen)
    operator, verdict = judged(s3_server, registry, tmp_path)
    assert verdict["version"] == version and verdict["images"] == len(unseen)
    assert verdict["drift"] is False, verdict["tests"]
    assert set(verdict["tests"]) == set(TESTS)
    assert all(t["p_value"] >= verdict["threshold"] for t in verdict["tests"].values())
    assert len(verdict["timeline"]) == len(unseen) // WINDOW
    assert not any(w["drifted"] for w in verdict["timeline"])
    assert verdict["retrain"] is False and verdict["reason"] == "no drift"
    assert verdict["feedback_accuracy"] is None
    # Recorded where the servers read it, and kept in the history.
    assert json.loads(operator.read(VERDICT_KEY))["version"] == version
    assert any(o.object_name.startswith("monitor/verdicts/") for o in
               operator.client.list_objects(registry.bucket, prefix="monitor/", recursive=True))
    page = (tmp_path / "report.html").read_text()
    assert "no drift" in page and page.count("data:image/png;base64,") >= 3 + 12
    assert "http://" not in page and "https://" not in page  # self-contained


@pytest.mark.parametrize("kind", ["inverted", "thick-stroke", "rotated", "scaled-as-integers",
                                  "printed"])
def test_drifted_traffic_is_caught_from_its_first_window(kind, s3_server, make_registry,
                                                         referenced, unseen, tmp_path):
    from bench.watch import inverted, printed, rotated, thick, unit_scaled

    transform = {"inverted": inverted, "thick-stroke": thick, "rotated": rotated,
                 "scaled-as-integers": unit_scaled,
                 "printed": lambda images: printed(len(images))[0]}[kind]
    registry = make_registry()
    registry.promote(referenced, {"kind": "xgboost", "metrics": {}}, "test")
    clean, drifted = unseen[:120], transform(unseen[120:240])
    version = serve_stream(s3_server, registry, np.concatenate([clean, drifted]))
    operator = operator_registry(s3_server, registry.bucket)
    store = FeedbackStore(registry.__class__(s3_server.client("serving"), registry.bucket))
    for i, image in enumerate(drifted[:10]):  # users label some digits: 9 of 10 agree
        store.add(FeedbackItem.create(image, 1, predicted=1 if i < 9 else 7,
                                      model_version=version))
    _, verdict = judged(s3_server, registry, tmp_path, min_feedback=5)
    assert verdict["drift"] is True and verdict["drifted"], verdict["tests"]
    timeline = verdict["timeline"]
    assert [bool(w["drifted"]) for w in timeline] == [False, False, True, True]
    assert verdict["drift_since"] == timeline[2]["start"]
    assert verdict["retrain"] is True and "corrected digits to train on" in verdict["reason"]
    assert verdict["feedback_count"] == 10
    assert "DRIFT" in (tmp_path / "report.html").read_text()
    assert operator.read(VERDICT_KEY) is not None


def test_feedback_disagreement_alone_advises_retraining(s3_server, make_registry, referenced,
                                                        unseen, tmp_path):
    registry = make_registry()
    registry.promote(referenced, {"kind": "xgboost", "metrics": {}}, "test")
    version = serve_stream(s3_server, registry, unseen[:120])
    store = FeedbackStore(registry.__class__(s3_server.client("serving"), registry.bucket))
    for i in range(6):  # half the corrections disagree with the model
        store.add(FeedbackItem.create(unseen[i], 3, predicted=3 if i % 2 else 5,
                                      model_version=version))
    store.add(FeedbackItem.create(unseen[0], 3, predicted=5, model_version="another-version"))
    long_ago = datetime.now(timezone.utc) - timedelta(days=3)  # before --since (24 h)
    store.add(FeedbackItem.create(unseen[1], 3, predicted=5, model_version=version,
                                  now=long_ago))
    _, verdict = judged(s3_server, registry, tmp_path, min_feedback=6, min_accuracy=0.9)
    assert verdict["feedback_count"] == 6 and verdict["feedback_accuracy"] == 0.5
    assert verdict["retrain"] is True and "live accuracy 50.0%" in verdict["reason"]


def test_the_command(s3_server, make_registry, referenced, trained, unseen, tmp_path,
                     monkeypatch, capsys):
    registry = make_registry()
    for key, value in {**s3_server.environ("pipeline"), "DIGITS_BUCKET": registry.bucket}.items():
        monkeypatch.setenv(key, value)
    s3_server.grant(registry.bucket)
    assert main(["--json", "--no-record", "--report", str(tmp_path / "r.html")]) == 2
    assert "no production model" in capsys.readouterr().err
    registry.promote(trained["baseline"].directory, {"kind": "baseline", "metrics": {}}, "old")
    assert main(["--json", "--no-record"]) == 2
    assert "without a drift reference" in capsys.readouterr().err
    registry.promote(referenced, {"kind": "xgboost", "metrics": {}}, "test")
    assert main(["--json", "--no-record", "--report", str(tmp_path / "r.html")]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert verdict["drift"] is False and verdict["images"] == 0
    assert "only 0 sampled images" in verdict["reason"]
    assert registry.read(VERDICT_KEY) is None, "--no-record writes nothing"
    serve_stream(s3_server, registry, unseen[:240])
    assert main(["--window", str(WINDOW), "--permutations", "499", "--report",
                 str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr().out
    assert "no drift on 240 sampled images" in out and "embedding" in out
    assert (tmp_path / "r.html").exists() and registry.read(VERDICT_KEY) is not None


def test_old_payload_windows_are_purged(s3_server, make_registry, referenced, unseen):
    from components.monitor import purge_payloads

    registry = make_registry()
    version = registry.promote(referenced, {"kind": "xgboost", "metrics": {}}, "test")
    s3_server.grant(registry.bucket)
    operator = operator_registry(s3_server, registry.bucket)
    window = Window(version, unseen[:3], np.zeros(3, int), np.ones(3, np.float32),
                    np.arange(3.0)).to_bytes()
    old, new = datetime.now(timezone.utc) - timedelta(days=40), datetime.now(timezone.utc)
    for moment in (old, new):
        operator._put(window_key(version, moment), window)
    operator._put(window_key("other-version", old), window)
    assert purge_payloads(operator, timedelta(days=30)) == 2
    [kept] = read_windows(operator, version)
    assert len(kept) == 3 and kept.key.split("/")[-1] > old.strftime("%Y%m%d")


def test_planted_windows_are_skipped_not_trusted(s3_server, make_registry, referenced,
                                                 unseen):
    registry = make_registry()
    version = registry.promote(referenced, {"kind": "xgboost", "metrics": {}}, "test")
    s3_server.grant(registry.bucket)
    operator = operator_registry(s3_server, registry.bucket)
    good = Window(version, unseen[:5], np.zeros(5, int), np.ones(5, np.float32),
                  np.arange(5.0))
    operator._put(f"payloads/{version}/20990101T000000000000Z-1-a.npz", good.to_bytes())
    operator._put(f"payloads/{version}/20990101T000000000001Z-1-b.npz", b"not a window")
    other = Window("someone-else", unseen[:3], np.zeros(3, int), np.ones(3, np.float32),
                   np.arange(3.0))
    operator._put(f"payloads/{version}/20990101T000000000002Z-1-c.npz", other.to_bytes())
    [window] = read_windows(operator, version)
    assert len(window) == 5


def test_the_statistics_themselves(referenced):
    reference = Reference.load(referenced)
    rng = np.random.default_rng(0)
    same = rng.normal(size=(80, 4))
    assert mmd_test(same, rng.normal(size=(80, 4)), bandwidth=2.0, permutations=199,
                    seed=1).p_value > 0.05
    moved = mmd_test(same + 1.0, rng.normal(size=(80, 4)), bandwidth=2.0, permutations=199,
                     seed=1)
    assert moved.p_value == 1 / 200  # nothing in the null is as extreme
    priors = reference.predicted_priors
    typical = rng.choice(10, size=300, p=priors)
    assert class_priors_test(typical, reference).p_value > 0.01
    assert class_priors_test(np.full(300, 1), reference).p_value < 1e-6


def test_too_few_permutations_to_ever_find_drift_are_refused(referenced, unseen):
    from components.monitor import MonitorError, assess

    window = Window("v", unseen[:60], np.zeros(60, int), np.ones(60, np.float32),
                    np.arange(60.0))
    feedback = {"count": 0, "accuracy": None}
    with pytest.raises(MonitorError, match="at least 400"):
        assess([window], Reference.load(referenced), feedback, version="v", permutations=199,
               window_size=60)


@pytest.mark.slow
def test_the_real_server_samples_what_the_monitor_judges(s3_server, make_registry, referenced,
                                                         unseen, tmp_path):
    """``digits serve`` (two granian workers) samples every image into windows, the last
    ones written as the workers stop; the monitor sees clean traffic, then thick strokes."""
    from bench.watch import thick
    from tests.serving.helpers import serving_environ
    from tests.serving.test_serving_cli import (
        clean_env,
        free_port,
        model_info,
        request,
        start_serve,
        stop_serve,
    )
    from tests.waiting import wait_for

    registry = make_registry()
    version = registry.promote(referenced, {"kind": "xgboost", "metrics": {}}, "test")
    env = clean_env(**serving_environ(s3_server, registry.bucket), DIGITS_PAYLOAD_SAMPLE="1",
                    DIGITS_PAYLOAD_WINDOW="30", DIGITS_HOME=str(tmp_path / "home"))
    port = free_port()
    process = start_serve(port, env, tmp_path / "serve.log")
    stream = np.concatenate([unseen[:180], thick(unseen[180:300])])
    try:
        wait_for(lambda: request(port, "GET", "/v2/health/ready")[0] == 200, 60, "ready")
        wait_for(lambda: len(model_info(port)) == 2, 30, "both workers loaded")
        for start in range(0, len(stream), 6):
            body = json.dumps(v2_body(stream[start:start + 6])).encode()
            assert request(port, "POST", "/v2/models/digits/infer", body)[0] == 200
    finally:
        code = stop_serve(process)
    assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]
    operator = operator_registry(s3_server, registry.bucket)
    windows = read_windows(operator, version)
    assert len(windows) >= 2 and np.array_equal(Window.concat(windows).images, stream)
    verdict = monitor(operator, report=tmp_path / "report.html", window_size=WINDOW,
                      pooled=300, permutations=PERMUTATIONS)
    assert verdict["drift"] is True
    assert [bool(w["drifted"]) for w in verdict["timeline"]] == [False] * 3 + [True] * 2


@pytest.mark.slow
def test_trigger_starts_exactly_one_local_run_then_cools_down(
        s3_server, make_registry, referenced, unseen, mnist_dir, tmp_path):
    """Drift and enough feedback: ``digits monitor --trigger`` runs the pipeline locally
    (kfp.local, a quick baseline-only run that trains on the feedback); a second call
    within the cooldown starts nothing. The registry records the one run and why.

    The command runs in a process of its own, as users run it (the pipeline brings
    kfp and TensorFlow's protobuf into that process, not into the test's)."""
    import subprocess
    import sys

    from bench.watch import thick
    from components.monitor import TRIGGER_KEY, TRIGGERS
    from tests.conftest import ROOT

    registry = make_registry()
    first = registry.promote(referenced, {"kind": "xgboost", "metrics": {}}, "test")
    version = serve_stream(s3_server, registry, thick(unseen[:240]))
    store = FeedbackStore(registry.__class__(s3_server.client("serving"), registry.bucket))
    for image in thick(unseen[:6]):  # thick strokes: not holdout digits, so trained on
        store.add(FeedbackItem.create(image, 4, predicted=4, model_version=version))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DIGITS_")},
           **s3_server.environ("pipeline"), "DIGITS_BUCKET": registry.bucket,
           "DIGITS_MNIST_DIR": str(mnist_dir), "DIGITS_HOME": str(tmp_path / "home")}
    flags = ["--trigger", "--json", "--min-feedback", "5", "--window", str(WINDOW),
             "--permutations", "499", "--report", str(tmp_path / "report.html"),
             "--models", "baseline", "--arg", "train_size=1000", "--arg", "min_accuracy=0.5"]

    def monitor_command() -> dict:
        done = subprocess.run([sys.executable, "-m", "cli", "monitor", *flags],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout)

    verdict = monitor_command()
    assert verdict["drift"] is True and verdict["retrain"] is True
    started = verdict["trigger"]
    assert started["started"] is True and started["run"]["run_id"], started
    operator = operator_registry(s3_server, registry.bucket)
    versions = {row["version"] for row in operator.list()}
    assert versions == {first, started["run"]["version"]}, "one run, one new version"
    assert operator.run_version(started["run"]["run_id"]) == started["run"]["version"]
    record = json.loads(operator.read(TRIGGER_KEY))
    assert record["version"] == version and "drift in" in record["reason"]
    # The run learned from the feedback it had.
    run_feedback = json.loads(operator.read(
        f"{operator.metadata(started['run']['version'])['status']}/"
        f"{started['run']['version']}/metadata.json"))["dataset"].get("feedback")
    assert run_feedback and run_feedback["used"] >= 1

    again = monitor_command()["trigger"]  # the verdict still says retrain; the cooldown no
    assert again["started"] is False and again["reason"].startswith("cooldown")
    assert {row["version"] for row in operator.list()} == versions
    history = list(operator.client.list_objects(registry.bucket, prefix=f"{TRIGGERS}/"))
    assert len(history) == 1


@pytest.fixture
def drifted(s3_server, make_registry, referenced, unseen, tmp_path, monkeypatch):
    """A served version that saw inverted digits and got one correction: the monitor will
    call for retraining. The environment is the pipeline's, as ``digits monitor`` runs.
    Returns the registry and the version."""
    from bench.watch import inverted

    registry = make_registry()
    registry.promote(referenced, {"kind": "xgboost", "metrics": {}}, "test")
    version = serve_stream(s3_server, registry, inverted(unseen[:120]))
    store = FeedbackStore(registry.__class__(s3_server.client("serving"), registry.bucket))
    store.add(FeedbackItem.create(unseen[0], 4, predicted=4, model_version=version))
    for key in [k for k in os.environ if k.startswith("DIGITS_")]:
        monkeypatch.delenv(key)
    for key, value in {**s3_server.environ("pipeline"), "DIGITS_BUCKET": registry.bucket,
                       "DIGITS_HOME": str(tmp_path / "home")}.items():
        monkeypatch.setenv(key, value)
    return registry, version


def test_trigger_on_a_cluster_submits_exactly_one_kfp_run(s3_server, drifted, tmp_path,
                                                         kfp_api):
    """``--trigger --host``: the real kfp.Client submits one run of the compiled pipeline
    (to a local stand-in of the KFP API); the registry records it, and a second monitor
    within the cooldown submits nothing."""
    from components.monitor import TRIGGER_KEY, TRIGGERS

    host, received = kfp_api
    registry, version = drifted
    flags = ["--trigger", "--min-feedback", "1", "--window", str(WINDOW), "--permutations",
             "499", "--report", str(tmp_path / "r.html"), "--host", host,
             "--experiment", "retraining", "--arg", "train_size=20000"]

    def runs_submitted() -> list[dict]:
        return [body for method, path, body in received
                if method == "POST" and path == "/apis/v2beta1/runs"]

    assert main(flags) == 0
    [run] = runs_submitted()
    assert run["runtime_config"]["parameters"]["train_size"] == 20000
    operator = operator_registry(s3_server, registry.bucket)
    record = json.loads(operator.read(TRIGGER_KEY))
    assert record["runner"] == "kfp" and record["version"] == version
    assert record["run"] == {"kfp_run_id": "run-42", "host": host, "experiment": "retraining"}
    assert main(flags) == 0  # still drifted, but within the cooldown
    assert len(runs_submitted()) == 1
    assert len(list(operator.client.list_objects(registry.bucket, prefix=f"{TRIGGERS}/"))) == 1


def test_a_run_that_cannot_start_does_not_hold_the_cooldown(s3_server, drifted, tmp_path):
    from components.data import DataError
    from components.monitor import TRIGGER_KEY, TRIGGERS

    registry, _ = drifted
    with pytest.raises(DataError, match="--kaggle nope"):  # the local run refuses at once
        main(["--trigger", "--min-feedback", "1", "--window", str(WINDOW), "--permutations",
              "499", "--report", str(tmp_path / "r.html"), "--arg", "kaggle_mode=nope"])
    operator = operator_registry(s3_server, registry.bucket)
    assert operator.read(TRIGGER_KEY) is None, "no cooldown after a run that never started"
    [failed] = list(operator.client.list_objects(registry.bucket, prefix=f"{TRIGGERS}/"))
    assert "DataError" in json.loads(operator.read(failed.object_name))["error"]
