"""A local stand-in of the KFP v2beta1 REST API, for the real ``kfp.Client``.

No cluster runs here, so a small HTTP server answers the calls a run
submission and a recurring run make, and records what it received; tests
assert on what reached the wire. Used by ``digits submit``/``schedule`` and by
``digits monitor --trigger --host`` (the ``kfp_api`` fixture in conftest).
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar


class KfpApi(BaseHTTPRequestHandler):
    """The KFP v2beta1 REST calls kfp.Client makes for runs and recurring runs.

    Stateful like the real API: an experiment created once is found by name
    afterwards; recurring runs are kept until deleted.
    """

    received: ClassVar[list[tuple[str, str, dict]]] = []
    experiments: ClassVar[dict[str, dict]] = {}
    recurring: ClassVar[dict[str, dict]] = {}

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
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        if url.path == "/apis/v2beta1/experiments":
            wanted = json.loads(query.get("filter", ["{}"])[0]).get("predicates", [])
            names = {p.get("stringValue", p.get("string_value")) for p in wanted
                     if p.get("key") == "display_name"}
            found = [e for e in self.experiments.values() if not names
                     or e["display_name"] in names]
            self._reply({"experiments": found, "total_size": len(found)} if found else {})
        elif url.path == "/apis/v2beta1/recurringruns":
            experiment = query.get("experiment_id", [None])[0]
            runs = [r for r in self.recurring.values()
                    if experiment is None or r["experiment_id"] == experiment]
            self._reply({"recurringRuns": runs, "total_size": len(runs)} if runs else {})
        else:
            self._reply({})

    def do_DELETE(self) -> None:
        self.received.append(("DELETE", self.path, {}))
        self.recurring.pop(self.path.rsplit("/", 1)[-1], None)
        self._reply({})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        self.received.append(("POST", self.path, body))
        if self.path == "/apis/v2beta1/experiments":
            experiment = {"experiment_id": f"exp-{len(self.experiments) + 1}",
                          "display_name": body["display_name"]}
            self.experiments[experiment["experiment_id"]] = experiment
            self._reply(experiment)
        elif self.path == "/apis/v2beta1/runs":
            self._reply({"run_id": "run-42", "display_name": body["display_name"],
                         "experiment_id": body.get("experiment_id")})
        elif self.path == "/apis/v2beta1/recurringruns":
            run = {**body, "recurring_run_id": f"rr-{len(self.received)}"}
            self.recurring[run["recurring_run_id"]] = run
            self._reply(run)
        else:
            self.send_error(404)


@contextmanager
def running() -> Iterator[tuple[str, list[tuple[str, str, dict]]]]:
    """The stand-in on a free port: its URL and the list of what it received."""
    KfpApi.received, KfpApi.experiments, KfpApi.recurring = [], {}, {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), KfpApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", KfpApi.received
    finally:
        server.shutdown()
        server.server_close()
