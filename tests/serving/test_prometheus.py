"""A real Prometheus scraping a real ``digits serve``, with the deployed alert rules loaded.

The rules are evaluated by Prometheus itself against the series the server
really exports (multiprocess aggregation, a ``pid`` label on live gauges, the
scrape's ``instance``): every rule must evaluate without error, the watch
metrics must arrive with their version labels, and a drift verdict in the
registry must raise DigitsDriftDetected for the served version.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from components.train import reference_for
from components.watch import VERDICT_KEY
from tests.conftest import missing_prerequisite
from tests.serving.helpers import operator_registry, serving_environ, v2_body
from tests.serving.test_serving_cli import (
    METRICS_PORTS,
    clean_env,
    free_port,
    model_info,
    request,
    start_serve,
    stop_serve,
)
from tests.test_monitoring import rule_file
from tests.waiting import wait_for


def api(port: int, path: str, **params: str) -> dict:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/{path}{query}",
                                timeout=10) as answer:
        body = json.loads(answer.read())
    assert body["status"] == "success", body
    return body["data"]


def series(port: int, expression: str) -> list[dict]:
    return api(port, "query", query=expression)["result"]


@pytest.mark.slow
def test_prometheus_scrapes_digits_serve_and_evaluates_every_rule(
        s3_server, make_registry, trained, tiny_dataset, tmp_path):
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        missing_prerequisite("prometheus is not installed (apt-get install prometheus)")
    model_dir = tmp_path / "model"
    shutil.copytree(trained["xgboost"].directory, model_dir)
    reference_for(trained["xgboost"].model, tiny_dataset).save(model_dir)
    registry = make_registry()
    version = registry.promote(model_dir, {"kind": "xgboost", "metrics": {}}, "test")
    env = clean_env(**serving_environ(s3_server, registry.bucket),
                    DIGITS_POLL_INTERVAL_S="0.5", DIGITS_PAYLOAD_SAMPLE="1",
                    DIGITS_PAYLOAD_WINDOW="8", DIGITS_HOME=str(tmp_path / "home"))
    operator_registry(s3_server, registry.bucket)._put(VERDICT_KEY, json.dumps({
        "version": version, "drift": True, "timestamp": time.time(), "feedback_accuracy": 0.9,
        "tests": {"embedding": {"p_value": 0.001, "statistic": 0.3}}}).encode())
    port = free_port()
    server = start_serve(port, env, tmp_path / "serve.log")
    rules = rule_file(tmp_path / "rules")
    web = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "digits", "static_configs": [
            {"targets": [f"127.0.0.1:{METRICS_PORTS[port]}"]}]}]}))
    with (tmp_path / "prometheus.log").open("wb") as log:
        scraper = subprocess.Popen(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{web}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: request(port, "GET", "/v2/health/ready")[0] == 200, 60, "ready")
        wait_for(lambda: len(model_info(port)) == 2, 30, "both workers loaded")
        body = json.dumps(v2_body(tiny_dataset.x_holdout[:8])).encode()
        for _ in range(5):
            assert request(port, "POST", "/v2/models/digits/infer", body)[0] == 200
        # A client scaling pixels to 0..1: refused (400) before the model, so no drift test
        # can see it; DigitsClientErrors counts it.
        scaled = v2_body(tiny_dataset.x_holdout[:2] / 255.0, datatype="FP32")
        assert request(port, "POST", "/v2/models/digits/infer",
                       json.dumps(scaled).encode())[0] == 400
        wait_for(lambda: series(web, 'digits_http_requests_total{status="400"}'), 30,
                 "the refusal counted")
        wait_for(lambda: series(web, f'digits_predicted_class_total{{version="{version}"}}'),
                 60, "the watch metrics in Prometheus")
        classes = series(web, f'sum(digits_predicted_class_total{{version="{version}"}})')
        wait_for(lambda: float(series(web, f'sum(digits_predicted_class_total{{version='
                                           f'"{version}"}})')[0]["value"][1]) == 40,
                 30, "all 40 images counted")
        assert classes
        for name in ("digits_prediction_confidence_count", "digits_input_ink_count",
                     "digits_input_embedding_count"):
            assert series(web, f'{name}{{version="{version}"}}'), name
        wait_for(lambda: series(web, 'digits_payload_windows_total{result="written"}'), 30,
                 "payload windows written")
        ready = series(web, "max by (instance) (digits_model_ready)")
        assert [float(s["value"][1]) for s in ready] == [1.0]

        def drift_alert() -> list[dict]:
            return [a for a in api(web, "alerts")["alerts"]
                    if a["labels"]["alertname"] == "DigitsDriftDetected"]

        wait_for(lambda: [a for a in drift_alert() if a["state"] == "firing"], 30,
                 "DigitsDriftDetected firing")
        assert [a["labels"]["version"] for a in drift_alert()] == [version]
        groups = api(web, "rules")["groups"]
        evaluated = [rule for group in groups for rule in group["rules"]]
        assert len(evaluated) == len(yaml.safe_load(rules.read_text())["groups"][0]["rules"])
        wait_for(lambda: all(rule["health"] == "ok" for group in api(web, "rules")["groups"]
                             for rule in group["rules"]), 30, "every rule evaluated")
        firing = {a["labels"]["alertname"] for a in api(web, "alerts")["alerts"]}
        assert "DigitsNoModelLoaded" not in firing and "DigitsServingErrors" not in firing
    finally:
        scraper.terminate()
        scraper.wait(30)
        code = stop_serve(server)
    assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]
