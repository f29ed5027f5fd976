"""``digits submit`` drives the real kfp.Client against a local stand-in of the KFP API.

No cluster runs here, so a small HTTP server answers the three calls a run
submission makes (find the experiment, create it, create the run) and records
what it received; the assertions are about what reached the wire.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
import yaml

from pipelines.submit import main
from pipelines.training import COMPILED


class KfpApi(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, str, dict]]] = []

    def log_message(self, *args) -> None:
        pass

    def _reply(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self.received.append(("GET", self.path, {}))
        if self.path.startswith("/apis/v2beta1/experiments"):
            self._reply({})  # no experiment of that name yet
        else:
            self._reply({})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        self.received.append(("POST", self.path, body))
        if self.path == "/apis/v2beta1/experiments":
            self._reply({"experiment_id": "exp-1", "display_name": body["display_name"]})
        elif self.path == "/apis/v2beta1/runs":
            self._reply({"run_id": "run-42", "display_name": body["display_name"],
                         "experiment_id": body.get("experiment_id")})
        else:
            self.send_error(404)


@pytest.fixture
def kfp_api():
    KfpApi.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), KfpApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", KfpApi.received
    server.shutdown()


def test_submit_sends_the_checked_in_pipeline_with_arguments(kfp_api, capsys):
    host, received = kfp_api
    assert main(["--host", host, "--experiment", "nightly", "--arg", "train_size=20000",
                 "--arg", "source=mnist"]) == 0
    assert json.loads(capsys.readouterr().out) == {"run_id": "run-42", "experiment": "nightly"}
    posts = {path: body for method, path, body in received if method == "POST"}
    assert posts["/apis/v2beta1/experiments"]["display_name"] == "nightly"
    run = posts["/apis/v2beta1/runs"]
    assert run["experiment_id"] == "exp-1"
    params = run["runtime_config"]["parameters"]
    assert params["train_size"] == 20000 and params["source"] == "mnist"
    assert params["run_id"].startswith("20")
    spec, platform = yaml.safe_load_all(COMPILED.read_text())
    sent = run["pipeline_spec"]["pipeline_spec"]
    for key in ("components", "deploymentSpec", "pipelineInfo"):  # root differs: caching off
        assert sent[key] == spec[key]
    assert run["pipeline_spec"]["platform_spec"] == platform  # the Secret wiring travels too


def test_malformed_argument_is_refused(kfp_api):
    host, received = kfp_api
    with pytest.raises(SystemExit):
        main(["--host", host, "--arg", "no-equals-sign"])
    assert not [r for r in received if r[0] == "POST"]
