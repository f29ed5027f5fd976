"""``digits submit`` drives the real kfp.Client against a local stand-in of the KFP API.

No cluster runs here, so a small HTTP server (``tests/kfp_api.py``, the
``kfp_api`` fixture) answers the calls a run submission makes (find the
experiment, create it, create the run) and records what it received; the
assertions are about what reached the wire.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from pipelines.schedule import CronError, kfp_cron
from pipelines.schedule import main as schedule_main
from pipelines.submit import main
from pipelines.training import COMPILED
from tests.kfp_api import KfpApi


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


# --------------------------------------------------------------------------- schedule


@pytest.mark.parametrize(("given", "kfp"), [
    ("0 3 * * 1", "0 0 3 * * 1"),                  # five fields: seconds prepended
    ("0 0 3 * * 1", "0 0 3 * * 1"),                # already KFP's six
    ("*/15 * * * *", "0 */15 * * * *"),
    ("30 2 1,15 * MON-FRI", "0 30 2 1,15 * MON-FRI"),
    ("0 0 0 ? JAN,JUL SUN", "0 0 0 ? JAN,JUL SUN"),
])
def test_cron_expressions_are_converted_to_kfps_six_fields(given, kfp):
    converted, note = kfp_cron(given)
    assert converted == kfp
    assert (note is not None) == (len(given.split()) == 5)


@pytest.mark.parametrize(("bad", "fault"), [
    ("0 3 * *", "has 5 fields"),
    ("0 0 0 3 * * 1", "got 7"),
    ("61 * * * *", "minute '61' is outside 0..59"),
    ("0 25 * * *", "hour '25' is outside 0..23"),
    ("0 3 * * 8", "day of week '8' is outside 0..6"),
    ("0 3 * FOO *", "month 'FOO' is outside 1..12"),
    ("0 3 * * 5-1", "a range must run low-high"),
    ("*/0 * * * *", "the step after '/' must be a positive number"),
    ("0 ? * * *", "hour '?'"),
])
def test_invalid_cron_is_refused_naming_the_field(bad, fault):
    with pytest.raises(CronError, match=re.escape(fault)):
        kfp_cron(bad)


def test_schedule_creates_then_replaces_a_recurring_run(kfp_api, capsys):
    host, received = kfp_api
    assert schedule_main(["--host", host, "--cron", "0 3 * * 1",
                          "--arg", "train_size=20000"]) == 0
    captured = capsys.readouterr()
    first = json.loads(captured.out)
    assert "converted the 5-field cron '0 3 * * 1' to KFP's 6-field form '0 0 3 * * 1'" \
        in captured.err
    assert first["cron"] == "0 0 3 * * 1" and first["replaced"] == []
    created = [body for method, path, body in received
               if method == "POST" and path == "/apis/v2beta1/recurringruns"]
    assert len(created) == 1
    sent = created[0]
    assert sent["display_name"] == "digits-retraining"
    assert sent["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 1"
    assert sent["max_concurrency"] in (1, "1") and sent["no_catchup"] is True
    assert sent["runtime_config"]["parameters"]["train_size"] == 20000
    spec, _ = yaml.safe_load_all(COMPILED.read_text())
    assert sent["pipeline_spec"]["pipeline_spec"]["deploymentSpec"] == spec["deploymentSpec"]

    # Scheduling again (a new time) replaces the run instead of adding a second one.
    assert schedule_main(["--host", host, "--cron", "0 0 4 * * *"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert second["replaced"] == [first["recurring_run_id"]]
    assert ("DELETE", f"/apis/v2beta1/recurringruns/{first['recurring_run_id']}", {}) \
        in received
    assert list(KfpApi.recurring) == [second["recurring_run_id"]]
    assert len(KfpApi.experiments) == 1  # the experiment was found, not created twice


def test_invalid_cron_exits_2_before_any_call(kfp_api, capsys):
    host, received = kfp_api
    assert schedule_main(["--host", host, "--cron", "0 3 * *"]) == 2
    assert "has 5 fields" in capsys.readouterr().err
    assert received == []
