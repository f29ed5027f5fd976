"""The Kaggle submission job: predict test.csv, validate, submit through the real client.

Kaggle cannot be reached from here, so :class:`LocalKaggle` — a real HTTP
server on 127.0.0.1 — answers the calls the official ``kaggle`` client makes
for a competition submission. The client is pointed at it only through its
own environment switches: ``KAGGLE_API_ENVIRONMENT=LOCALHOST`` makes it call
``http://localhost/api/v1/...`` and ``HTTP_PROXY`` routes that (and the upload
URL) to the local server. Models are real, trained on genuine MNIST digits;
the registry is the real S3 test server.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from components.datafiles import DataError
from components.kaggle.cli import format_submissions, main
from components.kaggle.client import submit
from components.kaggle.job import SubmissionJob, run_submission
from components.kaggle.submission import (
    EXPECTED_ROWS,
    predict_submission,
    validate_submission,
    write_test_csv,
)
from components.models import create_model, load_model
from components.registry import Registry
from components.settings import get_settings
from tests.conftest import KAGGLE_DIR, MNIST_DIR

USERNAME, KEY, TOKEN = "digits-tester", "0123456789abcdef", "KGAT_local_test_token"
API = "/api/v1/competitions.CompetitionApiService"


# --------------------------------------------------------------------------- local Kaggle


class LocalKaggle:
    """Kaggle's submission API, as much of it as the client uses, on 127.0.0.1.

    Records every request (method, path, headers, body), checks credentials
    like Kaggle does (HTTP Basic with the legacy key, or a Bearer token that
    ``IntrospectToken`` vouches for), keeps uploaded blobs by token and lists
    submissions as ``PENDING`` until ``polls_until_scored`` listings have seen
    them, then ``COMPLETE`` with a public score: the accuracy of the uploaded
    labels against ``truth`` (Kaggle's hidden labels, here known to the test).
    """

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.blobs: dict[str, bytes] = {}
        self.upload_status = 200  # set to 5xx to make the blob store fail uploads
        self.competitions = {"digit-recognizer"}
        self.truth: np.ndarray | None = None
        self.polls_until_scored = 2  # set to None: the score never arrives
        self.failures: dict[str, list[int]] = {}  # API call name -> statuses to answer first
        self.submissions: list[dict] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def api_calls(self, name: str) -> list[dict]:
        return [c for c in self.calls if c["path"].endswith("/" + name)]

    def _authorized(self, header: str | None) -> bool:
        basic = "Basic " + base64.b64encode(f"{USERNAME}:{KEY}".encode()).decode()
        return header in (basic, f"Bearer {TOKEN}")

    def _listed(self, entry: dict) -> dict:
        """A submission as ``ListSubmissions`` shows it, scored once polled enough."""
        entry["polls"] += 1
        if self.polls_until_scored is None or entry["polls"] < self.polls_until_scored:
            return {"ref": entry["ref"], "status": "PENDING"}
        labels = np.array([int(line.split(b",")[1]) for line in entry["blob"].splitlines()[1:]])
        score = float(np.mean(labels == self.truth)) if self.truth is not None else 0.5
        return {"ref": entry["ref"], "status": "COMPLETE", "publicScore": f"{score:.5f}"}

    def _handler(self):
        kaggle = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _reply(self, status: int, payload: dict) -> None:
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _record(self) -> dict:
                # Through HTTP_PROXY the request line carries the absolute URL.
                call = {
                    "method": self.command,
                    "url": self.path,
                    "path": urllib.parse.urlsplit(self.path).path,
                    "headers": dict(self.headers.items()),
                    "body": self._body(),
                }
                with kaggle._lock:
                    kaggle.calls.append(call)
                return call

            def do_PUT(self) -> None:
                call = self._record()
                token = call["path"].rsplit("/", 1)[-1]
                if not call["path"].startswith("/upload/") or token not in kaggle.blobs:
                    return self._reply(404, {"code": 404, "message": "no such upload"})
                if kaggle.upload_status != 200:
                    return self._reply(kaggle.upload_status, {"message": "storage failure"})
                kaggle.blobs[token] = call["body"]
                return self._reply(200, {})

            def do_POST(self) -> None:
                call = self._record()
                request = json.loads(call["body"] or b"{}")
                path = call["path"]
                if path == "/api/v1/security.OAuthService/IntrospectToken":
                    if request.get("token") == TOKEN:
                        return self._reply(200, {"active": True, "username": USERNAME})
                    return self._reply(400, {"code": 400, "message": "invalid token"})
                if not kaggle._authorized(self.headers.get("Authorization")):
                    return self._reply(401, {"code": 401, "message": "Unauthenticated"})
                pending = kaggle.failures.get(path.rsplit("/", 1)[-1])
                if pending:
                    status = pending.pop(0)
                    return self._reply(status, {"code": status, "message": "try again later"})
                if request.get("competitionName", "digit-recognizer") not in kaggle.competitions:
                    return self._reply(404, {"code": 404, "message": "Competition not found"})
                if path == f"{API}/StartSubmissionUpload":
                    token = f"blob-{len(kaggle.blobs) + 1}"
                    kaggle.blobs[token] = b""
                    return self._reply(200, {
                        "token": token,
                        "createUrl": f"http://127.0.0.1:{kaggle.port}/upload/{token}",
                    })
                if path == f"{API}/CreateSubmission":
                    blob = kaggle.blobs.get(request.get("blobFileTokens", ""))
                    if not blob:
                        return self._reply(400, {"code": 400, "message": "nothing uploaded"})
                    ref = 4242 + len(kaggle.submissions)
                    kaggle.submissions.append({"ref": ref, "blob": blob, "polls": 0})
                    return self._reply(200, {
                        "message": "Successfully submitted to Digit Recognizer", "ref": ref,
                    })
                if path == f"{API}/ListSubmissions":
                    return self._reply(200, {"submissions": [
                        kaggle._listed(entry) for entry in reversed(kaggle.submissions)]})
                if path == f"{API}/GetSubmissionLimits":
                    return self._reply(200, {"remainingSubmissions": 4})
                return self._reply(404, {"code": 404, "message": f"unknown call {path}"})

        return Handler

    def __enter__(self) -> LocalKaggle:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def local_kaggle():
    with LocalKaggle() as server:
        yield server


@pytest.fixture
def kaggle_env(local_kaggle, s3_env, tmp_path, monkeypatch) -> LocalKaggle:
    """Point the real client at :class:`LocalKaggle`, with no credentials yet.

    ``HOME`` and ``KAGGLE_CONFIG_DIR`` are fresh temp directories, so no
    ``kaggle.json`` or token file of whoever runs the tests can leak in.
    Submissions are archived in a fresh bucket of the S3 test server; polling
    and back-off are shortened so the timeout cases take a second, not minutes.
    """
    monkeypatch.setenv("DIGITS_KAGGLE_POLL_INTERVAL_S", "0.05")
    monkeypatch.setenv("DIGITS_KAGGLE_SCORE_TIMEOUT_S", "1")
    monkeypatch.setenv("DIGITS_KAGGLE_BACKOFF_S", "0.01")
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_KERNEL_RUN_TYPE",
                 "NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy",
                 "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    home, config = tmp_path / "home", tmp_path / "kaggle-config"
    home.mkdir()
    config.mkdir()
    proxy = f"http://127.0.0.1:{local_kaggle.port}"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config))
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.setenv("http_proxy", proxy)
    return local_kaggle


def _with_key(monkeypatch, key: str = KEY) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", USERNAME)
    monkeypatch.setenv("KAGGLE_KEY", key)


# --------------------------------------------------------------------------- files


@pytest.fixture
def sample_submission() -> Path:
    path = KAGGLE_DIR / "sample_submission.csv"
    if not path.is_file():
        pytest.fail(f"Kaggle sample submission not found at {path}")
    return path


def write_submission(path: Path, labels, *, header: str = "ImageId,Label", ids=None) -> Path:
    ids = range(1, len(labels) + 1) if ids is None else ids
    rows = [header, *(f"{i},{label}" for i, label in zip(ids, labels, strict=True))]
    path.write_text("\n".join(rows) + "\n")
    return path


def read_submission(path: Path) -> tuple[str, np.ndarray]:
    lines = path.read_text().splitlines()
    return lines[0], np.array([[int(c) for c in line.split(",")] for line in lines[1:]])


@pytest.fixture(scope="module")
def baseline_dir(tiny_dataset, tmp_path_factory) -> Path:
    """A real logistic-regression model fit on 600 genuine MNIST digits."""
    model = create_model("baseline", max_iter=100)
    model.fit(tiny_dataset.x_train, tiny_dataset.y_train,
              tiny_dataset.x_validation, tiny_dataset.y_validation)
    directory = tmp_path_factory.mktemp("baseline")
    model.save(directory)
    return directory


@pytest.fixture(scope="module")
def test_csv(tiny_dataset, tmp_path_factory) -> Path:
    """300 genuine MNIST test digits written as Kaggle's test.csv."""
    return write_test_csv(tiny_dataset.x_holdout, tmp_path_factory.mktemp("kaggle") / "test.csv")


# --------------------------------------------------------------------------- validator


def test_validator_accepts_kaggles_own_sample_submission(sample_submission):
    checked = validate_submission(sample_submission)
    assert checked["rows"] == EXPECTED_ROWS
    assert sum(checked["label_counts"].values()) == EXPECTED_ROWS


def test_validator_wants_every_row_unless_partial_is_allowed(tmp_path):
    path = write_submission(tmp_path / "s.csv", [3, 1, 4])
    with pytest.raises(DataError, match=r"3 rows, Kaggle's test set has 28000"):
        validate_submission(path)
    assert validate_submission(path, expected_rows=None)["rows"] == 3


@pytest.mark.parametrize(("header", "ids", "labels", "fault"), [
    ("ImageId,Prediction", None, [1, 2], r"line 1: header must be 'ImageId,Label'"),
    ("ImageId,Label", [1, 3], [1, 2], r"line 3: ImageId 3, expected 2"),
    ("ImageId,Label", [0, 1], [1, 2], r"line 2: ImageId 0, expected 1"),
    ("ImageId,Label", None, [1, 10], r"line 3: label 10 outside 0..9"),
    ("ImageId,Label", None, ["7", "x"], r"line 3: not an integer"),
    ("ImageId,Label", None, ["7", "1,1"], r"line 3: 3 columns, expected 2"),
    ("ImageId,Label", None, [], r"no data rows"),
])
def test_validator_names_the_fault_and_line(tmp_path, header, ids, labels, fault):
    path = write_submission(tmp_path / "s.csv", labels, header=header, ids=ids)
    with pytest.raises(DataError, match=fault):
        validate_submission(path, expected_rows=None)


# --------------------------------------------------------------------------- predict


def test_predict_writes_a_submission_that_matches_the_model(baseline_dir, test_csv,
                                                            tiny_dataset, tmp_path):
    model = load_model(baseline_dir)
    output = tmp_path / "out" / "submission.csv"
    summary = predict_submission(model, test_csv, output, version="v-test")

    header, rows = read_submission(output)
    n = len(tiny_dataset.x_holdout)
    assert header == "ImageId,Label"
    assert rows.shape == (n, 2)
    assert rows[:, 0].tolist() == list(range(1, n + 1))
    expected = model.predict(tiny_dataset.x_holdout)
    assert np.array_equal(rows[:, 1], expected)
    assert (rows[:, 1] == tiny_dataset.y_holdout).mean() > 0.7  # chance is 0.1
    assert summary["rows"] == n and summary["model_version"] == "v-test"
    assert summary["label_counts"] == {str(d): int((expected == d).sum()) for d in range(10)}
    assert summary["model_kind"] == "baseline" and summary["seconds"] >= 0
    assert validate_submission(output, expected_rows=None)["rows"] == n
    assert [p.name for p in output.parent.iterdir()] == ["submission.csv"]  # no temp left


def test_predict_cli_with_a_local_model_dir(baseline_dir, test_csv, tmp_path, capsys):
    output = tmp_path / "submission.csv"
    assert main(["predict", "--test", str(test_csv), "--output", str(output),
                 "--model-dir", str(baseline_dir)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 300 and summary["model_version"] is None
    assert summary["model_source"] == f"dir:{baseline_dir}"
    assert output.is_file()


def test_bad_test_csv_names_the_line_and_leaves_no_output(baseline_dir, test_csv, tmp_path,
                                                           capsys):
    lines = test_csv.read_text().splitlines()
    lines[4] = lines[4].rsplit(",", 1)[0]  # line 5 loses its last pixel
    bad = tmp_path / "test.csv"
    bad.write_text("\n".join(lines) + "\n")
    output = tmp_path / "out" / "submission.csv"
    with pytest.raises(DataError, match=r"line 5: 783 columns, expected 784"):
        predict_submission(load_model(baseline_dir), bad, output)
    assert main(["predict", "--test", str(bad), "--output", str(output),
                 "--model-dir", str(baseline_dir)]) == 2
    captured = capsys.readouterr()
    assert "line 5: 783 columns" in captured.err and captured.out == ""
    assert not output.exists()
    assert not output.parent.exists() or not any(output.parent.iterdir())


def test_predict_uses_the_production_model_from_the_registry(baseline_dir, test_csv, s3_env,
                                                              tmp_path, capsys):
    registry = Registry.from_settings(get_settings())
    version = registry.promote(baseline_dir, {"kind": "baseline", "metrics": {"accuracy": 0.9}},
                               "test promotion")
    output = tmp_path / "submission.csv"
    assert main(["predict", "--test", str(test_csv), "--output", str(output)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model_version"] == version
    assert summary["model_source"] == "registry:production"
    assert summary["model_kind"] == "baseline" and summary["rows"] == 300
    expected = load_model(baseline_dir).predict(_images(test_csv))
    assert np.array_equal(read_submission(output)[1][:, 1], expected)

    pinned = tmp_path / "pinned.csv"
    assert main(["predict", "--test", str(test_csv), "--output", str(pinned),
                 "--version", version]) == 0
    assert json.loads(capsys.readouterr().out)["model_source"] == "registry:version"
    assert pinned.read_bytes() == output.read_bytes()


def _images(test_csv: Path) -> np.ndarray:
    from components.datafiles import load_kaggle_csv

    return load_kaggle_csv(test_csv, labelled=False)[0]


def test_empty_registry_is_a_clear_error(s3_env, test_csv, tmp_path, capsys):
    output = tmp_path / "submission.csv"
    assert main(["predict", "--test", str(test_csv), "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert "no production model" in err and s3_env["DIGITS_BUCKET"] in err
    assert main(["predict", "--test", str(test_csv), "--output", str(output),
                 "--version", "no-such-version"]) == 2
    assert "no version 'no-such-version'" in capsys.readouterr().err
    assert not output.exists()


# --------------------------------------------------------------------------- submit


@pytest.mark.parametrize("auth", ["legacy-key", "token"])
def test_submit_goes_through_the_real_client(kaggle_env, sample_submission, tmp_path,
                                             monkeypatch, auth):
    if auth == "legacy-key":
        _with_key(monkeypatch)
    else:
        monkeypatch.setenv("KAGGLE_API_TOKEN", TOKEN)
    file = tmp_path / "submission.csv"
    shutil.copy(sample_submission, file)

    result = submit(file, "baseline v1, local test")

    start, = kaggle_env.api_calls("StartSubmissionUpload")
    create, = kaggle_env.api_calls("CreateSubmission")
    upload, = [c for c in kaggle_env.calls if c["method"] == "PUT"]
    sent = json.loads(start["body"])
    assert sent["competitionName"] == "digit-recognizer"
    assert sent["fileName"] == "submission.csv"
    assert int(sent["contentLength"]) == file.stat().st_size
    assert upload["body"] == file.read_bytes()
    assert upload["path"] == f"/upload/{json.loads(create['body'])['blobFileTokens']}"
    assert json.loads(create["body"]) == {
        "competitionName": "digit-recognizer",
        "blobFileTokens": upload["path"].rsplit("/", 1)[1],
        "submissionDescription": "baseline v1, local test",
    }
    assert start["url"].startswith("http://localhost/api/v1/")  # the client's LOCALHOST env
    if auth == "token":
        assert start["headers"]["Authorization"] == f"Bearer {TOKEN}"
        assert kaggle_env.api_calls("IntrospectToken")
    else:
        assert start["headers"]["Authorization"].startswith("Basic ")
    assert result["kaggle_ref"] == 4242
    assert result["kaggle_message"] == "Successfully submitted to Digit Recognizer"
    assert result["rows"] == EXPECTED_ROWS and result["competition"] == "digit-recognizer"


def test_missing_credentials_exit_2_with_a_clear_message(kaggle_env, sample_submission, capsys):
    code = main(["submit", "--file", str(sample_submission), "--message", "m"])
    captured = capsys.readouterr()
    assert code == 2
    assert "no usable Kaggle credentials" in captured.err
    assert "KAGGLE_USERNAME" in captured.err and "Traceback" not in captured.err
    assert captured.out == ""
    assert kaggle_env.calls == []


def test_rejected_credentials_exit_2(kaggle_env, sample_submission, monkeypatch, capsys):
    _with_key(monkeypatch, key="wrong-key")
    assert main(["submit", "--file", str(sample_submission), "--message", "m"]) == 2
    captured = capsys.readouterr()
    assert "Kaggle rejected the credentials (HTTP 401)" in captured.err
    assert "wrong-key" not in captured.err + captured.out  # never print a secret
    assert kaggle_env.api_calls("StartSubmissionUpload") and not kaggle_env.blobs.get("blob-1")


def test_malformed_submission_is_refused_before_any_http_call(kaggle_env, tmp_path,
                                                              monkeypatch, capsys):
    _with_key(monkeypatch)
    bad = write_submission(tmp_path / "submission.csv", [1, 2, 11])
    code = main(["submit", "--file", str(bad), "--message", "m", "--allow-partial"])
    assert code == 2
    assert "line 4: label 11 outside 0..9" in capsys.readouterr().err
    short = write_submission(tmp_path / "short.csv", [1, 2, 3])
    assert main(["submit", "--file", str(short), "--message", "m"]) == 2
    assert "pass --allow-partial" in capsys.readouterr().err
    assert kaggle_env.calls == []


def test_a_failed_upload_is_an_error_not_a_submission(kaggle_env, sample_submission,
                                                      monkeypatch, capsys):
    """The client reports a failed upload only in the response message; it must not pass."""
    _with_key(monkeypatch)
    kaggle_env.upload_status = 500
    assert main(["submit", "--file", str(sample_submission), "--message", "m"]) == 1
    assert "uploading" in capsys.readouterr().err
    assert kaggle_env.api_calls("CreateSubmission") == []


def test_unreachable_kaggle_exits_1(kaggle_env, sample_submission, monkeypatch, capsys):
    _with_key(monkeypatch)
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("HTTP_PROXY", closed)
    monkeypatch.setenv("http_proxy", closed)
    assert main(["submit", "--file", str(sample_submission), "--message", "m"]) == 1
    assert "cannot reach Kaggle" in capsys.readouterr().err


def test_run_predicts_with_production_submits_and_reads_the_score(
        kaggle_env, baseline_dir, tiny_dataset, test_csv, tmp_path, monkeypatch, capsys):
    """The Kubernetes Job's command, end to end: registry → predict → Kaggle → score → archive."""
    _with_key(monkeypatch)
    kaggle_env.truth = tiny_dataset.y_holdout
    registry = Registry.from_settings(get_settings())
    version = registry.promote(baseline_dir, {"kind": "baseline", "metrics": {"accuracy": 0.9}},
                               "test promotion")
    output = tmp_path / "submission.csv"
    assert main(["run", "--test", str(test_csv), "--output", str(output),
                 "--message", f"production {version}", "--allow-partial"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1
    record = json.loads(out)
    assert record["mode"] == "online" and record["submitted"] is True
    assert record["version"] == version and record["kaggle_ref"] == 4242
    accuracy = float(np.mean(load_model(baseline_dir).predict(tiny_dataset.x_holdout)
                             == tiny_dataset.y_holdout))
    assert record["kaggle_score"] == pytest.approx(accuracy, abs=1e-5)
    assert len(kaggle_env.api_calls("ListSubmissions")) == kaggle_env.polls_until_scored
    upload, = [c for c in kaggle_env.calls if c["method"] == "PUT"]
    assert upload["body"] == output.read_bytes()
    create, = kaggle_env.api_calls("CreateSubmission")
    assert json.loads(create["body"])["submissionDescription"] == f"production {version}"

    archived, = registry.submissions()  # the record and the exact bytes Kaggle received
    assert archived == record and archived["key"].endswith(f"-{version}")
    stored = registry.read(f"{archived['key']}/submission.csv")
    assert stored == upload["body"]
    assert archived["sha256"] == hashlib.sha256(upload["body"]).hexdigest()


def test_5xx_and_dropped_status_reads_are_retried(kaggle_env, sample_submission, tmp_path,
                                                  monkeypatch, capsys):
    _with_key(monkeypatch)
    kaggle_env.failures = {"StartSubmissionUpload": [503, 502], "ListSubmissions": [500]}
    file = tmp_path / "submission.csv"
    shutil.copy(sample_submission, file)
    assert main(["submit", "--file", str(file), "--message", "m"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["kaggle_score"] == 0.5 and record["kaggle_ref"] == 4242
    assert len(kaggle_env.api_calls("StartSubmissionUpload")) == 3
    assert len(kaggle_env.api_calls("CreateSubmission")) == 1  # one submission, not three


def test_persistent_5xx_gives_up_after_the_configured_attempts(kaggle_env, sample_submission,
                                                              monkeypatch, capsys):
    _with_key(monkeypatch)
    monkeypatch.setenv("DIGITS_KAGGLE_ATTEMPTS", "3")
    kaggle_env.failures = {"StartSubmissionUpload": [503] * 5}
    assert main(["submit", "--file", str(sample_submission), "--message", "m"]) == 1
    err = capsys.readouterr().err
    assert "Kaggle answered HTTP 503" in err and "Traceback" not in err
    assert len(kaggle_env.api_calls("StartSubmissionUpload")) == 3
    assert kaggle_env.api_calls("CreateSubmission") == []


def test_unknown_competition_is_a_clear_failure(kaggle_env, sample_submission, monkeypatch,
                                                capsys):
    _with_key(monkeypatch)
    assert main(["submit", "--file", str(sample_submission), "--message", "m",
                 "--competition", "no-such-competition"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "HTTP 404" in err and "'no-such-competition'" in err
    assert Registry.from_settings(get_settings()).submissions() == []  # nothing was submitted


def test_a_score_that_never_arrives_fails_but_the_submission_is_archived(
        kaggle_env, sample_submission, tmp_path, monkeypatch, capsys):
    _with_key(monkeypatch)
    kaggle_env.polls_until_scored = None
    file = tmp_path / "submission.csv"
    shutil.copy(sample_submission, file)
    assert main(["submit", "--file", str(file), "--message", "m"]) == 1
    assert "had not scored submission 4242" in capsys.readouterr().err
    record, = Registry.from_settings(get_settings()).submissions()
    assert record["submitted"] and record["kaggle_score"] is None
    assert "had not scored" in record["error"]
    assert record["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- offline


def test_dry_run_predicts_the_holdout_scores_it_and_never_touches_the_network(
        kaggle_env, baseline_dir, tiny_dataset, tmp_path, monkeypatch, capsys):
    _with_key(monkeypatch)  # credentials present, yet a dry run sends nothing
    dataset_dir = tmp_path / "dataset"
    tiny_dataset.save(dataset_dir)
    output = tmp_path / "dry.csv"
    assert main(["run", "--dry-run", "--output", str(output), "--model-dir", str(baseline_dir),
                 "--dataset", str(dataset_dir)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert kaggle_env.calls == []
    predicted = load_model(baseline_dir).predict(tiny_dataset.x_holdout)
    assert record["local_score"] == pytest.approx(np.mean(predicted == tiny_dataset.y_holdout))
    assert record["mode"] == "offline" and record["submitted"] is False
    assert record["kaggle_score"] is None and "nothing was sent" in record["note"]
    assert record["rows"] == len(tiny_dataset.y_holdout)
    assert np.array_equal(read_submission(output)[1][:, 1], predicted)

    assert main(["list", "--json"]) == 0
    listed, = json.loads(capsys.readouterr().out)
    assert listed == record
    assert main(["list"]) == 0
    table = capsys.readouterr().out
    assert "offline" in table and f"{record['local_score']:.5f}" in table


def test_dry_run_defaults_to_mnist_test_set_in_kaggles_format(
        kaggle_env, baseline_dir, sample_submission, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DIGITS_MNIST_DIR", str(MNIST_DIR))
    output = tmp_path / "dry.csv"
    assert main(["run", "--dry-run", "--output", str(output),
                 "--model-dir", str(baseline_dir)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["rows"] == 10_000 and "MNIST t10k" in record["test_source"]
    assert 0.7 < record["local_score"] < 1.0  # a 600-digit logistic regression
    # Same columns as Kaggle's own sample file, so the same validator accepts both.
    assert output.read_text().splitlines()[0] == sample_submission.read_text().splitlines()[0]
    assert kaggle_env.calls == []


def test_auto_mode_without_credentials_runs_offline_and_says_so(
        kaggle_env, baseline_dir, tiny_dataset, test_csv, tmp_path):
    registry = Registry.from_settings(get_settings())
    job = SubmissionJob(output=tmp_path / "s.csv", mode="auto", test_csv=test_csv,
                        allow_partial=True)
    info = {"version": "v1", "kind": "baseline", "source": "test"}
    record = run_submission(job, load_model(baseline_dir), info, registry)
    assert record["mode"] == "offline" and not record["submitted"]
    assert "no Kaggle credentials" in record["note"] and "did not submit" in record["note"]
    assert record["local_score"] is None  # Kaggle's test labels are not known here
    assert kaggle_env.calls == []
    assert format_submissions(registry.submissions()).splitlines()[1].split()[1] == "offline"
